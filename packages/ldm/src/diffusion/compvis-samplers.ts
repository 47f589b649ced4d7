import { epsAndDenoised, type Parameterization } from "./model.ts";
import type { NoiseLevel, SamplingRun } from "./run.ts";
import type { NoiseSchedule } from "./schedule.ts";

/** How DDIM/PLMS pick their timesteps from the T training steps. */
export type TimestepSpacing = "uniform" | "leading" | "trailing";

/**
 * DDIM/PLMS timesteps, ascending.
 * - "uniform" (the original make_ddim_timesteps): range(0, T, T // steps) + 1. Like the original, when steps does
 *   not divide T this can give more than `steps` timesteps (e.g. 7 → 8); a timestep of T is dropped (steps 3).
 * - "leading" (diffusers): i · (T // steps) + stepsOffset.
 * - "trailing" (diffusers): round(T − i · T / steps) − 1.
 */
export function ddimTimesteps(
  numTimesteps: number,
  steps: number,
  spacing: TimestepSpacing = "uniform",
  stepsOffset = 0,
): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > numTimesteps) {
    throw new RangeError(`steps ${steps}: must be an integer in [1, ${numTimesteps}]`);
  }
  let timesteps: number[];
  if (spacing === "uniform") {
    const stride = Math.floor(numTimesteps / steps);
    timesteps = [];
    // The original's last timestep can be T itself (steps 3: 1, 334, 667, 1000), where it then fails indexing
    // ᾱ[T]; we drop that one instead.
    for (let t = 0; t + 1 < numTimesteps; t += stride) timesteps.push(t + 1);
  } else if (spacing === "leading") {
    const stride = Math.floor(numTimesteps / steps);
    timesteps = Array.from({ length: steps }, (_, i) => i * stride + stepsOffset);
  } else if (spacing === "trailing") {
    timesteps = Array.from(
      { length: steps },
      (_, i) => Math.round(numTimesteps - (i * numTimesteps) / steps) - 1,
    ).reverse();
  } else {
    throw new RangeError(`unknown timestep spacing "${spacing}" (uniform, leading or trailing)`);
  }
  for (const t of timesteps) {
    if (t < 0 || t >= numTimesteps)
      throw new RangeError(`timestep ${t} (spacing ${spacing}, offset ${stepsOffset}) is outside [0, ${numTimesteps})`);
  }
  return timesteps;
}

export interface DdimOptions {
  eta: number;
  spacing: TimestepSpacing;
  stepsOffset: number;
  /** ᾱ before the first timestep: ᾱ₀ of the schedule as the original (default), or 1 (diffusers set_alpha_to_one). */
  finalAlphaCumprod: "first" | "one";
  parameterization: Parameterization;
  /** Steps of the schedule skipped (img2img): the run starts at the timestep after them. */
  startStep: number;
}

interface DdimStepParameters {
  t: number;
  alpha: number;
  alphaPrev: number;
  sigma: number;
}

/** Per step, from the last timestep down (make_ddim_sampling_parameters): ᾱ_t, ᾱ_prev and σ_t (eta-scaled). */
function ddimParameters(schedule: NoiseSchedule, timesteps: number[], options: DdimOptions): DdimStepParameters[] {
  const first = options.finalAlphaCumprod === "one" ? 1 : schedule.alphasCumprod[0];
  return timesteps
    .map((t, i) => {
      const alpha = schedule.alphaCumprodAt(t);
      const alphaPrev = i === 0 ? first : schedule.alphasCumprod[timesteps[i - 1]];
      const sigma = options.eta * Math.sqrt(((1 - alphaPrev) / (1 - alpha)) * (1 - alpha / alphaPrev));
      return { t, alpha, alphaPrev, sigma };
    })
    .reverse();
}

/** The DDIM update x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ²)·ε + σ·z, without clipping x̂₀ (as the original). */
function ddimUpdate(
  run: SamplingRun,
  x: Float32Array,
  eps: Float32Array,
  p: DdimStepParameters,
): { xPrev: Float32Array; denoised: Float32Array } {
  const { denoised } = epsAndDenoised(x, eps, p.alpha, "eps");
  const noise = run.noise(p.sigma > 0);
  const signal = Math.sqrt(p.alphaPrev);
  const direction = Math.sqrt(1 - p.alphaPrev - p.sigma * p.sigma);
  const xPrev = denoised.map((d, i) => signal * d + direction * eps[i] + (noise ? p.sigma * noise[i] : 0));
  return { xPrev, denoised };
}

async function predictEps(
  run: SamplingRun,
  x: Float32Array,
  t: number,
  alpha: number,
  parameterization: Parameterization,
) {
  return epsAndDenoised(x, await run.predict(x, t), alpha, parameterization).eps;
}

/** Turns a step's ε into the ε the DDIM update uses (identity for DDIM, the multistep estimate for PLMS). */
type EpsEstimator = (
  eps: Float32Array,
  x: Float32Array,
  p: DdimStepParameters,
  next: DdimStepParameters,
) => Promise<Float32Array>;

