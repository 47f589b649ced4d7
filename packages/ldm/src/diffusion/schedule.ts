/**
 * β schedules of the original code (ldm/modules/diffusionmodules/util.py make_beta_schedule), with ᾱ in float64.
 * Names follow diffusers: "scaled_linear" is what the original calls "linear" (β = linspace(√start, √end)²) and
 * what SD1/SD2 use; "linear" is the plain linspace (original "sqrt_linear"); "cosine" is improved DDPM's.
 */
export type BetaScheduleKind = "scaled_linear" | "linear" | "cosine";

export interface ScheduleConfig {
  kind?: BetaScheduleKind;
  /** Training timesteps T (default 1000). */
  timesteps?: number;
  /** linear_start / linear_end of the original config (defaults: SD's 0.00085, 0.012). */
  linearStart?: number;
  linearEnd?: number;
  /** cosine_s (default 8e-3). */
  cosineS?: number;
}

/** The original configs' beta_schedule names mapped to ours. */
export const COMPVIS_SCHEDULE_NAMES: Readonly<Record<string, BetaScheduleKind>> = {
  linear: "scaled_linear",
  sqrt_linear: "linear",
  cosine: "cosine",
};

/** torch.linspace in float64: the first half counts up from start, the second half down from end. */
export function linspace(start: number, end: number, count: number): Float64Array {
  const out = new Float64Array(count);
  if (count === 1) out[0] = start;
  if (count < 2) return out;
  const step = (end - start) / (count - 1);
  const halfway = Math.floor(count / 2);
  for (let i = 0; i < count; i++) out[i] = i < halfway ? start + step * i : end - step * (count - i - 1);
  return out;
}

function makeBetas(
  kind: BetaScheduleKind,
  timesteps: number,
  start: number,
  end: number,
  cosineS: number,
): Float64Array {
  switch (kind) {
    case "scaled_linear":
      return linspace(Math.sqrt(start), Math.sqrt(end), timesteps).map((b) => b * b);
    case "linear":
      return linspace(start, end, timesteps);
    case "cosine": {
      const alphaBar = Float64Array.from({ length: timesteps + 1 }, (_, i) => {
        const angle = (((i / timesteps + cosineS) / (1 + cosineS)) * Math.PI) / 2;
        return Math.cos(angle) ** 2;
      });
      return Float64Array.from({ length: timesteps }, (_, i) => {
        const beta = 1 - alphaBar[i + 1] / alphaBar[0] / (alphaBar[i] / alphaBar[0]);
        return Math.min(Math.max(beta, 0), 0.999);
      });
    }
    default:
      throw new RangeError(`unknown beta schedule "${kind}" (scaled_linear, linear or cosine)`);
  }
}

/** A discrete diffusion schedule: β_t and ᾱ_t = Π(1 − β_s) for t = 0 … T−1, in float64. */
export class NoiseSchedule {
  readonly betas: Float64Array;
  readonly alphasCumprod: Float64Array;

  constructor(betas: Float64Array) {
    if (betas.length < 2) throw new RangeError(`a schedule needs at least 2 timesteps, got ${betas.length}`);
    for (const b of betas) if (!(b > 0 && b < 1)) throw new RangeError(`β = ${b} is outside (0, 1)`);
    this.betas = betas;
    this.alphasCumprod = new Float64Array(betas.length);
    let product = 1;
    betas.forEach((b, t) => {
      product *= 1 - b;
      this.alphasCumprod[t] = product;
    });
  }

  /** SD1/SD2's schedule unless told otherwise: scaled_linear 0.00085 → 0.012 over 1000 steps. */
  static create(config: ScheduleConfig = {}): NoiseSchedule {
    const timesteps = config.timesteps ?? 1000;
    if (!Number.isInteger(timesteps) || timesteps < 2)
      throw new RangeError(`timesteps ${timesteps}: must be an integer ≥ 2`);
    const kind = config.kind ?? "scaled_linear";
    return new NoiseSchedule(
      makeBetas(kind, timesteps, config.linearStart ?? 0.00085, config.linearEnd ?? 0.012, config.cosineS ?? 8e-3),
    );
  }

  get numTimesteps(): number {
    return this.betas.length;
  }

  /** ᾱ at an integer timestep, validated. */
  alphaCumprodAt(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTimesteps) {
      throw new RangeError(`timestep ${t} is not an integer in [0, ${this.numTimesteps})`);
    }
    return this.alphasCumprod[t];
  }
}

/** Forward diffusion q(z_t | z_0): √ᾱ_t · z0 + √(1 − ᾱ_t) · ε. */
export function qSample(schedule: NoiseSchedule, z0: Float32Array, t: number, eps: Float32Array): Float32Array {
  if (eps.length !== z0.length) throw new RangeError(`qSample: eps has ${eps.length} elements, z0 has ${z0.length}`);
  const alphaBar = schedule.alphaCumprodAt(t);
  const signal = Math.sqrt(alphaBar);
  const noise = Math.sqrt(1 - alphaBar);
  return z0.map((z, i) => signal * z + noise * eps[i]);
}
