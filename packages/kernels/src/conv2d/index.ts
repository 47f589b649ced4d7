/**
 * 2-D convolution on NCHW: out[b, co] = act(Σ_{ci,dy,dx} w[co, ci, dy, dx] · x[b, ci, oh·sh + dy − top,
 * ow·sw + dx − left] + bias[co]) + residual[b, co], with zero padding that may differ per side (the VAE's
 * Downsample pads only bottom and right). 1×1 convolutions with stride 1 and no padding are matmuls
 * (weight [Cout, Cin] × x[b] [Cin, H·W]); every other one runs the direct kernel. Either way, tensors
 * larger than one storage binding are split over batch items and channels. On GPUs a direct convolution with
 * too few outputs to fill the device also splits its reduction into slices (reductionSlices), summed after.
 */
import { type BufferSlice, type Device, DTYPE_BYTES, type DType, formatShape, shapesEqual, Tensor } from "@ldm/tensor";
import { runKernel } from "../common/kernel.ts";
import { type BindingLimits, bindingLimits, bindingSlice } from "../common/pieces.ts";
import { assertBindable, assertDType, wgslEnables } from "../common/wgsl.ts";
import { type GroupNormOptions, groupNorm, groupNormCoefficients, groupNormInPlace } from "../groupnorm/index.ts";
import { upsampleNearest2x } from "../layout/index.ts";
import { type Activation, assertActivation } from "../matmul/activation.ts";
import { autotunerOf, sizeClass, timeCall } from "../matmul/autotune.ts";
import { assertTilesFitDevice, fixedSubgroupSize, gemm, tilesFitDevice } from "../matmul/index.ts";
import type { TileConfig } from "../matmul/tiles.ts";
import { convMatrixTiles, convOnMatrices } from "../subgroup-matrix/conv.ts";
import type { MatrixTiles } from "../subgroup-matrix/plan.ts";
import { type ConvOperands, type ConvPiece, planConv } from "./plan.ts";
import {
  CONV2D,
  CONV2D_REDUCE,
  type ConvKernelSpec,
  type ConvTileInputs,
  type ConvTiles,
  type ConvWindow,
  chooseConvTiles,
  convTileCandidates,
  convWorkgroup,
  isConvTiles,
  reductionSlices,
  rowVectorizable,
} from "./wgsl.ts";
import { conv2dWinograd, winogradApplies, winogradWeightsKept } from "./winograd.ts";

export interface Conv2dOptions {
  /** [Cout]. */
  bias?: Tensor;
  /** One stride for both axes, or [vertical, horizontal]. */
  stride?: number | readonly [number, number];
  /** Zeros on every side, or [top, bottom, left, right]. */
  padding?: number | readonly [number, number, number, number];
  /** [B, Cout, Ho, Wo], added after the bias and activation. */
  residual?: Tensor;
  activation?: Activation;
  /** What x goes through before the convolution (see ConvInput). */
  input?: ConvInput;
}

/**
 * A group norm (then SiLU) and/or a nearest ×2 upsampling of x, in that order, before the convolution: a
 * ResBlock's norm → SiLU → conv and an Upsample's interpolate → conv. The Winograd path applies them while
 * reading x, so the normalised or upsampled tensor is never stored; the other paths run groupNorm and
 * upsampleNearest2x first, which is also the reference the fused path reproduces bit for bit.
 */
export interface ConvInput {
  groupNorm?: GroupNormOptions & { gamma: Tensor; beta: Tensor };
  upsample2x?: boolean;
  /**
   * x is the caller's to overwrite: the paths that store the normalised input write it over x
   * (groupNormInPlace) instead of beside it, so x holds no meaningful values after the call.
   */
  inPlace?: boolean;
}

