import { describe, expect, it } from "vitest";
import {
  type DiffusionModel,
  ddimTimesteps,
  NoiseSchedule,
  type SampleOptions,
  type StepInfo,
  sample,
} from "../src/diffusion/index.ts";
import { Generator, randn } from "../src/random/index.ts";
import { maxRelativeError } from "./helpers/compare.ts";

// img2img (strength) and kept init latents (inpainting with an ordinary model) on a toy network.

const SHAPE = [1, 4, 4, 4];
const SIZE = 64;
const schedule = NoiseSchedule.create();
const xT = randn(7, SHAPE);

/** A smooth toy ε-network; records the timesteps and inputs it was called with. */
function toyModel(calls: { t: number; x: Float32Array }[] = []): DiffusionModel {
  return async (x, t) => {
    calls.push({ t, x: x.slice() });
    return x.map((v) => Math.tanh(0.3 * v) * (t / 1000) + 0.1 * v);
  };
}

describe("strength: a run over the tail of the schedule", () => {
  // Samplers without multistep history: resuming a full run at step k from its latents must reproduce it.
  // The resumed start is init·signal + xT·noise with xT = 0 and init = x_k / signal, so only the float32 rounding
  // of init (≤ 1 ulp, 6e-8 relative) separates the two runs; 1e-6 allows for it growing over 6 steps.
  it.each(["ddim", "euler", "heun"] as const)(
    "%s: strength 0.6 of 10 steps = the last 6 steps of the full run",
    async (sampler) => {
      const full: StepInfo[] = [];
      const fullCalls: { t: number; x: Float32Array }[] = [];
      const base: SampleOptions = { sampler, steps: 10, schedule };
      const reference = await sample(toyModel(fullCalls), xT, { ...base, onStep: (s) => full.push(s) });
      const resumeFrom = full[3].x;
      const isK = sampler !== "ddim";
      const signal = isK ? 1 : Math.sqrt(schedule.alphasCumprod[full[4].t]);
      const calls: { t: number; x: Float32Array }[] = [];
      const steps: number[] = [];
      const resumed = await sample(toyModel(calls), new Float32Array(SIZE), {
        ...base,
        strength: 0.6,
        init: { latents: resumeFrom.map((v) => v / signal) },
        onStep: (s) => steps.push(s.steps),
      });
      expect(calls[0].t).toBe(full[4].t);
      expect(calls.map((c) => c.t)).toEqual(fullCalls.slice(fullCalls.length - calls.length).map((c) => c.t));
      expect(steps).toEqual([6, 6, 6, 6, 6, 6]);
      expect(maxRelativeError(resumed, reference)).toBeLessThan(1e-6);
    },
  );

  it("DDIM uses int(strength·steps) steps like the original img2img and diffusers, and noises to the first", async () => {
    const calls: { t: number; x: Float32Array }[] = [];
    const init = randn(3, SHAPE);
    await sample(toyModel(calls), xT, {
      sampler: "ddim",
      steps: 10,
      schedule,
      strength: 0.75,
      init: { latents: init },
    });
    // ddim timesteps 1, 101, …, 901: int(0.75·10) = 7 steps from 601 down.
    expect(calls.map((c) => c.t)).toEqual([601, 501, 401, 301, 201, 101, 1]);
    const a = schedule.alphasCumprod[601];
    const expected = init.map((z, i) => Math.sqrt(a) * z + Math.sqrt(1 - a) * xT[i]);
    expect(calls[0].x).toEqual(expected);
  });
});

describe("uniform DDIM timesteps", () => {
  it("drop the timestep T the original would index ᾱ with (and fail on), keep the original's extra steps", () => {
    expect(ddimTimesteps(1000, 3)).toEqual([1, 334, 667]);
    expect(ddimTimesteps(1000, 7)).toEqual([1, 143, 285, 427, 569, 711, 853, 995]);
    expect(ddimTimesteps(1000, 1000)).toEqual(Array.from({ length: 999 }, (_, i) => i + 1));
  });
});

describe("kept init latents (mask blending)", () => {
  const init = randn(11, SHAPE);
  const keep = Float32Array.from({ length: SIZE }, (_, i) => (i % 3 === 0 ? 1 : 0));

  it("keeps the init exactly where keep = 1 and blends the noised init in before every model call", async () => {
    const calls: { t: number; x: Float32Array }[] = [];
    const z0 = await sample(toyModel(calls), xT, {
      sampler: "ddim",
      steps: 5,
      schedule,
      generator: new Generator(5),
      init: { latents: init, keep },
    });
    keep.forEach((k, i) => {
      if (k) expect(z0[i]).toBe(init[i]);
    });
    // Before the first call: the start (init noised with xT), then the kept part re-noised with the generator's
    // first draw, as the original ddim_sampling's q_sample(x0, ts) before p_sample_ddim.
    const a = schedule.alphasCumprod[calls[0].t];
    const fresh = new Generator(5).randn(SHAPE);
    const expected = init.map((z, i) => Math.sqrt(a) * z + Math.sqrt(1 - a) * (keep[i] ? fresh[i] : xT[i]));
    expect(maxRelativeError(calls[0].x, expected)).toBeLessThan(1e-7);
  });

  it("keep = 0 everywhere is plain img2img", async () => {
    const options: SampleOptions = { sampler: "euler", steps: 6, schedule, generator: new Generator(1) };
    const plain = await sample(toyModel(), xT, { ...options, init: { latents: init } });
    const blended = await sample(toyModel(), xT, {
      ...options,
      generator: new Generator(1),
      init: { latents: init, keep: new Float32Array(SIZE) },
    });
    expect(blended).toEqual(plain);
  });

  it("names what is wrong", async () => {
    const model = toyModel();
    const base: SampleOptions = { sampler: "ddim", steps: 10, schedule };
    await expect(sample(model, xT, { ...base, strength: 0.5 })).rejects.toThrow(/strength 0.5 < 1 needs init latents/);
    await expect(sample(model, xT, { ...base, strength: 0.05, init: { latents: init } })).rejects.toThrow(
      /strength 0.05 with 10 steps runs no step/,
    );
    await expect(sample(model, xT, { ...base, strength: 1.5, init: { latents: init } })).rejects.toThrow(
      /strength 1.5: must be in \(0, 1\]/,
    );
    await expect(sample(model, xT, { ...base, init: { latents: init, keep } })).rejects.toThrow(/pass a generator/);
    await expect(sample(model, xT, { ...base, init: { latents: init.subarray(1) } })).rejects.toThrow(
      /init latents have 63 values, xT has 64/,
    );
  });
});
