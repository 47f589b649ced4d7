/**
 * The paper's big inpainting model (models/ldm/inpainting_big) through the library and `ldm generate --init-image
 * --mask`, against the ORIGINAL scripts/inpaint.py run on tiny-inpainting (reference/make_ldm_family_extra_dumps.py):
 * the sample dump's x_T is torch.randn from x_T_seed, which is what the library draws from that seed, so inpaint()
 * with it and the dump's image and mask must give the dump's z_0 and its `inpainted` result.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng, encodePng, type RgbaImage } from "../src/image/png.ts";
import { LatentDiffusion } from "../src/pipeline/latent-diffusion.ts";
import { Dump } from "../src/validate/dump.ts";
import { maxRelativeError } from "./helpers/compare.ts";
import { DUMPS } from "./helpers/dump-pipelines.ts";
import { runCli } from "./helpers/run-cli.ts";

const device = await useDevice();
const MODEL = join(DUMPS, "tiny-inpainting.safetensors");

/** [1, C, H, W] values in [−1, 1] (from 8-bit pixels) as an opaque RGBA image; one channel is grey. */
function rgba(data: Float32Array, shape: readonly number[]): RgbaImage {
  const [, channels, height, width] = shape;
  const plane = width * height;
  const out = new Uint8ClampedArray(plane * 4);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++)
      out[4 * p + c] = Math.round(((data[(channels === 1 ? 0 : c) * plane + p] + 1) / 2) * 255);
    out[4 * p + 3] = 255;
  }
  return { width, height, data: out };
}

/** Largest difference in 8-bit levels between an image and [0, 1] float pixels [1, 3, H, W]. */
function maxLevels(image: RgbaImage, pixels: Float32Array): number {
  const plane = image.width * image.height;
  let worst = 0;
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) worst = Math.max(worst, Math.abs(image.data[4 * p + c] - pixels[c * plane + p] * 255));
  }
  return worst;
}

describe("the big inpainting model", () => {
  let pipe: LatentDiffusion;
  let image: RgbaImage;
  let mask: RgbaImage;
  let reference: { z0: Float32Array; inpainted: Float32Array; seed: number; steps: number };
  let out: string;

  beforeAll(async () => {
    pipe = await LatentDiffusion.load(MODEL, { device });
    const dump = await Dump.open(join(DUMPS, "tiny-inpainting.sample-ddim.safetensors"));
    try {
      const pixels = await dump.floats("sample", "in", "image");
      const maskPixels = await dump.floats("sample", "in", "mask");
      image = rgba(pixels.data, pixels.shape);
      mask = rgba(maskPixels.data, maskPixels.shape);
      reference = {
        z0: (await dump.floats("sample", "out", "z_0")).data,
        inpainted: (await dump.floats("sample", "out", "inpainted")).data,
        seed: Number(dump.metadata.x_T_seed),
        steps: Number(dump.metadata.steps),
      };
    } finally {
      await dump.close();
    }
    out = mkdtempSync(join(tmpdir(), "ldm-inpainting-"));
  });
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it("reads as the paper's inpainting model: concat, no prompt, unguided, uses its EMA weights", () => {
    expect(pipe.isInpainting).toBe(true);
    expect(pipe.conditioningKey).toBe("concat");
    expect(pipe.inputs).toMatchObject({ prompted: undefined, inpainting: true, guidable: false, guidanceScale: 1 });
  });

  it("inpaint() gives scripts/inpaint.py's z_0 and result: the prediction pasted where the mask is white", async () => {
    const { seed, steps } = reference;
    const result = await pipe.inpaint({ initImage: image, mask, seed, steps, sampler: "ddim", eta: 0 });
    expect(maxRelativeError(result.latents, reference.z0)).toBeLessThan(1e-4);
    // One level: the image rounds where the script truncates, plus the float error of z_0 through the decoder.
    expect(maxLevels(result.images[0], reference.inpainted)).toBeLessThanOrEqual(1);
    const plane = image.width * image.height;
    for (let p = 0; p < plane; p++) {
      if (mask.data[4 * p] === 0)
        expect(result.images[0].data.subarray(4 * p, 4 * p + 4)).toEqual(image.data.subarray(4 * p, 4 * p + 4));
    }
  });

  it("ldm generate --init-image --mask writes the library's pixels; wrong inputs are one line each", async () => {
    const file = (name: string) => join(out, name);
    writeFileSync(file("image.png"), encodePng(image));
    writeFileSync(file("mask.png"), encodePng(mask));
    const { seed, steps } = reference;
    const args = ["--model", MODEL, "--steps", String(steps), "--seed", String(seed), "--sampler", "ddim"];
    const ok = await runCli(
      "generate",
      ...args,
      "--init-image",
      file("image.png"),
      "--mask",
      file("mask.png"),
      "--out",
      file("a.png"),
    );
    expect(ok.code, ok.err).toBe(0);
    const written = decodePng(readFileSync(file("a.png")), "a.png");
    const library = await pipe.inpaint({ initImage: image, mask, seed, steps, sampler: "ddim" });
    expect(Buffer.from(written.data).equals(Buffer.from(library.images[0].data))).toBe(true);

    writeFileSync(
      file("small.png"),
      encodePng({ width: 16, height: 16, data: new Uint8ClampedArray(16 * 16 * 4).fill(255) }),
    );
    const cases: [string[], RegExp][] = [
      [["--init-image", file("image.png"), "--mask", file("small.png")], /mask is 16×16, the init image 32×32/],
      [["--init-image", file("image.png")], /inpainting model .*mask/],
      [[], /inpainting model .*mask/],
      [["a prompt", "--init-image", file("image.png"), "--mask", file("mask.png")], /takes no prompt/],
    ];
    for (const [extra, message] of cases) {
      const failed = await runCli("generate", ...args, ...extra, "--out", file("b.png"));
      expect(failed.code, failed.err).toBe(1);
      expect(failed.err).toMatch(message);
      expect(failed.err.trim().split("\n").pop()).toMatch(/^ldm: /);
    }
  });
});
