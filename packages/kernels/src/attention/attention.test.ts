import { DeviceLimitError, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { roundF16 } from "../test-values.ts";
import { assertClose, randomArray } from "../testing.ts";
import { adapterTraits, attention } from "./index.ts";
import { attentionRef } from "./reference.ts";
import {
  type AttentionTiling,
  attentionTiling,
  type FusedTiling,
  fusedTiling,
  queryBlockRows,
  WINDOW_FLOATS,
  WINDOW_MIN_MACS,
  type WindowTiling,
  windowKeys,
  windowMinQueries,
} from "./tiling.ts";

const device = await useDevice();

const lavapipe = { isCpu: true, subgroupSize: 8 };
const gpu = { isCpu: false, subgroupSize: 32 };

describe("attentionTiling", () => {
  it("on a CPU adapter: non-causal heads of width 4·n up to 160 with enough rows read K and V through uniform windows", () => {
    expect(attentionTiling(lavapipe, 40, 4096, 4096)).toEqual({
      kind: "window",
      subgroupSize: 8,
      rowsPerInvocation: 4,
      keyBlock: 2,
      windowKeys: 373,
      workgroupSize: 64,
    });
    expect(attentionTiling(lavapipe, 80, 1024, 1024)).toMatchObject({ kind: "window", rowsPerInvocation: 2 });
    expect(attentionTiling(lavapipe, 160, 256, 256)).toMatchObject({ kind: "window", rowsPerInvocation: 1 });
    expect(attentionTiling(lavapipe, 40, 4096, 77)).toMatchObject({ kind: "window", windowKeys: 77 });
    const sd = { heads: 8, causal: false };
    expect(attentionTiling(lavapipe, 80, 128, 77, sd)).toMatchObject({ kind: "window", rowsPerInvocation: 2 });
    expect(attentionTiling(lavapipe, 160, 128, 40, sd)).toMatchObject({ kind: "window", rowsPerInvocation: 1 });
    // Too little work for a window kernel's longer compile to pay (fewer than WINDOW_MIN_MACS multiply-adds per batch
    // item): the built-in model's VAE head, 256 tokens of one head of 64, and few keys.
    expect(attentionTiling(lavapipe, 64, 256, 256)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 2 });
    expect(256 * 256 * 64).toBeLessThan(WINDOW_MIN_MACS);
    expect(attentionTiling(lavapipe, 160, 128, 3, sd)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 1 });
    // Too few rows per head to pay for a dispatch per window and head: the fused kernel, one dispatch.
    expect(attentionTiling(lavapipe, 80, 127, 77)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 2 });
    expect(attentionTiling(lavapipe, 160, 64, 64)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 1 });
    // Heads narrow enough for 4 fused rows per lane take windows only at SD's 4096 rows.
    expect(attentionTiling(lavapipe, 40, 4095, 77)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 4 });
    expect(attentionTiling(lavapipe, 32, 64, 77)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 4 });
    expect(attentionTiling(lavapipe, 16, 3, 3)).toMatchObject({ kind: "subgroup", rowsPerInvocation: 3 });
    expect(windowMinQueries(40)).toBe(4096);
    expect(windowMinQueries(44)).toBe(128);
    expect(attentionTiling({ isCpu: true, subgroupSize: null }, 40, 9, 9)).toMatchObject({ kind: "lanes" });
    // The fused kernel where windows do not apply: causal masks, widths not a multiple of 4, wide heads.
    expect(attentionTiling(lavapipe, 64, 77, 77, { heads: 8, causal: true })).toMatchObject({ kind: "subgroup" });
    expect(attentionTiling(lavapipe, 42, 64, 64)).toMatchObject({ kind: "subgroup" });
    expect(attentionTiling(lavapipe, 192, 64, 64, { heads: 2, causal: false })).toMatchObject({ kind: "subgroup" });
    expect(attentionTiling(gpu, 40, 4096, 4096)).toMatchObject({ kind: "lanes" });
  });

  it("windows: Nk split evenly over the fewest windows of at most 16384 floats", () => {
    expect(windowKeys(40, 4096)).toBe(373);
    expect(windowKeys(40, 409)).toBe(409);
    expect(windowKeys(40, 410)).toBe(205);
    expect(windowKeys(80, 1024)).toBe(171);
    expect(windowKeys(160, 256)).toBe(86);
    expect(windowKeys(40, 77)).toBe(77);
    expect(windowKeys(160, 1)).toBe(1);
    for (const [d, nk] of [
      [40, 4096],
      [80, 1024],
      [160, 4096],
      [4, 100000],
    ]) {
      const keys = windowKeys(d, nk);
      expect(keys * d).toBeLessThanOrEqual(WINDOW_FLOATS);
      expect(Math.ceil(nk / keys)).toBe(Math.ceil(nk / Math.floor(WINDOW_FLOATS / d)));
    }
  });

  it("fused kernel on a CPU adapter with subgroups: shared loads, rows per lane by head width, q chunks for wide heads", () => {
    expect(fusedTiling(lavapipe, 40, 4096)).toEqual({
      kind: "subgroup",
      subgroupSize: 8,
      rowsPerInvocation: 4,
      dChunk: 40,
      keyBlock: 2,
      qChunk: 40,
      workgroupSize: 8,
    });
    expect(fusedTiling({ isCpu: true, subgroupSize: 16 }, 40, 77)).toMatchObject({ workgroupSize: 16 });
    expect(fusedTiling(lavapipe, 16, 4096)).toMatchObject({ rowsPerInvocation: 4 });
    expect(fusedTiling(lavapipe, 80, 1024)).toMatchObject({ rowsPerInvocation: 2 });
    expect(fusedTiling(lavapipe, 64, 77)).toMatchObject({ rowsPerInvocation: 2 });
    expect(fusedTiling(lavapipe, 160, 256)).toMatchObject({ rowsPerInvocation: 1 });
    expect(fusedTiling(lavapipe, 40, 3)).toMatchObject({ rowsPerInvocation: 3 });
    expect(fusedTiling(lavapipe, 64, 1)).toMatchObject({ rowsPerInvocation: 1 });
    expect(fusedTiling(lavapipe, 160, 1024)).toMatchObject({ rowsPerInvocation: 1, dChunk: 160, qChunk: 160 });
    expect(attentionTiling(lavapipe, 512, 4096, 4096, { heads: 2, causal: false })).toMatchObject({
      kind: "subgroup",
      rowsPerInvocation: 1,
      dChunk: 128,
      qChunk: 32,
      keyBlock: 8,
    });
  });

  it("on a CPU adapter: single non-causal heads of width ≥ 256 run as blocked GEMMs", () => {
    expect(attentionTiling(lavapipe, 512, 4096, 4096)).toEqual({ kind: "blocked", queryBlock: 512 });
    expect(attentionTiling(lavapipe, 256, 300, 300)).toEqual({ kind: "blocked", queryBlock: 300 });
    expect(attentionTiling({ isCpu: true, subgroupSize: null }, 512, 9, 9)).toMatchObject({ kind: "blocked" });
    expect(attentionTiling(lavapipe, 160, 4096, 4096)).toMatchObject({ kind: "window" });
    expect(attentionTiling(lavapipe, 512, 4096, 4096, { heads: 1, causal: true })).toMatchObject({ kind: "subgroup" });
    expect(attentionTiling(lavapipe, 257, 64, 64)).toMatchObject({ kind: "subgroup" });
    expect(attentionTiling(gpu, 512, 4096, 4096)).toMatchObject({ kind: "lanes" });
  });

  it("query blocks: an 8 MiB f32 score block, in multiples of 64 rows, at most Nq", () => {
    expect(queryBlockRows(4096, 4096)).toBe(512);
    expect(queryBlockRows(4096, 3000)).toBe(640);
    expect(queryBlockRows(100, 4096)).toBe(100);
    expect(queryBlockRows(10, 1 << 22)).toBe(1);
    expect(queryBlockRows(8, 40000)).toBe(8);
  });

  it("elsewhere: one row per invocation, vector loads, at most 64 columns each", () => {
    expect(attentionTiling(gpu, 40, 4096, 4096)).toMatchObject({ kind: "lanes", rowsPerInvocation: 1, dChunk: 40 });
    expect(attentionTiling(gpu, 160, 4096, 4096)).toMatchObject({ dChunk: 40 });
    expect(attentionTiling(gpu, 512, 4096, 4096)).toMatchObject({ dChunk: 64 });
    expect(attentionTiling(gpu, 70, 9, 9)).toMatchObject({ dChunk: 35 });
    expect(fusedTiling({ isCpu: true, subgroupSize: null }, 40, 9)).toMatchObject({ kind: "lanes" });
  });
});

