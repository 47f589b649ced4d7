import type { Generator } from "../random/generator.ts";
import type { DiffusionModel } from "./model.ts";

/** Reported after every sampler step. */
export interface StepInfo {
  /** 0-based index of the step just finished. */
  step: number;
  /** Steps in the run. */
  steps: number;
  /** Timestep of the step's (first) model call. */
  t: number;
  /** Latents after the step. */
  x: Float32Array;
  /** The step's prediction of the clean latents x₀. */
  denoised: Float32Array;
}

export interface RunHooks {
  /** A promise it returns is awaited before the next model call (a caller may decode a preview there). */
  onStep?: (info: StepInfo) => unknown;
  signal?: AbortSignal;
}

/**
 * Clean latents a run starts from instead of pure noise (img2img, inpainting with an ordinary model): the run
 * begins at them noised to its first step's level. With `keep` (per latent element, 1 = keep the init, 0 =
 * generate, fractions blend) every step first replaces the kept part by the init noised to that step's level
 * with fresh noise, as the original DDIM/PLMS samplers do with their `mask` and `x0`; the result's kept part
 * is the init itself.
 */
export interface InitLatents {
  latents: Float32Array;
  keep?: Float32Array;
}

/**
 * A noise level as the sampler's latents carry it: x = signal·x₀ + noise·ε. DDPM/DDIM/PLMS: signal √ᾱ_t, noise
 * √(1−ᾱ_t); the k-samplers: signal 1, noise σ.
 */
export interface NoiseLevel {
  signal: number;
  noise: number;
}

/** Values that are NaN or ±Infinity in `values`. */
export function countNonFinite(values: Float32Array): number {
  let count = 0;
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) count++;
  return count;
}

/**
 * Latents went NaN or infinite during sampling: from that step on every value is lost, and the image would be
 * black. The caller, which knows the dtype and the settings, names the likely cause.
 */
export class NonFiniteLatentsError extends Error {
  constructor(
    /** 0-based step after which the latents were first found non-finite. */
    readonly step: number,
    readonly steps: number,
    readonly t: number,
    readonly count: number,
    readonly size: number,
  ) {
    super(
      `the latents after step ${step + 1} of ${steps} (t=${Number(t.toFixed(3))}) hold ${count} NaN/Inf values of ${size}`,
    );
  }
}

/** One sampling run: validated model calls, cancellation, progress, the noise stream and the init latents. */
export class SamplingRun {
  constructor(
    private readonly model: DiffusionModel,
    readonly size: number,
    readonly steps: number,
    private readonly generator: Generator | undefined,
    private readonly hooks: RunHooks,
    private readonly init?: InitLatents,
  ) {}

  async predict(x: Float32Array, t: number): Promise<Float32Array> {
    this.hooks.signal?.throwIfAborted();
    const out = await this.model(x, t);
    if (!(out instanceof Float32Array) || out.length !== this.size) {
      const got = out instanceof Float32Array ? `${out.length} values` : typeof out;
      throw new RangeError(`model returned ${got} at t=${t}; expected a Float32Array of ${this.size}`);
    }
    return out;
  }

  /**
   * Standard normal noise for the latents. The reference samplers draw it even where it is multiplied by 0
   * (DDIM with eta 0, PLMS, Euler and Heun without churn, DDPM's last step); drawing it here too keeps a shared
   * generator's later draws aligned with PyTorch. Without a generator such no-op draws are skipped.
   */
  noise(required: boolean): Float32Array | undefined {
    if (this.generator) return this.generator.randn(this.size);
    if (required) throw new Error("this sampler adds noise: pass a generator");
    return undefined;
  }

  /** The first latents: noise xT times `pureNoiseScale`, or the init latents noised to `level` with xT. */
  start(xT: Float32Array, level: NoiseLevel, pureNoiseScale: number): Float32Array {
    const init = this.init?.latents;
    if (!init) return pureNoiseScale === 1 ? xT : xT.map((v) => v * pureNoiseScale);
    return init.map((z, i) => level.signal * z + level.noise * xT[i]);
  }

  /** Before a step's model call: the kept part replaced by the init noised to the step's level (fresh noise). */
  blend(x: Float32Array, level: NoiseLevel): Float32Array {
    const { latents, keep } = this.init ?? {};
    if (!latents || !keep) return x;
    const noise = this.noise(true) as Float32Array;
    return x.map((xi, i) => keep[i] * (level.signal * latents[i] + level.noise * noise[i]) + (1 - keep[i]) * xi);
  }

  /**
   * Checks and reports a finished step and returns the latents to continue from: x itself, except after the last step of
   * a run with `keep`, where the kept part becomes the init itself.
   */
  async report(step: number, t: number, x: Float32Array, denoised: Float32Array): Promise<Float32Array> {
    const { latents, keep } = this.init ?? {};
    const done =
      latents && keep && step === this.steps - 1 ? x.map((xi, i) => keep[i] * latents[i] + (1 - keep[i]) * xi) : x;
    // A scan of latents already on the host (the samplers run there): far cheaper than the step's model call.
    const nonFinite = countNonFinite(done);
    if (nonFinite) throw new NonFiniteLatentsError(step, this.steps, t, nonFinite, done.length);
    await this.hooks.onStep?.({ step, steps: this.steps, t, x: done, denoised });
    return done;
  }
}
