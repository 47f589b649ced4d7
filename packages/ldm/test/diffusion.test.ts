import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  COMPVIS_SCHEDULE_NAMES,
  type DiffusionModel,
  ddimTimesteps,
  guided,
  NoiseSchedule,
  qSample,
  SAMPLER_NAMES,
  type SampleOptions,
  type SamplerName,
  type SigmaScheduleName,
  sample,
} from "../src/diffusion/index.ts";
import { Generator, randn } from "../src/random/index.ts";
import { maxRelativeError } from "./helpers/compare.ts";

// Fixture: reference/sampling/sampler_fixtures.py — the original CompVis DDPM/DDIM/PLMS and k-diffusion samplers
// run by PyTorch 1.13 on a toy model (see fixtures/README.md).
interface Run {
  name: string;
  options: {
    eta?: number;
    schedule?: SigmaScheduleName;
    parameterization?: "eps" | "v";
    clip_denoised?: boolean;
    steps?: number;
  };
  calls: number[];
  x0: number[];
}
const fixture: {
  x_T_seed: number;
  noise_seed: number;
  x_T: number[];
  schedules: Record<string, { betas_sample: Record<string, number>; alphas_cumprod_sample: Record<string, number> }>;
  q_sample: { t: number; noise_seed: number; z_t: number[] };
  runs: Run[];
} = JSON.parse(readFileSync(new URL("./fixtures/samplers/samplers.json", import.meta.url), "utf8"));

const SHAPE = [1, 4, 8, 8];
const xT = randn(fixture.x_T_seed, SHAPE);

/** The fixture's toy network, out = tanh(0.3x)·t/1000 + 0.1x, evaluated in float32 as PyTorch does. */
function toyModel(calls: number[] = []): DiffusionModel {
  const f = Math.fround;
  return async (x, t) => {
    calls.push(t);
    const scale = f(f(t) / 1000);
    return x.map((v) => f(f(f(Math.tanh(f(0.3 * v))) * scale) + f(f(0.1) * v)));
  };
}

/**
 * The sampler and σ spacing a fixture run is checked with: a Karras run through the sampler's `_karras` record
 * where there is one, else through the schedule option.
 */
function samplerOf(run: Run): { sampler: SamplerName; sigmaSchedule?: SigmaScheduleName } {
  const { schedule } = run.options;
  const karras = `${run.name}_karras`;
  if (schedule === "karras" && (SAMPLER_NAMES as readonly string[]).includes(karras)) {
    return { sampler: karras as SamplerName };
  }
  return { sampler: run.name as SamplerName, sigmaSchedule: schedule };
}

describe("schedules against the original make_beta_schedule", () => {
  for (const [original, ours] of Object.entries(COMPVIS_SCHEDULE_NAMES)) {
    it(`"${original}" (ours: ${ours}): β and ᾱ in float64 to the last bits`, () => {
      const schedule = NoiseSchedule.create({ kind: ours });
      const expected = fixture.schedules[original];
      // torch.linspace's AVX2 kernel and torch.cos round differently from scalar double arithmetic in the last
      // bit; cosine's β = 1 − ᾱ_{t+1}/ᾱ_t turns that into an absolute error of an ulp of 1 (2.2e-16), so β is
      // compared absolutely (2 ulp of 1) and ᾱ relatively, allowing for 1000 products.
      for (const [t, value] of Object.entries(expected.betas_sample)) {
        expect(Math.abs(schedule.betas[Number(t)] - value), `β[${t}]`).toBeLessThanOrEqual(2 ** -51);
      }
      for (const [t, value] of Object.entries(expected.alphas_cumprod_sample)) {
        expect(Math.abs(schedule.alphasCumprod[Number(t)] - value) / value, `ᾱ[${t}]`).toBeLessThan(1e-13);
      }
    });
  }

  it("q_sample matches the original (float32 coefficients there, float64 here: ≤ 1e-6 relative)", () => {
    const z = qSample(NoiseSchedule.create(), xT, fixture.q_sample.t, randn(fixture.q_sample.noise_seed, SHAPE));
    expect(maxRelativeError(z, fixture.q_sample.z_t)).toBeLessThan(1e-6);
  });

  it("rejects bad schedules and timesteps by name", () => {
    expect(() => NoiseSchedule.create({ kind: "quadratic" as "linear" })).toThrow(/unknown beta schedule "quadratic"/);
    expect(() => NoiseSchedule.create({ timesteps: 1 })).toThrow(/timesteps 1/);
    expect(() => qSample(NoiseSchedule.create(), xT, 1000, xT)).toThrow(/timestep 1000/);
  });
});

