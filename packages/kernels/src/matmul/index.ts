/**
 * Batched matrix multiply with a fused epilogue, and `linear` on top of it.
 *
 * out[..., m, n] = act(alpha · Σ_k a[..., m, k] · b[..., k, n] + bias[n]) + residual[..., m, n]
 *
 * Epilogue order: alpha · acc + bias → activation → + residual. Storage may be f32 or f16 (f16 needs the
 * shader-f16 feature); accumulation is always f32. Operands larger than one storage binding are split over
 * batch items, rows and the reduction (see plan.ts). `linearGeglu` is a Linear whose epilogue applies GEGLU
 * to the column halves of the product (see wgsl.ts), so the product itself is never stored.
 */
import { type BufferSlice, type Device, DTYPE_BYTES, type DType, formatShape, shapesEqual, Tensor } from "@ldm/tensor";
import { kernelKey, runKernel } from "../common/kernel.ts";
import { type BindingLimits, bindingLimits, bindingSlice } from "../common/pieces.ts";
import { assertBindable, assertDType, wgslEnables } from "../common/wgsl.ts";
import { geglu } from "../elementwise/index.ts";
import { type Activation, assertActivation } from "./activation.ts";
import { autotunerOf, sizeClass, timeCall } from "./autotune.ts";
import { cachedPack, PACK_B } from "./pack.ts";
import { type GemmGeometry, planGemm } from "./plan.ts";
import {
  chooseTiles,
  isTileConfig,
  type TileConfig,
  type TileInputs,
  tileCandidates,
  UNIFORM_WINDOW_BYTES,
  uniformWindow,
  workgroupTile,
} from "./tiles.ts";
import { GEMM, type GemmKernelSpec, gemmVectorReads } from "./wgsl.ts";

export type { Activation } from "./activation.ts";

export interface MatmulOptions {
  /** a is [..., K, M]. */
  transposeA?: boolean;
  /** b is [..., N, K] (a Linear weight [out, in]). */
  transposeB?: boolean;
  /** [N], added to every row. */
  bias?: Tensor;
  activation?: Activation;
  /** Same shape as the output, added after the activation. */
  residual?: Tensor;
  /** Scales the product before the bias. */
  alpha?: number;
  /** Default: a's dtype. */
  outDtype?: DType;
}

const FLOATS: readonly DType[] = ["f32", "f16"];

/**
 * a [..., M, K] × b [K, N] or [..., K, N] → [..., M, N]. A 2-D operand is shared by every batch item of the
 * other; batch dimensions otherwise must be equal.
 */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const { transposeA = false, transposeB = false, bias, residual, alpha = 1, activation = "none" } = options;
  const op = "matmul";
  assertActivation(op, activation);
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new Error(`${op}: a ${a} and b ${b} must have at least 2 dimensions`);
  }
  const [aRows, aCols] = a.shape.slice(-2);
  const [bRows, bCols] = b.shape.slice(-2);
  const [M, K] = transposeA ? [aCols, aRows] : [aRows, aCols];
  const [kB, N] = transposeB ? [bCols, bRows] : [bRows, bCols];
  if (K !== kB) {
    throw new Error(
      `${op}: inner dimensions differ: a ${a}${transposeA ? " (transposed)" : ""} has K = ${K}, b ${b}${transposeB ? " (transposed)" : ""} has K = ${kB}`,
    );
  }
  const aBatchShape = a.shape.slice(0, -2);
  const bBatchShape = b.shape.slice(0, -2);
  if (aBatchShape.length > 0 && bBatchShape.length > 0 && !shapesEqual(aBatchShape, bBatchShape)) {
    throw new Error(
      `${op}: batch dimensions ${formatShape(aBatchShape)} of a and ${formatShape(bBatchShape)} of b differ (they must be equal, or one operand 2-D)`,
    );
  }
  const batchShape = aBatchShape.length > 0 ? aBatchShape : bBatchShape;
  const batch = batchShape.reduce((x, y) => x * y, 1);
  const outShape = [...batchShape, M, N];
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== N)) {
    throw new Error(`${op}: bias ${bias} must be [${N}] (one per output column)`);
  }
  if (residual && !shapesEqual(residual.shape, outShape)) {
    throw new Error(`${op}: residual ${residual} must have the output's shape ${formatShape(outShape)}`);
  }
  const out = Tensor.empty(a.device, outShape, options.outDtype ?? a.dtype);
  gemm({
    op,
    a,
    b,
    out,
    batch,
    M,
    N,
    K,
    transposeA,
    transposeB,
    aBatchStride: aBatchShape.length > 0 ? M * K : 0,
    bBatchStride: bBatchShape.length > 0 ? K * N : 0,
    bias: bias ? { tensor: bias, axis: "n" } : undefined,
    residual,
    activation,
    alpha,
  });
  return out;
}

