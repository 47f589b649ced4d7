import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeTokenRows, StableDiffusion } from "../src/pipeline/index.ts";
import { expectConditioning } from "./helpers/compare.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

// Golden conditioning: reference/prompting/a1111_prompt_fixtures.py, A1111's process_tokens (SD2 padding, the
// "Original" emphasis) per chunk, hstacked, over the reference CLIP with the tiny fixtures' weights.
const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));
interface Conditioning {
  model: string;
  clip_skip: number | null;
  prompt: string;
  ids: number[][];
  multipliers: number[][];
  tensor: string;
}
const golden: { conditioning: Conditioning[] } = JSON.parse(
  readFileSync(join(FIXTURES, "prompts/a1111-prompts.json"), "utf8"),
);

const device = await useDevice();
let scratch: string;
const pipes = new Map<string, StableDiffusion>();
beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-prompts-"));
  const vocab = writeTinyVocab(join(scratch, "tokenizer"), 1000);
  for (const name of ["tiny-sd1", "tiny-sd2"]) {
    const path = join(FIXTURES, "dumps", name);
    pipes.set(name, await StableDiffusion.load(`${path}.safetensors`, { device, config: `${path}.yaml`, vocab }));
  }
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

// Per chunk the encoder matches PyTorch to ~1e-6 of max|ref| (validate's clip component); emphasis multiplies by
// weights ≤ 1.6 and a mean ratio, computed in float64 here and float32 there. Measured on lavapipe: 3.1e-7 to
// 5.9e-7 of max|ref|; leaving out the emphasis or its rescaling moves the weighted prompts by 1e-2 or more.
const TOLERANCE = 5e-6;

describe("long prompts and emphasis against A1111's process_tokens", () => {
  for (const c of golden.conditioning) {
    it(`${c.model}, CLIP skip ${c.clip_skip ?? "default"}: ${JSON.stringify(c.prompt)} (${c.ids.length} chunks)`, async () => {
      const pipe = pipes.get(c.model) as StableDiffusion;
      const context = await encodeTokenRows(device, pipe.networks.clip, [Int32Array.from(c.ids.flat())], {
        weights: [Float32Array.from(c.multipliers.flat())],
        clipSkip: c.clip_skip ?? undefined,
      });
      await expectConditioning(context, join(FIXTURES, "prompts/a1111-conditioning.safetensors"), c.tensor, TOLERANCE);
    });
  }

  it("pads the shorter prompt with empty chunks: its rows are the prompt's, then the empty prompt's", async () => {
    const pipe = pipes.get("tiny-sd1") as StableDiffusion;
    const long = "a beautiful oil painting of a lighthouse on a cliff at sunset, ".repeat(6);
    const chunks = pipe.tokenize(long).chunks;
    expect(chunks).toBeGreaterThan(1);
    const both = await pipe.encodeText([long, "a cat"]);
    const single = await pipe.encodeText(["a cat"]);
    const empty = await pipe.encodeText([""]);
    try {
      expect(both.shape).toEqual([2, 77 * chunks, 32]);
      const values = await both.toFloat32();
      const chunk = 77 * 32;
      const second = values.subarray(chunks * chunk);
      expect(second.subarray(0, chunk)).toEqual(await single.toFloat32());
      const emptyValues = await empty.toFloat32();
      for (let k = 1; k < chunks; k++) expect(second.subarray(k * chunk, (k + 1) * chunk)).toEqual(emptyValues);
    } finally {
      for (const t of [both, single, empty]) t.dispose();
    }
  });

  it("CLIP skip beyond the encoder's layers is named", async () => {
    const pipe = pipes.get("tiny-sd1") as StableDiffusion;
    await expect(pipe.encodeText(["a cat"], { clipSkip: 4 })).rejects.toThrow(
      /CLIP skip 4: must be an integer in \[1, 3\] \(the encoder has 3 layers\)/,
    );
    const third = await pipe.encodeText(["a cat"], { clipSkip: 3 });
    expect(third.shape).toEqual([1, 77, 32]);
    third.dispose();
  });
});
