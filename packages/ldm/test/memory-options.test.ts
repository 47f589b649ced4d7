import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from "vitest";
import { DEFAULT_VAE_TILES } from "../src/models/index.ts";
import { projectContextParts, unetDenoiser } from "../src/pipeline/denoiser.ts";
import { Dump } from "../src/validate/dump.ts";
import { maxRelativeError } from "./helpers/compare.ts";
import { DUMPS, dumpPipelines, tokenRows } from "./helpers/dump-pipelines.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

// The low-memory options: sequential classifier-free guidance (the two halves as two UNet calls) and tiled VAE
// decoding, on the committed tiny checkpoints and sample dumps of reference/make_dumps.py.

// Sequential vs batched guidance, max|a − b| / max|b| of z₀ after a few guided DDIM steps. No op mixes batch
// items, so each item sees the same arithmetic in a call of B as in one of 2B, except where a kernel's tiling (and
// so its summation order) depends on the batch: f32 rounding, ~1e-7 per call, amplified by guided steps (×7.5).
// Measured on lavapipe: 0 (bit-identical). A context or c_concat half given to the wrong batch half moves z₀ by
// far more than 1e-2.
const SEQUENTIAL_TOLERANCE = 1e-5;
// Steps of the sampling runs: enough for guidance to act on its own output, few enough for the 2-core budget.
const STEPS = 3;

const device = await useDevice();
let scratch: string;
const pipeline = dumpPipelines(
  () => device,
  () => join(scratch, "tokenizer"),
);

beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-memory-options-"));
  writeTinyVocab(join(scratch, "tokenizer"), 1000);
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe("sequential classifier-free guidance", () => {
  it.each(["tiny-sd1", "tiny-inpaint"])(
    "%s (sample dump inputs): two UNet calls of batch B give the batch-2B result within f32 rounding",
    async (name) => {
      const pipe = await pipeline(name);
      const dump = await Dump.open(join(DUMPS, `${name}.sample-ddim.safetensors`));
      try {
        const xT = await dump.floats("sample", "in", "x_T");
        const cond = await dump.ints("sample", "in", "cond_ids");
        const uncond = await dump.ints("sample", "in", "uncond_ids");
        const cConcat = dump.has("sample", "in", "c_concat")
          ? await dump.floats("sample", "in", "c_concat")
          : undefined;
        const length = cond.shape[1];
        const request = {
          condIds: tokenRows(cond.data, length),
          uncondIds: tokenRows(uncond.data, length),
          xT: xT.data,
          latentShape: xT.shape,
          sampler: "ddim" as const,
          steps: STEPS,
          guidanceScale: 7.5,
          cConcat: cConcat?.data,
        };
        const forward = vi.spyOn(pipe.networks.unet, "forward");
        const batched = await pipe.sampleLatents(request);
        const batchedSizes = forward.mock.calls.map(([inputs]) => inputs.x.shape[0]);
        forward.mockClear();
        const sequential = await pipe.sampleLatents({ ...request, sequentialCfg: true });
        const sequentialCalls = forward.mock.calls.map(([inputs]) => [
          inputs.x.shape[0],
          inputs.context?.shape[0],
          inputs.cConcat?.shape[0],
        ]);
        forward.mockRestore();
        const B = xT.shape[0];
        // One call per step; from the third on the calls replay the second's recording, without the modules.
        expect(batchedSizes).toEqual(Array(2).fill(2 * B));
        expect(sequentialCalls).toEqual(Array(2 * STEPS).fill([B, B, cConcat ? B : undefined]));
        const difference = maxRelativeError(sequential, batched);
        console.log(`${name}: sequential vs batched guidance, z₀ rel ${difference.toExponential(2)}`);
        expect(difference).toBeLessThan(SEQUENTIAL_TOLERANCE);
      } finally {
        await dump.close();
      }
    },
  );

  /** tiny-sd1's UNet with a context of two unconditional then two conditional prompts, and latents for them. */
  async function guidedBatch() {
    const pipe = await pipeline("tiny-sd1");
    const context = await pipe.encodeText(["", "", "a cat", "a dog"]);
    const shape = [4, 4, 8, 8];
    const x = Float32Array.from({ length: 4 * 4 * 8 * 8 }, (_, i) => Math.sin(i));
    return { pipe, unet: pipe.networks.unet, context, shape, x };
  }

  it("the unconditional half gets the first context rows, the conditional half the last", async () => {
    const { unet, context, shape, x } = await guidedBatch();
    try {
      const whole = await unetDenoiser(unet, context, undefined, shape)(x, 500);
      const halves = await unetDenoiser(unet, context, undefined, shape, 2)(x, 500);
      const quarters = await unetDenoiser(unet, context, undefined, shape, 4)(x, 500);
      expect(maxRelativeError(halves, whole)).toBeLessThan(1e-6);
      expect(maxRelativeError(quarters, whole)).toBeLessThan(1e-6);
      // The halves' contexts differ, so the outputs do: equal to the whole call means each part used its own rows.
      expect(maxRelativeError(halves.subarray(0, x.length / 2), halves.subarray(x.length / 2))).toBeGreaterThan(1e-3);
    } finally {
      context.dispose();
    }
  });

  it("a run's projected context (cross-attention keys and values computed once) gives the same bits as projecting in every call", async () => {
    const { pipe, unet, context, shape, x } = await guidedBatch();
    const other = await pipe.encodeText(["a", "b", "c", "d"]);
    try {
      for (const parts of [1, 2]) {
        const projected = projectContextParts(unet, context, parts);
        try {
          const plain = unetDenoiser(unet, context, undefined, shape, parts);
          const reused = unetDenoiser(unet, context, undefined, shape, parts, projected);
          for (const t of [999, 500]) expect(await reused(x, t)).toEqual(await plain(x, t));
          expect(() => unetDenoiser(unet, other, undefined, shape, parts, projected)).toThrow(
            /projected context is not this context/,
          );
          expect(() => unetDenoiser(unet, context, undefined, shape, 3 - parts, projected)).toThrow(
            /projected context is not this context in/,
          );
        } finally {
          projected.dispose();
        }
      }
      const projected = unet.projectContext(context);
      const inputs = { x: Tensor.from(device, x, shape), timesteps: Tensor.from(device, [1, 2, 3, 4], [4]) };
      try {
        expect(() => unet.forward({ ...inputs, context: other, projected })).toThrow(
          /projected is not the projection of this call's context/,
        );
      } finally {
        projected.dispose();
        inputs.x.dispose();
        inputs.timesteps.dispose();
      }
    } finally {
      context.dispose();
      other.dispose();
    }
  });

  it("refuses a batch that does not split evenly", async () => {
    const pipe = await pipeline("tiny-sd1");
    const context = await pipe.encodeText(["", "a", "b"]);
    try {
      expect(() => unetDenoiser(pipe.networks.unet, context, undefined, [3, 4, 8, 8], 2)).toThrow(
        /batch of 3 does not split into 2/,
      );
      expect(() => unetDenoiser(pipe.networks.unet, context, undefined, [3, 4, 8, 8], 0)).toThrow(/into 0/);
    } finally {
      context.dispose();
    }
  });

  it("txt2img threads sequentialCfg: the same latents as batched guidance, UNet calls of batch 1", async () => {
    const pipe = await pipeline("tiny-sd1");
    const options = { prompt: "a red apple", seed: 3, width: 64, height: 64, steps: 2 };
    const batched = await pipe.txt2img(options);
    const forward = vi.spyOn(pipe.networks.unet, "forward");
    const sequential = await pipe.txt2img({ ...options, sequentialCfg: true });
    const sizes = forward.mock.calls.map(([inputs]) => inputs.x.shape[0]);
    forward.mockRestore();
    expect(sizes).toEqual([1, 1, 1, 1]);
    expect(maxRelativeError(sequential.latents, batched.latents)).toBeLessThan(SEQUENTIAL_TOLERANCE);
  });
});

