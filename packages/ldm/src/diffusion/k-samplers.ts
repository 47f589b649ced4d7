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

/** σ at a fractional index: log σ interpolated linearly between the neighbouring integers (t_to_sigma). */
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

/** The σ spacings of `--schedule`: A1111's "Automatic"/"Normal" (the model's own), Karras and exponential. */
export type SigmaScheduleName = "normal" | "karras" | "exponential";

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

/** σ evenly spaced in log σ from σ_max to σ_min, then 0 (get_sigmas_exponential). */
export function exponentialSigmas(schedule: NoiseSchedule, steps: number): number[] {
  const logSigma = logSigmas(schedule);
  return [...Array.from(linspace(logSigma[logSigma.length - 1], logSigma[0], steps), Math.exp), 0];
}

export const SIGMA_SCHEDULES: Readonly<
  Record<SigmaScheduleName, (schedule: NoiseSchedule, steps: number) => number[]>
> = {
  normal: discreteSigmas,
  karras: karrasSigmas,
  exponential: exponentialSigmas,
};

/** The denoiser D(x, σ): the model called at c_in·x and timestep t(σ), turned into a prediction of x₀. */
export interface KDenoiser {
  denoise(x: Float32Array, sigma: number): Promise<Float32Array>;
  /** The model timestep of σ (for progress reports). */
  timestep(sigma: number): number;
}

class CompVisDenoiser implements KDenoiser {
  constructor(
    private readonly run: SamplingRun,
    private readonly schedule: NoiseSchedule,
    private readonly parameterization: Parameterization,
  ) {}

  timestep(sigma: number): number {
    return sigmaToT(this.schedule, sigma);
  }

  async denoise(x: Float32Array, sigma: number): Promise<Float32Array> {
    const variance = sigma * sigma + 1;
    const cIn = 1 / Math.sqrt(variance);
    const out = await this.run.predict(
      x.map((xi) => xi * cIn),
      this.timestep(sigma),
    );
    if (this.parameterization === "eps") return x.map((xi, i) => xi - sigma * out[i]);
    const cSkip = 1 / variance;
    const cOut = -sigma / Math.sqrt(variance);
    return x.map((xi, i) => out[i] * cOut + xi * cSkip);
  }
}

/**
 * A1111's LCM denoiser (sd_samplers_lcm.py LCMCompVisDenoiser): the 50 timesteps LCM was distilled on (19, 39,
 * … 999), σ mapped to the nearest of them, the ε-prediction's x₀ combined with x by LCM's boundary-condition
 * scalings (σ_data 0.5, timestep × 10).
 */
const LCM_ORIGINAL_STEPS = 50;

function lcmLogSigmas(schedule: NoiseSchedule): Float64Array {
  const skip = Math.floor(schedule.numTimesteps / LCM_ORIGINAL_STEPS);
  const all = logSigmas(schedule);
  return Float64Array.from(
    { length: LCM_ORIGINAL_STEPS },
    (_, k) => all[schedule.numTimesteps - 1 - (LCM_ORIGINAL_STEPS - 1 - k) * skip],
  );
}

class LcmDenoiser implements KDenoiser {
  private readonly logSigma: Float64Array;
  private readonly skip: number;

  constructor(
    private readonly run: SamplingRun,
    schedule: NoiseSchedule,
  ) {
    this.logSigma = lcmLogSigmas(schedule);
    this.skip = Math.floor(schedule.numTimesteps / LCM_ORIGINAL_STEPS);
  }

  timestep(sigma: number): number {
    const target = Math.log(sigma);
    let best = 0;
    for (let k = 1; k < this.logSigma.length; k++) {
      if (Math.abs(target - this.logSigma[k]) < Math.abs(target - this.logSigma[best])) best = k;
    }
    return best * this.skip + this.skip - 1;
  }

  async denoise(x: Float32Array, sigma: number): Promise<Float32Array> {
    const cIn = 1 / Math.sqrt(sigma * sigma + 1);
    const t = this.timestep(sigma);
    const eps = await this.run.predict(
      x.map((xi) => xi * cIn),
      t,
    );
    const scaled = t * 10;
    const cSkip = 0.25 / (scaled * scaled + 0.25);
    const cOut = scaled / Math.sqrt(scaled * scaled + 0.25);
    return x.map((xi, i) => cOut * (xi - sigma * eps[i]) + cSkip * xi);
  }
}

