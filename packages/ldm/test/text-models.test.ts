import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Device } from "@ldm/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SAMPLER_NAMES } from "../src/diffusion/index.ts";
import { decodePng } from "../src/image/png.ts";
import { BERTEmbedder } from "../src/models/x-transformer.ts";
import { LatentDiffusion } from "../src/pipeline/latent-diffusion.ts";
import { DEFAULT_GUIDANCE } from "../src/pipeline/model-inputs.ts";
import { BertTokenizer } from "../src/tokenizer/index.ts";
import { validate } from "../src/validate/index.ts";
import { runCli } from "./helpers/run-cli.ts";

// The paper's BERTEmbedder models at tiny size, with dumps of the ORIGINAL CompVis/latent-diffusion modules
// (reference/make_text_dumps.py): tiny-txt2img (KL-f8, bert-base-uncased prompts), tiny-text2img256 (VQ-f4,
// bert-base-uncased prompts) and tiny-layout2img (VQ-f4, taming's layout tokens).
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/dumps/${name}`, import.meta.url));

let device: Device;
beforeAll(async () => {
  device = await Device.create();
});
afterAll(() => device?.destroy());

/** `ldm validate` passes on the model's component dump and its DDIM sample dump. */
function passesValidate(name: string) {
  return async () => {
    for (const dump of [`${name}.dump.safetensors`, `${name}.sample-ddim.safetensors`]) {
      const report = await validate({ checkpoint: fixture(`${name}.safetensors`), dump: fixture(dump), device });
      expect(report.checks.map((c) => [c.key, c.pass])).toEqual(report.checks.map((c) => [c.key, true]));
      expect(report.checks.length).toBeGreaterThanOrEqual(2);
    }
  };
}

describe("tiny-txt2img (txt2img-1p4B-eval.yaml's structure)", () => {
  const checkpoint = fixture("tiny-txt2img.safetensors");

  it(
    "passes ldm validate on every component (vae, unet, cond) and on the guided DDIM sample",
    passesValidate("tiny-txt2img"),
  );

  it('generates from a prompt as scripts/txt2img.py: BERT tokens, guidance 5.0 against the prompt ""', async () => {
    const pipe = await LatentDiffusion.load(checkpoint, { device });
    try {
      expect(pipe.prompted).toBe("bert");
      expect(pipe.tokenizer).toBeInstanceOf(BertTokenizer);
      expect(pipe.networks.cond).toBeInstanceOf(BERTEmbedder);
      expect(pipe.defaultGuidanceScale).toBe(DEFAULT_GUIDANCE.bert);
      expect(Array.from(pipe.tokenize("a virus monster").ids).slice(0, 5)).toEqual([101, 1037, 7865, 6071, 102]);
      const result = await pipe.generate({ prompt: "a virus monster playing guitar", steps: 3, seed: 7 });
      expect(result.parameters[0].guidanceScale).toBe(5);
      expect([result.images[0].width, result.images[0].height]).toEqual([64, 64]);
      // Guided against "" by default: the same as an explicit empty negative prompt, unlike another one.
      const explicit = await pipe.generate({
        prompt: "a virus monster playing guitar",
        steps: 3,
        seed: 7,
        negativePrompt: "",
      });
      expect(explicit.latents).toEqual(result.latents);
      const other = await pipe.generate({
        prompt: "a virus monster playing guitar",
        steps: 3,
        seed: 7,
        negativePrompt: "x",
      });
      expect(other.latents).not.toEqual(result.latents);
      await expect(pipe.generate({ prompt: "x", layout: [], steps: 1 })).rejects.toThrow(/takes no layout/);
      // Past 75 wordpieces the prompt is cut as BERTTokenizer cuts it, with one warning naming how much.
      const warnings: string[] = [];
      const long = Array(80).fill("apple").join(" ");
      const cut = await pipe.generate({ prompt: long, steps: 1, seed: 7, onWarning: (m) => warnings.push(m) });
      expect(warnings).toEqual([
        "the prompt is 5 tokens past this model's 77 (with [CLS] and [SEP]): they are dropped",
      ]);
      const kept = await pipe.generate({ prompt: Array(75).fill("apple").join(" "), steps: 1, seed: 7 });
      expect(cut.latents).toEqual(kept.latents);
      await pipe.generate({ prompt: "x", negativePrompt: long, steps: 1, onWarning: (m) => warnings.push(m) });
      expect(warnings[1]).toMatch(/^the negative prompt is 5 tokens past/);
      // Every sampler of the table runs the model (two steps each, finite latents); ddpm always takes all 1000
      // training steps, too slow here (the sampler tests run it on a toy model).
      for (const sampler of SAMPLER_NAMES.filter((name) => name !== "ddpm")) {
        const { latents } = await pipe.generate({ prompt: "a red apple", steps: 2, seed: 1, sampler });
        expect(latents.every(Number.isFinite), sampler).toBe(true);
      }
    } finally {
      pipe.dispose();
    }
  });
});

describe("tiny-text2img256 (models/ldm/text2img256's structure: VQ-f4, BERTEmbedder on bert-base-uncased ids)", () => {
  const checkpoint = fixture("tiny-text2img256.safetensors");

  it(
    "passes ldm validate on every component (VQ first stage, unet, cond) and on the guided DDIM sample",
    passesValidate("tiny-text2img256"),
  );

  it('generates from a prompt at the VQ-f4 size, guided 5.0 against "" as scripts/txt2img.py', async () => {
    const pipe = await LatentDiffusion.load(checkpoint, { device });
    try {
      expect(pipe.prompted).toBe("bert");
      expect(pipe.defaultGuidanceScale).toBe(DEFAULT_GUIDANCE.bert);
      const result = await pipe.generate({ prompt: "a virus monster playing guitar", steps: 2, seed: 7 });
      expect([result.images[0].width, result.images[0].height]).toEqual([32, 32]);
      const explicit = await pipe.generate({
        prompt: "a virus monster playing guitar",
        steps: 2,
        seed: 7,
        negativePrompt: "",
      });
      expect(explicit.latents).toEqual(result.latents);
      const unguided = await pipe.generate({
        prompt: "a virus monster playing guitar",
        steps: 2,
        seed: 7,
        guidanceScale: 1,
      });
      expect(unguided.latents).not.toEqual(result.latents);
    } finally {
      pipe.dispose();
    }
  });
});

describe("tiny-layout2img (layout2img-openimages256's structure)", () => {
  const checkpoint = fixture("tiny-layout2img.safetensors");

  it(
    "passes ldm validate on every component (VQ first stage, unet, cond on layout tokens) and on the DDIM sample",
    passesValidate("tiny-layout2img"),
  );

  it("generates from a layout of class indices and boxes; a prompt or a missing layout is refused", async () => {
    const pipe = await LatentDiffusion.load(checkpoint, { device });
    try {
      expect(pipe.prompted).toBe("layout");
      expect(pipe.tokenizer).toBeUndefined();
      expect(pipe.defaultGuidanceScale).toBe(1);
      const layout = [{ class: 3, box: [0.1, 0.2, 0.6, 0.9] as const }];
      const result = await pipe.generate({ layout, steps: 2, seed: 3 });
      expect([result.images[0].width, result.images[0].height]).toEqual([32, 32]);
      const guided = await pipe.generate({ layout, steps: 2, seed: 3, guidanceScale: 2 });
      expect(guided.latents).not.toEqual(result.latents);
      await expect(pipe.generate({ prompt: "a cat", layout, steps: 1 })).rejects.toThrow(/takes no prompt/);
      await expect(pipe.generate({ steps: 1 })).rejects.toThrow(/layout-to-image model: it needs a layout/);
      await expect(pipe.generate({ layout: [{ class: 8191, box: [0, 0, 1, 1] }], steps: 1 })).rejects.toThrow(
        /class 8191 must be an integer in \[0, 8191\)/,
      );
    } finally {
      pipe.dispose();
    }
  });

  it("ldm generate --layout (JSON, or a file holding it) gives the library's image; a bad layout is one line", async () => {
    const layout = [{ class: 3, box: [0.1, 0.2, 0.6, 0.9] as const }];
    const pipe = await LatentDiffusion.load(checkpoint, { device });
    let expected: Uint8ClampedArray;
    try {
      expected = (await pipe.generate({ layout, steps: 2, seed: 3 })).images[0].data;
    } finally {
      pipe.dispose();
    }
    const dir = mkdtempSync(join(tmpdir(), "ldm-layout-"));
    try {
      const file = join(dir, "layout.json");
      writeFileSync(file, JSON.stringify(layout));
      const model = ["--model", checkpoint, "--config", fixture("tiny-layout2img.yaml"), "--steps", "2", "--seed", "3"];
      for (const [name, value] of [
        ["inline.png", JSON.stringify(layout)],
        ["file.png", file],
      ]) {
        const out = join(dir, name);
        const { code, err } = await runCli("generate", ...model, "--layout", value, "--out", out);
        expect(code, err).toBe(0);
        expect(decodePng(readFileSync(out), out).data).toEqual(expected);
      }
      const bad = await runCli("generate", ...model, "--layout", '[{"class": 3, "box": [0.7, 0.1, 0.6, 0.5]}]');
      expect([bad.code, bad.err.trim()]).toEqual([
        1,
        "ldm: --layout[0].box [0.7, 0.1, 0.6, 0.5] must satisfy 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1 (image fractions)",
      ]);
      const missing = await runCli("generate", ...model, "--layout", join(dir, "none.json"));
      expect(missing.code).toBe(1);
      expect(missing.err).toMatch(/--layout .*none\.json: neither a JSON array of objects nor an existing file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