describe("VAE tiling", () => {
  it("decodeToHost: no tiling = decode(); one tile over the whole latent = decode(); small tiles decode per tile", async () => {
    const pipe = await pipeline("tiny-sd1");
    const { vae } = pipe.networks;
    const shape = [1, 4, 6, 10];
    const z = Float32Array.from({ length: 4 * 6 * 10 }, (_, i) => Math.cos(i * 0.7) * 2);
    const input = Tensor.from(device, z, shape);
    const reference = await vae.decode(input).toFloat32();
    input.dispose();
    expect(await vae.decodeToHost(z, shape)).toEqual(reference);
    expect(await vae.decodeToHost(z, shape, { tileSize: 10, overlap: 2 })).toEqual(reference);
    const decode = vi.spyOn(vae, "decode");
    const tiled = await vae.decodeToHost(z, shape, { tileSize: 4, overlap: 2 });
    const tileShapes = decode.mock.calls.map(([t]) => t.shape);
    decode.mockRestore();
    // 6 rows → starts 0, 2; 10 columns → 0, 2, 4, 6: 8 tiles of 4×4.
    expect(tileShapes).toEqual(Array(8).fill([1, 4, 4, 4]));
    // Each tile normalises with its own GroupNorm statistics, so the blend differs from the whole decode (by a
    // lot for 4×4 tiles of a random tiny VAE); models.test checks the blending itself.
    expect(tiled.length).toBe(reference.length);
    expect(tiled.every(Number.isFinite)).toBe(true);
  });

  it("txt2img threads vaeTiling (true = DEFAULT_VAE_TILES)", async () => {
    const pipe = await pipeline("tiny-sd1");
    const { vae } = pipe.networks;
    const decode = vi.spyOn(vae, "decode");
    const options = { prompt: "a red apple", seed: 3, width: 64, height: 64, steps: 1 };
    const small = await pipe.txt2img({ ...options, vaeTiling: { tileSize: 4, overlap: 2 } });
    // An 8×8 latent in tiles of 4 overlapping by 2: starts 0, 2, 4 on each axis.
    expect(decode.mock.calls.map(([t]) => t.shape)).toEqual(Array(9).fill([1, 4, 4, 4]));
    decode.mockClear();
    const whole = await pipe.txt2img({ ...options, vaeTiling: true });
    // DEFAULT_VAE_TILES' tiles are larger than this latent: one decode of all of it.
    expect(DEFAULT_VAE_TILES.tileSize).toBeGreaterThanOrEqual(8);
    expect(decode.mock.calls.map(([t]) => t.shape)).toEqual([[1, 4, 8, 8]]);
    decode.mockRestore();
    expect(small.images[0].data.length).toBe(whole.images[0].data.length);
  });
});

