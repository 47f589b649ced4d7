/**
 * The `sample` dump component: a whole classifier-free-guided sampling loop from x_T and token ids, run by the
 * pipeline's own sampling path (sampleFromTokens); decodeLatents turns a z_0 into the image.
 */
import { Tensor } from "@ldm/tensor";
import { NoiseSchedule, type SamplerName, samplerByName } from "../diffusion/index.ts";
import type { LoadedModel } from "../models/index.ts";
import { sampleFromTokens } from "../pipeline/denoiser.ts";
import type { Dump, HostTensor } from "./dump.ts";

export interface SampleSettings {
  sampler: SamplerName;
  steps: number;
  guidanceScale: number;
  eta: number;
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
  if (eta !== 0) fail(`has eta ${eta}: only eta 0 is deterministic from x_T (the dump carries no noise stream)`);
  return { sampler: sampler as SamplerName, steps: number("steps"), guidanceScale: number("guidance_scale"), eta };
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
  if (!unet || !clip) throw new Error("internal: the sample component needs the UNet and the text encoder");
  const options = { ...settings(dump), ...overrides };
  const xT = await dump.floats("sample", "in", "x_T");
  const cond = await dump.ints("sample", "in", "cond_ids");
  const uncond = await dump.ints("sample", "in", "uncond_ids");
  const cConcat = dump.has("sample", "in", "c_concat") ? await dump.floats("sample", "in", "c_concat") : undefined;
  const schedule = NoiseSchedule.create({
    timesteps: config.timesteps,
    linearStart: config.linear_start,
    linearEnd: config.linear_end,
  });
  const z0 = await sampleFromTokens({ config, unet, clip }, schedule, {
    condIds: idRows(cond),
    uncondIds: idRows(uncond),
    xT: xT.data,
    latentShape: xT.shape,
    sampler: options.sampler,
    steps: options.steps,
    guidanceScale: options.guidanceScale,
    eta: options.eta,
    cConcat: cConcat?.data,
  });
  return { data: z0, shape: xT.shape };
}

/** The raw decoder output (about [-1, 1]) for clean latents z₀ as the UNet sees them (scaled by scale_factor). */
export async function decodeLatents(model: LoadedModel, z0: HostTensor): Promise<HostTensor> {
  const { vae, config } = model;
  if (!vae) throw new Error("internal: decoding latents needs the VAE");
  const device = vae.vb.device;
  const unscaled = z0.data.map((v) => v / config.scale_factor);
  const image = device.tidy(() => vae.decode(Tensor.from(device, unscaled, z0.shape)));
  try {
    return { data: await image.toFloat32(), shape: image.shape };
  } finally {
    image.dispose();
  }
}

/** A [B, L] id tensor of the dump as the B token rows sampleFromTokens takes. */
function idRows({ data, shape }: HostTensor<Int32Array>): Int32Array[] {
  const length = shape[1];
  return Array.from({ length: shape[0] }, (_, i) => data.subarray(i * length, (i + 1) * length));
}
