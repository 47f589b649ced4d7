/**
 * Correctness of the subgroup-matrix (tensor-core) kernels on the adapter the GPU script runs on, before anything
 * is timed: each kernel variant against the CPU reference on odd shapes, f16 operands with f32 accumulation and
 * f32 outputs (so the check sees the accumulation, not the output's rounding). lavapipe has no subgroup
 * matrices, so the unit tests only run them emulated; this is where the native kernels meet a real compiler and
 * real matrix units. On an adapter without the feature (any --quick run here) the same variants run emulated,
 * which checks the script itself.
 */
import {
  type AttentionMatrixTiles,
  attention,
  conv2d,
  deviceAttentionMatrixTiles,
  deviceMatrixTiles,
  deviceTiles,
  type GemmCall,
  gemm,
  tileKey,
} from "@ldm/kernels";
import {
  assertClose,
  attentionRef,
  conv2dOutputShape,
  conv2dRef,
  EMULATED_MATRIX_TILES,
  elementCount,
  emulatedAttentionTiles,
  matmulRef,
  randomArray,
  roundF16,
} from "@ldm/kernels/testing";
import { type Device, Tensor } from "@ldm/tensor";

export interface MatrixCheck {
  kernel: string;
  /** The tiles that ran (the planner's on a GPU with subgroup matrices). */
  tiles: string;
  maxAbs: number;
  /** The error message when the output is out of tolerance, else null. */
  error: string | null;
}

interface GemmCase {
  name: string;
  batch?: number;
  M: number;
  N: number;
  K: number;
  transposeA?: boolean;
  transposeB?: boolean;
  bias?: boolean;
  residual?: boolean;
  activation?: GemmCall["activation"];
}

/** Shapes that cut through every tile edge, every transpose, the Linear and 1×1-conv layouts, the epilogue. */
const GEMM_CASES: GemmCase[] = [
  { name: "odd 333×190×77", M: 333, N: 190, K: 77 },
  { name: "Aᵀ Bᵀ 70×36×45", M: 70, N: 36, K: 45, transposeA: true, transposeB: true },
  { name: "linear 77×320×768 (+bias)", M: 77, N: 320, K: 768, transposeB: true, bias: true },
  {
    name: "batch 2, 1×1 conv 320×256 px ×40 (+bias, silu, residual)",
    batch: 2,
    M: 320,
    N: 256,
    K: 40,
    bias: true,
    residual: true,
    activation: "silu",
  },
];

const noTiles = (kernel: string, tiles: string): MatrixCheck => ({
  kernel,
  tiles,
  maxAbs: Number.NaN,
  error: "the planner chose no subgroup-matrix tiles",
});

/** A row for a kernel whose output was compared: its max error, or the message when out of tolerance. */
function compared(
  kernel: string,
  tiles: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: { atol: number; rtol: number },
  label: string,
): MatrixCheck {
  try {
    return { kernel, tiles, maxAbs: assertClose(got, want, tol, label).maxAbs, error: null };
  } catch (e) {
    return { kernel, tiles, maxAbs: Number.NaN, error: (e as Error).message };
  }
}

async function checkGemm(device: Device, c: GemmCase, emulate: boolean): Promise<MatrixCheck> {
  const { batch = 1, M, N, K, transposeA = false, transposeB = false } = c;
  const a = roundF16(randomArray(batch * M * K, 1));
  const b = roundF16(randomArray(batch * K * N, 2));
  const bias = c.bias ? roundF16(randomArray(N, 3)) : undefined;
  const residual = c.residual ? randomArray(batch * M * N, 4) : undefined;
  const ta = Tensor.from(device, a, [batch, ...(transposeA ? [K, M] : [M, K])], "f16");
  const tb = Tensor.from(device, b, [batch, ...(transposeB ? [N, K] : [K, N])], "f16");
  const tbias = bias && Tensor.from(device, bias, [N], "f16");
  const tres = residual && Tensor.from(device, residual, [batch, M, N], "f32");
  const out = Tensor.empty(device, [batch, M, N], "f32");
  const call: GemmCall = {
    op: "matrix check",
    a: ta,
    b: tb,
    out,
    batch,
    M,
    N,
    K,
    transposeA,
    transposeB,
    aBatchStride: M * K,
    bBatchStride: K * N,
    bias: tbias ? { tensor: tbias, axis: "n" } : undefined,
    residual: tres,
    activation: c.activation ?? "none",
    alpha: 1,
  };
  const tiles = emulate ? EMULATED_MATRIX_TILES : deviceTiles(device, call);
  const kernel = `gemm ${c.name}`;
  try {
    if (tiles.kind !== "matrix") return noTiles(kernel, tileKey(tiles));
    gemm({ ...call, tiles });
    const got = await out.toFloat32();
    const want = matmulRef(a, b, { batch, M, N, K, transposeA, transposeB, bias, residual, activation: c.activation });
    // Exact f16 products summed in f32 in another order than the float64 reference.
    return compared(kernel, tileKey(tiles), got, want, { atol: 1e-4 * Math.sqrt(K), rtol: 1e-4 }, c.name);
  } finally {
    for (const t of [ta, tb, tbias, tres, out]) t?.dispose();
  }
}