describe("VAE decoder memory", () => {
  /** Sets the pool's releasesMemory (DeviceOptions.releaseMemory: off on lavapipe) for one test. */
  const releaseMemory = (on: boolean) => {
    const before = device.pool.releasesMemory;
    device.pool.releasesMemory = on;
    onTestFinished(() => {
      device.pool.releasesMemory = before;
    });
  };

  it("reclaims free buffers as it goes: the pool holds at most what was held before or what is live, same pixels", async () => {
    const pipe = await pipeline("tiny-sd1");
    const { decoder } = pipe.networks.vae;
    releaseMemory(true);
    const z = Float32Array.from({ length: 4 * 16 * 16 }, (_, i) => Math.sin(i * 0.3) * 2);
    const input = Tensor.from(device, z, [1, 4, 16, 16]);
    const first = decoder.forward(input);
    const reference = await first.toFloat32();
    first.dispose();
    // An empty pool, as on a first decode, then what a sampling run leaves in it: free buffers of sizes the
    // decode does not ask for (3.3 MB, 4.7 MB, …).
    device.pool.trim();
    const leftovers = [3.3e6, 4.7e6, 6.1e6, 7.9e6].map((bytes) => Tensor.empty(device, [bytes / 4]));
    for (const t of leftovers) t.dispose();
    device.pool.resetPeak();
    const held = device.memory().totalBytes;
    const image = decoder.forward(input);
    const { peakTotalBytes, peakLiveBytes } = device.memory();
    expect(peakTotalBytes).toBeLessThanOrEqual(Math.max(held, peakLiveBytes));
    expect(await image.toFloat32()).toEqual(reference);
    for (const t of [input, image]) t.dispose();
  });

  // 24×24: lavapipe's Winograd path (norm read by the input transform); 4×4, too few tiles for it: the direct path,
  // where conv1 normalises x over itself.
  it.each([24, 4])("a ResnetBlock given its %i² input frees it once read: lower peak, same output", async (side) => {
    // tiny-sd2's decoder widens 32 → 64 channels at its last level (ch_mult [2, 1, 1, 1]), as SD's narrows 256 → 128.
    const pipe = await pipeline("tiny-sd2");
    const block = pipe.networks.vae.decoder.up.flatMap((level) => level.block).find((b) => b.nin_shortcut);
    if (!block) throw new Error("tiny-sd2's decoder has no block that changes its channel count");
    const channels = block.conv1.weight.shape[1];
    const run = async (consumeInput: boolean) => {
      const x = Tensor.from(
        device,
        Float32Array.from({ length: channels * side * side }, (_, i) => Math.cos(i * 0.1)),
        [1, channels, side, side],
      );
      await device.sync();
      device.pool.resetPeak();
      const out = block.forward(x, { consumeInput });
      const peak = device.memory().peakLiveBytes;
      const disposed = x.disposed;
      x.dispose();
      const values = await out.toFloat32();
      out.dispose();
      return { peak, disposed, values };
    };
    const kept = await run(false);
    const consumed = await run(true);
    expect(kept.disposed).toBe(false);
    expect(consumed.disposed).toBe(true);
    expect(consumed.values).toEqual(kept.values);
    expect(consumed.peak).toBeLessThan(kept.peak);
  });

  it.each([true, false])("txt2img on a device whose pool releases memory: %s", async (releases) => {
    const pipe = await pipeline("tiny-sd1");
    releaseMemory(releases);
    const trim = vi.spyOn(device.pool, "trim");
    const result = await pipe.txt2img({ prompt: "a red apple", seed: 3, width: 64, height: 64, steps: 2 });
    const trims = trim.mock.calls.length;
    trim.mockRestore();
    expect(result.images).toHaveLength(1);
    // Released: the free buffers are given back when the run ends. Kept: the next run reuses them.
    expect(trims).toBe(releases ? 1 : 0);
    if (releases) expect(device.memory().pooledBytes).toBe(0);
    else expect(device.memory().pooledBytes).toBeGreaterThan(0);
  });
});
