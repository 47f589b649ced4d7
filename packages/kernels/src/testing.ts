/**
 * Helpers shared by kernel tests and benchmarks: seeded random data, closeness checks, CPU references, emulated
 * subgroup-matrix tiles.
 */

import type { AttentionMatrixTiles } from "./subgroup-matrix/attention-plan.ts";
import type { MatrixTiles } from "./subgroup-matrix/plan.ts";

export { attentionRef } from "./attention/reference.ts";
export { conv2dRef } from "./conv2d/reference.ts";
export { matmulRef } from "./matmul/reference.ts";
export { elementCount, roundF16 } from "./test-values.ts";

/**
 * Subgroup-matrix GEMM tiles emulated in plain WGSL (no adapter feature needed), small enough for a CPU adapter
 * to compile in seconds: 8 × 8 × 8 matrices, 4 lanes, 2 subgroups.
 */
export const EMULATED_MATRIX_TILES: MatrixTiles = {
  kind: "matrix",
  shape: { M: 8, N: 8, K: 8 },
  component: "f16",
  lanes: 4,
  subgroupsM: 2,
  subgroupsN: 1,
  matsM: 1,
  matsN: 2,
  tileK: 16,
  emulate: true,
};

/** Emulated attention tiles of the same size for head width d (padded to 8): 2 subgroups of 8 query rows. */
export function emulatedAttentionTiles(d: number, component: "f16" | "f32" = "f16"): AttentionMatrixTiles {
  return {
    kind: "attention-matrix",
    shape: { M: 8, N: 8, K: 8 },
    component,
    lanes: 4,
    subgroups: 2,
    keyBlock: 16,
    paddedD: Math.ceil(d / 8) * 8,
    emulate: true,
  };
}

/** The output shape [B, Cout, Ho, Wo] of x [B, Cin, H, W] convolved with w [Cout, Cin, kh, kw], as conv2dRef's. */
export function conv2dOutputShape(
  [B, , H, W]: readonly number[],
  [Cout, , kh, kw]: readonly number[],
  stride = 1,
  padding: number | readonly [number, number, number, number] = 0,
): [number, number, number, number] {
  const [pt, pb, pl, pr] = typeof padding === "number" ? [padding, padding, padding, padding] : padding;
  return [B, Cout, Math.floor((H + pt + pb - kh) / stride) + 1, Math.floor((W + pl + pr - kw) / stride) + 1];
}

/** f32 sums of `terms` products, ordered differently from a float64 reference: error grows like √terms·ulp·|terms|. */
export const f32Tol = (terms: number) => ({ atol: 2e-6 * Math.sqrt(terms + 1) + 1e-6, rtol: 1e-5 });

/**
 * Winograd F(4×4, 3×3) convolutions: its transforms scale values by up to ~100 and back, measured max errors ~1.6e-6
 * on outputs of magnitude ~1.5 (45 terms), 7× the direct kernel's; the tolerance is 4× f32Tol's.
 */
export const winogradTol = (terms: number) => ({ atol: 8e-6 * Math.sqrt(terms + 1), rtol: 1e-5 });

/** Deterministic uniform [-scale, scale) values from a 32-bit xorshift seed. */
export function randomArray(n: number, seed = 1, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 0x100000000) * 2 - 1) * scale;
  }
  return out;
}

export interface Closeness {
  maxAbs: number;
  maxRel: number;
  worstIndex: number;
  nonFinite: number;
}

export function compare(actual: ArrayLike<number>, expected: ArrayLike<number>): Closeness {
  if (actual.length !== expected.length) {
    throw new Error(`compare: lengths differ (${actual.length} vs ${expected.length})`);
  }
  let maxAbs = 0;
  let maxRef = 0;
  let worstIndex = -1;
  let nonFinite = 0;
  for (let i = 0; i < actual.length; i++) {
    if (!Number.isFinite(actual[i])) nonFinite++;
    const d = Math.abs(actual[i] - expected[i]);
    if (d > maxAbs || Number.isNaN(d)) {
      maxAbs = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
      worstIndex = i;
    }
    maxRef = Math.max(maxRef, Math.abs(expected[i]));
  }
  return { maxAbs, maxRel: maxRef > 0 ? maxAbs / maxRef : maxAbs, worstIndex, nonFinite };
}

/**
 * Throws when any element differs by more than atol + rtol·|expected|, naming the worst index.
 * Callers state why their tolerance is what it is.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { atol: number; rtol?: number },
  label = "result",
): Closeness {
  const c = compare(actual, expected);
  const rtol = tol.rtol ?? 0;
  for (let i = 0; i < actual.length; i++) {
    const bound = tol.atol + rtol * Math.abs(expected[i]);
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= bound)) {
      throw new Error(
        `${label}: element ${i} is ${actual[i]}, expected ${expected[i]} (|diff| ${d} > ${bound}); max abs error ${c.maxAbs}`,
      );
    }
  }
  return c;
}
