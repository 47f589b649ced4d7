/**
 * L_simple for every family (unconditional VQ and KL with scale_by_std, class crossattn, and concat: the big
 * inpainting model's masked image, super-resolution's low-resolution image, semantic synthesis' segmentation) against upstream LatentDiffusion.p_losses' loss_simple at a fixed t (reference/make_ldm_family_extra_dumps.py):
 * through validate's `loss` component on the dump's x_start and noise, and through the library's loss() from the
 * 8-bit image and the seed, which draws the latent sample and ε as torch.manual_seed(seed) does upstream.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { encode } from "fast-png";
import { describe, expect, it } from "vitest";
import { encodePng, type RgbaImage } from "../src/image/png.ts";
import { LatentDiffusion, type SegmentationMap } from "../src/pipeline/latent-diffusion.ts";
import { Dump } from "../src/validate/dump.ts";
import { validate } from "../src/validate/index.ts";
import { DUMPS } from "./helpers/dump-pipelines.ts";
import { runCli } from "./helpers/run-cli.ts";

const device = await useDevice();

/** [1, C, H, W] values in [−1, 1] from 8-bit pixels as an opaque RGBA image (one channel: grey). */
function rgba({ data, shape }: { data: Float32Array; shape: readonly number[] }): RgbaImage {
  const [, channels, height, width] = shape;
  const plane = width * height;
  const out = new Uint8ClampedArray(plane * 4).fill(255);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++)
      out[4 * p + c] = Math.round(((data[(channels === 1 ? 0 : c) * plane + p] + 1) / 2) * 255);
  }
  return { width, height, data: out };
}

/** [1, C, H, W] one-hot → each pixel's class id. */
function labels({ data, shape }: { data: Float32Array; shape: readonly number[] }): SegmentationMap {
  const [, classes, height, width] = shape;
  const plane = width * height;
  const ids = new Uint8Array(plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < classes; c++) if (data[c * plane + p] === 1) ids[p] = c;
  }
  return { width, height, labels: ids };
}

/** The dump's conditioning, as loss() takes it. */
async function conditioning(dump: Dump) {
  const has = (name: string) => dump.has("loss", "in", name);
  return {
    classLabel: has("class_label") ? (await dump.ints("loss", "in", "class_label")).data[0] : undefined,
    mask: has("mask") ? rgba(await dump.floats("loss", "in", "mask")) : undefined,
    lowRes: has("LR_image") ? rgba(await dump.floats("loss", "in", "LR_image")) : undefined,
    segmentation: has("segmentation") ? labels(await dump.floats("loss", "in", "segmentation")) : undefined,
  };
}

describe.each([
  ["tiny-celebahq", "l2"],
  ["tiny-churches", "l1"],
  ["tiny-cin", "l2"],
  ["tiny-inpainting", "l1"],
  ["tiny-bsr", "l2"],
  ["tiny-seg", "l1"],
])("%s", (name, lossType) => {
  const dumpPath = join(DUMPS, `${name}.loss.safetensors`);
  const model = join(DUMPS, `${name}.safetensors`);

  it("validate's loss component matches upstream's loss_simple in f32", async () => {
    const report = await validate({ checkpoint: model, dump: dumpPath, device });
    expect(report.checks.map((c) => c.key)).toEqual(["loss.out.loss_simple"]);
    console.log(`${name}: rel ${report.checks[0].relative.toExponential(2)}`);
    expect(report.checks[0].pass, String(report.checks[0].relative)).toBe(true);
  });

  it(`loss() from the image and the seed gives it (${lossType})`, async () => {
    const dump = await Dump.open(dumpPath);
    try {
      const pipe = await LatentDiffusion.load(model, { device });
      const image = rgba(await dump.floats("loss", "in", "x"));
      const t = (await dump.ints("loss", "in", "t")).data[0];
      const seed = Number(dump.metadata.seed);
      const inputs = await conditioning(dump);
      const result = await pipe.loss({ image, t, seed, ...inputs });
      const [expected] = (await dump.floats("loss", "out", "loss_simple")).data;
      expect(result.lossType).toBe(lossType);
      const relative = Math.abs(result.loss - expected) / expected;
      console.log(`${name}: loss() ${relative.toExponential(2)} of loss_simple`);
      expect(relative).toBeLessThan(1e-4);
      if (inputs.mask) await expect(pipe.loss({ image, t, seed })).rejects.toThrow(/mask/);
      else await expect(pipe.loss({ image, t, seed, ...inputs, mask: image })).rejects.toThrow(/takes no mask/);
      if (inputs.lowRes) {
        await expect(pipe.loss({ image, t, seed })).rejects.toThrow(/needs a low-resolution image/);
        await expect(pipe.loss({ image, t, seed, lowRes: image })).rejects.toThrow(
          /the low-resolution image is 32×32; this model upscales 8×8 to 32×32/,
        );
      }
      if (inputs.segmentation) {
        await expect(pipe.loss({ image, t, seed })).rejects.toThrow(/needs a segmentation map/);
        const half = { width: 16, height: 16, labels: new Uint8Array(256) };
        await expect(pipe.loss({ image, t, seed, segmentation: half })).rejects.toThrow(
          /the segmentation map is 16×16, the output 32×32: they must match/,
        );
      }
    } finally {
      await dump.close();
    }
  });
});

