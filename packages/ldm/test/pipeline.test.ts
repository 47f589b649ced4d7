import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { SamplerName } from "../src/diffusion/index.ts";
import { rgbaToPixels } from "../src/image/pixels.ts";
import { type PipelineOptionError, StableDiffusion } from "../src/pipeline/index.ts";
import { Generator, randn } from "../src/random/index.ts";
import { Dump } from "../src/validate/dump.ts";
import { maxRelativeError } from "./helpers/compare.ts";
import { CLIP_VOCAB, writeTinyVocab } from "./helpers/tiny-vocab.ts";

// The committed tiny checkpoints, configs and sample dumps of reference/make_dumps.py: a classifier-free guided
// sampling loop of the reference PyTorch port (10 steps, guidance 7.5, η 0) from a fixed x_T and token ids.
const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));

const device = await useDevice();
let scratch: string;
let vocab: string;
const pipes = new Map<string, StableDiffusion>();

beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-pipeline-"));
  // The tiny text encoders have 1000 tokens (start 998, end 999): CLIP's vocabulary cut to fit them.
  vocab = writeTinyVocab(join(scratch, "tokenizer"), 1000);
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

async function pipeline(name: string): Promise<StableDiffusion> {
  let pipe = pipes.get(name);
  if (!pipe) {
    pipe = await StableDiffusion.load(join(DUMPS, `${name}.safetensors`), {
      device,
      config: join(DUMPS, `${name}.yaml`),
      vocab,
    });
    pipes.set(name, pipe);
  }
  return pipe;
}

function rows(ids: Int32Array, length: number): Int32Array[] {
  return Array.from({ length: ids.length / length }, (_, i) => ids.subarray(i * length, (i + 1) * length));
}

// Tolerance on max|ours − ref| / max|ref| of z₀ and of the decoded image. Every network call matches PyTorch to
// ~1e-6 relative in f32 (validate's component checks, summation order); 10 guided steps amplify that (guidance
// multiplies the difference of the halves by 7.5). Measured on lavapipe: z₀ 3.6e-6 – 6.2e-6, images ≤ 1.4e-5.
// 5e-5 leaves room for other adapters' summation orders, while a wrong timestep, scale factor, CFG order,
// c_concat order or parameterization moves z₀ by 1e-2 or more.
const SAMPLE_TOLERANCE = 5e-5;

describe("sample dumps through the pipeline's sampling path", () => {
  it.each([
    ["tiny-sd1", "ddim"],
    ["tiny-sd1", "plms"],
    ["tiny-sd1", "euler"],
    ["tiny-sd2", "ddim"],
    ["tiny-sd2", "euler"],
    ["tiny-inpaint", "ddim"],
  ])("%s %s reproduces z₀ (and the decoded image)", async (name, sampler) => {
    const pipe = await pipeline(name);
    const dump = await Dump.open(join(DUMPS, `${name}.sample-${sampler}.safetensors`));
    try {
      const meta = dump.metadata;
      expect([meta.sampler, meta.steps, meta.guidance_scale, Number(meta.eta)]).toEqual([sampler, "10", "7.5", 0]);
      const xT = await dump.floats("sample", "in", "x_T");
      const cond = await dump.ints("sample", "in", "cond_ids");
      const uncond = await dump.ints("sample", "in", "uncond_ids");
      const cConcat = dump.has("sample", "in", "c_concat") ? await dump.floats("sample", "in", "c_concat") : undefined;
      const length = cond.shape[1];
      const z0 = await pipe.sampleLatents({
        condIds: rows(cond.data, length),
        uncondIds: rows(uncond.data, length),
        xT: xT.data,
        latentShape: xT.shape,
        sampler: sampler as SamplerName,
        steps: Number(meta.steps),
        guidanceScale: Number(meta.guidance_scale),
        cConcat: cConcat?.data,
      });
      const reference = await dump.floats("sample", "out", "z_0");
      const zError = maxRelativeError(z0, reference.data);
      let imageError: number | undefined;
      if (dump.has("sample", "out", "image")) {
        const image = await dump.floats("sample", "out", "image");
        imageError = maxRelativeError(await pipe.decodePixels(z0, xT.shape), image.data);
      }
      console.log(
        `${name} ${sampler}: z₀ rel ${zError.toExponential(2)}, image rel ${imageError?.toExponential(2) ?? "-"}`,
      );
      expect(zError).toBeLessThan(SAMPLE_TOLERANCE);
      if (imageError !== undefined) expect(imageError).toBeLessThan(SAMPLE_TOLERANCE);
    } finally {
      await dump.close();
    }
  });
});

