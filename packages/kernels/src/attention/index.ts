/**
 * Fused multi-head attention, softmax(q·kᵀ·scale)·v, flash style: each invocation walks the keys in blocks
 * with an online softmax (running max and sum, rescaling its accumulator), so the Nq×Nk score matrix never
 * exists. Layouts are those of the q/k/v projections — q [B, Nq, H·d], k and v [B, Nk, H·d], out [B, Nq, H·d]
 * — so no transposes are needed around it. Scores, softmax and accumulation are f32 for f16 storage too.
 *
 * An invocation owns `rowsPerInvocation` query rows of one head and `dChunk` columns of their output; every
 * key it loads serves all its rows. Heads wider than `dChunk` (the VAE's single 512-wide head) are split
 * across invocations that each recompute the scores but accumulate only their columns. See tiling.ts for
 * how the tiles are chosen per adapter.
 *
 * Wide single heads on CPU adapters take another path ("blocked" tiling): per block of query rows, scores by
 * matmul, a row softmax and the output by matmul, which lavapipe runs an order of magnitude faster than the
 * fused kernel at d = 512. Only that block's scores exist at a time.
 *
 * Other non-causal heads on CPU adapters (width a multiple of 4, up to 160: all of SD's) with enough query rows
 * (tiling.ts, windowMinQueries) read K and V through uniform windows ("window" tiling, window.ts): lavapipe loads
 * uniform buffers without the per-lane bounds-check branches of its storage loads.
 */
import { type Device, DTYPE_BYTES, type DType, Tensor } from "@ldm/tensor";
import { runKernel } from "../common/kernel.ts";
import { assertBindable, assertDType } from "../common/wgsl.ts";
import { matmul } from "../matmul/index.ts";
import { softmax } from "../softmax/index.ts";
import { attentionOnMatrices, deviceAttentionMatrixTiles } from "../subgroup-matrix/attention.ts";
import type { AttentionMatrixTiles } from "../subgroup-matrix/attention-plan.ts";
import {
  type AdapterTraits,
  type AttentionTiling,
  attentionTiling,
  type BlockedTiling,
  type FusedTiling,
  WINDOW_FLOATS,
  type WindowTiling,
} from "./tiling.ts";
import { ATTENTION } from "./wgsl.ts";
import { ATTENTION_WINDOW, PACK_KV } from "./window.ts";

export interface AttentionOptions {
  heads: number;
  /** Multiplies q·kᵀ; default 1/√d. */
  scale?: number;
  /** Key j is hidden from query i when j > i (CLIP's causal mask; top-left aligned like torch's is_causal). */
  causal?: boolean;
  /** Overrides attentionTiling(adapter, d, Nq, Nk, { heads, causal }), for tests and tuning. */
  tiling?: AttentionTiling;
  /**
   * Forces subgroup-matrix tiles (tests: emulated ones). Without it and without `tiling`, adapters with subgroup
   * matrices take the planner's (subgroup-matrix/attention-plan.ts) where it finds any.
   */
  matrixTiles?: AttentionMatrixTiles;
}

const FLOATS: readonly DType[] = ["f32", "f16"];

/** What attentionTiling needs to know about a device. */
export function adapterTraits(device: Device): AdapterTraits {
  const info = device.adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  const fixed = info.subgroupMinSize !== undefined && info.subgroupMinSize === info.subgroupMaxSize;
  return {
    isCpu: device.info.isCpu,
    subgroupSize: device.features.subgroups && fixed ? (info.subgroupMinSize ?? null) : null,
  };
}