describe("ldm loss", () => {
  it("runs any LatentDiffusion: --class for class models; prints the loss type", async () => {
    const model = join(DUMPS, "tiny-cin.safetensors");
    const dir = mkdtempSync(join(tmpdir(), "ldm-loss-"));
    try {
      const png = join(dir, "x.png");
      writeFileSync(png, encodePng({ width: 32, height: 32, data: new Uint8ClampedArray(32 * 32 * 4).fill(128) }));
      const ok = await runCli("loss", "--model", model, "--image", png, "--class", "4", "--t", "911", "--seed", "83");
      expect(ok.code, ok.err).toBe(0);
      expect(ok.out).toMatch(/^t 911 {2}seed 83 {2}L_simple \(l2 against ε\): \d+\.\d+/);
      // tiny-celebahq's use_ema (the default) takes the EMA copy, and says so; --no-ema takes the other set.
      const faces = ["loss", "--model", join(DUMPS, "tiny-celebahq.safetensors"), "--image", png, "--t", "300"];
      const ema = await runCli(...faces);
      const plain = await runCli(...faces, "--no-ema");
      expect(ema.code, ema.err).toBe(0);
      expect(plain.code, plain.err).toBe(0);
      expect(ema.err).toMatch(/UNet weights: the EMA copy \(model_ema\.\*/);
      expect(plain.err).not.toMatch(/UNet weights/);
      expect(ema.out).not.toEqual(plain.out);
      const missing = await runCli("loss", "--model", model, "--image", png);
      expect(missing.code).toBe(1);
      expect(missing.err).toMatch(/ldm: .*give a class/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("--low-res and --segmentation: super-resolution and semantic synthesis print upstream's loss_simple", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ldm-loss-"));
    try {
      const run = (name: string, ...args: string[]) =>
        runCli("loss", "--model", join(DUMPS, `${name}.safetensors`), ...args);
      const image = join(dir, "x.png");
      for (const [name, flag] of [
        ["tiny-bsr", "--low-res"],
        ["tiny-seg", "--segmentation"],
      ]) {
        const dump = await Dump.open(join(DUMPS, `${name}.loss.safetensors`));
        try {
          writeFileSync(image, encodePng(rgba(await dump.floats("loss", "in", "x"))));
          const { lowRes, segmentation } = await conditioning(dump);
          const input = join(dir, `${name}-input.png`);
          if (lowRes) writeFileSync(input, encodePng(lowRes));
          else if (segmentation) {
            const { width, height } = segmentation;
            writeFileSync(input, encode({ width, height, data: Uint8Array.from(segmentation.labels), channels: 1 }));
          }
          const t = String((await dump.ints("loss", "in", "t")).data[0]);
          const result = await run(name, "--image", image, flag, input, "--t", t, "--seed", dump.metadata.seed);
          expect(result.code, result.err).toBe(0);
          const printed = Number(/: (\S+)$/.exec(result.out.trim())?.[1]);
          const [expected] = (await dump.floats("loss", "out", "loss_simple")).data;
          expect(Math.abs(printed - expected) / expected).toBeLessThan(1e-4);
        } finally {
          await dump.close();
        }
      }
      const missing = await run("tiny-bsr", "--image", image);
      expect(missing.code).toBe(1);
      expect(missing.err).toMatch(/^ldm: this is a super-resolution model: it needs a low-resolution image$/m);
      const other = await run("tiny-bsr", "--image", image, "--segmentation", join(dir, "tiny-seg-input.png"));
      expect(other.code).toBe(1);
      expect(other.err).toMatch(/^ldm: this model is .*: it takes no segmentation map$/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