export type LinearOptions = Omit<MatmulOptions, "transposeA" | "transposeB">;

/**
 * torch.nn.functional.linear: x [..., in] · weight [out, in]ᵀ + bias [out] → [..., out], with matmul's
 * epilogue. The bias may come third or inside the options: `linear(x, w, b)`, `linear(x, w, { bias: b })`.
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | LinearOptions, options: LinearOptions = {}): Tensor {
  const opts = bias instanceof Tensor ? { ...options, bias } : { ...(bias ?? {}), ...options };
  if (weight.shape.length !== 2) throw new Error(`linear: weight ${weight} must be [out, in]`);
  if (x.shape.length < 1) throw new Error(`linear: input ${x} must have at least one dimension`);
  const rows = x.shape.slice(0, -1);
  const outShape = [...rows, weight.shape[0]];
  if (opts.residual && !shapesEqual(opts.residual.shape, outShape)) {
    throw new Error(`linear: residual ${opts.residual} must have the output's shape ${formatShape(outShape)}`);
  }
  const flat = x.reshape([rows.reduce((p, q) => p * q, 1), x.shape[x.shape.length - 1]]);
  const residual = opts.residual?.reshape([flat.shape[0], weight.shape[0]]);
  try {
    const y = matmul(flat, weight, { ...opts, residual, transposeB: true });
    const shaped = y.reshape([...rows, weight.shape[0]]);
    y.dispose();
    return shaped;
  } finally {
    flat.dispose();
    residual?.dispose();
  }
}

/**
 * CompVis GEGLU's projection in one GEMM: `value, gate = linear(x, weight, bias).chunk(2, -1)`, then
 * value · gelu(gate) (exact GELU). x [..., in], weight [2F, in], bias [2F] → [..., F].
 */
export function linearGeglu(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const op = "linearGeglu";
  const [outFeatures, inFeatures] = weight.shape;
  if (weight.shape.length !== 2 || outFeatures % 2 !== 0) {
    throw new Error(`${op}: weight ${weight} must be [2F, in] (value rows, then gate rows)`);
  }
  if (x.shape.length < 1 || x.shape[x.shape.length - 1] !== inFeatures) {
    throw new Error(`${op}: input ${x} must end in weight ${weight}'s ${inFeatures} input features`);
  }
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== outFeatures)) {
    throw new Error(`${op}: bias ${bias} must be [${outFeatures}] (one per weight row)`);
  }
  const rows = x.shape.slice(0, -1);
  const out = Tensor.empty(x.device, [...rows, outFeatures / 2], x.dtype);
  gemm({
    op,
    a: x,
    b: weight,
    out,
    batch: 1,
    M: rows.reduce((p, q) => p * q, 1),
    N: outFeatures,
    K: inFeatures,
    transposeA: false,
    transposeB: true,
    aBatchStride: 0,
    bBatchStride: 0,
    gated: true,
    bias: bias ? { tensor: bias, axis: "n" } : undefined,
    activation: "none",
    alpha: 1,
  });
  return out;
}

/**
 * One (batched) GEMM into an existing output tensor: the engine under matmul, linear, linearGeglu and 1×1
 * conv2d. A gated call's out is [batch, M, N/2].
 */
export interface GemmCall extends Omit<GemmGeometry, "bytes"> {
  op: string;
  a: Tensor;
  b: Tensor;
  /** [batch, M, N] (any shape with those elements), like the residual. */
  out: Tensor;
  bias?: { tensor: Tensor; axis: "m" | "n" };
  residual?: Tensor;
  activation: Activation;
  alpha: number;
  /** Forces a tile strategy (tests exercise both on one adapter). */
  tiles?: TileConfig;
  /** Overrides the device's binding limits (tests exercise splitting on small tensors). */
  bindingLimits?: BindingLimits;
  /**
   * Where the tiles read B through uniform windows and every batch item has a B of its own: pack each item's B
   * into windows of its own, one dispatch per item and window (Winograd's 36 positions, few items of many rows).
   * Otherwise such a B is read from storage.
   */
  windowsPerItem?: boolean;
}

/** The device's subgroup size when it has subgroups of one fixed size (the broadcast tiles need it), else null. */
export function fixedSubgroupSize(device: Device): number | null {
  const info = device.adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  const fixed = info.subgroupMinSize !== undefined && info.subgroupMinSize === info.subgroupMaxSize;
  return device.features.subgroups && fixed ? (info.subgroupMinSize ?? null) : null;
}