/** x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε. */
function discreteLevel(alphaCumprod: number): NoiseLevel {
  return { signal: Math.sqrt(alphaCumprod), noise: Math.sqrt(1 - alphaCumprod) };
}

async function ddimLoop(
  run: SamplingRun,
  schedule: NoiseSchedule,
  xT: Float32Array,
  timesteps: number[],
  options: DdimOptions,
  estimate: EpsEstimator,
): Promise<Float32Array> {
  const parameters = ddimParameters(schedule, timesteps, options).slice(options.startStep);
  let x = run.start(xT, discreteLevel(parameters[0].alpha), 1);
  for (const [step, p] of parameters.entries()) {
    x = run.blend(x, discreteLevel(p.alpha));
    const eps = await predictEps(run, x, p.t, p.alpha, options.parameterization);
    // The next timestep, or this one again at the last step (plms.py's time_range[min(i + 1, len − 1)]).
    const next = parameters[Math.min(step + 1, parameters.length - 1)];
    const { xPrev, denoised } = ddimUpdate(run, x, await estimate(eps, x, p, next), p);
    x = await run.report(step, p.t, xPrev, denoised);
  }
  return x;
}

type DdimFamilySampler = (
  run: SamplingRun,
  schedule: NoiseSchedule,
  xT: Float32Array,
  timesteps: number[],
  options: DdimOptions,
) => Promise<Float32Array>;

/** DDIM as the original ddim.py (p_sample_ddim), with v-prediction converted to ε first. */
export const sampleDdim: DdimFamilySampler = (run, schedule, xT, timesteps, options) =>
  ddimLoop(run, schedule, xT, timesteps, options, async (eps) => eps);

/**
 * PLMS as the original plms.py: Adams–Bashforth combinations of up to 4 past ε, the first step a pseudo improved
 * Euler step (a DDIM step, the model again at the next timestep, the mean of both ε). eta must be 0.
 */
export const samplePlms: DdimFamilySampler = (run, schedule, xT, timesteps, options) => {
  if (options.eta !== 0) throw new RangeError(`PLMS needs eta 0, got ${options.eta}`);
  const pastEps: Float32Array[] = [];
  return ddimLoop(run, schedule, xT, timesteps, options, async (eps, x, p, next) => {
    const [e1, e2, e3] = [pastEps.at(-1), pastEps.at(-2), pastEps.at(-3)];
    pastEps.push(eps);
    if (pastEps.length > 3) pastEps.shift();
    if (!e1) {
      const { xPrev } = ddimUpdate(run, x, eps, p);
      const epsNext = await predictEps(run, xPrev, next.t, next.alpha, options.parameterization);
      return eps.map((e, i) => (e + epsNext[i]) / 2);
    }
    if (!e2) return eps.map((e, i) => (3 * e - e1[i]) / 2);
    if (!e3) return eps.map((e, i) => (23 * e - 16 * e1[i] + 5 * e2[i]) / 12);
    return eps.map((e, i) => (55 * e - 59 * e1[i] + 37 * e2[i] - 9 * e3[i]) / 24);
  });
};

/**
 * Ancestral DDPM over all T timesteps (the original LatentDiffusion.p_sample): x̂₀ from the prediction, the
 * posterior mean μ̃(x_t, x̂₀) plus √β̃_t·z with β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t) — Ho et al.'s step with σ_t² = β̃_t.
 * No noise at t = 0. clipDenoised clamps x̂₀ to [−1, 1]: the original's DDPM class defaults to it (clip_denoised=True,
 * inherited by LatentDiffusion) though latents are not bounded; we default to no clipping.
 */
export async function sampleDdpm(
  run: SamplingRun,
  schedule: NoiseSchedule,
  xT: Float32Array,
  parameterization: Parameterization,
  clipDenoised: boolean,
  startStep: number,
): Promise<Float32Array> {
  const first = schedule.numTimesteps - 1 - startStep;
  let x = run.start(xT, discreteLevel(schedule.alphasCumprod[first]), 1);
  for (let t = first; t >= 0; t--) {
    const alpha = schedule.alphasCumprod[t];
    x = run.blend(x, discreteLevel(alpha));
    const alphaPrev = t > 0 ? schedule.alphasCumprod[t - 1] : 1;
    const beta = schedule.betas[t];
    const predicted = epsAndDenoised(x, await run.predict(x, t), alpha, parameterization).denoised;
    const denoised = clipDenoised ? predicted.map((d) => Math.min(Math.max(d, -1), 1)) : predicted;
    const denoisedCoefficient = (beta * Math.sqrt(alphaPrev)) / (1 - alpha);
    const xCoefficient = ((1 - alphaPrev) * Math.sqrt(1 - beta)) / (1 - alpha);
    const variance = (beta * (1 - alphaPrev)) / (1 - alpha);
    const noise = run.noise(t > 0);
    const std = t > 0 ? Math.sqrt(variance) : 0;
    const xPrev = x.map(
      (xi, i) => denoisedCoefficient * denoised[i] + xCoefficient * xi + (noise ? std * noise[i] : 0),
    );
    x = await run.report(first - t, t, xPrev, denoised);
  }
  return x;
}
