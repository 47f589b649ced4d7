import { f16ArrayToF32, f32ArrayToF16, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { kernelKey, kernelWgsl } from "../common/kernel.ts";
import type { BindingLimits } from "../common/pieces.ts";
import { gegluRef } from "../elementwise/reference.ts";
import { assertClose, EMULATED_MATRIX_TILES, f32Tol, randomArray } from "../testing.ts";
import type { Activation } from "./activation.ts";
import { disableAutotune, enableAutotune, MemoryTuneStore } from "./autotune.ts";
import { deviceTiles, fixedSubgroupSize, type GemmCall, gemm, linear, linearGeglu, matmul } from "./index.ts";
import { packCacheStats, setPackCacheBudget } from "./pack.ts";
import { planGemm } from "./plan.ts";
import { matmulRef } from "./reference.ts";
import {
  CPU_WORKGROUPS,
  chooseTiles,
  evenSubgroups,
  isTileConfig,
  spreadSubgroups,
  type TileConfig,
  tileCandidates,
  tileKey,
  UNIFORM_WINDOW_BYTES,
  uniformWindow,
  workgroupStorageBytes,
} from "./tiles.ts";
import { GEMM, type GemmKernelSpec, gemmVectorReads } from "./wgsl.ts";

const device = await useDevice();

const lavapipeLike = {
  isCpu: true,
  subgroupSize: 8,
  maxInvocations: 1024,
  maxWorkgroupStorageBytes: 32768,
  transposeA: false,
  transposeB: false,
};

describe("chooseTiles", () => {
  it("uses subgroup-broadcast tiles on a CPU adapter with a fixed subgroup size", () => {
    const t = chooseTiles({ ...lavapipeLike, M: 4096, N: 320, K: 320 });
    expect(t).toEqual({
      kind: "subgroup",
      lanes: 8,
      // 171 tiles of 24 rows: 57 workgroups of 3 subgroups.
      subgroups: 3,
      rows: 24,
      laneOwns: "n",
      cols: 1,
      uniformB: true,
    });
  });

  it("reads B from uniform windows where they pay", () => {
    // [M, N, K] of a Linear (B transposed) and whether it reads B from windows: 20 × 2 and 20 × 3 windows take
    // them, 22 × 3 not; SD's GEGLU at 16² would take 320 × 3 and its 1280-wide linears 40 × 3: from storage.
    const linears: [number, number, number, boolean][] = [
      [8192, 320, 320, true],
      [2048, 640, 640, true],
      [2048, 640, 1536, true],
      [2048, 704, 1536, false],
      [512, 10240, 1280, false],
      [512, 1280, 1280, false],
    ];
    for (const [M, N, K, uniformB] of linears) {
      expect(chooseTiles({ ...lavapipeLike, M, N, K, transposeB: true }), `${M}×${N}×${K}`).toMatchObject({ uniformB });
    }
    expect(chooseTiles({ ...lavapipeLike, M: 512, N: 1280, K: 1280, transposeB: true })).toMatchObject({
      subgroups: 2,
    });
    // Fewer rows than two workgroups, or a 1×1 convolution over 512² pixels (8192 windows).
    expect(chooseTiles({ ...lavapipeLike, M: 154, N: 320, K: 768, transposeB: true })).toMatchObject({
      uniformB: false,
    });
    expect(chooseTiles({ ...lavapipeLike, M: 128, N: 512 * 512, K: 256 })).toMatchObject({ uniformB: false });
    // Winograd's 36 positions, a window set each: 128 channels at 512² (bands of 3584 tiles), not 1280 × 1280.
    const sets = { ...lavapipeLike, transposeB: true, windowSets: 36 };
    expect(chooseTiles({ ...sets, M: 3584, N: 128, K: 128 })).toMatchObject({ uniformB: true });
    expect(chooseTiles({ ...sets, M: 3584, N: 1280, K: 1280 })).toMatchObject({ uniformB: false });
    // Lanes owning m (both operands transposed) read B from storage.
    const tt = chooseTiles({ ...lavapipeLike, M: 4096, N: 4096, K: 64, transposeA: true, transposeB: true });
    expect(tt).toMatchObject({ laneOwns: "m", uniformB: false });
  });

  it("shrinks the workgroup for few rows, and broadcasts B's rows when only A is transposed away from K", () => {
    expect(chooseTiles({ ...lavapipeLike, M: 40, N: 1024, K: 320 })).toMatchObject({ subgroups: 2, rows: 24 });
    // 5 × 16 rows pad M = 77 less than 4 × 24.
    expect(chooseTiles({ ...lavapipeLike, M: 77, N: 512, K: 768 })).toMatchObject({ subgroups: 5, rows: 16 });
    expect(chooseTiles({ ...lavapipeLike, subgroupSize: 16, M: 4096, N: 320, K: 320 })).toMatchObject({ rows: 32 });
    expect(chooseTiles({ ...lavapipeLike, M: 1, N: 3, K: 7 })).toMatchObject({ subgroups: 1 });
    // At most 8 rows take 8 (16 would be half padding), 9 take 16.
    expect(chooseTiles({ ...lavapipeLike, M: 2, N: 256, K: 128, transposeB: true })).toMatchObject({ rows: 8 });
    expect(chooseTiles({ ...lavapipeLike, M: 8, N: 128, K: 128 })).toMatchObject({ rows: 8 });
    expect(chooseTiles({ ...lavapipeLike, M: 9, N: 128, K: 128 })).toMatchObject({ rows: 16 });
    expect(chooseTiles({ ...lavapipeLike, subgroupSize: 16, M: 2, N: 128, K: 128 })).toMatchObject({ rows: 16 });
    expect(chooseTiles({ ...lavapipeLike, M: 64, N: 64, K: 64, transposeA: true, transposeB: true })).toMatchObject({
      laneOwns: "m",
    });
  });

  it("spreads a dispatch over at least CPU_WORKGROUPS workgroups where it has the subgroup tiles", () => {
    const windowed = { ...lavapipeLike, N: 640, K: 640, transposeB: true };
    // Each window of B is a dispatch over all rows: 22 row tiles at M = 512, 86 at 2048, 342 at 8192.
    expect(chooseTiles({ ...windowed, M: 512 })).toMatchObject({ uniformB: true, rows: 24, subgroups: 1 });
    // 86 row tiles: 43 workgroups of 2 cover 86 tiles, where the spread's 5 would cover 90.
    expect(chooseTiles({ ...windowed, M: 2048 })).toMatchObject({ uniformB: true, subgroups: 2 });
    // 342 row tiles: 57 workgroups of 6, where 8 would cover 344.
    expect(chooseTiles({ ...windowed, M: 8192 })).toMatchObject({ uniformB: true, subgroups: 6 });
    // Without windows a dispatch has every column tile too: 8 row × 4 column tiles.
    const small = chooseTiles({ ...lavapipeLike, M: 128, N: 128, K: 128, transposeB: true });
    expect(small).toMatchObject({ uniformB: false, rows: 16, subgroups: 2 });
    for (const [most, tiles, want] of [
      [8, 15, 1],
      [8, 32, 2],
      [8, 1000, 8],
      [3, 1000, 3],
    ]) {
      expect(spreadSubgroups(most, tiles)).toBe(want);
    }
    expect(CPU_WORKGROUPS).toBe(16);
  });

  it("takes the most subgroups per workgroup that divide the row tiles evenly", () => {
    for (const [most, tiles, want] of [
      [8, 27, 3], // 640 output channels of 24 rows: 648 rows, not 8 subgroups' 768
      [8, 11, 1], // 256 rows: 264, not 384
      [8, 22, 2], // 512 rows: 528, not 576
      [8, 54, 6], // 1280 rows: 1296, not 1344
      [8, 64, 8],
      [8, 7, 7],
      [5, 86, 2],
      [1, 86, 1],
      [8, 1, 1],
    ]) {
      expect(evenSubgroups(most, tiles)).toBe(want);
    }
    // Winograd's channel-major GEMMs: 640 output channels over 36 positions of 128 tiles (SD 1.5 at 32², batch 2).
    const channelMajor = { ...lavapipeLike, M: 640, N: 128, K: 640, batch: 36 };
    expect(chooseTiles(channelMajor)).toMatchObject({ rows: 24, subgroups: 3 });
    expect(chooseTiles({ ...lavapipeLike, M: 200, N: 256, K: 19 })).toMatchObject({ rows: 24, subgroups: 3 });
    // Only the last subgroup tile reaches past M.
    for (const M of [77, 128, 256, 320, 512, 640, 1280, 2048, 2560, 8192]) {
      const t = chooseTiles({ ...lavapipeLike, M, N: 4096, K: 64 });
      if (t.kind !== "subgroup") throw new Error("subgroup tiles expected");
      const wg = t.rows * t.subgroups;
      expect(Math.ceil(M / wg) * wg - M).toBeLessThan(t.rows);
    }
  });

  it("uses workgroup-memory tiles on GPUs and where the subgroup size is not fixed", () => {
    const gpu = { ...lavapipeLike, isCpu: false, subgroupSize: 32, M: 4096, N: 320, K: 320 };
    expect(chooseTiles(gpu)).toMatchObject({ kind: "workgroup", tileM: 64, tileN: 64 });
    expect(chooseTiles({ ...gpu, isCpu: true, subgroupSize: null })).toMatchObject({ kind: "workgroup" });
    expect(chooseTiles({ ...gpu, maxInvocations: 128 })).toMatchObject({ kind: "workgroup", tileM: 32 });
  });
});

describe("tileCandidates", () => {
  it("starts with the heuristic's choice and offers only runnable configs", () => {
    for (const inputs of [
      { ...lavapipeLike, M: 4096, N: 320, K: 320 },
      { ...lavapipeLike, M: 77, N: 320, K: 768, transposeB: true },
      { ...lavapipeLike, isCpu: false, subgroupSize: 32, M: 4096, N: 320, K: 320 },
      { ...lavapipeLike, isCpu: false, maxInvocations: 128, maxWorkgroupStorageBytes: 16384, M: 64, N: 64, K: 64 },
    ]) {
      const candidates = tileCandidates(inputs);
      expect(candidates[0]).toEqual(chooseTiles(inputs));
      expect(candidates.length).toBeGreaterThanOrEqual(2);
      for (const c of candidates) {
        expect(isTileConfig(c)).toBe(true);
        if (c.kind === "workgroup") {
          expect((c.tileM / c.threadM) * (c.tileN / c.threadN)).toBeLessThanOrEqual(inputs.maxInvocations);
          expect(workgroupStorageBytes(c)).toBeLessThanOrEqual(inputs.maxWorkgroupStorageBytes);
        }
      }
    }
    const sg = { kind: "subgroup", lanes: 8, subgroups: 2, rows: 16, laneOwns: "n", cols: 1, uniformB: true };
    expect(isTileConfig(sg)).toBe(true);
    expect(isTileConfig({ ...sg, rows: 12 })).toBe(false);
    expect(isTileConfig({ ...sg, cols: 3 })).toBe(false);
    // Windows of B are columns the lanes own.
    expect(isTileConfig({ ...sg, laneOwns: "m" })).toBe(false);
    expect(isTileConfig({ ...sg, laneOwns: "m", uniformB: false })).toBe(true);
    // An autotune cache written before cols and uniformB existed.
    expect(isTileConfig({ kind: "subgroup", lanes: 8, subgroups: 2, rows: 16, laneOwns: "n" })).toBe(false);
    expect(isTileConfig({ kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 2 })).toBe(false);
    expect(isTileConfig({ kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 2, threadN: 4 })).toBe(false);
    expect(isTileConfig(null)).toBe(false);
  });
});

const gemmBase: GemmKernelSpec = {
  tiles: { kind: "subgroup", lanes: 8, subgroups: 2, rows: 16, laneOwns: "n", cols: 1, uniformB: false },
  transposeA: false,
  transposeB: false,
  a: "f32",
  b: "f32",
  c: "f32",
  bias: null,
  residual: null,
  activation: "none",
  vecA: false,
  vecB: false,
  vecC: false,
  kTail: false,
  gated: false,
};
const wgTiles = { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 4 } as const;

describe("gemmKey", () => {
  it("changes with every field of the kernel spec (the pipeline cache key)", () => {
    const base = gemmBase;
    const wg = wgTiles;
    const variants: GemmKernelSpec[] = [
      base,
      { ...base, tiles: { ...base.tiles, lanes: 4 } as TileConfig },
      { ...base, tiles: { ...base.tiles, subgroups: 4 } as TileConfig },
      { ...base, tiles: { ...base.tiles, rows: 24 } as TileConfig },
      { ...base, tiles: { ...base.tiles, laneOwns: "m" } as TileConfig },
      { ...base, tiles: { ...base.tiles, cols: 2 } as TileConfig },
      { ...base, tiles: { ...base.tiles, uniformB: true } as TileConfig },
      { ...base, tiles: wg },
      { ...base, tiles: { ...wg, tileM: 32 } },
      { ...base, tiles: { ...wg, tileN: 32 } },
      { ...base, tiles: { ...wg, tileK: 8 } },
      { ...base, tiles: { ...wg, threadM: 2 } },
      { ...base, tiles: { ...wg, threadN: 8 } },
      { ...base, tiles: { ...wg, vecLoads: true } },
      { ...base, tiles: { ...wg, doubleBuffer: true } },
      { ...base, transposeA: true },
      { ...base, transposeB: true },
      { ...base, a: "f16" },
      { ...base, b: "f16" },
      { ...base, c: "f16" },
      { ...base, bias: { axis: "n", dtype: "f32" } },
      { ...base, bias: { axis: "m", dtype: "f32" } },
      { ...base, bias: { axis: "n", dtype: "f16" } },
      { ...base, residual: "f32" },
      { ...base, activation: "gelu" },
      { ...base, vecA: true },
      { ...base, vecB: true },
      { ...base, vecC: true },
      { ...base, kTail: true },
      { ...base, gated: true },
    ];
    expect(new Set(variants.map((v) => kernelKey(GEMM, v))).size).toBe(variants.length);
  });

  it("workgroup-tile variants: vec4 loads of aligned operands only, a second staging buffer", () => {
    const staged = { ...wgTiles, vecLoads: true, doubleBuffer: true };
    expect(gemmVectorReads(staged, false, true, true, true)).toEqual({ vecA: true, vecB: true });
    expect(gemmVectorReads(staged, true, false, false, true)).toEqual({ vecA: false, vecB: true });
    expect(gemmVectorReads(wgTiles, false, true, true, true)).toEqual({ vecA: false, vecB: false });
    const spec: GemmKernelSpec = { ...gemmBase, tiles: staged, transposeB: true, vecA: true, vecB: true };
    const code = kernelWgsl(GEMM, spec);
    expect(code).toContain("A4((");
    expect(code).toContain("B4((");
    expect(code).not.toContain("A_at(p.aOff");
    // 64 rows + 1 vec4 of padding, 16 deep, twice.
    expect(code).toContain(`var<workgroup> As: array<vec4f, ${2 * 16 * 17}>;`);
    expect(code).toContain("let cur = (k0 / 16u) & 1u;");
    const plain = kernelWgsl(GEMM, { ...gemmBase, tiles: wgTiles });
    expect(plain).toContain(`var<workgroup> As: array<vec4f, ${16 * 17}>;`);
    expect(plain).not.toMatch(/A4\(|let cur/);
  });
});

describe("planGemm", () => {
  const base = {
    batch: 1,
    M: 100,
    N: 64,
    K: 48,
    transposeA: false,
    transposeB: false,
    aBatchStride: 0,
    bBatchStride: 0,
    bytes: { a: 4, b: 4, c: 4 },
  };
  const limits = { maxBindingBytes: 1 << 27, offsetAlignment: 256 };

  it("keeps a problem that fits in one piece", () => {
    const pieces = planGemm("t", { ...base, batch: 3, aBatchStride: 100 * 48 }, limits);
    expect(pieces).toHaveLength(1);
    expect(pieces[0]).toMatchObject({ b0: 0, b1: 3, m0: 0, m1: 100, k0: 0, k1: 48, accumulate: false, finalize: true });
  });

  it("splits over batch items first, binding each from an aligned offset", () => {
    const g = { ...base, batch: 5, aBatchStride: 100 * 48 };
    const pieces = planGemm("t", g, { maxBindingBytes: 2 * 100 * 64 * 4 + 256, offsetAlignment: 256 });
    expect(pieces.map((p) => [p.b0, p.b1])).toEqual([
      [0, 2],
      [2, 4],
      [4, 5],
    ]);
    for (const p of pieces) {
      for (const b of [p.a, p.b, p.c]) {
        expect(b.byteOffset % 256).toBe(0);
        expect(b.byteSize).toBeLessThanOrEqual(2 * 100 * 64 * 4 + 256);
      }
      // The kernel's base index points at the piece's first element.
      expect(p.c.byteOffset / 4 + p.c.elementOffset).toBe(p.b0 * 100 * 64);
      expect(p.a.byteOffset / 4 + p.a.elementOffset).toBe(p.b0 * 100 * 48);
    }
  });

  it("splits rows when one batch item is too big, then the reduction (accumulating in k order)", () => {
    // B (12 KiB) fits 16 KiB; A (19 KiB) and C (25 KiB) need row chunks.
    const rows = planGemm("t", base, { maxBindingBytes: 16384, offsetAlignment: 256 });
    expect(rows.length).toBeGreaterThan(1);
    expect(rows.every((p) => p.k0 === 0 && p.k1 === 48 && !p.accumulate && p.finalize)).toBe(true);
    expect(rows.every((p) => p.a.byteSize <= 16384 && p.c.byteSize <= 16384)).toBe(true);
    expect(rows.map((p) => p.m1 - p.m0).reduce((x, y) => x + y)).toBe(100);

    const deep = planGemm("t", { ...base, M: 8, N: 4, K: 4000 }, { maxBindingBytes: 4096, offsetAlignment: 256 });
    const first = deep.filter((p) => p.m0 === 0);
    expect(first.length).toBeGreaterThan(1);
    expect(first.map((p) => [p.accumulate, p.finalize])).toEqual(first.map((_, i) => [i > 0, i === first.length - 1]));
    expect(first.every((p) => p.k0 % 4 === 0)).toBe(true);
    expect(deep.every((p) => p.a.byteSize <= 4096 && p.b.byteSize <= 4096)).toBe(true);
  });

  it("names the operand that cannot be split", () => {
    // A transposed with huge M: even 4 rows × 4 reduction steps span 3 whole columns of Aᵀ.
    expect(() =>
      planGemm("t", { ...base, M: 4000, K: 8, transposeA: true }, { maxBindingBytes: 1024, offsetAlignment: 256 }),
    ).toThrow(/'a' fits/);
    // A transposed B is split along neither rows nor the reduction: every column chunk spans all of it.
    expect(() =>
      planGemm("t", { ...base, N: 8, K: 700, transposeB: true }, { maxBindingBytes: 2048, offsetAlignment: 256 }),
    ).toThrow(/'b' fits/);
  });
});

type Strategy =
  | "device"
  | "subgroup-m"
  | "workgroup"
  | "workgroup-8x8"
  | "workgroup-staged"
  | "workgroup-8x8-vec"
  | "workgroup-8x8-double"
  | TileConfig;

/** The workgroup-tile variants: vec4 global loads (aligned operands), double-buffered staging, both. */
const STAGED_TILES: Record<string, TileConfig> = {
  "workgroup-staged": {
    kind: "workgroup",
    tileM: 32,
    tileN: 32,
    tileK: 16,
    threadM: 4,
    threadN: 4,
    vecLoads: true,
    doubleBuffer: true,
  },
  "workgroup-8x8-vec": { kind: "workgroup", tileM: 32, tileN: 64, tileK: 8, threadM: 8, threadN: 8, vecLoads: true },
  "workgroup-8x8-double": {
    kind: "workgroup",
    tileM: 32,
    tileN: 64,
    tileK: 8,
    threadM: 8,
    threadN: 8,
    doubleBuffer: true,
  },
};

function tilesFor(
  s: Strategy,
  call: Pick<GemmCall, "M" | "N" | "K" | "transposeA" | "transposeB">,
): TileConfig | undefined {
  if (typeof s === "object") return s;
  if (s === "device") return undefined;
  if (s === "workgroup") return { kind: "workgroup", tileM: 32, tileN: 32, tileK: 16, threadM: 4, threadN: 4 };
  // Two groups of 4 rows and of 4 columns per invocation, each spread over the workgroup, and a tile whose
  // sides differ: the odd shapes below cut through every group.
  if (s === "workgroup-8x8") return { kind: "workgroup", tileM: 32, tileN: 64, tileK: 8, threadM: 8, threadN: 8 };
  if (s in STAGED_TILES) return STAGED_TILES[s];
  const t = deviceTiles(device, call);
  if (t.kind !== "subgroup") throw new Error("this adapter has no fixed subgroup size; the test needs lavapipe");
  return { ...t, laneOwns: "m" };
}

interface Case {
  batch?: number;
  M: number;
  N: number;
  K: number;
  transposeA?: boolean;
  transposeB?: boolean;
  shareA?: boolean;
  shareB?: boolean;
  bias?: boolean;
  residual?: boolean;
  activation?: Activation;
  alpha?: number;
  dtype?: "f32" | "f16";
  /** GEGLU of the product's column halves, [batch, M, N/2]. */
  gated?: boolean;
  /** Splits the product as if these were the device's binding limits. */
  limits?: BindingLimits;
  /** GemmCall.windowsPerItem. */
  windowsPerItem?: boolean;
}

async function check(c: Case, strategy: Strategy, tol: { atol: number; rtol?: number }, seed = 1) {
  const { batch = 1, M, N, K, transposeA = false, transposeB = false, dtype = "f32" } = c;
  const aBatch = c.shareA ? 1 : batch;
  const bBatch = c.shareB ? 1 : batch;
  const round = (x: Float32Array) => (dtype === "f16" ? f16ArrayToF32(f32ArrayToF16(x)) : x);
  const a = round(randomArray(aBatch * M * K, seed));
  const b = round(randomArray(bBatch * K * N, seed + 1));
  const bias = c.bias ? round(randomArray(N, seed + 2)) : undefined;
  const residual = c.residual ? round(randomArray(batch * M * N, seed + 3)) : undefined;
  const ta = Tensor.from(device, a, [aBatch, ...(transposeA ? [K, M] : [M, K])], dtype);
  const tb = Tensor.from(device, b, [bBatch, ...(transposeB ? [N, K] : [K, N])], dtype);
  const tbias = bias && Tensor.from(device, bias, [N], dtype);
  const tres = residual && Tensor.from(device, residual, [batch, M, N], dtype);
  const out = Tensor.empty(device, [batch, M, c.gated ? N / 2 : N], dtype);
  const call: GemmCall = {
    op: "test",
    a: ta,
    b: tb,
    out,
    batch,
    M,
    N,
    K,
    transposeA,
    transposeB,
    aBatchStride: c.shareA ? 0 : M * K,
    bBatchStride: c.shareB ? 0 : K * N,
    bias: tbias ? { tensor: tbias, axis: "n" } : undefined,
    residual: tres,
    activation: c.activation ?? "none",
    alpha: c.alpha ?? 1,
    gated: c.gated,
    bindingLimits: c.limits,
    windowsPerItem: c.windowsPerItem,
  };
  gemm({ ...call, tiles: tilesFor(strategy, call) });
  const got = await out.toFloat32();
  const product = matmulRef(a, b, {
    batch,
    M,
    N,
    K,
    transposeA,
    transposeB,
    aBatchStride: c.shareA ? 0 : M * K,
    bBatchStride: c.shareB ? 0 : K * N,
    bias,
    residual,
    activation: c.activation,
    alpha: c.alpha,
  });
  const want = c.gated ? gegluRef(product, [batch * M, N]) : product;
  for (const t of [ta, tb, tbias, tres, out]) t?.dispose();
  assertClose(got, want, tol, `${strategy} ${JSON.stringify(c)}`);
}

const TRANSPOSES = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
] as const;

// Each distinct layout compiles its own pipeline (about a second on lavapipe), so the shapes are chosen
// to cover the kernel variants — vector or scalar reads of A, B and C, a K tail, size-1 dimensions, rows
// and columns that are not multiples of any tile — with few pipelines.
describe("gemm with the device's tiles", () => {
  it("matches the reference on odd shapes, every transpose combination", async () => {
    // Every layout with scalar reads and a K tail, and with vector reads everywhere.
    for (const shape of [
      { M: 33, N: 17, K: 13 },
      { M: 37, N: 40, K: 20 },
    ]) {
      for (const [transposeA, transposeB] of TRANSPOSES) {
        await check({ ...shape, transposeA, transposeB }, "device", f32Tol(shape.K));
      }
    }
    // Size-1 dimensions (M = 1 reuses the first pipeline), K = 1, and N = 1 with a long reduction.
    await check({ M: 1, N: 3, K: 7 }, "device", f32Tol(7));
    await check({ M: 130, N: 36, K: 1 }, "device", f32Tol(1));
    await check({ M: 2, N: 1, K: 300, transposeB: true }, "device", f32Tol(300));
    // Workgroups of 3 subgroups on lavapipe (9 row tiles of 24 split evenly), the last tile reaching past M.
    await check({ M: 200, N: 256, K: 19 }, "device", f32Tol(19));
  });

  it("batches, sharing either operand", async () => {
    await check({ batch: 3, M: 9, N: 12, K: 8 }, "device", f32Tol(8));
    await check({ batch: 3, M: 9, N: 12, K: 8, shareB: true, transposeB: true }, "device", f32Tol(8));
    await check({ batch: 2, M: 20, N: 5, K: 11, shareA: true }, "device", f32Tol(11));
  });

  it("applies alpha, bias, every activation and the residual in that order", async () => {
    for (const activation of ["silu", "gelu", "gelu_tanh", "quick_gelu"] as const) {
      await check(
        { M: 19, N: 24, K: 30, bias: true, residual: true, activation, alpha: 0.7, transposeB: true },
        "device",
        // The activations add ~1e-7 relative (erf, exp in f32) on top of the product's rounding.
        { atol: f32Tol(30).atol + 1e-6, rtol: 1e-5 },
      );
    }
  });
});

describe("gemm with every autotune candidate", () => {
  it("matches the reference with each config autotuning may choose, CPU and GPU ones", async () => {
    const shape = { M: 37, N: 40, K: 20 };
    const problem = { ...shape, transposeA: false, transposeB: false };
    const gpu = { ...lavapipeLike, isCpu: false, subgroupSize: null, ...problem };
    // The CPU candidates at this device's subgroup width (none without a fixed one): each width has its own.
    const lanes = fixedSubgroupSize(device);
    const cpu = lanes === null ? [] : tileCandidates({ ...lavapipeLike, subgroupSize: lanes, ...problem });
    const candidates = [...cpu, ...tileCandidates(gpu)];
    const unique = new Map(candidates.map((c) => [JSON.stringify(c), c]));
    for (const tiles of unique.values()) await check({ ...shape, bias: true }, tiles, f32Tol(shape.K));
  });
});

describe("tiles of another subgroup width", () => {
  const lanes = fixedSubgroupSize(device);
  const other = lanes === 8 ? 16 : 8;

  it.skipIf(lanes === null)("are refused by gemm, naming both widths, instead of computing wrong numbers", () => {
    const [M, N, K] = [21, 12, 9];
    const a = Tensor.zeros(device, [1, M, K]);
    const b = Tensor.zeros(device, [1, K, N]);
    const out = Tensor.empty(device, [1, M, N]);
    const call = { op: "matmul", a, b, out, batch: 1, M, N, K, transposeA: false, transposeB: false };
    const tiles = { ...deviceTiles(device, call), lanes: other } as TileConfig;
    expect(() =>
      gemm({ ...call, aBatchStride: M * K, bBatchStride: K * N, activation: "none", alpha: 1, tiles }),
    ).toThrow(
      new RegExp(
        `matmul: tiles .* are written for ${other}-lane subgroups, but this device's subgroups have ${lanes} lanes`,
      ),
    );
    for (const t of [a, b, out]) t.dispose();
  });

  it.skipIf(lanes === null)(
    "in the autotune cache (tuned at lavapipe's other cpuLanes) are re-tuned, not run",
    async () => {
      const store = new MemoryTuneStore();
      const tuner = enableAutotune(device, { store, samples: 1 });
      try {
        const [M, N, K] = [21, 12, 9];
        const a = randomArray(M * K, 7);
        const b = randomArray(K * N, 8);
        const ta = Tensor.from(device, a, [M, K]);
        const tb = Tensor.from(device, b, [K, N]);
        const key = "gemm:NN:f32f32f32:b0m4n4k3";
        const tiles = deviceTiles(device, { M, N, K, transposeA: false, transposeB: false });
        store.set(key, JSON.stringify({ ...tiles, lanes: other }));
        const out = matmul(ta, tb);
        expect(tuner.waiting).toEqual([key]);
        const want = matmulRef(a, b, { batch: 1, M, N, K, transposeA: false, transposeB: false });
        assertClose(await out.toFloat32(), want, f32Tol(K), "the heuristic's tiles");
        for (const t of [ta, tb, out]) t.dispose();
      } finally {
        disableAutotune(device);
      }
    },
  );
});

describe.each([
  "subgroup-m",
  "workgroup",
  "workgroup-8x8",
  "workgroup-staged",
  "workgroup-8x8-vec",
  "workgroup-8x8-double",
] as const)("gemm with %s tiles", (strategy) => {
  it("matches the reference on odd and aligned shapes", async () => {
    await check({ M: 33, N: 17, K: 13 }, strategy, f32Tol(13));
    await check({ M: 16, N: 32, K: 64, transposeB: true }, strategy, f32Tol(64));
    await check({ M: 6, N: 9, K: 7, transposeA: true, transposeB: true }, strategy, f32Tol(7));
    await check({ batch: 2, M: 20, N: 12, K: 8, shareA: true, transposeA: true }, strategy, f32Tol(8));
  });

  it("applies the epilogue", async () => {
    await check({ M: 19, N: 24, K: 30, bias: true, residual: true, activation: "gelu", alpha: 0.7 }, strategy, {
      atol: f32Tol(30).atol + 1e-6,
      rtol: 1e-5,
    });
  });
});

describe("uniformWindow", () => {
  it("fits one 64 KiB window of f32: the owned columns of a workgroup over K split evenly, 4-aligned", () => {
    const t = { kind: "subgroup", lanes: 8, subgroups: 4, rows: 24, laneOwns: "n", cols: 1, uniformB: true } as const;
    expect(uniformWindow(t, 4096)).toEqual({ n: 32, k: 512 });
    expect(uniformWindow(t, 320)).toEqual({ n: 32, k: 320 });
    expect(uniformWindow(t, 640)).toEqual({ n: 32, k: 320 });
    expect(uniformWindow(t, 1281)).toEqual({ n: 32, k: 428 });
    expect(uniformWindow(t, 7)).toEqual({ n: 32, k: 8 });
    expect(uniformWindow({ ...t, cols: 2 }, 4096)).toEqual({ n: 64, k: 256 });
    expect(uniformWindow({ ...t, lanes: 16, cols: 2 }, 4096)).toEqual({ n: 128, k: 128 });
    for (const w of [uniformWindow(t, 1e6), uniformWindow({ ...t, lanes: 4 }, 1e6)]) {
      expect(w.n * w.k * 4).toBeLessThanOrEqual(UNIFORM_WINDOW_BYTES);
    }
  });
});

describe("gemm with other subgroup tiles", () => {
  // Two groups of 4 owned indices per lane, lanes owning n and m, and B read from uniform windows: odd shapes cut
  // through both groups, K = 13 ends inside a block of 4, and K = 600 takes two windows of 300 (three of 200 with
  // two groups).
  const base = { kind: "subgroup", lanes: 8, subgroups: 2, rows: 16, cols: 2, uniformB: false } as const;
  const epilogueTol = { atol: f32Tol(30).atol + 1e-6, rtol: 1e-5 };
  const configs: TileConfig[] = [
    { ...base, laneOwns: "n" },
    { ...base, laneOwns: "m" },
    { ...base, laneOwns: "n", cols: 1, uniformB: true },
    { ...base, laneOwns: "n", uniformB: true },
    { ...base, laneOwns: "n", rows: 8, cols: 1 },
  ];
  it.skipIf(fixedSubgroupSize(device) !== 8).each(configs.map((tiles) => ({ tiles, key: tileKey(tiles) })))(
    "$key matches the reference on odd shapes, K tails and windows",
    async ({ tiles }) => {
      await check({ M: 33, N: 71, K: 13 }, tiles, f32Tol(13));
      await check({ M: 37, N: 40, K: 20, transposeB: true, bias: true }, tiles, f32Tol(20));
      await check({ M: 6, N: 9, K: 7, transposeA: true, transposeB: true }, tiles, f32Tol(7));
      await check({ batch: 2, M: 20, N: 12, K: 8, shareB: true, transposeA: true }, tiles, f32Tol(8));
      await check(
        { M: 19, N: 24, K: 30, bias: true, residual: true, activation: "gelu", alpha: 0.7 },
        tiles,
        epilogueTol,
      );
      await check(
        { M: 21, N: 70, K: 600, transposeB: true, bias: true, residual: true, alpha: 0.5 },
        tiles,
        f32Tol(600),
      );
    },
  );
  it.skipIf(fixedSubgroupSize(device) !== 8)(
    "windows of B serve gated products and batches with their own B",
    async () => {
      const tiles = configs[2];
      await check({ M: 37, N: 26, K: 20, transposeB: true, bias: true, alpha: 0.7, gated: true }, tiles, gatedTol(20));
      // Over one window's K: the product, then GEGLU.
      await check({ M: 9, N: 66, K: 520, transposeB: true, bias: true, gated: true }, tiles, gatedTol(520));
      // Each batch item has its own B: read from storage, or packed into a window set per item.
      await check({ batch: 3, M: 9, N: 12, K: 8, transposeB: true }, tiles, f32Tol(8));
      await check(
        { batch: 3, M: 37, N: 40, K: 21, transposeB: true, bias: true, windowsPerItem: true },
        tiles,
        f32Tol(21),
      );
      // Two windows of K per item, the second accumulating through C, with the residual of each item.
      await check(
        { batch: 2, M: 21, N: 70, K: 600, residual: true, alpha: 0.5, windowsPerItem: true },
        tiles,
        f32Tol(600),
      );
    },
  );
  it.skipIf(fixedSubgroupSize(device) !== 8 || !device.features.shaderF16)("packs f16 B into f32 windows", async () => {
    const tol = { atol: 1e-3, rtol: 2 ** -10 };
    await check({ M: 19, N: 20, K: 16, transposeB: true, bias: true, dtype: "f16" }, configs[2], tol);
    await check({ M: 12, N: 8, K: 9, transposeA: true, dtype: "f16" }, configs[2], tol);
  });
});

describe("the pack cache", () => {
  const tiles: TileConfig = {
    kind: "subgroup",
    lanes: 8,
    subgroups: 2,
    rows: 16,
    laneOwns: "n",
    cols: 1,
    uniformB: true,
  };
  it.skipIf(fixedSubgroupSize(device) !== 8)(
    "reuses B's windows, same bits, until B is written, rewritten by a kernel or freed",
    async () => {
      // Three windows of columns × two of K.
      const [M, N, K] = [21, 70, 600];
      const a = Tensor.from(device, randomArray(M * K, 1), [M, K]);
      const bHost = randomArray(N * K, 2);
      let b = Tensor.from(device, bHost, [N, K]);
      const run = async () => {
        const out = Tensor.empty(device, [M, N]);
        const call = { op: "t", a, b, out, batch: 1, M, N, K, transposeA: false, transposeB: true };
        gemm({ ...call, aBatchStride: 0, bBatchStride: 0, activation: "none", alpha: 1, tiles });
        const got = await out.toFloat32();
        out.dispose();
        return got;
      };
      const want = async () => {
        const params = { batch: 1, M, N, K, transposeA: false, transposeB: true, aBatchStride: 0, bBatchStride: 0 };
        return matmulRef(await a.toFloat32(), await b.toFloat32(), params);
      };
      const uncached = await run();
      assertClose(uncached, await want(), f32Tol(K), "uncached");
      setPackCacheBudget(device, 1 << 24);
      try {
        expect(await run()).toEqual(uncached);
        const kept = packCacheStats(device);
        expect(kept.entries).toBe(1);
        expect(kept.bytes).toBe(6 * UNIFORM_WINDOW_BYTES);
        expect(await run()).toEqual(uncached);
        expect(packCacheStats(device)).toEqual(kept);
        // A host write (a LoRA merge), then a kernel writing B (B as another GEMM's output).
        device.write(b.buffer, 0, randomArray(N * K, 3));
        assertClose(await run(), await want(), f32Tol(K), "after a write");
        const ones = Tensor.from(device, new Float32Array(N).fill(1), [N, 1]);
        const row = Tensor.from(device, randomArray(K, 4), [1, K]);
        const rewrite = { op: "t", a: ones, b: row, out: b, batch: 1, M: N, N: K, K: 1, transposeA: false };
        gemm({ ...rewrite, transposeB: false, aBatchStride: 0, bBatchStride: 0, activation: "none", alpha: 1 });
        assertClose(await run(), await want(), f32Tol(K), "after a kernel wrote B");
        // Freed: its entry is stale and gives way to the next B (in the same buffer or not), here at a budget of one.
        setPackCacheBudget(device, kept.bytes);
        b.dispose();
        b = Tensor.from(device, bHost, [N, K]);
        expect(await run()).toEqual(uncached);
        expect(packCacheStats(device)).toEqual({ ...kept, budget: kept.bytes });
        for (const t of [ones, row]) t.dispose();
        // Over the budget: packed for the call, not kept.
        setPackCacheBudget(device, UNIFORM_WINDOW_BYTES);
        expect(packCacheStats(device)).toMatchObject({ entries: 0, bytes: 0 });
        expect(await run()).toEqual(uncached);
        expect(packCacheStats(device).entries).toBe(0);
      } finally {
        setPackCacheBudget(device, 0);
        for (const t of [a, b]) t.dispose();
      }
      expect(() => setPackCacheBudget(device, -1)).toThrow(/budget must be a finite number of bytes/);
    },
  );
});

describe.each(["device", "subgroup-m", "workgroup", "workgroup-staged"] as const)(
  "gemm with %s tiles in f16",
  (strategy) => {
    it.skipIf(!device.features.shaderF16)("stores and reads f16 (f32 accumulation)", async () => {
      // Inputs are f16-rounded for the reference too; the f16 output rounds to 2^-11 relative.
      const tol = { atol: 1e-3, rtol: 2 ** -10 };
      await check({ M: 33, N: 20, K: 24, dtype: "f16", bias: true, residual: true, activation: "silu" }, strategy, tol);
      await check({ M: 6, N: 9, K: 7, dtype: "f16", transposeA: true, transposeB: true }, strategy, tol);
      // Packed f16 vector reads (vec2<u32>) along K for both operands: the Linear layout, and Aᵀ along M.
      await check({ M: 10, N: 12, K: 16, dtype: "f16", transposeB: true }, strategy, tol);
      await check({ M: 12, N: 8, K: 9, dtype: "f16", transposeA: true }, strategy, tol);
    });
  },
);

/**
 * value · gelu(gate) moves the product's rounding error by |gelu(gate)| + |value · gelu'(gate)|, under 8 for
 * these products of K ≤ 20 terms in [-1, 1); erf adds ~1e-7 relative.
 */
const gatedTol = (K: number) => ({ atol: 8 * f32Tol(K).atol, rtol: 1e-5 });

describe.each(["device", "subgroup-m", "workgroup", "workgroup-8x8", "workgroup-staged"] as const)(
  "gated gemm (GEGLU) with %s tiles",
  (strategy) => {
    it("matches linear then geglu on odd shapes", async () => {
      // The Linear layout with vector reads along K, an odd half (13) and alpha before the bias.
      await check(
        { M: 37, N: 26, K: 20, transposeB: true, bias: true, alpha: 0.7, gated: true },
        strategy,
        gatedTol(20),
      );
      // A K tail, no bias.
      await check({ M: 33, N: 18, K: 13, transposeB: true, gated: true }, strategy, gatedTol(13));
      // B read along n, where its columns of one vector are not consecutive logical columns; batches sharing B.
      const shared = { batch: 2, M: 9, N: 16, K: 8, shareB: true, bias: true, gated: true };
      await check(shared, strategy, gatedTol(8));
      await check(
        { M: 6, N: 10, K: 7, transposeA: true, transposeB: true, bias: true, gated: true },
        strategy,
        gatedTol(7),
      );
    });

    it.skipIf(!device.features.shaderF16)("stores and reads f16 (f32 accumulation)", async () => {
      // Inputs are f16-rounded for the reference too; only the f16 output rounds, to 2^-11 relative.
      const tol = { atol: 1e-3, rtol: 2 ** -10 };
      await check({ M: 19, N: 20, K: 16, transposeB: true, bias: true, gated: true, dtype: "f16" }, strategy, tol);
      await check({ M: 10, N: 14, K: 9, transposeB: true, bias: true, gated: true, dtype: "f16" }, strategy, tol);
    });
  },
);

/**
 * Subgroup-matrix tiles, emulated (plain WGSL in place of the matrix types: subgroup-matrix/wgsl.ts), so the
 * tensor-core kernel's tile indexing, zero-padded staging, transposes and epilogue run on lavapipe. 8 × 8 × 8
 * matrices and 4 lanes keep the emulation (every invocation computes whole matrices) cheap, and each case
 * below is one pipeline (each compiles for tens of seconds on a busy lavapipe); benchmarks/gpu.ts checks the
 * native kernels against the reference on a real GPU.
 */
const MATRIX_F32: TileConfig = { ...EMULATED_MATRIX_TILES, component: "f32" };

describe("gemm with emulated subgroup-matrix tiles", () => {
  it("matches the reference on odd shapes, batches, transposes, the epilogue and GEGLU", async () => {
    // Tiles of 16 × 16 and K steps of 16: 33 × 17 × 13 pads every side of the last tiles.
    const epilogue = { bias: true, residual: true, activation: "gelu", alpha: 0.7 } as const;
    await check({ batch: 2, M: 33, N: 17, K: 13, shareB: true, ...epilogue }, MATRIX_F32, {
      atol: f32Tol(13).atol + 1e-6,
      rtol: 1e-5,
    });
    const gated = { M: 37, N: 26, K: 20, transposeA: true, transposeB: true, bias: true, gated: true };
    await check(gated, MATRIX_F32, gatedTol(20));
  }, 600_000);

  it.skipIf(!device.features.shaderF16)(
    "stages f16 operands as f16 matrices and accumulates in f32",
    async () => {
      const tol = { atol: 1e-3, rtol: 2 ** -10 };
      const tiles = { ...MATRIX_F32, component: "f16" } as const;
      await check({ M: 21, N: 20, K: 37, dtype: "f16", bias: true, transposeB: true }, tiles, tol);
    },
    600_000,
  );

  it("refuses tiles whose component type is not the operands' dtype", async () => {
    await expect(
      check({ M: 4, N: 4, K: 4, dtype: "f32" }, { ...MATRIX_F32, component: "f16" }, f32Tol(4)),
    ).rejects.toThrow(/subgroup-matrix tiles of f16 cannot read a .*f32/);
  });
});

describe("gated gemm split over small bindings", () => {
  it("splits rows of the gated output, and falls back to linear then geglu when the reduction splits", async () => {
    const rows = { M: 100, N: 12, K: 8, transposeB: true, bias: true, gated: true };
    const rowLimits = { maxBindingBytes: 1024, offsetAlignment: 256 };
    const rowGeometry = { ...rows, batch: 1, transposeA: false, aBatchStride: 0, bBatchStride: 0 };
    const rowPieces = planGemm("t", { ...rowGeometry, bytes: { a: 4, b: 4, c: 4 } }, rowLimits);
    expect(rowPieces.length).toBeGreaterThan(1);
    expect(rowPieces.every((p) => p.finalize && p.c.byteSize <= 1024)).toBe(true);
    await check({ ...rows, limits: rowLimits }, "device", gatedTol(8));

    const deep = { batch: 2, M: 6, N: 8, K: 700, shareB: true, bias: true, gated: true };
    const deepLimits = { maxBindingBytes: 2048, offsetAlignment: 256 };
    const deepGeometry = { ...deep, transposeA: false, transposeB: false, aBatchStride: 6 * 700, bBatchStride: 0 };
    expect(planGemm("t", { ...deepGeometry, bytes: { a: 4, b: 4, c: 4 } }, deepLimits).some((p) => p.accumulate)).toBe(
      true,
    );
    // The reduction splits into chunks summed in another order; value · gelu(gate) scales that by under 8 here.
    const deepTol = { atol: 8 * f32Tol(700).atol, rtol: 1e-5 };
    for (const strategy of ["device", "workgroup"] as const)
      await check({ ...deep, limits: deepLimits }, strategy, deepTol);
  });
});

describe("gemm split over small bindings", () => {
  it("splits batches, rows and the reduction and still matches", async () => {
    const limits = { maxBindingBytes: 2048, offsetAlignment: 256 };
    const K = 700;
    const M = 6;
    const N = 8;
    for (const [strategy, transposeA] of [
      ["device", false],
      ["device", true],
      ["workgroup", false],
    ] as const) {
      const a = randomArray(2 * M * K, 5);
      const b = randomArray(K * N, 6);
      const bias = randomArray(N, 7);
      const ta = Tensor.from(device, a, [2, ...(transposeA ? [K, M] : [M, K])]);
      const tb = Tensor.from(device, b, [K, N]);
      const tbias = Tensor.from(device, bias, [N]);
      const out = Tensor.empty(device, [2, M, N]);
      const call: GemmCall = {
        op: "test",
        a: ta,
        b: tb,
        out,
        batch: 2,
        M,
        N,
        K,
        transposeA,
        transposeB: false,
        aBatchStride: M * K,
        bBatchStride: 0,
        bias: { tensor: tbias, axis: "n" },
        activation: "silu",
        alpha: 1,
        bindingLimits: limits,
      };
      gemm({ ...call, tiles: tilesFor(strategy, call) });
      const want = matmulRef(a, b, { batch: 2, M, N, K, transposeA, bBatchStride: 0, bias, activation: "silu" });
      // Split sums add the chunks' partial sums in a different order: same √K growth.
      assertClose(await out.toFloat32(), want, f32Tol(K), `${strategy} transposeA=${transposeA}`);
      for (const t of [ta, tb, tbias, out]) t.dispose();
    }
  });
});

describe("matmul over maxStorageBufferBindingSize", () => {
  it("splits rows of an activation and an output larger than one binding", async () => {
    const max = device.limits.maxStorageBufferBindingSize;
    const K = 4;
    const N = 4;
    const M = Math.ceil(max / (K * 4)) + 37; // a [M, K] and out [M, N] f32 are each just over one binding
    const a = randomArray(M * K, 21);
    const b = randomArray(K * N, 22);
    const ta = Tensor.from(device, a, [M, K]);
    const tb = Tensor.from(device, b, [K, N]);
    const y = matmul(ta, tb);
    expect(ta.byteLength).toBeGreaterThan(max);
    expect(y.byteLength).toBeGreaterThan(max);
    const got = await y.toFloat32();
    ta.dispose();
    tb.dispose();
    y.dispose();
    // Checked against the reference on the first and last 100k rows (the split falls in between) plus
    // a sparse sample: the full reference would take seconds.
    const rows = [...Array(100_000).keys(), ...Array.from({ length: 100_000 }, (_, i) => M - 1 - i)];
    for (let m = 100_000; m < M - 100_000; m += 997) rows.push(m);
    const pick = (src: Float32Array, m: number, width: number) => src.subarray(m * width, (m + 1) * width);
    const gotRows = new Float32Array(rows.length * N);
    const wantRows = new Float32Array(rows.length * N);
    rows.forEach((m, i) => {
      gotRows.set(pick(got, m, N), i * N);
      wantRows.set(matmulRef(pick(a, m, K), b, { batch: 1, M: 1, N, K }), i * N);
    });
    assertClose(gotRows, wantRows, f32Tol(K));
  });
});

describe("matmul and linear", () => {
  it("broadcast a 2-D b over a's batch, and reject mismatched shapes by name", async () => {
    const a = Tensor.from(device, randomArray(2 * 3 * 5 * 4, 9), [2, 3, 5, 4]);
    const b = Tensor.from(device, randomArray(4 * 6, 10), [4, 6]);
    const y = matmul(a, b);
    expect(y.shape).toEqual([2, 3, 5, 6]);
    assertClose(
      await y.toFloat32(),
      matmulRef(await a.toFloat32(), await b.toFloat32(), { batch: 6, M: 5, N: 6, K: 4, bBatchStride: 0 }),
      f32Tol(4),
    );
    expect(() => matmul(a, Tensor.zeros(device, [5, 6]))).toThrow(/inner dimensions differ.*K = 4.*K = 5/);
    expect(() => matmul(a, Tensor.zeros(device, [3, 4, 6]))).toThrow(/batch dimensions \[2, 3\] of a and \[3\] of b/);
    expect(() => matmul(a, b, { bias: Tensor.zeros(device, [5]) })).toThrow(/bias .* must be \[6\]/);
    expect(() => matmul(a, b, { activation: "relu" as Activation })).toThrow(/unknown activation 'relu'/);
    expect(() => matmul(Tensor.zeros(device, [4]), b)).toThrow(/at least 2 dimensions/);
  });

  /** x [2, 3, 10], a Linear weight [outFeatures, 10] and bias, on the host and the device. */
  function linearInputs(outFeatures: number, seed: number) {
    const x = randomArray(2 * 3 * 10, seed);
    const w = randomArray(outFeatures * 10, seed + 1);
    const bias = randomArray(outFeatures, seed + 2);
    const tx = Tensor.from(device, x, [2, 3, 10]);
    const tw = Tensor.from(device, w, [outFeatures, 10]);
    const tb = Tensor.from(device, bias, [outFeatures]);
    return { x, w, bias, tx, tw, tb };
  }

  it("linear = x·Wᵀ + b over the last dimension, bias positional or in the options", async () => {
    const { x, w, bias, tx, tw, tb } = linearInputs(7, 11);
    const want = matmulRef(x, w, { batch: 1, M: 6, N: 7, K: 10, transposeB: true, bias, activation: "gelu" });
    const y1 = linear(tx, tw, tb, { activation: "gelu" });
    const y2 = linear(tx, tw, { bias: tb, activation: "gelu" });
    expect(y1.shape).toEqual([2, 3, 7]);
    assertClose(await y1.toFloat32(), want, { atol: 1e-5, rtol: 1e-5 });
    assertClose(await y2.toFloat32(), want, { atol: 1e-5, rtol: 1e-5 });
    expect(() => linear(tx, tw, { residual: Tensor.zeros(device, [6, 7]) })).toThrow(/residual .* \[2, 3, 7\]/);
  });

  it("linearGeglu = value · gelu(gate) of linear's column halves, with or without a bias", async () => {
    const { x, w, bias, tx, tw, tb } = linearInputs(14, 14);
    const problem = { batch: 1, M: 6, N: 14, K: 10, transposeB: true };
    const y = linearGeglu(tx, tw, tb);
    expect(y.shape).toEqual([2, 3, 7]);
    assertClose(await y.toFloat32(), gegluRef(matmulRef(x, w, { ...problem, bias }), [6, 14]), gatedTol(10));
    const plain = linearGeglu(tx, tw);
    assertClose(await plain.toFloat32(), gegluRef(matmulRef(x, w, problem), [6, 14]), gatedTol(10));
    expect(() => linearGeglu(tx, Tensor.zeros(device, [13, 10]))).toThrow(/weight .* must be \[2F, in\]/);
    expect(() => linearGeglu(tx, Tensor.zeros(device, [14, 9]))).toThrow(/must end in .* 9 input features/);
    expect(() => linearGeglu(tx, tw, Tensor.zeros(device, [7]))).toThrow(/bias .* must be \[14\]/);
  });

  it.skipIf(!device.features.shaderF16)("writes another output dtype than its inputs", async () => {
    const a = f16ArrayToF32(f32ArrayToF16(randomArray(5 * 8, 41)));
    const b = f16ArrayToF32(f32ArrayToF16(randomArray(8 * 4, 42)));
    const y = matmul(Tensor.from(device, a, [5, 8], "f16"), Tensor.from(device, b, [8, 4], "f16"), { outDtype: "f32" });
    expect(y.dtype).toBe("f32");
    // f16 inputs, f32 accumulation and output: only the product's f32 rounding remains.
    assertClose(await y.toFloat32(), matmulRef(a, b, { batch: 1, M: 5, N: 4, K: 8 }), f32Tol(8));
  });

  it("folds a grid of more than 65,535 workgroups", async () => {
    const batch = 70_000; // one workgroup per batch item
    const a = randomArray(batch * 2, 43);
    const b = randomArray(batch * 2, 44);
    const y = matmul(Tensor.from(device, a, [batch, 1, 2]), Tensor.from(device, b, [batch, 2, 1]));
    assertClose(await y.toFloat32(), matmulRef(a, b, { batch, M: 1, N: 1, K: 2 }), f32Tol(2));
  });

  it("K = 0 gives activation(bias)", async () => {
    const bias = Tensor.from(device, [1, -2, 3], [3]);
    const y = matmul(Tensor.zeros(device, [2, 0]), Tensor.zeros(device, [0, 3]), { bias, activation: "silu" });
    assertClose(
      await y.toFloat32(),
      matmulRef([], [], { batch: 1, M: 2, N: 3, K: 0, bias: [1, -2, 3], activation: "silu" }),
      {
        atol: 1e-6,
      },
    );
  });
});