describe("samplers against the original implementations", () => {
  it("x_T from randn(1234) equals the fixture's torch draw", () => {
    expect(Array.from(xT)).toEqual(fixture.x_T);
  });

  // Tolerances (max abs error / max |ref| of x₀ after the run): PyTorch keeps ᾱ, σ and every intermediate in
  // float32; we keep coefficients in float64 and round latents to float32 per step. Per-step rounding differences
  // of ~1e-7 relative compound over the steps. Measured (torch 1.13): DDIM/PLMS 2–4e-7, DDPM 3.5e-6 (1000 steps),
  // k-samplers 1.5e-7–1.7e-6; the bounds leave 5–10× room.
  const TOLERANCE: Record<string, number> = {
    ddim: 2e-6,
    plms: 2e-6,
    ddpm: 2e-5,
    euler: 1e-5,
    euler_ancestral: 1e-5,
    heun: 1e-5,
    dpmpp_2m: 1e-5,
    dpmpp_2m_sde: 1e-5,
    dpmpp_sde: 1e-5,
    lcm: 1e-5,
  };
  // Model timesteps: integers, exact, for the CompVis samplers. The k-samplers' t = sigma_to_t(σ): Karras σ are
  // computed in float32 there (σ^(1/7) ramps), which moves t by up to 1.4e-3 (measured).
  const T_TOLERANCE = { exact: 0, k: 2e-3 };

  for (const run of fixture.runs) {
    const label = `${run.name} ${JSON.stringify(run.options)}`;
    it(label, async () => {
      const calls: number[] = [];
      const isK = !["ddim", "plms", "ddpm"].includes(run.name);
      const options: SampleOptions = {
        ...samplerOf(run),
        steps: run.options.steps ?? (run.name === "ddpm" ? 1000 : 10),
        eta: run.options.eta,
        parameterization: run.options.parameterization ?? "eps",
        generator: new Generator(fixture.noise_seed),
        clipDenoised: run.options.clip_denoised,
      };
      const x0 = await sample(toyModel(calls), xT, options);
      expect(calls.length).toBe(run.calls.length);
      const tError = Math.max(...calls.map((t, i) => Math.abs(t - run.calls[i])));
      expect(tError).toBeLessThanOrEqual(isK ? T_TOLERANCE.k : T_TOLERANCE.exact);
      expect(maxRelativeError(x0, run.x0)).toBeLessThan(TOLERANCE[run.name]);
    });
  }

  it("covers every sampler of the table, and every σ spacing of each k-sampler", () => {
    // What the runs above pass to sample(), so a sampler the fixture never reaches fails here.
    const exercised = new Set(fixture.runs.map((r) => samplerOf(r).sampler));
    expect(SAMPLER_NAMES.filter((name) => !exercised.has(name))).toEqual([]);
    const spacings = new Set(fixture.runs.map((r) => `${r.name} ${r.options.schedule ?? ""}`));
    for (const name of ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde"]) {
      for (const schedule of ["normal", "karras", "exponential"]) expect(spacings).toContain(`${name} ${schedule}`);
    }
  });
});

describe("v-prediction", () => {
  // A v-model built from the toy ε-model must give the same samples as the ε-model: v = √ᾱ·ε − √(1−ᾱ)·x₀.
  const schedule = NoiseSchedule.create();
  function asVModel(eps: DiffusionModel): DiffusionModel {
    return async (x, t) => {
      // For integer t ᾱ is the schedule's; DDIM/PLMS/DDPM only call at integers.
      const a = schedule.alphasCumprod[t];
      const e = await eps(x, t);
      return x.map((xi, i) => {
        const x0 = (xi - Math.sqrt(1 - a) * e[i]) / Math.sqrt(a);
        return Math.sqrt(a) * e[i] - Math.sqrt(1 - a) * x0;
      });
    };
  }
  for (const sampler of ["ddim", "plms", "ddpm"] as const) {
    it(`${sampler}: a v-model equivalent to an ε-model samples the same (≤ 1e-5 relative, float32 round trips)`, async () => {
      const steps = sampler === "ddpm" ? 1000 : 10;
      const base = { sampler, steps, schedule, eta: 0 };
      const fromEps = await sample(toyModel(), xT, { ...base, generator: new Generator(5) });
      const fromV = await sample(asVModel(toyModel()), xT, {
        ...base,
        parameterization: "v",
        generator: new Generator(5),
      });
      expect(maxRelativeError(fromV, fromEps)).toBeLessThan(1e-5);
    });
  }
});

