import { concat, slice } from "@ldm/kernels";
import { type Device, type Recording, Tensor } from "@ldm/tensor";
import type { LdmConfig } from "@ldm/weights";
import {
  countNonFinite,
  type DiffusionModel,
  guided,
  type InitLatents,
  type NoiseSchedule,
  type SamplerName,
  type StepInfo,
  sample,
} from "../diffusion/index.ts";
import type { ProjectedContext, UNetModel } from "../models/index.ts";
import type { Generator } from "../random/index.ts";
import { type SplitInput, splitInputDenoiser } from "./split-input.ts";

/**
 * The UNet as the samplers call it: host latents of the whole batch [N, C, h, w] in, its prediction out, with
 * the context (and the inpainting channels) bound for the whole run. Every call's intermediates are freed
 * before it returns.
 *
 * `parts` > 1 runs the batch as that many UNet calls of N / parts items each (with the matching rows of the
 * context and c_concat), one after the other: sequential classifier-free guidance, where the unconditional and
 * conditional halves go through the UNet separately, so the activations held at once are those of half the
 * batch. Every item is computed as in the one call (no op mixes batch items), up to the kernels' summation order.
 *
 * `projected` (from `projectContextParts` with the same context and parts): the cross-attention keys and values
 * of each call's context rows, computed once for all calls of a sampling run instead of in every call.
 */
export function unetDenoiser(
  unet: UNetModel,
  context: Tensor | undefined,
  cConcat: Tensor | undefined,
  latentShape: readonly number[],
  parts = 1,
  projected?: ContextParts,
): DiffusionModel {
  const { size, partShape, forward } = unetCall(unet, context, cConcat, latentShape, parts, projected);
  const device = unet.vb.device;
  return async (x, t) => {
    const partLength = x.length / parts;
    const prediction = new Float32Array(x.length);
    for (let p = 0; p < parts; p++) {
      const out = device.tidy(() =>
        forward(
          p,
          Tensor.from(device, x.subarray(p * partLength, (p + 1) * partLength), partShape),
          Tensor.from(device, new Float32Array(size).fill(t), [size]),
        ),
      );
      try {
        const values = await out.toFloat32();
        if (parts === 1) return values;
        prediction.set(values, p * partLength);
      } finally {
        out.dispose();
      }
    }
    return prediction;
  };
}

/** unetDenoiser's model and the resources it holds until dispose(). */
export interface ReplayingDenoiser {
  model: DiffusionModel;
  /** Frees the recorded call's tensors and buffers; the model must not be called after. */
  dispose(): void;
}

/**
 * unetDenoiser in one part whose calls from the second on replay the second's dispatches (Device.record) instead
 * of running the modules' JavaScript again: the new latents and timesteps go into the recorded call's input
 * tensors, and the same kernels run on the same buffers with the same uniforms, so every call's output has the
 * bits unetDenoiser's would. The first call runs as usual (it may compile kernels and fill caches, which a
 * recording must not do: see Device.record); if the second cannot be recorded, every call runs as usual. The
 * recorded call's intermediates keep their buffers until dispose().
 */