/**
 * Whether `tiles` can run on `device`: broadcast tiles ("subgroup" kind, GEMM or convolution) are written for one
 * subgroup width, and on another their lane indices miss lanes or name absent ones (wrong numbers, no error).
 */
export function tilesFitDevice(tiles: { kind: string; lanes?: number }, device: Device): boolean {
  return tiles.kind !== "subgroup" || tiles.lanes === fixedSubgroupSize(device);
}

/** Refuses tiles that do not fit the device (tilesFitDevice), e.g. ones given by hand for another width. */
export function assertTilesFitDevice(op: string, tiles: { kind: string; lanes?: number }, device: Device): void {
  if (tilesFitDevice(tiles, device)) return;
  const lanes = fixedSubgroupSize(device);
  throw new Error(
    `${op}: tiles ${JSON.stringify(tiles)} are written for ${tiles.lanes}-lane subgroups, but this device's subgroups ${lanes === null ? "have no fixed size" : `have ${lanes} lanes`}`,
  );
}

/** A GEMM's shape; with the operands' dtypes, subgroup-matrix tiles are considered too. */
type TileProblem = Pick<GemmCall, "M" | "N" | "K" | "transposeA" | "transposeB"> & {
  batch?: number;
  a?: Pick<Tensor, "dtype">;
  b?: Pick<Tensor, "dtype">;
  /** TileInputs.windowSets. */
  windowSets?: number;
};

/** GPUAdapterInfo.subgroupMaxSize where the adapter reports it. */
function subgroupMaxSize(device: Device): number | null {
  return (device.adapter.info as GPUAdapterInfo & { subgroupMaxSize?: number }).subgroupMaxSize ?? null;
}

function tileInputs(device: Device, call: TileProblem): TileInputs {
  return {
    isCpu: device.info.isCpu,
    subgroupSize: fixedSubgroupSize(device),
    maxInvocations: device.limits.maxComputeInvocationsPerWorkgroup,
    maxWorkgroupStorageBytes: device.limits.maxComputeWorkgroupStorageSize,
    M: call.M,
    N: call.N,
    K: call.K,
    transposeA: call.transposeA,
    transposeB: call.transposeB,
    windowSets: call.windowSets,
    batch: call.batch,
    matrix:
      device.subgroupMatrixConfigs.length && call.a && call.b
        ? {
            configs: device.subgroupMatrixConfigs,
            a: call.a.dtype,
            b: call.b.dtype,
            subgroupMaxSize: subgroupMaxSize(device),
          }
        : undefined,
  };
}

export function deviceTiles(device: Device, call: TileProblem): TileConfig {
  return chooseTiles(tileInputs(device, call));
}

/**
 * The autotuned tiles of the call's shape class when autotuning is on and the class is tuned; otherwise
 * null (and the class waits for `tunePending`, which times candidates on zero inputs of this shape).
 */
function tunedTiles(call: GemmCall & TileProblem): TileConfig | null {
  const device = call.out.device;
  const tuner = autotunerOf(device);
  if (!tuner) return null;
  const { M, N, K, batch, transposeA, transposeB } = call;
  const dtypes = `${call.a.dtype}${call.b.dtype}${call.out.dtype}`;
  const layout = `${transposeA ? "T" : "N"}${transposeB ? "T" : "N"}${call.gated ? "g" : ""}`;
  const size = `b${sizeClass(batch)}m${sizeClass(M)}n${sizeClass(N)}k${sizeClass(K)}`;
  return tuner.choice({
    key: `gemm:${layout}:${dtypes}:${size}`,
    candidates: tileCandidates(tileInputs(device, call)),
    // An entry tuned at another subgroup width (lavapipe's cpuLanes) is re-tuned, never run.
    valid: (v): v is TileConfig => isTileConfig(v) && tilesFitDevice(v, device),
    measure: async (tiles) => {
      const a = Tensor.zeros(device, [batch, ...(transposeA ? [K, M] : [M, K])], call.a.dtype);
      const b = Tensor.zeros(device, [batch, ...(transposeB ? [N, K] : [K, N])], call.b.dtype);
      const out = Tensor.empty(device, [batch, M, N], call.out.dtype);
      const problem = { ...call, a, b, out, bias: undefined, residual: undefined, aBatchStride: M * K };
      try {
        return await timeCall(device, () => gemm({ ...problem, bBatchStride: K * N, tiles }));
      } finally {
        for (const t of [a, b, out]) t.dispose();
      }
    },
  });
}