export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): Tensor {
  const { heads, causal = false } = options;
  for (const [name, t] of [
    ["q", q],
    ["k", k],
    ["v", v],
  ] as const) {
    assertDType("attention", name, t, FLOATS);
    if (t.shape.length !== 3) throw new Error(`attention: ${name} ${t} must be [B, N, heads·d]`);
  }
  const [batch, nq, width] = q.shape;
  const nk = k.shape[1];
  if (
    k.shape[0] !== batch ||
    v.shape[0] !== batch ||
    k.shape[2] !== width ||
    v.shape[2] !== width ||
    v.shape[1] !== nk
  ) {
    throw new Error(`attention: q ${q}, k ${k} and v ${v} must be [B, Nq, W], [B, Nk, W], [B, Nk, W]`);
  }
  if (k.dtype !== q.dtype || v.dtype !== q.dtype) {
    throw new Error(`attention: q, k and v must share a dtype (got ${q.dtype}, ${k.dtype}, ${v.dtype})`);
  }
  if (!Number.isInteger(heads) || heads <= 0 || width % heads) {
    throw new Error(`attention: width ${width} of q ${q} does not split into ${heads} heads`);
  }
  const d = width / heads;
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const device = q.device;
  const out = Tensor.empty(device, q.shape, q.dtype);
  assertBindable("attention", { q, k, v, out });
  if (out.size === 0) return out;
  if (nk === 0) throw new Error(`attention: k ${k} has no keys; softmax over an empty set is undefined`);

  const matrixTiles =
    options.matrixTiles ??
    (options.tiling ? null : deviceAttentionMatrixTiles(device, { dtype: q.dtype, d, nq, causal }));
  if (matrixTiles) {
    attentionOnMatrices(q, k, v, out, { heads, scale, causal, tiles: matrixTiles });
    return out;
  }
  const tiling = options.tiling ?? attentionTiling(adapterTraits(device), d, nq, nk, { heads, causal });
  if (tiling.kind === "blocked") {
    blockedAttention(q, k, v, out, scale, tiling, { heads, causal });
    return out;
  }
  if (tiling.kind === "window") {
    windowedAttention(q, k, v, out, scale, tiling, { heads, causal });
    return out;
  }
  checkTiling(tiling, d, device);
  // The lanes kernel loads vec4s when the head width allows; its indices are then in vec4 units.
  const unit = tiling.kind === "lanes" && d % 4 === 0 ? 4 : 1;
  const rowGroups = Math.ceil(nq / tiling.rowsPerInvocation);
  const chunks = d / tiling.dChunk;
  const tiles = batch * heads * chunks * Math.ceil(rowGroups / tiling.workgroupSize);
  runKernel(
    device,
    ATTENTION,
    { dtype: q.dtype, d, causal, ...tiling },
    {
      count: tiles,
      params: { heads, nq, nk, rowGroups, chunks, rowStride: width / unit, scale },
      buffers: { q: q.slice(), k: k.slice(), v: v.slice(), out: out.slice() },
    },
  );
  return out;
}

/**
 * out[b, rows] = softmax(scale · q[b, rows] · k[b]ᵀ) · v[b] for blocks of query rows: the q rows of every batch
 * item are copied into one [B, rows, d] block, the f32 scores [B, rows, Nk] go through softmax, and the
 * product with v is copied into out's rows. Heads of one: q's rows are then contiguous and k, v are the
 * matmul's batched [B, Nk, d] operands as they are.
 */
function blockedAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  scale: number,
  tiling: BlockedTiling,
  { heads, causal }: { heads: number; causal: boolean },
): void {
  const [batch, nq, d] = q.shape;
  const rowBytes = d * DTYPE_BYTES[q.dtype];
  if (heads !== 1 || causal || rowBytes % 4 || !Number.isInteger(tiling.queryBlock) || tiling.queryBlock < 1) {
    throw new Error(
      `attention: tiling ${JSON.stringify(tiling)} needs one head without a causal mask, a positive integer block and rows of a multiple of 4 bytes (got ${heads} heads${causal ? ", causal" : ""}, ${rowBytes}-byte rows)`,
    );
  }
  const device = q.device;
  const rows = Math.max(1, Math.floor(tiling.queryBlock / batch));
  for (let r0 = 0; r0 < nq; r0 += rows) {
    const n = Math.min(rows, nq - r0);
    device.tidy(() => {
      const qBlock = Tensor.empty(device, [batch, n, d], q.dtype);
      for (let b = 0; b < batch; b++) {
        device.copy(q.buffer, (b * nq + r0) * rowBytes, qBlock.buffer, b * n * rowBytes, n * rowBytes);
      }
      // Scores and probabilities stay f32 for f16 storage, as in the fused kernel.
      const scores = matmul(qBlock, k, { transposeB: true, alpha: scale, outDtype: "f32" });
      const probabilities = softmax(scores);
      const outBlock = matmul(probabilities, v, { outDtype: q.dtype });
      for (let b = 0; b < batch; b++) {
        device.copy(outBlock.buffer, b * n * rowBytes, out.buffer, (b * nq + r0) * rowBytes, n * rowBytes);
      }
    });
  }
}

/**
 * Per (batch item, head): K and V packed into windows (PACK_KV), then one dispatch per window over all query
 * rows, the softmax state carried in `state` (one head's rows: heads run one after another).
 */
function windowedAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  scale: number,
  tiling: WindowTiling,
  { heads, causal }: { heads: number; causal: boolean },
): void {
  const [batch, nq, width] = q.shape;
  const nk = k.shape[1];
  const d = width / heads;
  const device = q.device;
  checkWindowTiling(tiling, d, causal, device);
  const windows = Math.ceil(nk / tiling.windowKeys);
  const windowBytes = WINDOW_FLOATS * 4;
  const { windowKeys, ...kernelTiling } = tiling;
  const spec = { dtype: q.dtype, d, ...kernelTiling };
  const workgroups = Math.ceil(nq / (tiling.rowsPerInvocation * tiling.workgroupSize));
  device.tidy(() => {
    const packedK = Tensor.empty(device, [windows * WINDOW_FLOATS], "f32");
    const packedV = Tensor.empty(device, [windows * WINDOW_FLOATS], "f32");
    assertBindable("attention", { "k packed into windows": packedK });
    // A single window keeps no state, but its binding still needs a buffer.
    const state = Tensor.empty(device, [windows > 1 ? nq * (d + 4) : 4], "f32");
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        runKernel(
          device,
          PACK_KV,
          { dtype: q.dtype, d },
          {
            count: nk * d,
            params: {
              nk,
              batch: b,
              head: h,
              windowKeys: tiling.windowKeys,
              windowFloats: WINDOW_FLOATS,
              rowStride: width,
            },
            buffers: { k: k.slice(), v: v.slice(), pk: packedK.slice(), pv: packedV.slice() },
          },
        );
        for (let w = 0; w < windows; w++) {
          runKernel(device, ATTENTION_WINDOW, spec, {
            count: workgroups,
            params: {
              heads,
              nq,
              rowStride: width / 4,
              batch: b,
              head: h,
              keys: Math.min(tiling.windowKeys, nk - w * tiling.windowKeys),
              firstWindow: w === 0 ? 1 : 0,
              lastWindow: w === windows - 1 ? 1 : 0,
              scale,
            },
            buffers: {
              q: q.slice(),
              kw: packedK.slice(w * windowBytes, windowBytes),
              vw: packedV.slice(w * windowBytes, windowBytes),
              state: state.slice(),
              out: out.slice(),
            },
          });
        }
      }
    }
  });
}

function checkWindowTiling(t: WindowTiling, d: number, causal: boolean, device: Device): void {
  const positive = [t.rowsPerInvocation, t.keyBlock, t.windowKeys, t.workgroupSize].every(
    (x) => Number.isInteger(x) && x >= 1,
  );
  const fits =
    positive &&
    !causal &&
    d % 4 === 0 &&
    t.windowKeys * d <= WINDOW_FLOATS &&
    t.workgroupSize <= device.limits.maxComputeInvocationsPerWorkgroup;
  if (!fits) {
    throw new Error(
      `attention: tiling ${JSON.stringify(t)} needs no causal mask, a head width that is a multiple of 4 and windows of at most ${WINDOW_FLOATS} floats (got d = ${d}${causal ? ", causal" : ""})`,
    );
  }
  checkSubgroups(t, device);
}

/** Tiles that share loads over a subgroup need the device's own fixed subgroup size, filling the workgroup. */
function checkSubgroups(t: { subgroupSize: number; workgroupSize: number }, device: Device): void {
  const traits = adapterTraits(device);
  if (traits.subgroupSize !== t.subgroupSize || t.workgroupSize % t.subgroupSize) {
    throw new Error(
      `attention: tiling ${JSON.stringify(t)} needs subgroups of exactly ${t.subgroupSize} lanes filling the workgroup; this device has ${traits.subgroupSize ?? "no fixed subgroup size"}`,
    );
  }
}

function checkTiling(t: FusedTiling, d: number, device: Device): void {
  const unit = t.kind === "lanes" && d % 4 === 0 ? 4 : 1;
  const fits =
    d % t.dChunk === 0 &&
    t.dChunk % unit === 0 &&
    t.rowsPerInvocation >= 1 &&
    t.keyBlock >= 1 &&
    d % t.qChunk === 0 &&
    t.workgroupSize >= 1 &&
    t.workgroupSize <= device.limits.maxComputeInvocationsPerWorkgroup;
  if (!fits) throw new Error(`attention: tiling ${JSON.stringify(t)} does not fit head width d = ${d}`);
  if (t.kind === "subgroup") checkSubgroups(t, device);
}