export function replayingUNetDenoiser(
  unet: UNetModel,
  context: Tensor | undefined,
  cConcat: Tensor | undefined,
  latentShape: readonly number[],
  projected?: ContextParts,
): ReplayingDenoiser {
  const { partShape, forward } = unetCall(unet, context, cConcat, latentShape, 1, projected);
  const device = unet.vb.device;
  const batch = latentShape[0];
  const size = latentShape.reduce((a, b) => a * b, 1);
  let calls = 0;
  /** The recorded call: its inputs, which later calls refill, its output, and its commands. */
  let replay: { x: Tensor; t: Tensor; out: Tensor; recording: Recording } | null = null;
  let disposed = false;
  const model: DiffusionModel = async (x, t) => {
    if (disposed) throw new Error("replayingUNetDenoiser: called after dispose()");
    if (x.length !== size) {
      throw new RangeError(
        `replayingUNetDenoiser: ${x.length} latent values for the shape [${latentShape.join(", ")}]`,
      );
    }
    const times = new Float32Array(batch).fill(t);
    if (replay) {
      device.write(replay.x.buffer, 0, x);
      device.write(replay.t.buffer, 0, times);
      replay.recording.run();
      return replay.out.toFloat32();
    }
    const inputs = { x: Tensor.from(device, x, partShape), t: Tensor.from(device, times, [batch]) };
    let recorded: Recording | null = null;
    try {
      const run = () => device.tidy(() => forward(0, inputs.x, inputs.t));
      const call = calls++ === 1 ? device.record(run) : { result: run(), recording: null };
      recorded = call.recording;
      if (recorded) replay = { ...inputs, out: call.result, recording: recorded };
      try {
        return await call.result.toFloat32();
      } finally {
        if (!recorded) call.result.dispose();
      }
    } finally {
      if (!recorded) for (const tensor of [inputs.x, inputs.t]) tensor.dispose();
    }
  };
  const dispose = () => {
    disposed = true;
    if (!replay) return;
    replay.recording.dispose();
    for (const tensor of [replay.x, replay.t, replay.out]) tensor.dispose();
    replay = null;
  };
  return { model, dispose };
}

/** The checks and the forward every UNet call of a sampling run shares (unetDenoiser's part `p`). */
function unetCall(
  unet: UNetModel,
  context: Tensor | undefined,
  cConcat: Tensor | undefined,
  latentShape: readonly number[],
  parts: number,
  projected: ContextParts | undefined,
) {
  const batch = latentShape[0];
  if (!Number.isInteger(parts) || parts < 1 || batch % parts) {
    throw new RangeError(`unetDenoiser: a batch of ${batch} does not split into ${parts} equal UNet calls`);
  }
  const size = batch / parts;
  const partShape = [size, ...latentShape.slice(1)];
  const rows = (t: Tensor, p: number) => (parts === 1 ? t : slice(t, 0, p * size, (p + 1) * size));
  if (projected && (projected.source !== context || projected.parts.length !== parts)) {
    throw new RangeError(`unetDenoiser: the projected context is not this context in ${parts} part(s)`);
  }
  const forward = (p: number, x: Tensor, timesteps: Tensor) =>
    unet.forward({
      x,
      timesteps,
      context: projected ? projected.parts[p].context : context && rows(context, p),
      projected: projected?.parts[p],
      cConcat: cConcat && rows(cConcat, p),
    });
  return { size, partShape, forward };
}

/** A context's rows for each of `parts` UNet calls, each projected for the UNet's cross-attention. */
export interface ContextParts {
  source: Tensor;
  parts: ProjectedContext[];
  dispose(): void;
}

/**
 * `context` [N, L, D] split into `parts` equal row ranges (the whole of it for 1), each with its cross-attention
 * keys and values (UNetModel.projectContext), for unetDenoiser's calls over a sampling run.
 */
export function projectContextParts(unet: UNetModel, context: Tensor, parts = 1): ContextParts {
  const size = context.shape[0] / parts;
  const projections: ProjectedContext[] = [];
  const dispose = () => {
    for (const projection of projections) {
      projection.dispose();
      if (projection.context !== context) projection.context.dispose();
    }
  };
  try {
    for (let p = 0; p < parts; p++) {
      const rows = parts === 1 ? context : slice(context, 0, p * size, (p + 1) * size);
      try {
        projections.push(unet.projectContext(rows));
      } catch (e) {
        if (rows !== context) rows.dispose();
        throw e;
      }
    }
  } catch (e) {
    dispose();
    throw e;
  }
  return { source: context, parts: projections, dispose };
}