interface Case {
  name: string;
  batch: number;
  nq: number;
  nk: number;
  heads: number;
  d: number;
  causal?: boolean;
  scale?: number;
  dtype?: "f32" | "f16";
  /** Tilings run besides the adapter's own choice (subgroup ones only where the device has subgroups). */
  tilings?: (AttentionTiling | { subgroup: Partial<FusedTiling> } | { window: Partial<WindowTiling> })[];
}

const lanes = (t: Partial<FusedTiling>): FusedTiling => ({
  kind: "lanes",
  subgroupSize: 1,
  rowsPerInvocation: 1,
  dChunk: 8,
  keyBlock: 2,
  qChunk: 8,
  workgroupSize: 64,
  ...t,
});

const windowTiling: WindowTiling = {
  kind: "window",
  subgroupSize: 8,
  rowsPerInvocation: 1,
  keyBlock: 2,
  windowKeys: 4,
  workgroupSize: 64,
};

/** The tilings of a case that this device can run. */
function tilingsFor(c: Case): AttentionTiling[] {
  const sg = adapterTraits(device).subgroupSize;
  return (c.tilings ?? []).flatMap((t): AttentionTiling[] => {
    if ("window" in t) return sg === null ? [] : [{ ...windowTiling, subgroupSize: sg, ...t.window }];
    if (!("subgroup" in t)) return [t];
    return sg === null ? [] : [{ ...lanes({}), kind: "subgroup" as const, subgroupSize: sg, ...t.subgroup }];
  });
}