interface ConvCase {
  name: string;
  x: [number, number, number, number];
  w: [number, number, number, number];
  stride: number;
  padding: number | [number, number, number, number];
}

/** The UNet's 3×3 convolutions at an odd size, and the VAE Downsample's stride 2 with one-sided padding. */
const CONV_CASES: ConvCase[] = [
  { name: "3×3 320→320 @ 19×23, batch 2", x: [2, 320, 19, 23], w: [320, 320, 3, 3], stride: 1, padding: 1 },
  {
    name: "3×3 s2 64→64 @ 33×31, pad [0,1,0,1]",
    x: [1, 64, 33, 31],
    w: [64, 64, 3, 3],
    stride: 2,
    padding: [0, 1, 0, 1],
  },
];

async function checkConv(device: Device, c: ConvCase, emulate: boolean): Promise<MatrixCheck> {
  const x = roundF16(randomArray(elementCount(c.x), 5));
  const w = roundF16(randomArray(elementCount(c.w), 6));
  const bias = roundF16(randomArray(c.w[0], 7));
  const tx = Tensor.from(device, x, c.x, "f16");
  const tw = Tensor.from(device, w, c.w, "f16");
  const tb = Tensor.from(device, bias, [c.w[0]], "f16");
  const kernel = `conv2d ${c.name} (+bias, silu)`;
  const K = c.w[1] * c.w[2] * c.w[3];
  const [, , Ho, Wo] = conv2dOutputShape(c.x, c.w, c.stride, c.padding);
  const tiles = emulate
    ? EMULATED_MATRIX_TILES
    : deviceMatrixTiles(device, { a: "f16", b: "f16", M: c.w[0], N: Ho * Wo, K });
  try {
    if (!tiles) return noTiles(kernel, "none");
    const out = conv2d(
      tx,
      tw,
      { stride: c.stride, padding: c.padding, bias: tb, activation: "silu" },
      { matrixTiles: tiles },
    );
    // f16 output: its rounding (2^-11 relative) on top of the f32 sums' error.
    const got = await out.toFloat32();
    out.dispose();
    const want = conv2dRef(x, c.x, w, c.w, { stride: c.stride, padding: c.padding, bias, activation: "silu" });
    return compared(kernel, tileKey(tiles), got, want, { atol: 1e-4 * Math.sqrt(K), rtol: 2 ** -10 }, c.name);
  } finally {
    for (const t of [tx, tw, tb]) t.dispose();
  }
}

interface AttentionCase {
  name: string;
  batch: number;
  nq: number;
  nk: number;
  heads: number;
  d: number;
}

/** SD's head widths (40, 64, 80, 160 padded to the config's K and N), odd token counts, CLIP's 77 keys. */
const ATTENTION_CASES: AttentionCase[] = [
  { name: "self 333 tokens, 8 heads of 40, batch 2", batch: 2, nq: 333, nk: 333, heads: 8, d: 40 },
  { name: "cross 257 → 77 keys, 8 heads of 40", batch: 2, nq: 257, nk: 77, heads: 8, d: 40 },
  { name: "self 130 tokens, 5 heads of 64", batch: 1, nq: 130, nk: 130, heads: 5, d: 64 },
  { name: "cross 99 → 77 keys, 8 heads of 80", batch: 2, nq: 99, nk: 77, heads: 8, d: 80 },
  { name: "self 65 tokens, 8 heads of 160", batch: 1, nq: 65, nk: 65, heads: 8, d: 160 },
];