describe("txt2img", () => {
  it("draws x_T as torch.randn(seed) on the CPU: seed 42 reproduces the dump's x_T run from a prompt", async () => {
    const pipe = await pipeline("tiny-sd1");
    const dump = await Dump.open(join(DUMPS, "tiny-sd1.sample-ddim.safetensors"));
    const xT = await dump.floats("sample", "in", "x_T");
    await dump.close();
    // make_dumps.py draws x_T = torch.randn([2, 4, 8, 8], generator=manual_seed(42)).
    expect(xT.data).toEqual(randn(42, xT.shape));
    const prompt = "a photograph of an astronaut riding a horse";
    const result = await pipe.txt2img({ prompt, seed: 42, width: 64, height: 64, batchSize: 2, steps: 2 });
    const direct = await pipe.sampleLatents({
      condIds: [pipe.tokenize(prompt).ids, pipe.tokenize(prompt).ids],
      uncondIds: [pipe.tokenize("").ids, pipe.tokenize("").ids],
      xT: xT.data,
      latentShape: xT.shape,
      sampler: "ddim",
      steps: 2,
      guidanceScale: 7.5,
    });
    expect(result.latents).toEqual(direct);
    expect(result.images.map((i) => [i.width, i.height, i.data.length])).toEqual([
      [64, 64, 64 * 64 * 4],
      [64, 64, 64 * 64 * 4],
    ]);
    expect(result.parameters[1]).toMatchObject({ seed: "42", batchIndex: 1, batchSize: 2, sampler: "ddim", steps: 2 });
  });

  it("guidance 1 runs the UNet on the conditional batch only; progress per step; previews decoded", async () => {
    const pipe = await pipeline("tiny-sd1");
    const forward = vi.spyOn(pipe.networks.unet, "forward");
    const progress: number[] = [];
    let previews = 0;
    await pipe.txt2img({
      prompt: "a cat",
      seed: 1,
      width: 32,
      height: 48,
      steps: 3,
      guidanceScale: 1,
      sampler: "euler",
      preview: 2,
      onProgress: (p) => {
        progress.push(p.step);
        if (p.preview) previews++;
        expect(p.preview?.[0].width ?? 32).toBe(32);
      },
    });
    // Steps 1 and 2 run the modules, step 3 replays step 2's recorded dispatches (replayingUNetDenoiser).
    expect(forward.mock.calls.map(([inputs]) => inputs.x.shape)).toEqual([
      [1, 4, 6, 4],
      [1, 4, 6, 4],
    ]);
    forward.mockRestore();
    expect(progress).toEqual([0, 1, 2]);
    expect(previews).toBe(2);
  });

  it("takes any multiple of 8: 24×40 is a 3×5 latent, which the UNet's one halving cannot halve cleanly", async () => {
    const pipe = await pipeline("tiny-sd1");
    const forward = vi.spyOn(pipe.networks.unet, "forward");
    const result = await pipe.txt2img({ prompt: "a cat", seed: 3, width: 24, height: 40, steps: 1, guidanceScale: 1 });
    expect(forward.mock.calls.map(([inputs]) => inputs.x.shape)).toEqual([[1, 4, 5, 3]]);
    forward.mockRestore();
    expect(result.latents.every(Number.isFinite)).toBe(true);
    expect(result.images.map((i) => [i.width, i.height, i.data.length])).toEqual([[24, 40, 24 * 40 * 4]]);
  });

  it("stops with the signal's reason", async () => {
    const pipe = await pipeline("tiny-sd1");
    const controller = new AbortController();
    const run = pipe.txt2img({
      prompt: "a cat",
      width: 32,
      height: 32,
      steps: 5,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.step === 1) controller.abort(new Error("cancelled by the user"));
      },
    });
    await expect(run).rejects.toThrow("cancelled by the user");
  });

  it("names every bad option", async () => {
    const pipe = await pipeline("tiny-sd1");
    const base = { prompt: "a cat", width: 32, height: 32, steps: 2 };
    const failure = (options: Partial<Parameters<StableDiffusion["txt2img"]>[0]>) =>
      pipe.txt2img({ ...base, ...options }).then(
        () => "no error",
        (e: PipelineOptionError) => e.message,
      );
    expect(await failure({ width: 36 })).toBe("width 36 must be a positive multiple of 8");
    expect(await failure({ sampler: "lms" as SamplerName })).toMatch(/^unknown sampler "lms"; one of ddpm, ddim, plms/);
    expect(await failure({ steps: 0 })).toBe("steps 0: must be an integer ≥ 1");
    expect(await failure({ batchSize: 0 })).toBe(
      "batch size 0: must be an integer in [1, 64] (more images: several calls)",
    );
    // CLIP's own vocabulary (start/end 49406/49407) does not fit the tiny text encoder's 1000 tokens.
    await expect(
      StableDiffusion.load(join(DUMPS, "tiny-sd1.safetensors"), {
        device,
        config: join(DUMPS, "tiny-sd1.yaml"),
        vocab: CLIP_VOCAB,
      }),
    ).rejects.toThrow("the tokenizer's start/end ids (49406/49407) are outside the text encoder's vocabulary of 1000");
    const inpainting = await pipeline("tiny-inpaint");
    await expect(inpainting.txt2img(base)).rejects.toThrow(/inpainting model/);
  });
});

