/**
 * The `sample` dump component: a whole classifier-free-guided sampling loop from x_T and what conditions it
 * (token ids, class labels, a low-resolution image, a segmentation map, or nothing), run by the pipeline's own
 * sampling path (sampleFromTokens, sampleConditioned; with split_input metadata the UNet on overlapping crops);
 * decodeLatents turns a z_0 into the image.
 */
import { Tensor } from "@ldm/tensor";
import { NoiseSchedule, type SamplerName, samplerByName } from "../diffusion/index.ts";
import { ClassEmbedder, SpatialRescaler } from "../models/cond-stage.ts";
import type { LoadedModel } from "../models/index.ts";
import { BERTEmbedder } from "../models/x-transformer.ts";
import { sampleConditioned, sampleFromTokens } from "../pipeline/denoiser.ts";
import { maskedImageConcat } from "../pipeline/masked-image.ts";
import type { SplitInput } from "../pipeline/split-input.ts";
import { Generator } from "../random/index.ts";
import type { Dump, HostTensor } from "./dump.ts";

export interface SampleSettings {
  sampler: SamplerName;
  steps: number;
  guidanceScale: number;
  eta: number;
  /** eta > 0: the seed of torch's global generator, set right before sampling (each step's noise). */
  globalSeed?: string;
  /** split_input_ks / split_input_stride: upstream's UNet on overlapping latent crops. */
  splitInput?: SplitInput;
}

function settings(dump: Dump): SampleSettings {
  const meta = dump.metadata;
  const fail = (what: string): never => {
    throw new Error(`${dump.path}: the sample component's __metadata__ ${what}`);
  };
  const sampler = meta.sampler ?? fail("has no sampler");
  try {
    samplerByName(sampler);
  } catch (e) {
    fail(`names a sampler the table lacks: ${(e as Error).message}`);
  }
  const number = (key: string, fallback?: number) => {
    const text = meta[key];
    if (text === undefined) return fallback ?? fail(`has no ${key}`);
    const value = Number(text);
    return Number.isFinite(value) ? value : fail(`has ${key} "${text}", not a number`);
  };
  const eta = number("eta", 0);
  const globalSeed = meta.global_seed;
  if (eta !== 0 && globalSeed === undefined) {
    fail(`has eta ${eta} and no global_seed: only eta 0 is deterministic from x_T without the noise stream's seed`);
  }
  const square = (key: string) => {
    const text = meta[key] ?? fail(`has split_input_ks or split_input_stride without ${key}`);
    const [a, b] = text.split(",").map(Number);
    return a === b && Number.isInteger(a) ? a : fail(`has ${key} "${text}": the crops must be square, "n,n"`);
  };
  const split = meta.split_input_ks !== undefined || meta.split_input_stride !== undefined;
  return {
    sampler: sampler as SamplerName,
    steps: number("steps"),
    guidanceScale: number("guidance_scale"),
    eta,
    globalSeed,
    ...(split ? { splitInput: { size: square("split_input_ks"), stride: square("split_input_stride") } } : {}),
  };
}

/**
 * The dump's sampling loop: our z_0 for its x_T and ids. `overrides` change its settings (e.g. fewer steps,
 * where only the outcome matters).
 */
export async function runSample(
  model: LoadedModel,
  dump: Dump,
  overrides: Partial<SampleSettings> = {},
): Promise<HostTensor> {
  const { unet, clip, config } = model;
  if (!unet) throw new Error("internal: the sample component needs the UNet");
  const options = { ...settings(dump), ...overrides };
  const xT = await dump.floats("sample", "in", "x_T");
  const cConcat = await concatInput(model, dump, "sample");
  const schedule = NoiseSchedule.create({
    timesteps: config.timesteps,
    linearStart: config.linear_start,
    linearEnd: config.linear_end,
  });
  const request = {
    xT: xT.data,
    latentShape: xT.shape,
    sampler: options.sampler,
    steps: options.steps,
    guidanceScale: options.guidanceScale,
    eta: options.eta,
    generator: options.globalSeed === undefined ? undefined : new Generator(BigInt(options.globalSeed)),
    cConcat,
    splitInput: options.splitInput,
  };
  if (dump.has("sample", "in", "cond_ids")) {
    // CLIP, or the paper's BERTEmbedder (prompt or layout tokens).
    const textEncoder = clip ?? (model.cond instanceof BERTEmbedder ? model.cond : undefined);
    if (!textEncoder) throw new Error(`${dump.path}: the sample has token ids, but the model has no text encoder`);
    const cond = await dump.ints("sample", "in", "cond_ids");
    const uncond = await dump.ints("sample", "in", "uncond_ids");
    const z0 = await sampleFromTokens({ config, unet, textEncoder }, schedule, {
      ...request,
      condIds: idRows(cond),
      uncondIds: idRows(uncond),
    });
    return { data: z0, shape: xT.shape };
  }
  const context = await classContext(model, dump, options.guidanceScale !== 1);
  try {
    const z0 = await sampleConditioned({ config, unet }, schedule, { ...request, context, contextStage: "cond stage" });
    return { data: z0, shape: xT.shape };
  } finally {
    context?.dispose();
  }
}