/**
 * Attention in f16 (the model's dtype on GPUs, f16 output) on the planner's tiles; where it finds none (a wide
 * head on little workgroup memory) the present kernel runs and the row says so, so its numbers are checked too.
 */
async function checkAttention(device: Device, c: AttentionCase, emulate: boolean): Promise<MatrixCheck> {
  const { batch, nq, nk, heads, d } = c;
  const width = heads * d;
  // Logits of a few units: a peaked softmax, so that the running max matters.
  const q = roundF16(randomArray(batch * nq * width, 8, 2));
  const k = roundF16(randomArray(batch * nk * width, 9, 2));
  const v = roundF16(randomArray(batch * nk * width, 10));
  const tiles = emulate
    ? emulatedAttentionTiles(d)
    : deviceAttentionMatrixTiles(device, { dtype: "f16", d, nq, causal: false });
  const [tq, tk, tv] = [
    Tensor.from(device, q, [batch, nq, width], "f16"),
    Tensor.from(device, k, [batch, nk, width], "f16"),
    Tensor.from(device, v, [batch, nk, width], "f16"),
  ];
  try {
    const out = attention(tq, tk, tv, { heads, ...(tiles ? { matrixTiles: tiles } : {}) });
    const got = await out.toFloat32();
    out.dispose();
    const want = attentionRef(q, k, v, { batch, nq, nk, heads, d });
    const key = tiles ? attentionTileKey(tiles) : "none: the present kernel";
    // Probabilities rounded to f16 for the multiply (|v| < 1), then the f16 output (2^-11 relative).
    return compared(`attention ${c.name}`, key, got, want, { atol: 2e-3, rtol: 2 ** -10 }, c.name);
  } finally {
    for (const t of [tq, tk, tv]) t.dispose();
  }
}

function attentionTileKey(t: AttentionMatrixTiles): string {
  const { M, N, K } = t.shape;
  return `${t.component} ${M}×${N}×${K} ×${t.subgroups} sg of ${t.lanes}, keys ${t.keyBlock}, d→${t.paddedD}${t.emulate ? " (emulated)" : ""}`;
}

/**
 * Every subgroup-matrix kernel against its reference: native where the device has subgroup matrices for f16
 * (and shader-f16), emulated otherwise (`quick` then takes the two smallest cases, for CPU adapters).
 */
export async function checkMatrixKernels(device: Device, quick: boolean): Promise<MatrixCheck[]> {
  const native = device.subgroupMatrixConfigs.some((c) => c.componentType === "f16" && c.resultComponentType === "f32");
  const cases = native || !quick ? GEMM_CASES : GEMM_CASES.slice(0, 2);
  const rows: MatrixCheck[] = [];
  for (const c of cases) rows.push(await checkGemm(device, c, !native));
  // Emulated, 320 channels take minutes on a CPU adapter: --quick there checks the stride-2 case only.
  for (const c of native || !quick ? CONV_CASES : CONV_CASES.slice(1)) rows.push(await checkConv(device, c, !native));
  // Emulated, d = 16 on 8×8 matrices stands for the head widths (their unrolled code compiles for minutes).
  const emulatedAttention: AttentionCase = {
    name: "self 37 → 29 keys, 2 heads of 16",
    batch: 2,
    nq: 37,
    nk: 29,
    heads: 2,
    d: 16,
  };
  for (const c of native ? ATTENTION_CASES : [emulatedAttention]) rows.push(await checkAttention(device, c, !native));
  return rows;
}

/** The check as a table; true when every kernel matched. */
export function printMatrixChecks(rows: readonly MatrixCheck[]): boolean {
  console.log("\n| subgroup-matrix kernel vs CPU reference | tiles | max abs error | verdict |\n|---|---|---|---|");
  for (const r of rows) {
    const verdict = r.error ? `**WRONG**: ${r.error.split("\n")[0]}` : "ok";
    console.log(`| ${r.kernel} | ${r.tiles} | ${r.maxAbs.toExponential(2)} | ${verdict} |`);
  }
  return rows.every((r) => !r.error);
}
