import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeSafetensors } from "@ldm/weights/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng, encodePng } from "../src/image/png.ts";
import { INFOTEXT_KEYWORD } from "../src/pipeline/infotext.ts";
import { PARAMETERS_KEYWORD, parseParameters } from "../src/pipeline/parameters.ts";
import { runCli as ldm } from "./helpers/run-cli.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const LORAS = fileURLToPath(new URL("./fixtures/lora/", import.meta.url));

let dir: string;
let loraDir: string;
let tiny: string[];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ldm-lora-"));
  loraDir = join(dir, "Lora");
  mkdirSync(join(loraDir, "styles"), { recursive: true });
  copyFileSync(join(LORAS, "tiny-sd1.kohya.safetensors"), join(loraDir, "tiny-sd1.kohya.safetensors"));
  copyFileSync(join(LORAS, "tiny-sd1.peft.safetensors"), join(loraDir, "styles", "style.safetensors"));
  const vocab = writeTinyVocab(join(dir, "tokenizer"), 1000);
  tiny = ["--model", join(DUMPS, "tiny-sd1.safetensors"), "--config", join(DUMPS, "tiny-sd1.yaml"), "--vocab", vocab];
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** kohya's "addnet" hash, which A1111 records for .safetensors LoRAs: sha256 of what follows the header. */
function addnetHash(path: string): string {
  const bytes = readFileSync(path);
  const header = Number(bytes.readBigUInt64LE(0));
  return createHash("sha256")
    .update(bytes.subarray(8 + header))
    .digest("hex");
}

const SAMPLING = ["--width", "32", "--height", "32", "--steps", "2", "--seed", "7", "--sampler", "euler"];

describe("ldm generate with LoRAs", () => {
  it("merges --lora files and the prompt's <lora:…> tags, records them as A1111 does, and --params-from restores them", async () => {
    const kohya = join(loraDir, "tiny-sd1.kohya.safetensors");
    const out = join(dir, "lora.png");
    const prompt = "a photo <lora:style:0.5:-0.7> of a cat";
    const run = await ldm(
      "generate",
      prompt,
      ...tiny,
      ...SAMPLING,
      "--lora",
      `${kohya}:0.8`,
      "--lora-dir",
      loraDir,
      "--out",
      out,
    );
    expect(run.code, run.err).toBe(0);
    expect(run.err).toMatch(/LoRA style merged at 0\.5 \(UNet -0\.7\)\nLoRA tiny-sd1\.kohya merged at 0\.8/);
    const image = decodePng(readFileSync(out), "lora");
    const hashes = {
      kohya: addnetHash(kohya).slice(0, 12),
      style: addnetHash(join(loraDir, "styles", "style.safetensors")).slice(0, 12),
    };
    // A1111's infotext keeps the prompt's tags; the --lora file is written as a tag too, so A1111 applies it.
    expect(image.text[INFOTEXT_KEYWORD]).toBe(
      `${prompt} <lora:tiny-sd1.kohya:0.8>\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 32x32, Model: tiny-sd1, Lora hashes: "style: ${hashes.style}, tiny-sd1.kohya: ${hashes.kohya}"`,
    );
    expect(parseParameters(image.text[PARAMETERS_KEYWORD], out)).toMatchObject({
      prompt,
      loras: [
        {
          name: "style",
          strength: 0.5,
          unetStrength: -0.7,
          hash: hashes.style,
          path: join(loraDir, "styles", "style.safetensors"),
        },
        { name: "tiny-sd1.kohya", strength: 0.8, hash: hashes.kohya, path: kohya },
      ],
    });

    // Ours: the --lora file from its recorded path, the tag from --lora-dir (or, without it, its recorded path).
    for (const extra of [["--lora-dir", loraDir], []]) {
      const again = join(dir, `again-${extra.length}.png`);
      const restored = await ldm("generate", "--params-from", out, ...tiny, ...extra, "--out", again);
      expect(restored.code, restored.err).toBe(0);
      expect(decodePng(readFileSync(again), "again").data).toEqual(image.data);
    }
    // A1111's infotext alone: every LoRA is a tag, found in --lora-dir; the hashes match, so no warning.
    const a1111 = join(dir, "a1111.png");
    writeFileSync(a1111, encodePng(image, { [INFOTEXT_KEYWORD]: image.text[INFOTEXT_KEYWORD] }));
    const fromA1111 = join(dir, "from-a1111.png");
    const third = await ldm("generate", "--params-from", a1111, ...tiny, "--lora-dir", loraDir, "--out", fromA1111);
    expect(third.code, third.err).toBe(0);
    expect(third.err).not.toMatch(/not restored|warning/);
    expect(decodePng(readFileSync(fromA1111), "from A1111").data).toEqual(image.data);
    // Without the LoRAs the image is another one; after them, the pipeline has its own weights back (same run).
    const plain = join(dir, "plain.png");
    const none = await ldm("generate", "a photo of a cat", ...tiny, ...SAMPLING, "--out", plain);
    expect(none.code, none.err).toBe(0);
    expect(decodePng(readFileSync(plain), "plain").data).not.toEqual(image.data);
  });

  it("names what is wrong: a tag without --lora-dir, a name the folder lacks, keys that fit no layer", async () => {
    const tagged = await ldm("generate", "a cat <lora:style:0.5>", ...tiny, ...SAMPLING, "--out", join(dir, "x.png"));
    expect(tagged.code).toBe(1);
    expect(tagged.err).toMatch(
      /<lora:style:0\.5> in the prompt: pass --lora-dir <folder> to find the LoRA file "style"/,
    );
    const missing = await ldm(
      "generate",
      "a cat <lora:nope>",
      ...tiny,
      "--lora-dir",
      loraDir,
      "--out",
      join(dir, "x.png"),
    );
    expect(missing.err).toMatch(
      /<lora:nope> in the prompt: no LoRA "nope" in .*Lora \(it has style, tiny-sd1\.kohya\)/,
    );
    const bad = join(dir, "bad.safetensors");
    await writeSafetensors(bad, {
      "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": {
        dtype: "F32",
        shape: [1, 32],
        data: new Float32Array(32),
      },
      "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": {
        dtype: "F32",
        shape: [32, 1],
        data: new Float32Array(32),
      },
    });
    const unfit = await ldm("generate", "a cat", ...tiny, ...SAMPLING, "--lora", bad, "--out", join(dir, "x.png"));
    expect(unfit.code).toBe(1);
    expect(unfit.err).toMatch(/bad\.safetensors does not fit this SD 1\.x model \(1 keys\)/);
    expect(unfit.err).toMatch(/lora_unet_down_blocks_7_attentions_0_proj_in: matches no layer of this SD 1\.x model/);
  });
});
