import { ddimTimesteps, sampleDdim, sampleDdpm, samplePlms, type TimestepSpacing } from "./compvis-samplers.ts";
import {
  DPMPP_2M,
  DPMPP_2M_SDE,
  DPMPP_SDE,
  EULER,
  EULER_ANCESTRAL,
  HEUN,
  type KSampler,
  LCM,
  lcmSigmas,
  SIGMA_SCHEDULES,
  type SigmaScheduleName,
  sampleK,
} from "./k-samplers.ts";
import type { Parameterization } from "./model.ts";
import type { SamplingRun } from "./run.ts";
import type { NoiseSchedule } from "./schedule.ts";

/** What a sampler's run gets from `sample`, validated. */
export interface SamplerCall {
  schedule: NoiseSchedule;
  xT: Float32Array;
  steps: number;
  eta: number;
  parameterization: Parameterization;
  /** The σ spacing (k-samplers), one of the record's `schedules`. */
  sigmaSchedule: SigmaScheduleName;
  spacing: TimestepSpacing;
  stepsOffset: number;
  finalAlphaCumprod: "first" | "one";
  clipDenoised: boolean;
  /** Plans a run over a schedule of `length` steps: the first step run (img2img) and the run itself. */
  plan(length: number): { startStep: number; run: SamplingRun };
}

/** One sampler: everything the CLI, the pipeline, the PNG metadata and the docs know about it. */
export interface SamplerRecord {
  readonly name: SamplerName;
  /** AUTOMATIC1111's name ("Sampler: …" in its infotext; the σ spacing goes in "Schedule type"). */
  readonly a1111: string;
  /** Whether it draws noise that matters: never, only with η > 0, or always (then it needs a generator). */
  readonly noise: "never" | "eta" | "always";
  readonly defaultEta: number;
  /** The σ spacings it accepts (`--schedule`), its default first; empty for the timestep samplers. */
  readonly schedules: readonly SigmaScheduleName[];
  /** Only ε-models (LCM's denoiser reads the output as ε). */
  readonly epsOnly?: boolean;
  run(call: SamplerCall): Promise<Float32Array>;
}

const ALL_SCHEDULES: readonly SigmaScheduleName[] = ["normal", "karras", "exponential"];

type Entry = Omit<SamplerRecord, "name">;

function kRecord(
  a1111: string,
  sampler: KSampler,
  extra: { noise?: SamplerRecord["noise"]; defaultEta?: number; schedule?: SigmaScheduleName } = {},
): Entry {
  const first = extra.schedule ?? "normal";
  return {
    a1111,
    noise: extra.noise ?? "never",
    defaultEta: extra.defaultEta ?? 0,
    schedules: [first, ...ALL_SCHEDULES.filter((s) => s !== first)],
    run: (c) => {
      if (c.steps > c.schedule.numTimesteps)
        throw new RangeError(`steps ${c.steps}: at most ${c.schedule.numTimesteps}`);
      const sigmas = SIGMA_SCHEDULES[c.sigmaSchedule](c.schedule, c.steps);
      const { startStep, run } = c.plan(c.steps);
      return sampleK(sampler, run, c.schedule, c.xT, sigmas.slice(startStep), c);
    },
  };
}

function ddimFamily(a1111: string, noise: Entry["noise"], sampler: typeof sampleDdim): Entry {
  return {
    a1111,
    noise,
    defaultEta: 0,
    schedules: [],
    run: (c) => {
      const timesteps = ddimTimesteps(c.schedule.numTimesteps, c.steps, c.spacing, c.stepsOffset);
      const { startStep, run } = c.plan(timesteps.length);
      const options = { ...c, startStep };
      return sampler(run, c.schedule, c.xT, timesteps, options);
    },
  };
}

const STOCHASTIC = { noise: "eta", defaultEta: 1 } as const;