/** Where a generation's values went NaN or infinite: a network's output, named by `stage`. */
export class NonFiniteError extends Error {
  constructor(
    readonly stage: "text encoder" | "cond stage" | "UNet" | "VAE encoder" | "VAE decoder",
    message: string,
  ) {
    super(message);
  }
}

/** Throws NonFiniteError when `values`, the output of `stage`, hold NaN or ±Inf. */
export function assertFinite(stage: NonFiniteError["stage"], values: Float32Array, detail = ""): void {
  const count = countNonFinite(values);
  if (count) {
    throw new NonFiniteError(stage, `the ${stage}'s output holds ${count} NaN/Inf values of ${values.length}${detail}`);
  }
}

/** A cond stage on token ids: CLIP's text encoder, or the paper's BERTEmbedder (on prompt or layout tokens). */
export interface TokenEncoder {
  /** Ids per encoder call (CLIP's 77 positions, a BERTEmbedder's max_seq_len); longer rows are chunks of it. */
  readonly contextLength: number;
  /** ids i32 [B, L] → context [B, L, D]; clipSkip: CLIP's layer from the end. */
  encode(ids: Tensor, clipSkip?: number): Tensor;
}

export interface EncodeOptions {
  /** Per row, a weight per token (A1111's emphasis); absent or all 1: plain encoding. */
  weights?: readonly Float32Array[];
  /** A1111's CLIP skip (default: the config's layer). */
  clipSkip?: number;
}

/**
 * The text encoder's conditioning for token id rows (one per batch item), [rows, k·L, D]: a row of k·L ids is
 * k chunks of the encoder's context L, each encoded on its own and the hidden states concatenated (A1111's long
 * prompts); all rows have the same k. With weights, each chunk's output is multiplied per token and rescaled to
 * its unweighted mean (A1111's "Original" emphasis). Identical rows (a prompt repeated over the batch) are encoded
 * once.
 */
export async function encodeTokenRows(
  device: Device,
  encoder: TokenEncoder,
  rows: readonly Int32Array[],
  options: EncodeOptions = {},
): Promise<Tensor> {
  const length = encoder.contextLength;
  const width = rows[0].length;
  if (width % length || rows.some((r) => r.length !== width)) {
    throw new RangeError(
      `token rows of ${rows.map((r) => r.length).join(", ")} ids: each must be the same multiple of ${length}`,
    );
  }
  const chunks = width / length;
  const weights = options.weights;
  if (weights?.some((w, i) => w.length !== rows[i].length)) {
    throw new RangeError("token weights: one per token id of each row");
  }
  const keys = rows.map((r, i) => `${r.join(",")}|${weights ? weights[i].join(",") : ""}`);
  const unique = [...new Set(keys)];
  const firstOf = unique.map((key) => keys.indexOf(key));
  const ids = new Int32Array(unique.length * width);
  firstOf.forEach((row, i) => {
    ids.set(rows[row], i * width);
  });
  const encoded = device.tidy(() =>
    encoder.encode(Tensor.from(device, ids, [unique.length * chunks, length], "i32"), options.clipSkip),
  );
  const weighted =
    weights && firstOf.some((row) => weights[row].some((w) => w !== 1))
      ? await emphasize(
          encoded,
          firstOf.map((row) => weights[row]),
        )
      : encoded;
  const joined = weighted.reshape([unique.length, width, weighted.shape[2]]);
  if (unique.length === rows.length) return joined;
  return device.tidy(() => {
    const out = concat(
      keys.map((key) => {
        const at = unique.indexOf(key);
        return slice(joined, 0, at, at + 1);
      }),
      0,
    );
    joined.dispose();
    return out;
  });
}

/**
 * A1111's "Original" emphasis on encoded chunks [n, L, D] (consumed): each token's vector times its weight, then
 * the chunk scaled so its mean equals the unweighted mean. On the host, in float64 per chunk (a few hundred
 * kilobytes, once per generation).
 */
