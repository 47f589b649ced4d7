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
  onStep?: (info: StepInfo) => void;
  signal?: AbortSignal;
}

/** One sampling run: validated model calls, cancellation, progress and the noise stream. */
export class SamplingRun {
  constructor(
    private readonly model: DiffusionModel,
    readonly size: number,
    readonly steps: number,
    private readonly generator: Generator | undefined,
    private readonly hooks: RunHooks,
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

  report(step: number, t: number, x: Float32Array, denoised: Float32Array): void {
    this.hooks.onStep?.({ step, steps: this.steps, t, x, denoised });
  }
}