export function gemm(call: GemmCall): void {
  const { op, a, b, out, batch, M, N, K, transposeA, transposeB, bias, residual, gated = false } = call;
  const device = out.device;
  if (gated && (N % 2 !== 0 || residual || call.activation !== "none" || bias?.axis === "m")) {
    throw new Error(`${op}: a gated product needs an even N, no residual or activation, and a bias along n`);
  }
  const named: [string, Tensor | undefined][] = [
    ["a", a],
    ["b", b],
    ["out", out],
    ["bias", bias?.tensor],
    ["residual", residual],
  ];
  for (const [name, t] of named) {
    if (!t) continue;
    assertDType(op, name, t, FLOATS);
    if (t.device !== device) throw new Error(`${op}: ${name} ${t} lives on another device`);
  }
  wgslEnables(device, ...named.flatMap(([, t]) => (t ? [t.dtype] : [])));
  if (!Number.isFinite(call.alpha)) throw new Error(`${op}: alpha must be a finite number, got ${call.alpha}`);
  if (bias) assertBindable(op, { bias: bias.tensor });

  const pieces = planGemm(
    op,
    {
      batch,
      M,
      N,
      K,
      transposeA,
      transposeB,
      aBatchStride: call.aBatchStride,
      bBatchStride: call.bBatchStride,
      gated,
      bytes: {
        a: DTYPE_BYTES[a.dtype],
        b: DTYPE_BYTES[b.dtype],
        c: DTYPE_BYTES[out.dtype],
        residual: residual ? DTYPE_BYTES[residual.dtype] : undefined,
      },
    },
    bindingLimits(device, call.bindingLimits),
  );
  if (pieces.length === 0) return;
  const ownB = batch > 1 && call.bBatchStride !== 0;
  const windowSets = ownB ? batch : 1;
  const problem = { ...call, windowSets };
  const chosen = call.tiles ?? tunedTiles(problem) ?? deviceTiles(device, problem);
  assertTilesFitDevice(op, chosen, device);
  // Windows of B are one dispatch per window over all rows (and per item, for items with their own B), in one piece.
  const windowed =
    chosen.kind === "subgroup" && chosen.uniformB && pieces.length === 1 && (!ownB || call.windowsPerItem === true);
  const tiles = chosen.kind === "subgroup" && chosen.uniformB && !windowed ? { ...chosen, uniformB: false } : chosen;
  const window = tiles.kind === "subgroup" && tiles.uniformB ? uniformWindow(tiles, K) : null;
  if (gated && (pieces.some((piece) => !piece.finalize) || (window && K > window.k))) {
    // A reduction split over pieces or windows keeps partial sums in C, which a gated output has no room for.
    const product = Tensor.empty(device, [batch, M, N], out.dtype);
    try {
      gemm({ ...call, gated: false, out: product });
      geglu(product, out);
    } finally {
      product.dispose();
    }
    return;
  }
  if (tiles.kind === "matrix" && (a.dtype !== tiles.component || b.dtype !== tiles.component)) {
    throw new Error(`${op}: subgroup-matrix tiles of ${tiles.component} cannot read a ${a} and b ${b}`);
  }
  const { vecA, vecB } = gemmVectorReads(
    tiles,
    transposeA,
    transposeB,
    (transposeA ? M : K) % 4 === 0,
    // A gated product's consecutive columns are not B's: it reads B as vectors only along K.
    transposeB ? K % 4 === 0 : N % 4 === 0 && !gated,
  );
  const tile = workgroupTile(tiles);
  const laneOwnsM = tiles.kind === "subgroup" && tiles.laneOwns === "m";
  const windows = window ? windowsOfB(call, window, windowSets) : null;
  const packed = windows?.packed ?? null;

  for (const piece of pieces) {
    const rows = piece.m1 - piece.m0;
    const batches = piece.b1 - piece.b0;
    const tilesM = Math.ceil(rows / tile.m);
    const cBatch = M * (gated ? N / 2 : N);
    const buffers: Record<string, BufferSlice> = {
      A: bindingSlice(a, piece.a),
      B: bindingSlice(b, piece.b),
      C: bindingSlice(out, piece.c),
    };
    if (bias) buffers.Bias = { buffer: bias.tensor.buffer, offset: 0, size: bias.tensor.buffer.size };
    if (residual && piece.residual) buffers.R = bindingSlice(residual, piece.residual);
    // One part per window of B (columns n0.., steps k0..k1; of batch item `set` where each has its own), or the
    // whole piece.
    const parts =
      packed && window
        ? windowParts(N, piece.k1 - piece.k0, window, windowSets)
        : [{ n0: 0, k0: 0, k1: piece.k1 - piece.k0, w: 0, set: 0 }];
    const items = packed && ownB ? 1 : batches;
    for (const part of parts) {
      const depth = part.k1 - part.k0;
      const spec: GemmKernelSpec = {
        tiles,
        transposeA,
        transposeB,
        a: a.dtype,
        b: b.dtype,
        c: out.dtype,
        bias: bias ? { axis: bias.axis, dtype: bias.tensor.dtype } : null,
        residual: residual?.dtype ?? null,
        activation: call.activation,
        vecA,
        vecB,
        vecC: N % 4 === 0 && !gated,
        kTail: depth % 4 !== 0,
        gated,
      };
      const tilesN = window ? 1 : Math.ceil(N / tile.n);
      const [tilesX, tilesY] = laneOwnsM ? [tilesN, tilesM] : [tilesM, tilesN];
      if (packed) buffers.B = packed.slice(part.w * UNIFORM_WINDOW_BYTES, UNIFORM_WINDOW_BYTES);
      runKernel(device, GEMM, spec, {
        count: items * tilesX * tilesY,
        params: {
          batch: items,
          M: rows,
          N,
          K: depth,
          tilesX,
          tilesY,
          aRow: transposeA ? M : K,
          aBatch: call.aBatchStride,
          aOff: piece.a.elementOffset + part.set * call.aBatchStride + part.k0 * (transposeA ? M : 1),
          // A window's rows are its k steps.
          bRow: window ? window.k : transposeB ? K : N,
          bBatch: call.bBatchStride,
          bOff: piece.b.elementOffset,
          nOff: part.n0,
          cBatch,
          cOff: piece.c.elementOffset + part.set * cBatch,
          rOff: (piece.residual?.elementOffset ?? 0) + part.set * cBatch,
          biasOff: bias?.axis === "m" ? piece.m0 : 0,
          accumulate: piece.accumulate || part.k0 > 0 ? 1 : 0,
          finalize: piece.finalize && part.k1 === piece.k1 - piece.k0 ? 1 : 0,
          tileRows:
            tiles.kind === "subgroup" ? tiles.rows * tiles.cols : tiles.kind === "workgroup" ? tiles.threadM : 0,
          alpha: call.alpha,
        },
        buffers,
      });
    }
  }
  if (windows?.owned) windows.packed.dispose();
}