/** Strategy overrides for tests. */
export interface Conv2dInternals {
  /** "direct" or "winograd" (3×3, stride 1) instead of winogradApplies' choice: tests compare the two. */
  algorithm?: "direct" | "winograd";
  tiles?: ConvTiles;
  /** Reduction slices (reductionSlices decides otherwise). */
  slices?: number;
  /** Tiles of the GEMMs (a 1×1 convolution's, Winograd's batched ones) instead of the heuristic's. */
  gemmTiles?: TileConfig;
  bindingLimits?: BindingLimits;
  /** Subgroup-matrix tiles (e.g. emulated ones) instead of convMatrixTiles' choice. */
  matrixTiles?: MatrixTiles;
}

const FLOATS: readonly DType[] = ["f32", "f16"];

function pair(op: string, name: string, v: number | readonly number[], count: 2 | 4, min: number): number[] {
  const values = typeof v === "number" ? new Array<number>(count).fill(v) : [...v];
  if (values.length !== count || values.some((s) => !Number.isInteger(s) || s < min)) {
    throw new Error(`${op}: ${name} must be an integer ≥ ${min} or ${count} of them, got ${JSON.stringify(v)}`);
  }
  return values;
}

export function conv2d(x: Tensor, w: Tensor, options: Conv2dOptions = {}, internals: Conv2dInternals = {}): Tensor {
  const op = "conv2d";
  const { bias, residual, activation = "none", input = {} } = options;
  assertActivation(op, activation);
  if (x.shape.length !== 4) throw new Error(`${op}: x ${x} must be [B, Cin, H, W]`);
  if (w.shape.length !== 4) throw new Error(`${op}: weight ${w} must be [Cout, Cin, kh, kw]`);
  const scale = input.upsample2x ? 2 : 1;
  const [batch, cin, H, W] = [x.shape[0], x.shape[1], x.shape[2] * scale, x.shape[3] * scale];
  const [cout, wCin, kh, kw] = w.shape;
  if (wCin !== cin) throw new Error(`${op}: weight ${w} expects ${wCin} input channels but x ${x} has ${cin}`);
  const [strideH, strideW] = pair(op, "stride", options.stride ?? 1, 2, 1);
  const [padTop, padBottom, padLeft, padRight] = pair(op, "padding", options.padding ?? 0, 4, 0);
  const Ho = Math.floor((H + padTop + padBottom - kh) / strideH) + 1;
  const Wo = Math.floor((W + padLeft + padRight - kw) / strideW) + 1;
  if (kh === 0 || kw === 0 || Ho < 1 || Wo < 1) {
    throw new Error(
      `${op}: a ${kh}×${kw} kernel does not fit x ${x} padded by [${padTop}, ${padBottom}, ${padLeft}, ${padRight}]`,
    );
  }
  const outShape = [batch, cout, Ho, Wo];
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== cout)) {
    throw new Error(`${op}: bias ${bias} must be [${cout}] (one per output channel)`);
  }
  if (residual && !shapesEqual(residual.shape, outShape)) {
    throw new Error(`${op}: residual ${residual} must have the output's shape ${formatShape(outShape)}`);
  }
  const named: [string, Tensor | undefined][] = [
    ["x", x],
    ["weight", w],
    ["bias", bias],
    ["residual", residual],
  ];
  for (const [name, t] of named) {
    if (!t) continue;
    assertDType(op, name, t, FLOATS);
    if (t.device !== x.device) throw new Error(`${op}: ${name} ${t} lives on another device`);
  }
  const device = x.device;
  const out = Tensor.empty(device, outShape, x.dtype);
  const pointwise =
    kh === 1 && kw === 1 && strideH === 1 && strideW === 1 && padTop + padBottom + padLeft + padRight === 0;
  const limits = bindingLimits(device, internals.bindingLimits);
  const winograd =
    !pointwise &&
    (internals.algorithm === undefined
      ? winogradApplies({
          ...{ isCpu: device.info.isCpu, kh, kw, strideH, strideW, cin, cout, H, W, Ho, Wo, limits },
          weightsKept: device.info.isCpu && winogradWeightsKept(w, limits),
        })
      : internals.algorithm === "winograd");
  if (winograd) {
    if (kh !== 3 || kw !== 3 || strideH !== 1 || strideW !== 1) {
      throw new Error(
        `${op}: the Winograd path takes 3×3 kernels with stride 1, not ${kh}×${kw} / ${strideH}×${strideW}`,
      );
    }
    wgslEnables(device, x.dtype, w.dtype, ...(bias ? [bias.dtype] : []), ...(residual ? [residual.dtype] : []));
    if (bias) assertBindable(op, { bias });
    const norm = input.groupNorm;
    const coefficients = norm ? groupNormCoefficients(x, norm.gamma, norm.beta, norm) : undefined;
    try {
      const mapped = { coefficients, silu: norm?.silu, upsample: input.upsample2x };
      conv2dWinograd(device, {
        x,
        w,
        out,
        bias,
        residual,
        activation,
        padTop,
        padLeft,
        limits,
        input: mapped,
        gemmTiles: internals.gemmTiles,
      });
    } finally {
      coefficients?.dispose();
    }
    return out;
  }
  const source = preparedInput(x, input);
  try {
    if (pointwise) {
      gemm({
        op,
        a: w,
        b: source,
        out,
        batch,
        M: cout,
        N: H * W,
        K: cin,
        transposeA: false,
        transposeB: false,
        aBatchStride: 0,
        bBatchStride: cin * H * W,
        bias: bias ? { tensor: bias, axis: "m" } : undefined,
        residual,
        activation,
        alpha: 1,
        tiles: internals.gemmTiles,
        bindingLimits: internals.bindingLimits,
      });
    } else {
      direct(device, {
        x: source,
        w,
        out,
        bias,
        residual,
        activation,
        geometry: { batch, cin, cout, H, W, Ho, Wo, kh, kw, strideH, strideW, padTop, padLeft },
        internals,
      });
    }
  } finally {
    if (source !== x) source.dispose();
  }
  return out;
}