/** LCM's σ: `steps` timesteps evenly spaced from 999 down to 19, mapped to σ over its 50 (get_sigmas), then 0. */
export function lcmSigmas(schedule: NoiseSchedule, steps: number): number[] {
  const skip = Math.floor(schedule.numTimesteps / LCM_ORIGINAL_STEPS);
  const logSigma = lcmLogSigmas(schedule);
  const last = LCM_ORIGINAL_STEPS - 1;
  return [
    ...Array.from(linspace(last * skip + skip - 1, skip - 1, steps), (t) =>
      tToSigma(logSigma, Math.min(Math.max((t - (skip - 1)) / skip, 0), last)),
    ),
    0,
  ];
}

/** What one step of a k-sampler sees. */
export interface KStepContext {
  i: number;
  /** The whole σ list, descending, ending in 0. */
  sigmas: readonly number[];
  x: Float32Array;
  /** D(x, σ_i), already computed. */
  denoised: Float32Array;
  eta: number;
  denoiser: KDenoiser;
  /** Standard normal noise (as k-diffusion's default_noise_sampler); `required` false: a draw that is unused. */
  noise(required: boolean): Float32Array | undefined;
  /** What the sampler keeps between steps (multistep samplers): the previous D and log-σ step. */
  history: { denoised?: Float32Array; h?: number };
}

/** A k-sampler: its step, and whether it draws (unused, churn 0) noise before each model call. */
export interface KSampler {
  churnNoise: boolean;
  denoiser: "compvis" | "lcm";
  step(c: KStepContext): Float32Array | Promise<Float32Array>;
}

/** (σ_down, σ_up) of an ancestral step from σ_from to σ_to (get_ancestral_step). */
function ancestralStep(sigmaFrom: number, sigmaTo: number, eta: number): [number, number] {
  if (!eta) return [sigmaTo, 0];
  const up = Math.min(sigmaTo, eta * Math.sqrt((sigmaTo ** 2 * (sigmaFrom ** 2 - sigmaTo ** 2)) / sigmaFrom ** 2));
  return [Math.sqrt(sigmaTo ** 2 - up ** 2), up];
}

/** x + (x − denoised)/σ · dt: an Euler step of the probability-flow ODE. */
function eulerStep(x: Float32Array, denoised: Float32Array, sigma: number, dt: number): Float32Array {
  return x.map((xi, i) => xi + ((xi - denoised[i]) / sigma) * dt);
}

/** x + noise · scale, where noise may be an unused draw. */
function addNoise(x: Float32Array, noise: Float32Array | undefined, scale: number): Float32Array {
  return noise && scale ? x.map((xi, i) => xi + noise[i] * scale) : x;
}

/** sample_euler (churn 0). */
export const EULER: KSampler = {
  churnNoise: true,
  denoiser: "compvis",
  step: ({ i, sigmas, x, denoised }) => eulerStep(x, denoised, sigmas[i], sigmas[i + 1] - sigmas[i]),
};

/** sample_euler_ancestral. */
export const EULER_ANCESTRAL: KSampler = {
  churnNoise: false,
  denoiser: "compvis",
  step: ({ i, sigmas, x, denoised, eta, noise }) => {
    const [sigma, next] = [sigmas[i], sigmas[i + 1]];
    const [down, up] = ancestralStep(sigma, next, eta);
    const stepped = eulerStep(x, denoised, sigma, down - sigma);
    return next > 0 ? addNoise(stepped, noise(eta > 0), up) : stepped;
  },
};

/** sample_heun (churn 0): Euler, then the trapezoid of both slopes unless the step ends at σ = 0. */
export const HEUN: KSampler = {
  churnNoise: true,
  denoiser: "compvis",
  step: async ({ i, sigmas, x, denoised, denoiser }) => {
    const [sigma, next] = [sigmas[i], sigmas[i + 1]];
    const euler = eulerStep(x, denoised, sigma, next - sigma);
    if (next === 0) return euler;
    const denoisedNext = await denoiser.denoise(euler, next);
    const dt = next - sigma;
    return x.map((xi, j) => xi + (((xi - denoised[j]) / sigma + (euler[j] - denoisedNext[j]) / next) / 2) * dt);
  },
};