async function emphasize(encoded: Tensor, rowWeights: readonly Float32Array[]): Promise<Tensor> {
  const [n, length, dim] = encoded.shape;
  const values = await encoded.toFloat32();
  const weights = new Float32Array(n * length);
  let offset = 0;
  for (const w of rowWeights) {
    weights.set(w, offset);
    offset += w.length;
  }
  const chunkSize = length * dim;
  for (let c = 0; c < n; c++) {
    const chunk = values.subarray(c * chunkSize, (c + 1) * chunkSize);
    let before = 0;
    let after = 0;
    for (let i = 0; i < chunkSize; i++) {
      before += chunk[i];
      chunk[i] = Math.fround(chunk[i] * weights[c * length + Math.floor(i / dim)]);
      after += chunk[i];
    }
    const scale = before / after;
    for (let i = 0; i < chunkSize; i++) chunk[i] *= scale;
  }
  const out = Tensor.from(encoded.device, values, encoded.shape, encoded.dtype);
  encoded.dispose();
  return out;
}

/** The sampling path every generation shares (and what `sample` reference dumps exercise). */
export interface LatentRequest {
  /** Padded token ids, one row per batch item: k chunks of the text encoder's context (k the same for all). */
  condIds: readonly Int32Array[];
  /** Rows of the unconditional half; required unless guidanceScale is 1. */
  uncondIds?: readonly Int32Array[];
  /** Emphasis weights per token of each row (default 1). */
  condWeights?: readonly Float32Array[];
  uncondWeights?: readonly Float32Array[];
  /** A1111's CLIP skip (default: the config's layer). */
  clipSkip?: number;
  /** Unit-variance noise [B, C, h, w]. */
  xT: Float32Array;
  latentShape: readonly number[];
  sampler: SamplerName;
  /** The k-samplers' σ spacing (default: the sampler's). */
  schedule?: string;
  steps: number;
  guidanceScale: number;
  eta?: number;
  generator?: Generator;
  init?: InitLatents;
  strength?: number;
  /** Inpainting UNets: [B, in_channels − C, h, w] (mask, masked-image latents), the same for both CFG halves. */
  cConcat?: Float32Array;
  onStep?: (info: StepInfo) => unknown;
  signal?: AbortSignal;
  /**
   * With guidance: the unconditional and conditional halves as two UNet calls of batch B instead of one of 2B
   * (less memory for activations, same result up to f32 rounding). Default false.
   */
  sequentialCfg?: boolean;
  /**
   * The UNet on overlapping latent crops (upstream's split_input_params), its memory that of one crop; see
   * split-input.ts. Default: one call on the whole latent.
   */
  splitInput?: SplitInput;
}

/** What conditions a sampling run besides the noise: DiffusionWrapper's c_crossattn and c_concat. */
export interface ConditionedRequest
  extends Omit<LatentRequest, "condIds" | "uncondIds" | "condWeights" | "uncondWeights" | "clipSkip"> {
  /**
   * crossattn / hybrid: the context rows, [B, L, D], or with guidance [2B, L, D] (the unconditional rows first).
   * Absent for concat and unconditional models.
   */
  context?: Tensor;
  /** Which network made the context, for errors (default "text encoder"). */
  contextStage?: NonFiniteError["stage"];
}

/**
 * Guided sampling from a bound conditioning: the UNet called on [uncond; cond] in one batch of 2B per model
 * evaluation (B when guidanceScale is 1; two calls of B with sequentialCfg), with `cConcat` (host, [B, c, h, w])
 * the same for both halves, in the config's parameterization.
 */