/** x through `input` as a tensor of its own (x itself when there is nothing to apply). */
function preparedInput(x: Tensor, input: ConvInput): Tensor {
  const norm = input.groupNorm;
  let normed = x;
  if (norm && input.inPlace) groupNormInPlace(x, norm.gamma, norm.beta, norm);
  else if (norm) normed = groupNorm(x, norm.gamma, norm.beta, norm);
  if (!input.upsample2x) return normed;
  const up = upsampleNearest2x(normed);
  if (normed !== x) normed.dispose();
  return up;
}

interface DirectCall extends ConvOperands {
  geometry: ConvWindow & { batch: number; cin: number; cout: number; H: number; W: number; Ho: number; Wo: number };
  internals: Conv2dInternals;
}

/**
 * The autotuned tiles of the convolution's shape class when autotuning is on and the class is tuned;
 * otherwise null (the class then waits for `tunePending`, which times candidates on zero inputs).
 */
function tunedTiles(call: DirectCall, inputs: ConvTileInputs): ConvTiles | null {
  const device = call.out.device;
  const tuner = autotunerOf(device);
  if (!tuner) return null;
  const g = call.geometry;
  const window = `${g.kh}x${g.kw}s${g.strideH}x${g.strideW}p${g.padTop}x${g.padLeft}`;
  const dtypes = `${call.x.dtype}${call.w.dtype}${call.out.dtype}`;
  const size = `b${sizeClass(g.batch)}i${sizeClass(g.cin)}o${sizeClass(g.cout)}h${sizeClass(g.Ho)}w${sizeClass(g.Wo)}`;
  return tuner.choice({
    key: `conv2d:${window}:${dtypes}:${size}`,
    candidates: convTileCandidates(inputs),
    valid: (v): v is ConvTiles => isConvTiles(v) && tilesFitDevice(v, device),
    measure: async (tiles) => {
      const x = Tensor.zeros(device, call.x.shape, call.x.dtype);
      const w = Tensor.zeros(device, call.w.shape, call.w.dtype);
      const out = Tensor.empty(device, call.out.shape, call.out.dtype);
      const trial = { ...call, x, w, out, bias: undefined, residual: undefined, internals: { tiles } };
      try {
        return await timeCall(device, () => direct(device, trial));
      } finally {
        for (const t of [x, w, out]) t.dispose();
      }
    },
  });
}