/**
 * The windows of B over N columns and `depth` steps, `sets` times (one set per batch item with its own B), in
 * packB's order (w = set · perSet + nWin · kWins + kWin).
 */
function windowParts(N: number, depth: number, window: { n: number; k: number }, sets: number) {
  const kWins = Math.ceil(depth / window.k);
  const perSet = Math.ceil(N / window.n) * kWins;
  return Array.from({ length: perSet * sets }, (_, w) => {
    const k0 = (w % kWins) * window.k;
    const n0 = Math.floor((w % perSet) / kWins) * window.n;
    return { n0, k0, k1: Math.min(depth, k0 + window.k), w, set: Math.floor(w / perSet) };
  });
}

/**
 * B packed into uniform windows (pack.ts) from all of b (the one piece's binding of B), `sets` items' B one after
 * another, or the pack cache's copy; `owned`: the caller disposes it.
 */
function windowsOfB(
  call: GemmCall,
  window: { n: number; k: number },
  sets: number,
): { packed: Tensor; owned: boolean } {
  const { b, N, K, transposeB, gated = false } = call;
  const device = call.out.device;
  const vec = transposeB && K % 4 === 0 && call.bBatchStride % 4 === 0;
  const spec = { b: b.dtype, transposeB, gated, n: window.n, k: window.k, vec };
  const bBatch = call.bBatchStride;
  return cachedPack(b, `${kernelKey(PACK_B, spec)}:${N}x${K}x${sets}:${bBatch}`, () => {
    const perSet = Math.ceil(N / window.n) * Math.ceil(K / window.k);
    const windows = perSet * sets;
    const packed = Tensor.empty(device, [windows * (UNIFORM_WINDOW_BYTES / 4)], "f32", { exactSize: true });
    runKernel(device, PACK_B, spec, {
      count: (windows * window.n * window.k) / 4,
      params: { N, K, kWins: Math.ceil(K / window.k), perSet, bOff: 0, bRow: transposeB ? K : N, bBatch },
      buffers: { B: b.slice(), P: packed.slice() },
    });
    return packed;
  });
}
