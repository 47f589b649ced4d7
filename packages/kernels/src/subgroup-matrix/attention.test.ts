import { type SubgroupMatrixConfig, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { attention } from "../attention/index.ts";
import { attentionRef } from "../attention/reference.ts";
import { kernelWgsl } from "../common/kernel.ts";
import { roundF16 } from "../test-values.ts";
import { assertClose, emulatedAttentionTiles, randomArray } from "../testing.ts";
import { MATRIX_ATTENTION, type MatrixAttentionSpec } from "./attention.ts";
import {
  type AttentionMatrixInputs,
  type AttentionMatrixTiles,
  attentionStorageBytes,
  chooseAttentionMatrixTiles,
} from "./attention-plan.ts";
import { assertParses, assertSyntaxError, declaredWorkgroupBytes } from "./wgsl-testing.ts";

const device = await useDevice();

const config = (componentType: string, M: number, N: number, K: number, resultComponentType = "f32") => ({
  componentType,
  resultComponentType,
  M,
  N,
  K,
});
/** The shapes VK_KHR_cooperative_matrix lists on NVIDIA, and Apple's simdgroup matrices (as in plan.test.ts). */
const NVIDIA: SubgroupMatrixConfig[] = [config("f16", 16, 16, 16, "f16"), config("f16", 16, 16, 16)];
const APPLE: SubgroupMatrixConfig[] = [config("f32", 8, 8, 8), config("f16", 8, 8, 8)];

/** SD 1.5's self-attention at 64² (8 heads of 40) on an NVIDIA-like adapter with 32 KiB of workgroup memory. */
const gpu: AttentionMatrixInputs = {
  configs: NVIDIA,
  dtype: "f16",
  subgroupMaxSize: 32,
  maxInvocations: 1024,
  maxWorkgroupStorageBytes: 32768,
  d: 40,
  nq: 4096,
  causal: false,
};

describe("chooseAttentionMatrixTiles", () => {
  it("pads SD's head widths to the config's K and N, 4 subgroups of 16 rows, keys 16 at a time within 32 KiB", () => {
    expect(chooseAttentionMatrixTiles(gpu)).toEqual({
      kind: "attention-matrix",
      shape: { M: 16, N: 16, K: 16 },
      component: "f16",
      lanes: 32,
      subgroups: 4,
      keyBlock: 16,
      paddedD: 48,
      emulate: false,
    });
    const padded = [40, 64, 80, 160].map((d) => chooseAttentionMatrixTiles({ ...gpu, d })?.paddedD);
    expect(padded).toEqual([48, 64, 80, 160]);
    // 8-wide matrices pad nothing: every SD head width is a multiple of 8.
    const apple = [40, 64, 80, 160].map((d) => chooseAttentionMatrixTiles({ ...gpu, configs: APPLE, d })?.paddedD);
    expect(apple).toEqual([40, 64, 80, 160]);
    expect(chooseAttentionMatrixTiles({ ...gpu, configs: APPLE, dtype: "f32" })).toMatchObject({
      component: "f32",
      shape: { M: 8, N: 8, K: 8 },
    });
  });

  it("stays within the adapter's workgroup memory and invocations, shrinking the key block, then subgroups", () => {
    for (const limit of [16384, 32768, 49152]) {
      for (const d of [40, 64, 80, 160]) {
        for (const configs of [NVIDIA, APPLE]) {
          const t = chooseAttentionMatrixTiles({ ...gpu, configs, d, maxWorkgroupStorageBytes: limit });
          if (t) expect(attentionStorageBytes(t)).toBeLessThanOrEqual(limit);
        }
      }
    }
    // With room, the key block stays at 32.
    expect(chooseAttentionMatrixTiles({ ...gpu, maxWorkgroupStorageBytes: 49152 })).toMatchObject({
      subgroups: 4,
      keyBlock: 32,
    });
    // d = 160 on 16×16 matrices: one subgroup in 32 KiB; nothing in 16 KiB (the present kernel then runs).
    expect(chooseAttentionMatrixTiles({ ...gpu, d: 160 })).toMatchObject({ subgroups: 1, keyBlock: 16 });
    expect(chooseAttentionMatrixTiles({ ...gpu, d: 160, maxWorkgroupStorageBytes: 16384 })).toBeNull();
    expect(
      chooseAttentionMatrixTiles({ ...gpu, configs: APPLE, d: 160, maxWorkgroupStorageBytes: 16384 }),
    ).not.toBeNull();
    expect(chooseAttentionMatrixTiles({ ...gpu, maxInvocations: 64 })).toMatchObject({ subgroups: 2 });
  });

  it("pads to the least common multiple of K and N on non-square configs (Intel-like 8 × 16 × 16, 16 lanes)", () => {
    const intel = { ...gpu, configs: [config("f16", 8, 16, 16)], subgroupMaxSize: 16 };
    expect(chooseAttentionMatrixTiles(intel)).toEqual({
      kind: "attention-matrix",
      shape: { M: 8, N: 16, K: 16 },
      component: "f16",
      lanes: 16,
      subgroups: 4,
      keyBlock: 32,
      paddedD: 48,
      emulate: false,
    });
    expect(chooseAttentionMatrixTiles({ ...intel, configs: [config("f16", 8, 8, 16)], d: 72 })?.paddedD).toBe(80);
  });

  it("takes fewer subgroups for few query rows", () => {
    expect(chooseAttentionMatrixTiles({ ...gpu, nq: 20 })).toMatchObject({ subgroups: 2 });
    expect(chooseAttentionMatrixTiles({ ...gpu, nq: 1 })).toMatchObject({ subgroups: 1 });
  });

  it("leaves causal masks, other dtypes, missing configs and unknown subgroup sizes to the present kernel", () => {
    expect(chooseAttentionMatrixTiles({ ...gpu, causal: true })).toBeNull();
    expect(chooseAttentionMatrixTiles({ ...gpu, dtype: "f32" })).toBeNull();
    expect(chooseAttentionMatrixTiles({ ...gpu, dtype: "u32" })).toBeNull();
    expect(chooseAttentionMatrixTiles({ ...gpu, configs: [] })).toBeNull();
    expect(chooseAttentionMatrixTiles({ ...gpu, configs: [config("f16", 16, 16, 16, "f16")] })).toBeNull();
    expect(chooseAttentionMatrixTiles({ ...gpu, subgroupMaxSize: null })).toBeNull();
  });
});

const NATIVE: AttentionMatrixTiles = {
  kind: "attention-matrix",
  shape: { M: 16, N: 16, K: 16 },
  component: "f16",
  lanes: 32,
  subgroups: 2,
  keyBlock: 32,
  paddedD: 48,
  emulate: false,
};

const nativeSpec = (d: number, over: Partial<AttentionMatrixTiles> = {}): MatrixAttentionSpec => ({
  tiles: { ...NATIVE, paddedD: Math.ceil(d / 16) * 16, ...over },
  d,
  dtype: over.component ?? "f16",
});

describe("subgroup-matrix attention WGSL", () => {
  it("k is the right operand loaded column-major (kᵀ), v row-major; output rows accumulate as result matrices", () => {
    const code = kernelWgsl(MATRIX_ATTENTION, nativeSpec(40));
    expect(code).toContain("enable chromium_experimental_subgroup_matrix;");
    expect(code).toContain("diagnostic(off, chromium.subgroup_matrix_uniformity);");
    // paddedD 48 + 8 halves of padding per staged row; q as 3 left matrices 16 deep.
    expect(code.match(/subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>\(&KV, /g)).toHaveLength(3);
    // Scores: 2 matrices of 16 keys, each over 3 steps of d.
    expect(code.match(/subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>\(&KV, /g)).toHaveLength(6);
    expect(code).toContain("subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&KV, 896u, 56u);");
    // Output: 3 matrices of 16 columns, each over 2 steps of 16 keys.
    expect(code.match(/subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>\(&KV, /g)).toHaveLength(6);
    expect(
      code.match(/var o\d = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>\(&Os, /g),
    ).toHaveLength(3);
    expect(code.match(/subgroupMatrixStore<row_major>\(&Ss, /g)).toHaveLength(2);
    expect(code.match(/subgroupMatrixStore<row_major>\(&Os, /g)).toHaveLength(3);
    expect(code.match(/subgroupMatrixMultiplyAccumulate/g)).toHaveLength(12);
    expect(code).toContain("@compute @workgroup_size(64)");
    // The workgroup memory declared is what the planner budgets.
    expect(declaredWorkgroupBytes(code)).toBe(attentionStorageBytes(NATIVE));
    const emulated = kernelWgsl(MATRIX_ATTENTION, nativeSpec(40, { emulate: true }));
    expect(emulated).not.toMatch(/subgroup_matrix|subgroupMatrix|diagnostic/);
  });

  // As for the GEMM (wgsl.test.ts): Tint parses the whole module before it checks the enables, so on an adapter
  // without subgroup matrices any syntax error is reported first.
  it.skipIf(device.features.subgroupMatrix || !device.features.shaderF16)(
    "parses in Dawn's WGSL front end for SD's head widths (lavapipe: only the missing feature is reported)",
    async () => {
      const specs = [
        ...[40, 64, 80, 160].map((d) => nativeSpec(d)),
        nativeSpec(40, { shape: { M: 8, N: 8, K: 8 }, paddedD: 40, keyBlock: 16, subgroups: 4 }),
        { ...nativeSpec(64, { shape: { M: 8, N: 8, K: 8 }, component: "f32", paddedD: 64 }), dtype: "f32" as const },
      ];
      for (const s of specs) await assertParses(device, kernelWgsl(MATRIX_ATTENTION, s), JSON.stringify(s));
      const broken = kernelWgsl(MATRIX_ATTENTION, nativeSpec(40)).replace(
        "col_major>(&KV, 896u",
        "col_major>(&KV 896u",
      );
      await assertSyntaxError(device, broken);
    },
  );
});

interface Case {
  batch: number;
  nq: number;
  nk: number;
  heads: number;
  d: number;
  dtype: "f16" | "f32";
  tiles?: Partial<AttentionMatrixTiles>;
}

async function check(c: Case) {
  const { batch, nq, nk, heads, d, dtype } = c;
  const round = (x: Float32Array) => (dtype === "f16" ? roundF16(x) : x);
  const width = heads * d;
  // Logits of a few units (|q|, |k| up to 2): the softmax is far from uniform, the max matters.
  const q = round(randomArray(batch * nq * width, 11).map((x) => 2 * x));
  const k = round(randomArray(batch * nk * width, 12).map((x) => 2 * x));
  const v = round(randomArray(batch * nk * width, 13));
  const tq = Tensor.from(device, q, [batch, nq, width], dtype);
  const tk = Tensor.from(device, k, [batch, nk, width], dtype);
  const tv = Tensor.from(device, v, [batch, nk, width], dtype);
  const tiles = { ...emulatedAttentionTiles(d, dtype), ...c.tiles };
  const out = attention(tq, tk, tv, { heads, matrixTiles: tiles });
  const got = await out.toFloat32();
  for (const t of [tq, tk, tv, out]) t.dispose();
  const want = attentionRef(q, k, v, { batch, nq, nk, heads, d });
  // f16: probabilities rounded to f16 for the multiply (2^-11 relative each, |v| < 1) and the f16 output.
  const tol = dtype === "f16" ? { atol: 2e-3, rtol: 2 ** -10 } : { atol: 2e-6, rtol: 1e-5 };
  assertClose(got, want, tol, JSON.stringify(c));
}

describe("attention on emulated subgroup-matrix tiles", () => {
  it.skipIf(!device.features.shaderF16)(
    "f16, d = 40: odd token counts, a ragged last query block and key block, 2 heads, batch 2",
    async () => {
      await check({ batch: 2, nq: 37, nk: 29, heads: 2, d: 40, dtype: "f16" });
    },
    600_000,
  );

  it.skipIf(!device.features.shaderF16)(
    "f16, cross-attention onto 77 keys, d = 20 padded to 24, one subgroup",
    async () => {
      await check({ batch: 1, nq: 9, nk: 77, heads: 3, d: 20, dtype: "f16", tiles: { subgroups: 1, keyBlock: 8 } });
    },
    600_000,
  );

  it("f32, keys fewer than one block", async () => {
    await check({ batch: 1, nq: 11, nk: 5, heads: 1, d: 16, dtype: "f32" });
  }, 600_000);

  it("f32 on a config with M, N and K all different (4 × 8 × 16): rows, columns and depth kept apart", async () => {
    // d = 20 padded to 32 (a multiple of K = 16 and N = 8), 3 subgroups of 4 rows, 16 keys per step.
    await check({
      batch: 2,
      nq: 13,
      nk: 35,
      heads: 2,
      d: 20,
      dtype: "f32",
      tiles: { shape: { M: 4, N: 8, K: 16 }, subgroups: 3, keyBlock: 16, paddedD: 32 },
    });
  }, 600_000);

  it("names forced tiles that do not fit the problem", () => {
    const t = (shape: number[]) => Tensor.from(device, new Float32Array(shape.reduce((a, b) => a * b)), shape, "f32");
    const [q, k, v] = [t([1, 4, 16]), t([1, 4, 16]), t([1, 4, 16])];
    const run =
      (tiles: AttentionMatrixTiles, causal = false) =>
      () =>
        attention(q, k, v, { heads: 1, causal, matrixTiles: tiles });
    const f32 = emulatedAttentionTiles(16, "f32");
    expect(run({ ...f32, paddedD: 8 })).toThrow(/padded width 8 must be ≥ d = 16/);
    expect(run({ ...f32, paddedD: 16, keyBlock: 12 })).toThrow(/key block 12 must be a multiple of K and N/);
    expect(run(emulatedAttentionTiles(16))).toThrow(/component type f16 is not the tensors' f32/);
    expect(run({ ...f32, paddedD: 16 }, true)).toThrow(/do not apply a causal mask/);
    for (const x of [q, k, v]) x.dispose();
  });
});