function direct(device: Device, call: DirectCall): void {
  // Tensor cores where the adapter has them (an autotune trial of direct tiles times the direct kernel).
  const matrix = call.internals.matrixTiles ?? (call.internals.tiles ? null : convMatrixTiles(device, call));
  if (matrix) {
    convOnMatrices(device, call, matrix);
    return;
  }
  const { x, w, out, bias, residual, activation, internals } = call;
  const g = call.geometry;
  wgslEnables(
    device,
    x.dtype,
    w.dtype,
    out.dtype,
    ...(bias ? [bias.dtype] : []),
    ...(residual ? [residual.dtype] : []),
  );
  if (bias) assertBindable("conv2d", { bias });
  const taps = g.kh * g.kw;
  const inPlane = g.H * g.W;
  const outPlane = g.Ho * g.Wo;
  const limits = bindingLimits(device, internals.bindingLimits);
  const pieces = planConv(
    "conv2d",
    {
      batch: g.batch,
      cin: g.cin,
      cout: g.cout,
      inPlane,
      outPlane,
      taps,
      bytes: {
        x: DTYPE_BYTES[x.dtype],
        w: DTYPE_BYTES[w.dtype],
        out: DTYPE_BYTES[out.dtype],
        residual: residual ? DTYPE_BYTES[residual.dtype] : undefined,
      },
    },
    limits,
  );
  const tileInputs = {
    isCpu: device.info.isCpu,
    subgroupSize: fixedSubgroupSize(device),
    maxInvocations: device.limits.maxComputeInvocationsPerWorkgroup,
    cout: g.cout,
    wo: g.Wo,
    ho: g.Ho,
    batch: g.batch,
  };
  const tiles = internals.tiles ?? tunedTiles(call, tileInputs) ?? chooseConvTiles(tileInputs);
  assertTilesFitDevice("conv2d", tiles, device);
  const window = { kh: g.kh, kw: g.kw, strideH: g.strideH, strideW: g.strideW, padTop: g.padTop, padLeft: g.padLeft };
  const operands = {
    tiles,
    ...window,
    x: x.dtype,
    w: w.dtype,
    vecOut: g.Wo % 4 === 0,
    vecRow: rowVectorizable(g.strideW, g.W, g.Wo, g.padLeft, g.kw),
  };
  // The epilogue's bias (whole) and residual bindings of a piece.
  const finishing = (piece: ConvPiece): Record<string, BufferSlice> => ({
    ...(bias ? { Bias: { buffer: bias.buffer, offset: 0, size: bias.buffer.size } } : {}),
    ...(residual && piece.residual ? { R: bindingSlice(residual, piece.residual) } : {}),
  });
  const invocations = g.batch * Math.ceil(g.cout / tiles.rows) * g.Ho * Math.ceil(g.Wo / (4 * tiles.groups));
  const slices =
    pieces.length === 1
      ? (internals.slices ?? reductionSlices({ isCpu: device.info.isCpu, cin: g.cin, invocations }))
      : 1;
  if (slices > 1 && slices * out.size * 4 <= limits.maxBindingBytes) {
    // Each slice sums its input channels into f32 partial outputs; a second pass adds them and finishes.
    const piece = pieces[0];
    const partials = Tensor.empty(device, [slices, ...out.shape], "f32");
    try {
      const spec = { ...operands, out: "f32" as const, bias: null, residual: null, activation: "none" as const };
      const buffers = { X: bindingSlice(x, piece.x), Wt: bindingSlice(w, piece.w), C: partials.slice() };
      dispatchConv(device, spec, g, piece, buffers, {
        slices,
        ciPer: Math.ceil(g.cin / slices),
        sliceStride: out.size,
      });
      reduceSlices(
        device,
        {
          out: out.dtype,
          bias: bias?.dtype ?? null,
          residual: residual?.dtype ?? null,
          activation,
          vecOut: operands.vecOut,
        },
        g,
        slices,
        { P: partials.slice(), C: bindingSlice(out, piece.out), ...finishing(piece) },
      );
    } finally {
      partials.dispose();
    }
    return;
  }
  const spec: ConvKernelSpec = {
    ...operands,
    out: out.dtype,
    bias: bias?.dtype ?? null,
    residual: residual?.dtype ?? null,
    activation,
  };
  for (const piece of pieces) {
    const buffers = {
      X: bindingSlice(x, piece.x),
      Wt: bindingSlice(w, piece.w),
      C: bindingSlice(out, piece.out),
      ...finishing(piece),
    };
    dispatchConv(device, spec, g, piece, buffers, { slices: 1, ciPer: piece.ci1 - piece.ci0, sliceStride: 0 });
  }
}

