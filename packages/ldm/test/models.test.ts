import { createReadStream, readFileSync } from "node:fs";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { randomArray } from "@ldm/kernels/testing";
import { VarBuilder } from "@ldm/nn";
import { Tensor, type WeightSource } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { modelParamShapes, standardConfig } from "@ldm/weights";
import { describe, expect, it } from "vitest";
import {
  type AutoencoderKL,
  buildModel,
  COMPONENT_PREFIX,
  DiagonalGaussianDistribution,
  loadModel,
} from "../src/models/index.ts";
import { loadModelFromBlob, loadModelFromStream, readModelConfig } from "../src/models/load-stream.ts";
import { blendTiles, planTiles } from "../src/models/tiles.ts";
import { LatentDiffusion } from "../src/pipeline/latent-diffusion.ts";
import { Generator } from "../src/random/index.ts";

const device = await useDevice();

describe("DiagonalGaussianDistribution", () => {
  it("splits the moments per batch item, clamps the log-variance to [−30, 20] and samples mean + std·randn", () => {
    // [B=2, 2·z=2, 1, 2]: per item, the mean channel then the log-variance channel.
    const moments = Float32Array.from([0.5, -1, 25, -40, 2, 3, 0, Math.log(4)]);
    const g = new DiagonalGaussianDistribution(moments, [2, 2, 1, 2]);
    expect(g.shape).toEqual([2, 1, 1, 2]);
    expect(Array.from(g.mean)).toEqual([0.5, -1, 2, 3]);
    expect(Array.from(g.logvar)).toEqual([20, -30, 0, Math.fround(Math.log(4))]);
    expect(g.std[3]).toBeCloseTo(2, 6);
    const noise = new Generator(7).randn([2, 1, 1, 2]);
    const sample = g.sample(new Generator(7));
    // Float32 storage of each sum: within one float32 rounding (2^-24 relative) of the float64 value.
    sample.forEach((v, i) => {
      const expected = g.mean[i] + g.std[i] * noise[i];
      expect(Math.abs(v - expected)).toBeLessThanOrEqual(2 ** -24 * Math.abs(expected));
    });
  });
});

describe("VAE tiling", () => {
  it("plans evenly spread tiles that cover the latent with at least the overlap", () => {
    const tiles = planTiles(20, 9, { tileSize: 8, overlap: 3 });
    expect(tiles.length).toBe(8);
    const ys = [...new Set(tiles.map((t) => t.y))];
    const xs = [...new Set(tiles.map((t) => t.x))];
    // 20 cells in tiles of 8 sharing ≥ 3: ⌈(20 − 3) / (8 − 3)⌉ = 4 tiles, spread to share 4 cells each.
    expect(ys).toEqual([0, 4, 8, 12]);
    expect(xs).toEqual([0, 1]);
    expect(tiles.every((t) => t.height === 8 && t.width === 8)).toBe(true);
    expect(planTiles(5, 5, { tileSize: 8, overlap: 2 })).toEqual([{ x: 0, y: 0, width: 5, height: 5 }]);
    expect(() => planTiles(5, 5, { tileSize: 4, overlap: 4 })).toThrow(
      /overlap 4 must be an integer in \[0, tile size 4\)/,
    );
  });

  it("blends tiles that agree into exactly the image they were cut from (no seams)", () => {
    const [batch, channels, h, w, scale] = [2, 3, 11, 13, 2];
    const image = randomArray(batch * channels * h * scale * w * scale, 5);
    const tiles = planTiles(h, w, { tileSize: 6, overlap: 2 });
    expect(tiles.length).toBe(9);
    const crops = tiles.map((t) => {
      const [th, tw] = [t.height * scale, t.width * scale];
      const crop = new Float32Array(batch * channels * th * tw);
      for (let plane = 0; plane < batch * channels; plane++) {
        for (let y = 0; y < th; y++) {
          for (let x = 0; x < tw; x++) {
            crop[(plane * th + y) * tw + x] =
              image[(plane * h * scale + t.y * scale + y) * w * scale + t.x * scale + x];
          }
        }
      }
      return crop;
    });
    const blended = blendTiles(crops, tiles, { batch, channels, height: h, width: w, scale });
    blended.forEach((v, i) => {
      expect(Math.abs(v - image[i])).toBeLessThan(1e-6);
    });
  });

  it("decodeTiled with one tile equals decode, and small tiles give a finite image of the right size", async () => {
    const dumps = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
    const { vae } = await loadModel(`${dumps}tiny-sd1.safetensors`, {
      device,
      config: `${dumps}tiny-sd1.yaml`,
      components: ["vae"],
    });
    const z = Tensor.from(device, randomArray(1 * 4 * 6 * 10, 9, 3), [1, 4, 6, 10]);
    const full = await (vae as AutoencoderKL).decode(z).toFloat32();
    const single = await (await (vae as AutoencoderKL).decodeTiled(z, { tileSize: 16, overlap: 2 })).toFloat32();
    expect(Array.from(single)).toEqual(Array.from(full));
    const tiled = await (vae as AutoencoderKL).decodeTiled(z, { tileSize: 4, overlap: 2 });
    expect(tiled.shape).toEqual([1, 3, 48, 80]);
    expect((await tiled.toFloat32()).every(Number.isFinite)).toBe(true);
  });

  it("loadModelFromStream (one pass over a byte stream, as browsers load) builds what loadModel builds", async () => {
    const dumps = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
    const file = `${dumps}tiny-sd1.safetensors`;
    const yaml = `${dumps}tiny-sd1.yaml`;
    const fromFile = await loadModel(file, { device, config: yaml, components: ["vae"] });
    const fromStream = await loadModelFromStream(Readable.toWeb(createReadStream(file)) as ReadableStream<Uint8Array>, {
      device,
      origin: file,
      config: { text: readFileSync(yaml, "utf8"), origin: yaml },
      components: ["vae"],
    });
    const z = Tensor.from(device, randomArray(1 * 4 * 3 * 5, 11, 3), [1, 4, 3, 5]);
    const decoded = await Promise.all(
      [fromFile, fromStream].map((m) => (m.vae as AutoencoderKL).decode(z).toFloat32()),
    );
    expect(Array.from(decoded[1])).toEqual(Array.from(decoded[0]));
    fromFile.dispose();
    fromStream.dispose();
  });
});