// Besides each adapter's own choice, the cases run both kernels (subgroup and lanes), ragged row groups,
// split columns, q loaded in chunks and key blocks that do not divide Nk. Every distinct tiling is another
// pipeline, and lavapipe takes seconds to compile one, so the list is short.
const cases: Case[] = [
  {
    name: "self-attention, odd N",
    batch: 2,
    nq: 13,
    nk: 13,
    heads: 2,
    d: 16,
    tilings: [
      lanes({ rowsPerInvocation: 3, dChunk: 8, keyBlock: 5, qChunk: 16 }),
      { subgroup: { rowsPerInvocation: 2, dChunk: 8, keyBlock: 3, qChunk: 8 } },
      // Three windows of 5, 5 and 3 keys (the softmax state carried across them), ragged row groups.
      { window: { rowsPerInvocation: 3, keyBlock: 2, windowKeys: 5 } },
      { window: { rowsPerInvocation: 2, keyBlock: 3, windowKeys: 4 } },
    ],
  },
  {
    name: "cross-attention onto 77 tokens (SD1 head width 40)",
    batch: 2,
    nq: 33,
    nk: 77,
    heads: 3,
    d: 40,
    tilings: [{ window: { rowsPerInvocation: 4, windowKeys: 30 } }],
  },
  {
    name: "CLIP causal self-attention (d 64)",
    batch: 1,
    nq: 77,
    nk: 77,
    heads: 2,
    d: 64,
    causal: true,
  },
  {
    name: "causal with Nq < Nk and ragged rows",
    batch: 1,
    nq: 7,
    nk: 12,
    heads: 1,
    d: 8,
    causal: true,
    tilings: [
      lanes({ dChunk: 4, keyBlock: 3, qChunk: 8 }),
      { subgroup: { rowsPerInvocation: 3, dChunk: 4, keyBlock: 5, qChunk: 8 } },
    ],
  },
  {
    name: "VAE mid-block: one 512-wide head",
    batch: 1,
    nq: 37,
    nk: 37,
    heads: 1,
    d: 512,
    tilings: [{ subgroup: { rowsPerInvocation: 1, dChunk: 128, qChunk: 32, keyBlock: 8 } }],
  },
  {
    name: "blocked GEMMs, Nq not a multiple of the block",
    batch: 2,
    nq: 300,
    nk: 300,
    heads: 1,
    d: 512,
    tilings: [{ kind: "blocked", queryBlock: 128 }],
  },
  {
    name: "blocked GEMMs, f16",
    batch: 2,
    nq: 300,
    nk: 300,
    heads: 1,
    d: 512,
    dtype: "f16",
    tilings: [{ kind: "blocked", queryBlock: 128 }],
  },
  { name: "head width 160 (SD1 deepest level)", batch: 1, nq: 9, nk: 20, heads: 2, d: 160 },
  {
    name: "head width not a multiple of 4 or 8",
    batch: 2,
    nq: 5,
    nk: 6,
    heads: 3,
    d: 5,
    tilings: [lanes({ dChunk: 5, qChunk: 5 })],
  },
  { name: "single query, single key, explicit scale", batch: 1, nq: 1, nk: 1, heads: 1, d: 8, scale: 0.7 },
  {
    name: "f16 storage",
    batch: 2,
    nq: 19,
    nk: 77,
    heads: 2,
    d: 24,
    dtype: "f16",
    tilings: [
      { window: { rowsPerInvocation: 2, windowKeys: 20 } },
      { subgroup: { rowsPerInvocation: 2, dChunk: 24, qChunk: 24 } },
    ],
  },
];