describe("timestep spacing", () => {
  // Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2 (T = 1000, 10 steps).
  it("leading and trailing as diffusers; uniform as the original (+1 offset, = leading with steps_offset 1)", () => {
    expect(ddimTimesteps(1000, 10, "leading")).toEqual([0, 100, 200, 300, 400, 500, 600, 700, 800, 900]);
    expect(ddimTimesteps(1000, 10, "trailing")).toEqual([99, 199, 299, 399, 499, 599, 699, 799, 899, 999]);
    expect(ddimTimesteps(1000, 10, "uniform")).toEqual(ddimTimesteps(1000, 10, "leading", 1));
    // The original's range(0, 1000, 1000 // 7) has 8 entries.
    expect(ddimTimesteps(1000, 7, "uniform").length).toBe(8);
    expect(() => ddimTimesteps(1000, 10, "leading", 200)).toThrow(/timestep 1000 \(spacing leading, offset 200\)/);
  });

  it("set_alpha_to_one changes only the last step", async () => {
    const first: Float32Array[] = [];
    const one: Float32Array[] = [];
    const base = { sampler: "ddim" as const, steps: 10, spacing: "leading" as const };
    await sample(toyModel(), xT, { ...base, onStep: (s) => first.push(s.x) });
    await sample(toyModel(), xT, { ...base, finalAlphaCumprod: "one", onStep: (s) => one.push(s.x) });
    expect(one.slice(0, 9)).toEqual(first.slice(0, 9));
    expect(one[9]).not.toEqual(first[9]);
  });
});

describe("guidance, progress, cancellation, errors", () => {
  it("guided() runs one doubled batch: uncond half first, cond half second", async () => {
    const seen: number[] = [];
    const doubled: DiffusionModel = async (x) => {
      seen.push(x.length);
      return x.map((_, i) => (i < x.length / 2 ? 1 : 3));
    };
    const out = await guided(doubled, 7.5)(new Float32Array(4), 10);
    expect(seen).toEqual([8]);
    expect(Array.from(out)).toEqual([16, 16, 16, 16]);
  });

  it("reports every step and stops with the signal's reason", async () => {
    const steps: number[] = [];
    await sample(toyModel(), xT, { sampler: "euler", steps: 5, onStep: (s) => steps.push(s.step) });
    expect(steps).toEqual([0, 1, 2, 3, 4]);
    const controller = new AbortController();
    const run = sample(toyModel(), xT, {
      sampler: "ddim",
      steps: 10,
      signal: controller.signal,
      onStep: (s) => s.step === 2 && controller.abort(new Error("user cancelled")),
    });
    await expect(run).rejects.toThrow("user cancelled");
  });

  it("names what is wrong", async () => {
    const model = toyModel();
    await expect(sample(model, xT, { sampler: "lms" as SamplerName, steps: 10 })).rejects.toThrow(
      /unknown sampler "lms"/,
    );
    await expect(sample(model, xT, { sampler: "ddim", steps: 0 })).rejects.toThrow(/steps 0/);
    await expect(sample(model, xT, { sampler: "ddpm", steps: 50, generator: new Generator(1) })).rejects.toThrow(
      /steps must be 1000/,
    );
    await expect(sample(model, xT, { sampler: "euler_ancestral", steps: 10 })).rejects.toThrow(/pass a generator/);
    await expect(sample(model, xT, { sampler: "ddim", steps: 10, eta: 1 })).rejects.toThrow(/pass a generator/);
    await expect(
      sample(model, xT, { sampler: "plms", steps: 10, eta: 0.5, generator: new Generator(1) }),
    ).rejects.toThrow(/PLMS needs eta 0/);
    await expect(sample(model, xT, { sampler: "ddim", steps: 10, sigmaSchedule: "karras" })).rejects.toThrow(
      /sampler ddim takes no schedule "karras" \(none: it picks timesteps\)/,
    );
    await expect(sample(model, xT, { sampler: "euler", steps: 10, sigmaSchedule: "linear" })).rejects.toThrow(
      /sampler euler takes no schedule "linear" \(one of normal, karras, exponential\)/,
    );
    await expect(
      sample(model, xT, { sampler: "lcm", steps: 4, parameterization: "v", generator: new Generator(1) }),
    ).rejects.toThrow(/sampler lcm needs an ε-prediction model; this one predicts v/);
    await expect(sample(model, xT, { sampler: "dpmpp_sde", steps: 4 })).rejects.toThrow(/with eta 1 adds noise/);
    const short: DiffusionModel = async (x) => x.subarray(1);
    await expect(sample(short, xT, { sampler: "heun", steps: 3 })).rejects.toThrow(
      /model returned 255 values at t=999/,
    );
  });
});
