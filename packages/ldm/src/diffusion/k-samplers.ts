import type { Parameterization } from "./model.ts";
import type { SamplingRun } from "./run.ts";
import { linspace, type NoiseSchedule } from "./schedule.ts";

// The k-diffusion samplers (Karras et al. 2022 / crowsonkb's k_diffusion.sampling) over a discrete-time model
// wrapped like k_diffusion.external.CompVisDenoiser / CompVisVDenoiser: σ_t = √((1 − ᾱ_t)/ᾱ_t).

const logSigmaCache = new WeakMap<NoiseSchedule, Float64Array>();

/** log σ_t of the training timesteps, ascending in t. */
function logSigmas(schedule: NoiseSchedule): Float64Array {
  let cached = logSigmaCache.get(schedule);
  if (!cached) {
    cached = schedule.alphasCumprod.map((a) => Math.log(Math.sqrt((1 - a) / a)));
    logSigmaCache.set(schedule, cached);
  }
  return cached;
}

/** σ at a fractional timestep: log σ interpolated linearly between the neighbouring integers (t_to_sigma). */
function tToSigma(logSigma: Float64Array, t: number): number {
  const low = Math.floor(t);
  const high = Math.ceil(t);
  const w = t - low;
  return Math.exp((1 - w) * logSigma[low] + w * logSigma[high]);
}

/** The fractional timestep of σ (sigma_to_t): inverse of tToSigma, clamped to [0, T−1]. */
export function sigmaToT(schedule: NoiseSchedule, sigma: number): number {
  const logSigma = logSigmas(schedule);
  const target = Math.log(sigma);
  let low = 0;
  while (low + 1 < logSigma.length && logSigma[low + 1] <= target) low++;
  low = Math.min(low, logSigma.length - 2);
  const w = Math.min(Math.max((logSigma[low] - target) / (logSigma[low] - logSigma[low + 1]), 0), 1);
  return (1 - w) * low + w * (low + 1);
}

/** `steps` σ from σ_max down to σ_min at evenly spaced timesteps, then 0 (DiscreteSchedule.get_sigmas). */
export function discreteSigmas(schedule: NoiseSchedule, steps: number): number[] {
  const logSigma = logSigmas(schedule);
  return [...Array.from(linspace(schedule.numTimesteps - 1, 0, steps), (t) => tToSigma(logSigma, t)), 0];
}

/** Karras et al.'s schedule between the model's σ_min and σ_max, then 0 (get_sigmas_karras). */
export function karrasSigmas(schedule: NoiseSchedule, steps: number, rho = 7): number[] {
  const logSigma = logSigmas(schedule);
  const minInvRho = Math.exp(logSigma[0]) ** (1 / rho);
  const maxInvRho = Math.exp(logSigma[logSigma.length - 1]) ** (1 / rho);
  return [...Array.from(linspace(0, 1, steps), (r) => (maxInvRho + r * (minInvRho - maxInvRho)) ** rho), 0];
}

export type KSamplerName = "euler" | "euler_ancestral" | "heun" | "dpmpp_2m";

export interface KSamplerOptions {
  parameterization: Parameterization;
  /** Ancestral noise amount for euler_ancestral (default 1). */
  eta: number;
}

/** The denoiser D(x, σ): the model called at c_in·x and timestep t(σ), turned into a prediction of x₀. */
class Denoiser {
  constructor(
    private readonly run: SamplingRun,
    private readonly schedule: NoiseSchedule,
    private readonly parameterization: Parameterization,
  ) {}

  async denoise(x: Float32Array, sigma: number): Promise<Float32Array> {
    const variance = sigma * sigma + 1;
    const cIn = 1 / Math.sqrt(variance);
    const out = await this.run.predict(
      x.map((xi) => xi * cIn),
      sigmaToT(this.schedule, sigma),
    );
    if (this.parameterization === "eps") return x.map((xi, i) => xi - sigma * out[i]);
    const cSkip = 1 / variance;
    const cOut = -sigma / Math.sqrt(variance);
    return x.map((xi, i) => out[i] * cOut + xi * cSkip);
  }
}

/** (σ_down, σ_up) of an ancestral step from σ_from to σ_to. */
function ancestralStep(sigmaFrom: number, sigmaTo: number, eta: number): [number, number] {
  if (!eta) return [sigmaTo, 0];
  const up = Math.min(sigmaTo, eta * Math.sqrt((sigmaTo ** 2 * (sigmaFrom ** 2 - sigmaTo ** 2)) / sigmaFrom ** 2));
  return [Math.sqrt(sigmaTo ** 2 - up ** 2), up];
}

/** x + (x − denoised)/σ · dt: an Euler step of the probability-flow ODE. */
function eulerStep(x: Float32Array, denoised: Float32Array, sigma: number, dt: number): Float32Array {
  return x.map((xi, i) => xi + ((xi - denoised[i]) / sigma) * dt);
}

/**
 * Runs a k-sampler from unit-variance noise xT (scaled by σ_max here, as k-diffusion's scripts do) over `sigmas`
 * (descending, ending in 0; an img2img run passes the tail of the full list, its init noised by σ of its start). Noise is drawn where k-diffusion draws it: Euler and Heun draw their (unused, churn
 * 0) noise first in every step, Euler ancestral after the step's update while σ_next > 0.
 */
export async function sampleK(
  name: KSamplerName,
  run: SamplingRun,
  schedule: NoiseSchedule,
  xT: Float32Array,
  sigmas: number[],
  options: KSamplerOptions,
): Promise<Float32Array> {
  const denoiser = new Denoiser(run, schedule, options.parameterization);
  let x = run.start(xT, { signal: 1, noise: sigmas[0] }, sigmas[0]);
  let previousDenoised: Float32Array | undefined;
  for (let i = 0; i + 1 < sigmas.length; i++) {
    const sigma = sigmas[i];
    const next = sigmas[i + 1];
    x = run.blend(x, { signal: 1, noise: sigma });
    if (name === "euler" || name === "heun") run.noise(false);
    const denoised = await denoiser.denoise(x, sigma);
    if (name === "euler") {
      x = eulerStep(x, denoised, sigma, next - sigma);
    } else if (name === "euler_ancestral") {
      const [down, up] = ancestralStep(sigma, next, options.eta);
      x = eulerStep(x, denoised, sigma, down - sigma);
      if (next > 0) {
        const noise = run.noise(true)!;
        x = x.map((xi, j) => xi + noise[j] * up);
      }
    } else if (name === "heun") {
      const euler = eulerStep(x, denoised, sigma, next - sigma);
      if (next === 0) {
        x = euler;
      } else {
        const denoisedNext = await denoiser.denoise(euler, next);
        const dt = next - sigma;
        x = x.map((xi, j) => xi + (((xi - denoised[j]) / sigma + (euler[j] - denoisedNext[j]) / next) / 2) * dt);
      }
    } else {
      // DPM-Solver++(2M) in t = −log σ; first-order on the first and the last step.
      const h = Math.log(sigma) - Math.log(next);
      const decay = next / sigma;
      const weight = -Math.expm1(-h);
      let target = denoised;
      if (previousDenoised && next !== 0) {
        const r = (Math.log(sigmas[i - 1]) - Math.log(sigma)) / h;
        const prev = previousDenoised;
        target = denoised.map((d, j) => (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * prev[j]);
      }
      x = x.map((xi, j) => decay * xi + weight * target[j]);
      previousDenoised = denoised;
    }
    x = await run.report(i, sigmaToT(schedule, sigma), x, denoised);
  }
  return x;
}