describe("img2img and inpainting", () => {
  const image = {
    width: 32,
    height: 32,
    data: Uint8ClampedArray.from({ length: 32 * 32 * 4 }, (_, i) => (i % 4 === 3 ? 255 : (i * 7) % 256)),
  };
  /** White (repaint) in the top half, black (keep) below. */
  const mask = {
    width: 32,
    height: 32,
    data: Uint8ClampedArray.from({ length: 32 * 32 * 4 }, (_, i) => (i < 16 * 32 * 4 || i % 4 === 3 ? 255 : 0)),
  };

  it("img2img runs int(strength·steps) steps from the encoded image and is reproducible", async () => {
    const pipe = await pipeline("tiny-sd1");
    const steps: number[] = [];
    const options = { prompt: "a cat", initImage: image, strength: 0.5, steps: 6, seed: 3 };
    const first = await pipe.img2img({ ...options, onProgress: (p) => void steps.push(p.steps) });
    expect(steps).toEqual([3, 3, 3]);
    const again = await pipe.img2img(options);
    expect(again.latents).toEqual(first.latents);
    expect(first.parameters[0].strength).toBe(0.5);
  });

  it("an ordinary model keeps the init latents outside the mask exactly", async () => {
    const pipe = await pipeline("tiny-sd1");
    const result = await pipe.inpaint({ prompt: "a cat", initImage: image, mask, steps: 3, seed: 5, sampler: "euler" });
    // Latent rows 2–3 (pixel rows 16–31) are kept, rows 0–1 generated: the kept rows equal the encoded image.
    const [, c, h, w] = result.latentShape;
    const init = await latentOfImage(pipe, image, 5, c * h * w);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const at = (ch * h + y) * w + x;
          if (y >= 2) expect(result.latents[at]).toBe(init[at]);
          else expect(result.latents[at]).not.toBe(init[at]);
        }
      }
    }
  });

  it("an inpainting model gets c_concat = [mask, masked-image latents]; a mask of another size is refused", async () => {
    const pipe = await pipeline("tiny-inpaint");
    const forward = vi.spyOn(pipe.networks.unet, "forward");
    const result = await pipe.inpaint({ prompt: "a cat", initImage: image, mask, steps: 2, seed: 9 });
    expect(result.images.length).toBe(1);
    expect(forward.mock.calls[0][0].cConcat?.shape).toEqual([2, 5, 4, 4]);
    forward.mockRestore();
    const small = { ...mask, width: 16, height: 16, data: mask.data.subarray(0, 16 * 16 * 4) };
    await expect(pipe.inpaint({ prompt: "a cat", initImage: image, mask: small, steps: 2 })).rejects.toThrow(
      "the mask is 16×16, the init image 32×32: they must match",
    );
  });
});

describe("loss", () => {
  it("L_simple: the MSE of the prediction against ε (v for a v-model), reproducible from the seed", async () => {
    const image = {
      width: 32,
      height: 32,
      data: Uint8ClampedArray.from({ length: 32 * 32 * 4 }, (_, i) => (i * 13) % 256),
    };
    for (const [name, target] of [
      ["tiny-sd1", "eps"],
      ["tiny-sd2", "v"],
    ] as const) {
      const pipe = await pipeline(name);
      const a = await pipe.loss({ image, prompt: "a cat", t: 400, seed: 2 });
      const b = await pipe.loss({ image, prompt: "a cat", t: 400, seed: 2 });
      expect(a.target).toBe(target);
      expect(a.loss).toBe(b.loss);
      expect(a.lossType).toBe("l2");
      expect(a.loss).toBeGreaterThan(0);
      await expect(pipe.loss({ image, prompt: "a cat", t: 1000 })).rejects.toThrow(
        "t 1000: must be an integer in [0, 1000)",
      );
    }
  });
});

/** The scaled latent img2img/inpaint start from: the image's VAE sample with the run's first generator draws. */
async function latentOfImage(
  pipe: StableDiffusion,
  image: { width: number; height: number; data: Uint8ClampedArray },
  seed: number,
  size: number,
): Promise<Float32Array> {
  const input = Tensor.from(pipe.device, rgbaToPixels([image]), [1, 3, image.height, image.width]);
  const distribution = await pipe.networks.vae.encode(input);
  input.dispose();
  const latent = distribution.sample(new Generator(seed)).map((v) => v * pipe.config.scale_factor);
  expect(latent.length).toBe(size);
  return latent;
}