/** Every sampler, in the order the CLI lists them. */
const TABLE = {
  ddpm: {
    a1111: "DDPM",
    noise: "always",
    defaultEta: 0,
    schedules: [],
    run: (c) => {
      if (c.steps !== c.schedule.numTimesteps) {
        throw new RangeError(
          `ddpm runs every training timestep: steps must be ${c.schedule.numTimesteps}, got ${c.steps}`,
        );
      }
      const { startStep, run } = c.plan(c.steps);
      return sampleDdpm(run, c.schedule, c.xT, c.parameterization, c.clipDenoised, startStep);
    },
  },
  ddim: ddimFamily("DDIM", "eta", sampleDdim),
  plms: ddimFamily("PLMS", "never", samplePlms),
  euler: kRecord("Euler", EULER),
  euler_ancestral: kRecord("Euler a", EULER_ANCESTRAL, STOCHASTIC),
  euler_ancestral_karras: kRecord("Euler a", EULER_ANCESTRAL, { ...STOCHASTIC, schedule: "karras" }),
  heun: kRecord("Heun", HEUN),
  dpmpp_2m: kRecord("DPM++ 2M", DPMPP_2M),
  dpmpp_2m_karras: kRecord("DPM++ 2M", DPMPP_2M, { schedule: "karras" }),
  dpmpp_2m_sde: kRecord("DPM++ 2M SDE", DPMPP_2M_SDE, STOCHASTIC),
  dpmpp_2m_sde_karras: kRecord("DPM++ 2M SDE", DPMPP_2M_SDE, { ...STOCHASTIC, schedule: "karras" }),
  dpmpp_sde: kRecord("DPM++ SDE", DPMPP_SDE, STOCHASTIC),
  dpmpp_sde_karras: kRecord("DPM++ SDE", DPMPP_SDE, { ...STOCHASTIC, schedule: "karras" }),
  lcm: {
    a1111: "LCM",
    noise: "always",
    defaultEta: 0,
    schedules: ["normal"],
    epsOnly: true,
    run: (c) => {
      if (c.schedule.numTimesteps < 50) throw new RangeError("lcm needs a schedule of at least 50 timesteps");
      const { startStep, run } = c.plan(c.steps);
      return sampleK(LCM, run, c.schedule, c.xT, lcmSigmas(c.schedule, c.steps).slice(startStep), c);
    },
  },
} as const satisfies Record<string, Entry>;

export type SamplerName = keyof typeof TABLE;

export const SAMPLERS: readonly SamplerRecord[] = Object.entries(TABLE).map(([name, entry]) => ({
  name: name as SamplerName,
  ...(entry as Entry),
}));

export const SAMPLER_NAMES: readonly SamplerName[] = SAMPLERS.map((s) => s.name);

/** The sampler of a name, or an error listing the names. */
export function samplerByName(name: string): SamplerRecord {
  const found = SAMPLERS.find((s) => s.name === name);
  if (!found) throw new RangeError(`unknown sampler "${name}"; one of ${SAMPLER_NAMES.join(", ")}`);
  return found;
}

/**
 * The σ spacing a sampler runs with: `requested` if it takes it, else its default (undefined for the timestep
 * samplers, which take none); an error names the choices.
 */
export function sigmaScheduleOf(record: SamplerRecord, requested?: string): SigmaScheduleName | undefined {
  if (requested === undefined) return record.schedules[0];
  if (!record.schedules.includes(requested as SigmaScheduleName)) {
    const choices = record.schedules.length ? `one of ${record.schedules.join(", ")}` : "none: it picks timesteps";
    throw new RangeError(`sampler ${record.name} takes no schedule "${requested}" (${choices})`);
  }
  return requested as SigmaScheduleName;
}

/** The defaults of a generation, for the CLI, the pipeline and the benchmarks alike. */
export const SAMPLING_DEFAULTS: { sampler: SamplerName; steps: number; guidanceScale: number } = {
  sampler: "ddim",
  steps: 50,
  guidanceScale: 7.5,
};