export async function sampleConditioned(
  networks: { config: LdmConfig; unet: UNetModel },
  schedule: NoiseSchedule,
  request: ConditionedRequest,
): Promise<Float32Array> {
  const { unet, config } = networks;
  const { latentShape, guidanceScale, context } = request;
  const guide = guidanceScale !== 1;
  const rows = (guide ? 2 : 1) * latentShape[0];
  if (guide && !context) {
    throw new RangeError("classifier-free guidance needs an unconditional context: this model has none (use scale 1)");
  }
  if (context && context.shape[0] !== rows) {
    throw new RangeError(
      `${context.shape[0]} context rows for a batch of ${latentShape[0]}${guide ? " with guidance" : ""}`,
    );
  }
  const device = unet.vb.device;
  let cConcat: Tensor | undefined;
  let projected: ContextParts | undefined;
  let replaying: ReplayingDenoiser | undefined;
  try {
    if (context) assertFinite(request.contextStage ?? "text encoder", await context.toFloat32());
    const both =
      request.cConcat && guide ? new Float32Array([...request.cConcat, ...request.cConcat]) : request.cConcat;
    const shape = [rows, ...latentShape.slice(1)];
    if (both && !request.splitInput) {
      const [, , h, w] = latentShape;
      cConcat = Tensor.from(device, both, [rows, both.length / (rows * h * w), h, w]);
    }
    const parts = guide && request.sequentialCfg ? 2 : 1;
    if (context && !request.splitInput) projected = projectContextParts(unet, context, parts);
    // One UNet call per model evaluation: its dispatches are recorded once and replayed. Sequential CFG's two
    // calls are not: two recordings would each hold their intermediates, which the halves otherwise share.
    if (parts === 1 && !request.splitInput) replaying = replayingUNetDenoiser(unet, context, cConcat, shape, projected);
    const network = request.splitInput
      ? splitInputDenoiser(unet, context, both, shape, request.splitInput)
      : (replaying?.model ?? unetDenoiser(unet, context, cConcat, shape, parts, projected));
    return await sample(guide ? guided(network, guidanceScale) : network, request.xT, {
      sampler: request.sampler,
      sigmaSchedule: request.schedule,
      steps: request.steps,
      schedule,
      parameterization: config.parameterization,
      generator: request.generator,
      eta: request.eta,
      init: request.init,
      strength: request.strength,
      onStep: request.onStep,
      signal: request.signal,
    });
  } finally {
    replaying?.dispose();
    cConcat?.dispose();
    projected?.dispose();
  }
}

/**
 * Classifier-free guided sampling from token ids and noise to clean latents: the context of [uncond; cond]
 * encoded once (with emphasis weights and CLIP skip), then sampleConditioned. What every text-to-image generation
 * runs, and what `sample` reference dumps of text models check.
 */
export async function sampleFromTokens(
  networks: { config: LdmConfig; unet: UNetModel; textEncoder: TokenEncoder },
  schedule: NoiseSchedule,
  request: LatentRequest,
): Promise<Float32Array> {
  const { latentShape, guidanceScale } = request;
  const guide = guidanceScale !== 1;
  if (guide && !request.uncondIds) throw new RangeError("guidance needs the unconditional token ids");
  const rows = guide ? [...(request.uncondIds ?? []), ...request.condIds] : request.condIds;
  if (rows.length !== (guide ? 2 : 1) * latentShape[0]) {
    throw new RangeError(`${rows.length} token rows for a batch of ${latentShape[0]}${guide ? " with guidance" : ""}`);
  }
  const withOnes = (ids: readonly Int32Array[], given?: readonly Float32Array[]) =>
    ids.map((r, i) => given?.[i] ?? new Float32Array(r.length).fill(1));
  const weights =
    request.condWeights || request.uncondWeights
      ? [
          ...(guide ? withOnes(request.uncondIds ?? [], request.uncondWeights) : []),
          ...withOnes(request.condIds, request.condWeights),
        ]
      : undefined;
  const context = await encodeTokenRows(networks.unet.vb.device, networks.textEncoder, rows, {
    weights,
    clipSkip: request.clipSkip,
  });
  try {
    return await sampleConditioned(networks, schedule, { ...request, context });
  } finally {
    context.dispose();
  }
}
