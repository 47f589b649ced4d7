import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { projectContextParts, replayingUNetDenoiser, unetDenoiser } from "../src/pipeline/denoiser.ts";
import { dumpPipelines } from "./helpers/dump-pipelines.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

// A sampling run's UNet calls replayed from one recorded call (Device.record), on the committed tiny checkpoints:
// the same bits as running the modules every call.

const device = await useDevice();
let scratch: string;
const pipeline = dumpPipelines(
  () => device,
  () => join(scratch, "tokenizer"),
);

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-replay-denoiser-"));
  writeTinyVocab(join(scratch, "tokenizer"), 1000);
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

const latents = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * seed + seed));

describe("replayingUNetDenoiser", () => {
  it.each(["tiny-sd1", "tiny-inpaint"])(
    "%s: calls replayed from the second one's recording equal unetDenoiser's bit for bit",
    async (name) => {
      const pipe = await pipeline(name);
      const { unet, config } = pipe.networks;
      const context = await pipe.encodeText(["", "a cat"]);
      const shape = [2, 4, 8, 8];
      const size = 2 * 4 * 8 * 8;
      const extra = config.unet.in_channels - 4;
      const cConcat = extra ? Tensor.from(device, latents(2 * extra * 64, 9), [2, extra, 8, 8]) : undefined;
      const projected = projectContextParts(unet, context);
      const forward = vi.spyOn(unet, "forward");
      // What is live after the first call (it fills caches such as the timestep frequencies): what dispose()
      // must come back to.
      let liveAfterFirst = 0;
      const replaying = replayingUNetDenoiser(unet, context, cConcat, shape, projected);
      try {
        const plain = unetDenoiser(unet, context, cConcat, shape, 1, projected);
        const calls = [999, 800, 500, 20, 1].map((t, i) => ({ t, x: latents(size, i + 1) }));
        const replayed: Float32Array[] = [];
        for (const { t, x } of calls) {
          replayed.push(await replaying.model(x, t));
          if (replayed.length === 1) liveAfterFirst = device.memory().liveBytes;
        }
        // The modules ran for the first call and the recorded second; the rest were replays.
        expect(forward).toHaveBeenCalledTimes(2);
        forward.mockRestore();
        for (const [i, { t, x }] of calls.entries()) expect(replayed[i]).toEqual(await plain(x, t));
        expect(replayed[3]).not.toEqual(replayed[2]);
        await expect(replaying.model(latents(size - 1, 1), 5)).rejects.toThrow(/511 latent values for the shape/);
      } finally {
        forward.mockRestore();
        replaying.dispose();
      }
      expect(device.memory().liveBytes).toBe(liveAfterFirst);
      projected.dispose();
      await expect(replaying.model(latents(size, 1), 5)).rejects.toThrow(/after dispose/);
      context.dispose();
      cConcat?.dispose();
    },
  );

  it("runs every call through the modules when the recorded call cannot be replayed", async () => {
    const pipe = await pipeline("tiny-sd1");
    const { unet } = pipe.networks;
    const context = await pipe.encodeText(["", "a dog"]);
    const shape = [2, 4, 8, 8];
    const record = vi.spyOn(device, "record").mockImplementation((fn) => ({
      result: fn(),
      recording: null,
      notReplayable: "a test's refusal",
    }));
    const forward = vi.spyOn(unet, "forward");
    const replaying = replayingUNetDenoiser(unet, context, undefined, shape);
    try {
      const plain = unetDenoiser(unet, context, undefined, shape);
      for (const t of [900, 400, 100]) {
        const x = latents(2 * 4 * 64, t);
        expect(await replaying.model(x, t)).toEqual(await plain(x, t));
      }
      expect(record).toHaveBeenCalledTimes(1);
      expect(forward).toHaveBeenCalledTimes(6);
    } finally {
      record.mockRestore();
      forward.mockRestore();
      replaying.dispose();
      context.dispose();
    }
  });
});
