/**
 * Convolutions as implicit GEMMs on subgroup matrices: per batch item, out[co, p] = W[co, k] · X̂[k, p] with
 * k = (ci, dy, dx) in the weight's own order (so the weight [Cout, Cin, kh, kw] is A as it is stored) and X̂ the
 * input window under output pixel p, gathered while staging (zero outside the padded input; never stored).
 * The tile, staging and matrix loop are the GEMM's (wgsl.ts); the epilogue is the GEMM's with the bias per row
 * (channel): act(conv + bias) + residual.
 *
 * Used on adapters with subgroup matrices for the operands' dtype when the whole convolution fits one dispatch
 * (every tensor within one storage binding); otherwise conv2d's direct kernel runs, as everywhere else.
 */
import type { Device, DType } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { wgslAll } from "../common/wgsl.ts";
import type { ConvOperands } from "../conv2d/plan.ts";
import type { Activation } from "../matmul/activation.ts";
import { EPILOGUE_PARAMS } from "../matmul/epilogue.ts";
import { gemmEpilogue, operandBinding, operandReaders } from "../matmul/wgsl.ts";
import { chooseMatrixTiles, type MatrixTiles, matrixAdapter, matrixTile, matrixWorkgroupSize } from "./plan.ts";
import { batchedTilePrologue, matrixDirectives, matrixEnables, matrixMain, matrixModule } from "./wgsl.ts";

export interface MatrixConvSpec {
  tiles: MatrixTiles;
  x: DType;
  w: DType;
  out: DType;
  bias: DType | null;
  residual: DType | null;
  activation: Activation;
  /** Output pixels per channel are a multiple of 4: C and R are read and written as vec4. */
  vecC: boolean;
}

/** What conv2d knows of a convolution when it picks its kernel. */
export interface MatrixConvCall extends ConvOperands {
  geometry: {
    batch: number;
    cin: number;
    cout: number;
    H: number;
    W: number;
    Ho: number;
    Wo: number;
    kh: number;
    kw: number;
    strideH: number;
    strideW: number;
    padTop: number;
    padLeft: number;
  };
}

export const MATRIX_CONV: KernelDecl<MatrixConvSpec> = {
  name: "conv2d_matrix",
  params: {
    M: "u32",
    N: "u32",
    K: "u32",
    tilesX: "u32",
    tilesY: "u32",
    cin: "u32",
    H: "u32",
    W: "u32",
    Wo: "u32",
    kh: "u32",
    kw: "u32",
    strideH: "u32",
    strideW: "u32",
    padTop: "u32",
    padLeft: "u32",
    ...EPILOGUE_PARAMS,
    // The GEMM epilogue scales by alpha; a convolution's is 1.
    alpha: "f32",
  },
  bindings: (s) => [
    operandBinding("X", s.x, false),
    operandBinding("Wt", s.w, false),
    { name: "C", type: s.vecC ? `vec4<${s.out}>` : s.out, access: "read_write" },
    ...(s.bias ? [{ name: "Bias", type: s.bias }] : []),
    ...(s.residual ? [{ name: "R", type: s.vecC ? `vec4<${s.residual}>` : s.residual }] : []),
  ],
  workgroupSize: (s) => matrixWorkgroupSize(s.tiles),
  itemsPerWorkgroup: 1,
  enables: (s) => matrixEnables(s.tiles),
  directives: (s) => matrixDirectives(s.tiles),
  module: (s) => `
${operandReaders("X", s.x, false)}
${operandReaders("Wt", s.w, false)}
${gemmEpilogue({ gated: false, bias: s.bias ? { axis: "m", dtype: s.bias } : null, c: s.out, residual: s.residual, activation: s.activation, vecC: s.vecC })}
/** X̂[k, n] of batch item bi: the input under tap k = (ci, dy, dx) of output pixel n, zero in the padding. */
fn gathered(bi: u32, k: u32, n: u32) -> f32 {
  let taps = p.kh * p.kw;
  let ci = k / taps;
  let t = k % taps;
  let y = i32((n / p.Wo) * p.strideH + t / p.kw) - i32(p.padTop);
  let x = i32((n % p.Wo) * p.strideW + t % p.kw) - i32(p.padLeft);
  let inside = ${wgslAll("y >= 0", "y < i32(p.H)", "x >= 0", "x < i32(p.W)")};
  let at = ((bi * p.cin + ci) * p.H + u32(clamp(y, 0, i32(p.H) - 1))) * p.W + u32(clamp(x, 0, i32(p.W) - 1));
  return select(0.0, X_at(at), inside);
}
${matrixModule(s.tiles)}`,
  main: (s) =>
    matrixMain(s.tiles, {
      prologue: batchedTilePrologue(s.tiles),
      M: "p.M",
      N: "p.N",
      K: "p.K",
      a: (m, k) => `Wt_at(${m} * p.K + ${k})`,
      b: (k, n) => `gathered(bi, ${k}, ${n})`,
      aContiguous: "k",
      bContiguous: "n",
      finish: (m, n, v) => `finish4(bi, ${m}, ${n}, ${v});`,
    }),
};