describe("attention", () => {
  for (const c of cases) {
    const dtype = c.dtype ?? "f32";
    it.skipIf(dtype === "f16" && !device.features.shaderF16)(
      `${c.name}: B ${c.batch}, Nq ${c.nq}, Nk ${c.nk}, ${c.heads}×${c.d}${c.causal ? ", causal" : ""} ${dtype}`,
      async () => {
        const width = c.heads * c.d;
        // q scaled up so that softmax is peaked and the online rescaling is exercised.
        let q = randomArray(c.batch * c.nq * width, 71, 3);
        let k = randomArray(c.batch * c.nk * width, 72, 1);
        let v = randomArray(c.batch * c.nk * width, 73, 1);
        if (dtype === "f16") [q, k, v] = [roundF16(q), roundF16(k), roundF16(v)];
        const tq = Tensor.from(device, q, [c.batch, c.nq, width], dtype);
        const tk = Tensor.from(device, k, [c.batch, c.nk, width], dtype);
        const tv = Tensor.from(device, v, [c.batch, c.nk, width], dtype);
        const ref = attentionRef(q, k, v, c, { scale: c.scale, causal: c.causal });
        // Outputs are convex combinations of v (|v| ≤ 1): f32 scores over d ≤ 512 terms and f32 exp/sums
        // give ~1e-6; f16 adds one rounding of the output (2^-11 of |out| ≤ 1).
        const tol = dtype === "f16" ? { atol: 1e-3 } : { atol: 1e-5 };
        for (const tiling of [undefined, ...tilingsFor(c)]) {
          const out = attention(tq, tk, tv, { heads: c.heads, scale: c.scale, causal: c.causal, tiling });
          expect(out.shape).toEqual([c.batch, c.nq, width]);
          assertClose(await out.toFloat32(), ref, tol, `attention ${JSON.stringify(tiling ?? "default")}`);
          out.dispose();
        }
        for (const t of [tq, tk, tv]) t.dispose();
      },
    );
  }

  it("4096 tokens (UNet self-attention at 64×64 latents), spot-checked rows", async () => {
    const dims = { batch: 1, nq: 4096, nk: 4096, heads: 1, d: 40 };
    const q = randomArray(4096 * 40, 81, 3);
    const k = randomArray(4096 * 40, 82);
    const v = randomArray(4096 * 40, 83);
    const out = attention(
      Tensor.from(device, q, [1, 4096, 40]),
      Tensor.from(device, k, [1, 4096, 40]),
      Tensor.from(device, v, [1, 4096, 40]),
      { heads: 1 },
    );
    const rows = [0, 1, 7, 1000, 2047, 4094, 4095];
    const ref = attentionRef(q, k, v, dims, { rows });
    const got = await out.toFloat32();
    const pick = (a: ArrayLike<number>) => rows.flatMap((r) => Array.from({ length: 40 }, (_, t) => a[r * 40 + t]));
    // Sums over 4096 keys: f32 accumulation error grows to a few 1e-6.
    assertClose(pick(got), pick(ref), { atol: 1e-5 }, "attention N=4096");
  });

  it.skipIf(adapterTraits(device).subgroupSize === null)(
    "windows: one pipeline serves every window size of a head width (the size is a dispatch parameter)",
    async () => {
      const dims = { batch: 1, nq: 6, nk: 11, heads: 1, d: 8 };
      const q = randomArray(6 * 8, 91, 3);
      const kv = randomArray(11 * 8, 92);
      const tq = Tensor.from(device, q, [1, 6, 8]);
      const tkv = Tensor.from(device, kv, [1, 11, 8]);
      const ref = attentionRef(q, kv, kv, dims, {});
      const tiling = { ...windowTiling, subgroupSize: adapterTraits(device).subgroupSize ?? 0, rowsPerInvocation: 3 };
      const first = attention(tq, tkv, tkv, { heads: 1, tiling: { ...tiling, windowKeys: 5 } });
      assertClose(await first.toFloat32(), ref, { atol: 1e-5 }, "windows of 5 keys");
      const pipelines = device.pipelineCount;
      for (const windowKeys of [3, 11]) {
        const out = attention(tq, tkv, tkv, { heads: 1, tiling: { ...tiling, windowKeys } });
        assertClose(await out.toFloat32(), ref, { atol: 1e-5 }, `windows of ${windowKeys} keys`);
        out.dispose();
      }
      expect(device.pipelineCount).toBe(pipelines);
      for (const t of [first, tq, tkv]) t.dispose();
    },
  );

  it("rejects inconsistent shapes, dtypes and head counts, naming them", () => {
    const q = Tensor.zeros(device, [1, 4, 8]);
    const k = Tensor.zeros(device, [1, 5, 8]);
    const bad = Tensor.zeros(device, [1, 5, 6]);
    expect(() => attention(q, k, bad, { heads: 2 })).toThrow(
      /attention: q .* must be \[B, Nq, W\], \[B, Nk, W\], \[B, Nk, W\]/,
    );
    expect(() => attention(q, k, k, { heads: 3 })).toThrow(/width 8 of q .* does not split into 3 heads/);
    expect(() => attention(q, k, k, { heads: 2, tiling: lanes({ dChunk: 3, qChunk: 4 }) })).toThrow(
      /tiling .* does not fit head width d = 4/,
    );
    const oddSubgroup: FusedTiling = { ...lanes({ dChunk: 4, qChunk: 4 }), kind: "subgroup", subgroupSize: 5 };
    expect(() => attention(q, k, k, { heads: 2, tiling: oddSubgroup })).toThrow(/needs subgroups of exactly 5 lanes/);
    expect(() => attention(q, k, k, { heads: 2, causal: true, tiling: windowTiling })).toThrow(
      /needs no causal mask, a head width that is a multiple of 4 .*got d = 4, causal/,
    );
    expect(() => attention(q, k, k, { heads: 1, tiling: { ...windowTiling, windowKeys: 4000 } })).toThrow(
      /windows of at most 16384 floats \(got d = 8\)/,
    );
    const blocked: AttentionTiling = { kind: "blocked", queryBlock: 2 };
    expect(() => attention(q, k, k, { heads: 2, tiling: blocked })).toThrow(/needs one head .*got 2 heads/);
    expect(() => attention(q, k, k, { heads: 1, causal: true, tiling: blocked })).toThrow(/got 1 heads, causal/);
  });

  it("says which tensor is over the binding limit, as a DeviceLimitError (the adapter's limit, not a bug)", () => {
    const rows = Math.floor(device.limits.maxStorageBufferBindingSize / (4 * 64)) + 1;
    const k = Tensor.empty(device, [1, rows, 64]);
    const q = Tensor.empty(device, [1, 1, 64]);
    try {
      const call = () => attention(q, k, k, { heads: 1 });
      expect(call).toThrow(DeviceLimitError);
      expect(call).toThrow(
        new RegExp(`attention: k .*\\[1, ${rows}, 64\\].* over this device's maxStorageBufferBindingSize`),
      );
    } finally {
      k.dispose();
      q.dispose();
    }
  });
});
