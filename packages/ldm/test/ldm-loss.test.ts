/**
 * L_simple for every family (unconditional VQ and KL with scale_by_std, class crossattn, the big inpainting model's
 * concat) against upstream LatentDiffusion.p_losses' loss_simple at a fixed t (reference/make_ldm_family_extra_dumps.py):
 * through validate's `loss` component on the dump's x_start and noise, and through the library's loss() from the
 * 8-bit image and the seed, which draws the latent sample and ε as torch.manual_seed(seed) does upstream.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { encodePng, type RgbaImage } from "../src/image/png.ts";
import { LatentDiffusion } from "../src/pipeline/latent-diffusion.ts";
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

describe.each([
  ["tiny-celebahq", "l2"],
  ["tiny-churches", "l1"],
  ["tiny-cin", "l2"],
  ["tiny-inpainting", "l1"],
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
      const classLabel = dump.has("loss", "in", "class_label")
        ? (await dump.ints("loss", "in", "class_label")).data[0]
        : undefined;
      const mask = dump.has("loss", "in", "mask") ? rgba(await dump.floats("loss", "in", "mask")) : undefined;
      const result = await pipe.loss({ image, t, seed, classLabel, mask });
      const [expected] = (await dump.floats("loss", "out", "loss_simple")).data;
      expect(result.lossType).toBe(lossType);
      expect(Math.abs(result.loss - expected) / expected).toBeLessThan(1e-4);
      if (mask) await expect(pipe.loss({ image, t, seed })).rejects.toThrow(/mask/);
      else await expect(pipe.loss({ image, t, seed, classLabel, mask: image })).rejects.toThrow(/takes no mask/);
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
});