/** The planner's tiles for a GEMM-shaped problem on this device (null on CPU adapters and without configs). */
export function deviceMatrixTiles(
  device: Device,
  problem: { a: DType; b: DType; M: number; N: number; K: number },
): MatrixTiles | null {
  const adapter = matrixAdapter(device);
  return adapter && chooseMatrixTiles({ ...problem, ...adapter });
}

/** The planner's tiles for a convolution, or null (no configs for its dtypes, or a tensor over one binding). */
export function convMatrixTiles(device: Device, call: MatrixConvCall): MatrixTiles | null {
  const { x, w, out, residual } = call;
  const g = call.geometry;
  const max = device.limits.maxStorageBufferBindingSize;
  if ([x, w, out, residual].some((t) => t && t.byteLength > max)) return null;
  return deviceMatrixTiles(device, { a: w.dtype, b: x.dtype, M: g.cout, N: g.Ho * g.Wo, K: g.cin * g.kh * g.kw });
}

/** Runs the convolution on subgroup matrices with `tiles` (every tensor within one binding). */
export function convOnMatrices(device: Device, call: MatrixConvCall, tiles: MatrixTiles): void {
  const { x, w, out, bias, residual } = call;
  const g = call.geometry;
  if (x.dtype !== tiles.component || w.dtype !== tiles.component) {
    throw new Error(`conv2d: subgroup-matrix tiles of ${tiles.component} cannot read x ${x} and weight ${w}`);
  }
  const pixels = g.Ho * g.Wo;
  const tile = matrixTile(tiles);
  const tilesX = Math.ceil(g.cout / tile.m);
  const tilesY = Math.ceil(pixels / tile.n);
  const spec: MatrixConvSpec = {
    tiles,
    x: x.dtype,
    w: w.dtype,
    out: out.dtype,
    bias: bias?.dtype ?? null,
    residual: residual?.dtype ?? null,
    activation: call.activation,
    vecC: pixels % 4 === 0,
  };
  runKernel(device, MATRIX_CONV, spec, {
    count: g.batch * tilesX * tilesY,
    params: {
      M: g.cout,
      N: pixels,
      K: g.cin * g.kh * g.kw,
      tilesX,
      tilesY,
      cin: g.cin,
      H: g.H,
      W: g.W,
      Wo: g.Wo,
      kh: g.kh,
      kw: g.kw,
      strideH: g.strideH,
      strideW: g.strideW,
      padTop: g.padTop,
      padLeft: g.padLeft,
      cBatch: g.cout * pixels,
      cOff: 0,
      rOff: 0,
      biasOff: 0,
      accumulate: 0,
      finalize: 1,
      alpha: 1,
    },
    buffers: {
      X: x.slice(),
      Wt: w.slice(),
      C: out.slice(),
      ...(bias ? { Bias: bias.slice() } : {}),
      ...(residual ? { R: residual.slice() } : {}),
    },
  });
}