type Geometry = DirectCall["geometry"];
type Slicing = { slices: number; ciPer: number; sliceStride: number };

/** One dispatch of the convolution kernel over a piece (and, when sliced, over its reduction slices). */
function dispatchConv(
  device: Device,
  spec: ConvKernelSpec,
  g: Geometry,
  piece: ConvPiece,
  buffers: Record<string, BufferSlice>,
  slicing: Slicing,
): void {
  const { tiles } = spec;
  const wg = convWorkgroup(tiles);
  const blocksPerRow = Math.ceil(g.Wo / (4 * tiles.groups));
  const batches = piece.b1 - piece.b0;
  const channels = piece.co1 - piece.co0;
  const tilesX = Math.ceil(channels / wg.channels);
  const tilesY = Math.ceil((batches * g.Ho * blocksPerRow) / wg.blocks);
  runKernel(device, CONV2D, spec, {
    count: slicing.slices * tilesX * tilesY,
    params: {
      ...slicing,
      batch: batches,
      cin: piece.ci1 - piece.ci0,
      cout: channels,
      H: g.H,
      W: g.W,
      Ho: g.Ho,
      Wo: g.Wo,
      blocksPerRow,
      xBatch: g.cin * g.H * g.W,
      xOff: piece.x.elementOffset,
      wCo: g.cin * g.kh * g.kw,
      wOff: piece.w.elementOffset,
      cBatch: g.cout * g.Ho * g.Wo,
      cOff: piece.out.elementOffset,
      rOff: piece.residual?.elementOffset ?? 0,
      biasOff: piece.co0,
      accumulate: piece.accumulate ? 1 : 0,
      finalize: piece.finalize ? 1 : 0,
      tilesX,
      tilesY,
      tileRows: tiles.rows * tiles.groups,
    },
    // The row-vector view of x is a second binding of the same slice.
    buffers: spec.vecRow ? { ...buffers, Xv: buffers.X } : buffers,
  });
}

/** The second pass of a sliced convolution: partials into out, with bias and residual (whole tensors). */
function reduceSlices(
  device: Device,
  spec: Pick<ConvKernelSpec, "out" | "bias" | "residual" | "activation" | "vecOut">,
  g: Geometry,
  slices: number,
  buffers: Record<string, BufferSlice>,
): void {
  const blocksPerRow = Math.ceil(g.Wo / 4);
  runKernel(device, CONV2D_REDUCE, spec, {
    count: g.batch * g.cout * g.Ho * blocksPerRow,
    params: {
      cout: g.cout,
      Ho: g.Ho,
      Wo: g.Wo,
      blocksPerRow,
      cBatch: g.cout * g.Ho * g.Wo,
      cOff: 0,
      rOff: 0,
      biasOff: 0,
      accumulate: 0,
      finalize: 1,
      slices,
      sliceStride: g.batch * g.cout * g.Ho * g.Wo,
    },
    buffers,
  });
}