/** sample_dpmpp_2m: DPM-Solver++(2M) in t = −log σ; first-order on the first and the last step. */
export const DPMPP_2M: KSampler = {
  churnNoise: false,
  denoiser: "compvis",
  step: ({ i, sigmas, x, denoised, history }) => {
    const [sigma, next] = [sigmas[i], sigmas[i + 1]];
    const h = Math.log(sigma) - Math.log(next);
    const decay = next / sigma;
    const weight = -Math.expm1(-h);
    const previous = history.denoised;
    let target = denoised;
    if (previous && next !== 0) {
      const r = (Math.log(sigmas[i - 1]) - Math.log(sigma)) / h;
      target = denoised.map((d, j) => (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * previous[j]);
    }
    return x.map((xi, j) => decay * xi + weight * target[j]);
  },
};

/**
 * sample_dpmpp_2m_sde with its default (A1111's) midpoint solver; the last step (to σ = 0) returns D. Noise
 * comes from the run's generator per step (k-diffusion's default_noise_sampler), not A1111's Brownian tree.
 */
export const DPMPP_2M_SDE: KSampler = {
  churnNoise: false,
  denoiser: "compvis",
  step: ({ i, sigmas, x, denoised, eta, noise, history }) => {
    const [sigma, next] = [sigmas[i], sigmas[i + 1]];
    if (next === 0) return denoised;
    const h = Math.log(sigma) - Math.log(next);
    const etaH = eta * h;
    const weight = -Math.expm1(-h - etaH);
    const decay = (next / sigma) * Math.exp(-etaH);
    const previous = history.denoised;
    const correction = previous && history.h !== undefined ? (0.5 * weight * h) / history.h : 0;
    const stepped = x.map(
      (xi, j) => decay * xi + weight * denoised[j] + (previous ? correction * (denoised[j] - previous[j]) : 0),
    );
    history.h = h;
    return eta ? addNoise(stepped, noise(true), next * Math.sqrt(-Math.expm1(-2 * etaH))) : stepped;
  },
};

/**
 * sample_dpmpp_sde (r = ½): an ancestral DPM-Solver++ half step to the midpoint in log σ, the model there, then
 * the full step from both predictions; Euler on the last step. Noise per draw from the generator, as
 * DPMPP_2M_SDE.
 */
export const DPMPP_SDE: KSampler = {
  churnNoise: false,
  denoiser: "compvis",
  step: async ({ i, sigmas, x, denoised, eta, noise, denoiser }) => {
    const [sigma, next] = [sigmas[i], sigmas[i + 1]];
    if (next === 0) return eulerStep(x, denoised, sigma, next - sigma);
    const t = -Math.log(sigma);
    const tNext = -Math.log(next);
    const sigmaMid = Math.exp(-(t + (tNext - t) / 2));
    const [downMid, upMid] = ancestralStep(sigma, sigmaMid, eta);
    const weightMid = -Math.expm1(t + Math.log(downMid));
    const half = addNoise(
      x.map((xi, j) => (downMid / sigma) * xi + weightMid * denoised[j]),
      noise(eta > 0),
      upMid,
    );
    const denoisedMid = await denoiser.denoise(half, sigmaMid);
    const [down, up] = ancestralStep(sigma, next, eta);
    const weight = -Math.expm1(t + Math.log(down));
    return addNoise(
      x.map((xi, j) => (down / sigma) * xi + weight * denoisedMid[j]),
      noise(eta > 0),
      up,
    );
  },
};

/** A1111's sample_lcm: x = D(x, σ), re-noised to σ_next while σ_next > 0. */
export const LCM: KSampler = {
  churnNoise: false,
  denoiser: "lcm",
  step: ({ i, sigmas, denoised, noise }) => {
    const next = sigmas[i + 1];
    return next > 0 ? addNoise(denoised, noise(true), next) : denoised;
  },
};

export interface KSamplerOptions {
  parameterization: Parameterization;
  /** Noise amount of the ancestral and SDE samplers. */
  eta: number;
}

/**
 * Runs a k-sampler from unit-variance noise xT (scaled by σ_max here, as k-diffusion's scripts do) over `sigmas`
 * (descending, ending in 0; an img2img run passes the tail of the full list, its init noised by σ of its start).
 * Noise is drawn where k-diffusion draws it, so a shared generator stays aligned with PyTorch's.
 */
export async function sampleK(
  sampler: KSampler,
  run: SamplingRun,
  schedule: NoiseSchedule,
  xT: Float32Array,
  sigmas: number[],
  options: KSamplerOptions,
): Promise<Float32Array> {
  const denoiser =
    sampler.denoiser === "lcm"
      ? new LcmDenoiser(run, schedule)
      : new CompVisDenoiser(run, schedule, options.parameterization);
  let x = run.start(xT, { signal: 1, noise: sigmas[0] }, sigmas[0]);
  const history: KStepContext["history"] = {};
  const noise = (required: boolean) => run.noise(required);
  for (let i = 0; i + 1 < sigmas.length; i++) {
    const sigma = sigmas[i];
    x = run.blend(x, { signal: 1, noise: sigma });
    if (sampler.churnNoise) run.noise(false);
    const denoised = await denoiser.denoise(x, sigma);
    x = await sampler.step({ i, sigmas, x, denoised, eta: options.eta, denoiser, noise, history });
    history.denoised = denoised;
    x = await run.report(i, denoiser.timestep(sigma), x, denoised);
  }
  return x;
}