describe("the browser's loaders on the paper's models", () => {
  const dumps = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
  const files = (name: string) => {
    const [weights, yaml] = [`${dumps}${name}.safetensors`, `${dumps}${name}.yaml`];
    return { weights, yaml, config: { text: readFileSync(yaml, "utf8"), origin: yaml } };
  };

  // Both sample with their model_ema.* UNet (use_ema defaults to true), tiny-churches with the scale_factor buffer
  // of scale_by_std too: from a Blob they must give loadModel's images, bit for bit.
  it.each(["tiny-celebahq", "tiny-churches"])(
    "%s from a Blob samples as LatentDiffusion.load (EMA UNet, stored scale factor)",
    async (name) => {
      const { weights, yaml, config } = files(name);
      const blob = new Blob([readFileSync(weights)]);
      expect((await readModelConfig(blob, { origin: weights, config })).config.cond_stage).toBeUndefined();
      const loaded = await loadModelFromBlob(blob, { device, origin: weights, config });
      const { unet, vae } = loaded;
      if (!unet || !vae) throw new Error("the loader built no UNet or first stage");
      const page = LatentDiffusion.fromNetworks({ ...loaded, unet, vae }, undefined, name, loaded.scaleFactor);
      const node = await LatentDiffusion.load(weights, { device, config: yaml });
      try {
        expect(loaded.ema).toBe(true);
        expect(page.scaleFactor).toBe(node.scaleFactor);
        if (name === "tiny-churches") expect(page.scaleFactor).not.toBe(page.config.scale_factor);
        const run = { steps: 2, seed: 5 };
        const [a, b] = await Promise.all([page.generate(run), node.generate(run)]);
        expect(Array.from(a.images[0].data)).toEqual(Array.from(b.images[0].data));
      } finally {
        node.dispose();
        loaded.dispose();
      }
    },
  );

  it("a stream refuses scale_by_std (its buffer may lie anywhere in the one pass), naming loadModelFromBlob", async () => {
    const { weights, config } = files("tiny-churches");
    const stream = Readable.toWeb(createReadStream(weights)) as ReadableStream<Uint8Array>;
    await expect(loadModelFromStream(stream, { device, origin: weights, config })).rejects.toThrow(
      /scale_by_std.*loadModelFromBlob/,
    );
  });

  it("readModelConfig detects a checkpoint without a YAML config from its header", async () => {
    const weights = `${dumps}tiny-sd1.safetensors`;
    const { config } = await readModelConfig(new Blob([readFileSync(weights)]), { origin: weights });
    expect(config.text?.hidden_size).toBe(32);
  });
});

describe("full-size architectures", () => {
  // The canonical key lists of @ldm/weights are checked against the original PyTorch modules (their names,
  // shapes and a hash, in packages/weights/test/architecture.test.ts); a network that asks for exactly those
  // keys, no more and no fewer, at exactly those shapes, has the original's structure at full size.
  it.each([
    ["SD 1.x", standardConfig("sd1")],
    ["SD 1.x inpainting", standardConfig("sd1", { inpainting: true })],
    ["SD 2.x", standardConfig("sd2", { parameterization: "v" })],
  ])("%s networks ask for exactly the original's parameters", async (_, config) => {
    const shapes = modelParamShapes(config);
    const requested: string[] = [];
    const source: WeightSource = {
      origin: "canonical key list",
      describe: (key) => {
        const shape = shapes.get(key);
        return shape && { shape, dtype: "F16" };
      },
      keys: () => shapes.keys(),
      load: async (requests) => {
        requested.push(...requests.map((r) => r.key));
      },
    };
    // f16 and never written: the buffers stay virtual (lavapipe allocates host memory on first touch).
    const vb = VarBuilder.from(device, source, "f16");
    buildModel(vb, config);
    await vb.load(Object.values(COMPONENT_PREFIX));
    expect(requested.length).toBe(shapes.size);
  });
});
