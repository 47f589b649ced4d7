import type { Generator } from "../random/generator.ts";
import type { TimestepSpacing } from "./compvis-samplers.ts";
import type { DiffusionModel, Parameterization } from "./model.ts";
import { type InitLatents, type RunHooks, SamplingRun } from "./run.ts";
import { type SamplerName, samplerByName, sigmaScheduleOf } from "./samplers.ts";
import { NoiseSchedule } from "./schedule.ts";

export interface SampleOptions extends RunHooks {
  /** A name of SAMPLERS (checked here). */
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
  /** Noise amount of DDIM (default 0) and of the ancestral and SDE samplers (default 1). */
  eta?: number;
  /** DDIM/PLMS timestep spacing (default "uniform", the original's). */
  spacing?: TimestepSpacing;
  /** DDIM/PLMS with "leading" spacing: diffusers' steps_offset (default 0). */
  stepsOffset?: number;
  /** DDIM/PLMS: ᾱ before the first timestep — "first" = ᾱ₀ as the original (default), "one" = set_alpha_to_one. */
  finalAlphaCumprod?: "first" | "one";
  /**
   * k-samplers: the σ spacing, "normal" (evenly spaced timesteps), "karras" or "exponential"; default the
   * sampler's own (karras for the *_karras names).
   */
  sigmaSchedule?: string;
  /** DDPM: clamp x̂₀ to [−1, 1] (default false: latents are not bounded). */
  clipDenoised?: boolean;
  /** img2img / inpainting: the clean latents to start from (and keep), with xT as the noise added to them. */
  init?: InitLatents;
  /**
   * img2img: with `init`, run only the last ⌊strength·steps⌋ steps of the schedule (int(strength·steps) in both
   * the original img2img.py and diffusers), the init noised to the level of the first step run — diffusers'
   * choice; the original noises one DDIM step higher than it starts denoising. Default 1.
   */
  strength?: number;
}

/**
 * Samples latents from unit-variance noise xT (flattened, any batch): calls `model` once per step (Heun, DPM++ SDE
 * and PLMS's first step twice), reports each step, stops with the signal's reason when aborted. Returns x₀.
 * Arithmetic is float64 per element with latents stored as float32 between steps, like PyTorch's float32 tensors.
 */
export async function sample(model: DiffusionModel, xT: Float32Array, options: SampleOptions): Promise<Float32Array> {
  const { steps } = options;
  const sampler = samplerByName(options.sampler);
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`steps ${steps}: must be an integer ≥ 1`);
  if (xT.length === 0) throw new RangeError("xT is empty");
  const schedule = options.schedule ?? NoiseSchedule.create();
  const parameterization = options.parameterization ?? "eps";
  if (parameterization !== "eps" && parameterization !== "v") {
    throw new RangeError(`parameterization "${parameterization}": must be "eps" or "v"`);
  }
  if (sampler.epsOnly && parameterization !== "eps") {
    throw new RangeError(`sampler ${sampler.name} needs an ε-prediction model; this one predicts ${parameterization}`);
  }
  const sigmaSchedule = sigmaScheduleOf(sampler, options.sigmaSchedule);
  const eta = options.eta ?? sampler.defaultEta;
  // DDIM past η = 1 asks for more noise than the step has (√ of a negative: NaN latents); the ancestral and
  // SDE samplers' η is a fraction of the step's noise as well (AUTOMATIC1111 offers 0–1).
  if (!(eta >= 0 && eta <= 1)) throw new RangeError(`eta ${eta}: must be in [0, 1]`);
  const needsNoise = sampler.noise === "always" || (sampler.noise === "eta" && eta > 0);
  if (needsNoise && !options.generator)
    throw new Error(`sampler ${sampler.name}${eta ? ` with eta ${eta}` : ""} adds noise: pass a generator`);

  const init = checkInit(options.init, xT.length);
  const strength = options.strength ?? 1;
  if (!(strength > 0 && strength <= 1)) throw new RangeError(`strength ${strength}: must be in (0, 1]`);
  if (strength < 1 && !init) throw new RangeError(`strength ${strength} < 1 needs init latents to start from`);
  if (init?.keep && !options.generator) throw new Error("keeping init latents draws fresh noise: pass a generator");
  /** Steps skipped at the start of a schedule of `length` steps, and the run over the steps left. */
  const plan = (length: number) => {
    const runSteps = Math.min(Math.floor(strength * steps), length);
    if (runSteps < 1) {
      throw new RangeError(`strength ${strength} with ${steps} steps runs no step: raise the strength or the steps`);
    }
    const run = new SamplingRun(model, xT.length, runSteps, options.generator, options, init);
    return { startStep: length - runSteps, run };
  };
  return sampler.run({
    schedule,
    xT,
    steps,
    eta,
    parameterization,
    sigmaSchedule: sigmaSchedule ?? "normal",
    spacing: options.spacing ?? "uniform",
    stepsOffset: options.stepsOffset ?? 0,
    finalAlphaCumprod: options.finalAlphaCumprod ?? "first",
    clipDenoised: options.clipDenoised ?? false,
    plan,
  });
}

function checkInit(init: InitLatents | undefined, size: number): InitLatents | undefined {
  if (!init) return undefined;
  if (init.latents.length !== size) {
    throw new RangeError(`init latents have ${init.latents.length} values, xT has ${size}`);
  }
  if (init.keep && init.keep.length !== size) {
    throw new RangeError(`the keep mask has ${init.keep.length} values, the latents ${size}`);
  }
  return init;
}