/** A class-conditional sample's context: the ClassEmbedder on [uncond_class_label; class_label] (guided). */
async function classContext(model: LoadedModel, dump: Dump, guide: boolean): Promise<Tensor | undefined> {
  if (!dump.has("sample", "in", "class_label")) return undefined;
  const stage = model.cond;
  if (!(stage instanceof ClassEmbedder))
    throw new Error(`${dump.path}: the sample has class labels, the model no ClassEmbedder`);
  const cond = await dump.ints("sample", "in", "class_label");
  const labels = guide
    ? [...(await dump.ints("sample", "in", "uncond_class_label")).data, ...cond.data]
    : [...cond.data];
  const device = stage.vb.device;
  const ids = Tensor.from(device, Int32Array.from(labels), [labels.length], "i32");
  try {
    return stage.forward(ids);
  } finally {
    ids.dispose();
  }
}

/**
 * A concat model's c_concat for one batch of a sample or loss dump (the sampler repeats it for guidance's halves):
 * the dump's own, the low-resolution image itself (super-resolution, cond stage Identity), the big inpainting
 * model's masked image and mask, or the SpatialRescaler on the one-hot segmentation map.
 */
export async function concatInput(
  model: LoadedModel,
  dump: Dump,
  component: "sample" | "loss",
): Promise<Float32Array | undefined> {
  if (dump.has(component, "in", "c_concat")) return (await dump.floats(component, "in", "c_concat")).data;
  if (dump.has(component, "in", "LR_image")) return (await dump.floats(component, "in", "LR_image")).data;
  if (dump.has(component, "in", "masked_image")) return (await maskedImageInput(model, dump, component)).data;
  if (!dump.has(component, "in", "segmentation")) return undefined;
  const stage = model.cond;
  if (!(stage instanceof SpatialRescaler))
    throw new Error(`${dump.path}: the ${component} has a segmentation map, the model no SpatialRescaler`);
  const { data, shape } = await dump.floats(component, "in", "segmentation");
  const input = Tensor.from(stage.vb.device, data, shape);
  const out = stage.forward(input);
  try {
    return await out.toFloat32();
  } finally {
    input.dispose();
    out.dispose();
  }
}

/** The big inpainting model's c_concat from a component's mask and masked_image, as scripts/inpaint.py. */
export async function maskedImageInput(
  model: LoadedModel,
  dump: Dump,
  component: "cond" | "sample" | "loss",
): Promise<HostTensor> {
  if (!model.vae || model.config.cond_stage?.target !== "__is_first_stage__") {
    throw new Error(
      `${dump.path}: the ${component} has a mask and masked_image, the inputs of a model whose cond stage is its first stage (inpainting_big); this one's is not`,
    );
  }
  const [maskedImage, mask] = await Promise.all([
    dump.floats(component, "in", "masked_image"),
    dump.floats(component, "in", "mask"),
  ]);
  return maskedImageConcat(model.vae, maskedImage, mask);
}

/**
 * The raw decoder output (about [-1, 1]) for clean latents z₀ as the UNet sees them (scaled by the model's
 * scale factor); a VQ first stage quantizes them first.
 */
export async function decodeLatents(model: LoadedModel, z0: HostTensor): Promise<HostTensor> {
  const { vae, scaleFactor } = model;
  if (!vae) throw new Error("internal: decoding latents needs the VAE");
  const [b, , h, w] = z0.shape;
  const f = vae.downscale;
  const data = await vae.decodeToHost(
    z0.data.map((v) => v / scaleFactor),
    z0.shape,
  );
  return { data, shape: [b, vae.cfg.ddconfig.out_ch, h * f, w * f] };
}

/** A [B, L] id tensor of the dump as the B token rows sampleFromTokens takes. */
function idRows({ data, shape }: HostTensor<Int32Array>): Int32Array[] {
  const length = shape[1];
  return Array.from({ length: shape[0] }, (_, i) => data.subarray(i * length, (i + 1) * length));
}
