import type { Generator } from "../random/generator.ts";
import { ddimTimesteps, sampleDdim, sampleDdpm, samplePlms, type TimestepSpacing } from "./compvis-samplers.ts";
import { discreteSigmas, type KSamplerName, karrasSigmas, sampleK } from "./k-samplers.ts";
import type { DiffusionModel, Parameterization } from "./model.ts";
import { type RunHooks, SamplingRun } from "./run.ts";
import { NoiseSchedule } from "./schedule.ts";

export const SAMPLER_NAMES = [
  "ddpm",
  "ddim",
  "plms",
  "euler",
  "euler_ancestral",
  "heun",
  "dpmpp_2m",
  "dpmpp_2m_karras",
] as const;
export type SamplerName = (typeof SAMPLER_NAMES)[number];

export interface SampleOptions extends RunHooks {
  sampler: SamplerName;
  /** Denoising steps (DDPM: must equal the schedule's T). */
  steps: number;
  /** Default: SD's scaled_linear 0.00085 → 0.012, T = 1000. */
  schedule?: NoiseSchedule;
  /** What the model predicts (default "eps"); read it from the model config, never guess it. */
  parameterization?: Parameterization;
  /**
   * The noise source, advanced as the reference samplers advance torch's generator. Required by DDPM, Euler
   * ancestral and DDIM with eta > 0; optional (only keeps the stream aligned) for the others.
   */
  generator?: Generator;
  /** DDIM's η (default 0) or Euler ancestral's (default 1). */
  eta?: number;
  /** DDIM/PLMS timestep spacing (default "uniform", the original's). */
  spacing?: TimestepSpacing;
  /** DDIM/PLMS with "leading" spacing: diffusers' steps_offset (default 0). */
  stepsOffset?: number;
  /** DDIM/PLMS: ᾱ before the first timestep — "first" = ᾱ₀ as the original (default), "one" = set_alpha_to_one. */
  finalAlphaCumprod?: "first" | "one";
  /** k-samplers: σ schedule, "discrete" (evenly spaced timesteps, default) or "karras" (dpmpp_2m_karras's). */
  sigmaSchedule?: "discrete" | "karras";
  /** DDPM: clamp x̂₀ to [−1, 1] (default false: latents are not bounded). */
  clipDenoised?: boolean;
}

const K_SAMPLERS: Readonly<Record<string, KSamplerName>> = {
  euler: "euler",
  euler_ancestral: "euler_ancestral",
  heun: "heun",
  dpmpp_2m: "dpmpp_2m",
  dpmpp_2m_karras: "dpmpp_2m",
};

/**
 * Samples latents from unit-variance noise xT (flattened, any batch): calls `model` once per step (Heun and
 * PLMS's first step twice), reports each step, stops with the signal's reason when aborted. Returns x₀.
 * Arithmetic is float64 per element with latents stored as float32 between steps, like PyTorch's float32 tensors.
 */
export async function sample(model: DiffusionModel, xT: Float32Array, options: SampleOptions): Promise<Float32Array> {
  const { sampler, steps } = options;
  if (!SAMPLER_NAMES.includes(sampler)) {
    throw new RangeError(`unknown sampler "${sampler}"; one of ${SAMPLER_NAMES.join(", ")}`);
  }
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps ${steps}: must be an integer ≥ 1`);
  if (xT.length === 0) throw new RangeError("xT is empty");
  const schedule = options.schedule ?? NoiseSchedule.create();
  const parameterization = options.parameterization ?? "eps";
  if (parameterization !== "eps" && parameterization !== "v") {
    throw new RangeError(`parameterization "${parameterization}": must be "eps" or "v"`);
  }
  const eta = options.eta ?? (sampler === "euler_ancestral" ? 1 : 0);
  if (!(eta >= 0)) throw new RangeError(`eta ${eta}: must be ≥ 0`);
  const needsNoise =
    sampler === "ddpm" || (sampler === "euler_ancestral" && eta > 0) || (sampler === "ddim" && eta > 0);
  if (needsNoise && !options.generator)
    throw new Error(`sampler ${sampler}${eta ? ` with eta ${eta}` : ""} adds noise: pass a generator`);

  const kName = K_SAMPLERS[sampler];
  if (kName) {
    const karras = sampler === "dpmpp_2m_karras" || options.sigmaSchedule === "karras";
    if (steps > schedule.numTimesteps) throw new RangeError(`steps ${steps}: at most ${schedule.numTimesteps}`);
    const sigmas = karras ? karrasSigmas(schedule, steps) : discreteSigmas(schedule, steps);
    const run = new SamplingRun(model, xT.length, steps, options.generator, options);
    return sampleK(kName, run, schedule, xT, sigmas, { parameterization, eta });
  }
  if (sampler === "ddpm") {
    if (steps !== schedule.numTimesteps) {
      throw new RangeError(`ddpm runs every training timestep: steps must be ${schedule.numTimesteps}, got ${steps}`);
    }
    const run = new SamplingRun(model, xT.length, steps, options.generator, options);
    return sampleDdpm(run, schedule, xT, parameterization, options.clipDenoised ?? false);
  }
  const timesteps = ddimTimesteps(schedule.numTimesteps, steps, options.spacing, options.stepsOffset);
  const run = new SamplingRun(model, xT.length, timesteps.length, options.generator, options);
  const ddimOptions = {
    eta,
    spacing: options.spacing ?? "uniform",
    stepsOffset: options.stepsOffset ?? 0,
    finalAlphaCumprod: options.finalAlphaCumprod ?? "first",
    parameterization,
  };
  return sampler === "ddim"
    ? sampleDdim(run, schedule, xT, timesteps, ddimOptions)
    : samplePlms(run, schedule, xT, timesteps, ddimOptions);
}
