import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { encode } from "fast-png";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng, encodePng } from "../src/image/png.ts";
import { INFOTEXT_KEYWORD } from "../src/pipeline/infotext.ts";
import { PARAMETERS_KEYWORD, parseParameters } from "../src/pipeline/parameters.ts";
import { runCli } from "./helpers/run-cli.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const CHECKPOINT = join(DUMPS, "tiny-sd1.safetensors");

let dir: string;
let vocab: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ldm-params-from-"));
  vocab = writeTinyVocab(join(dir, "tokenizer"), 1000);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("generate --params-from restores the model", () => {
  it("from our parameters' path, from A1111's Model under --models-dir by name or by hash, else names it", async () => {
    const first = join(dir, "first.png");
    const args = ["--vocab", vocab, "--steps", "2", "--seed", "5", "--width", "32", "--height", "32"];
    const run = await runCli(
      "generate",
      "a cat",
      "--model",
      CHECKPOINT,
      "--config",
      join(DUMPS, "tiny-sd1.yaml"),
      ...args,
      "--out",
      first,
    );
    expect(run.code, run.err).toBe(0);
    const image = decodePng(readFileSync(first), "first");
    expect(parseParameters(image.text[PARAMETERS_KEYWORD], first).modelPath).toBe(CHECKPOINT);

    // Our parameters: the recorded path (the YAML beside it is found as for --model).
    const again = join(dir, "again.png");
    const restored = await runCli("generate", "--params-from", first, "--vocab", vocab, "--out", again);
    expect(restored.code, restored.err).toBe(0);
    expect(restored.err).toContain(`model tiny-sd1.safetensors → ${CHECKPOINT}`);
    expect(restored.err).not.toMatch(/not restored/);
    expect(decodePng(readFileSync(again), "again").data).toEqual(image.data);

    // A1111's infotext: "Model: other" found by name, then a renamed copy found by its hash.
    const models = join(dir, "models");
    mkdirSync(join(models, "sub"), { recursive: true });
    copyFileSync(CHECKPOINT, join(models, "sub", "other.safetensors"));
    copyFileSync(join(DUMPS, "tiny-sd1.yaml"), join(models, "sub", "other.yaml"));
    const sha256 = createHash("sha256").update(readFileSync(CHECKPOINT)).digest("hex");
    const a1111 = (model: string) => {
      const path = join(dir, `${model}.png`);
      const infotext = image.text[INFOTEXT_KEYWORD].replace(
        "Model: tiny-sd1",
        `Model hash: ${sha256.slice(0, 10)}, Model: ${model}`,
      );
      writeFileSync(path, encodePng(image, { [INFOTEXT_KEYWORD]: infotext }));
      return path;
    };
    for (const model of ["other", "renamed"]) {
      const out = join(dir, `from-${model}.png`);
      const r = await runCli(
        "generate",
        "--params-from",
        a1111(model),
        "--models-dir",
        models,
        "--vocab",
        vocab,
        "--out",
        out,
      );
      expect(r.code, r.err).toBe(0);
      expect(r.err).toContain(`model ${model} → ${join(models, "sub", "other.safetensors")}`);
      expect(decodePng(readFileSync(out), model).data).toEqual(image.data);
    }

    // Not found: named with its hash in the one warning line (the run then stops at the bad --steps).
    const missing = await runCli("generate", "--params-from", a1111("absent"), "--steps", "0");
    expect(missing.err).toMatch(
      new RegExp(
        `ldm: warning: .*absent.png: not restored: model "absent" \\(hash ${sha256.slice(0, 10)}\\): pass --model or --models-dir\\n`,
      ),
    );
  }, 240_000);

  it("names the recorded embeddings that --embedding and --embeddings-dir do not give", async () => {
    const folder = fileURLToPath(new URL("./fixtures/prompts/embeddings/", import.meta.url));
    const png = join(dir, "embeddings.png");
    const infotext =
      'a photo of lumen\nNegative prompt: ink\nSteps: 2, Seed: 1, TI hashes: "lumen: 0123456789ab, ink: ba9876543210"';
    writeFileSync(
      png,
      encodePng({ width: 8, height: 8, data: new Uint8ClampedArray(256) }, { [INFOTEXT_KEYWORD]: infotext }),
    );
    // The runs stop at the bad --steps, after the parameters are restored and before any model work.
    const none = await runCli("generate", "--params-from", png, "--steps", "0");
    expect(none.err).toMatch(/not restored: .*embeddings lumen, ink: pass --embedding or --embeddings-dir\n/);
    const one = await runCli(
      "generate",
      "--params-from",
      png,
      "--embedding",
      join(folder, "ink.safetensors"),
      "--steps",
      "0",
    );
    expect(one.err).toMatch(/not restored: .*embeddings lumen: pass --embedding or --embeddings-dir\n/);
    const all = await runCli("generate", "--params-from", png, "--embeddings-dir", folder, "--steps", "0");
    expect(all.err).not.toMatch(/embeddings/);
    for (const r of [none, one, all]) expect(r.err).toMatch(/--steps must be an integer ≥ 1, got "0"/);
  });
});

describe("generate --params-from restores what the paper's models were conditioned on", () => {
  /** Generates with `args`, then again from the PNG alone (from another folder's point of view): same pixels. */
  async function roundTrip(name: string, args: string[]) {
    const first = join(dir, `${name}.png`);
    const run = await runCli("generate", ...args, "--steps", "2", "--seed", "9", "--out", first);
    expect(run.code, run.err).toBe(0);
    const image = decodePng(readFileSync(first), name);
    const again = join(dir, `${name}-again.png`);
    const restored = await runCli("generate", "--params-from", first, "--out", again);
    expect(restored.code, restored.err).toBe(0);
    expect(restored.err).not.toMatch(/not restored/);
    expect(decodePng(readFileSync(again), `${name} again`).data).toEqual(image.data);
    return parseParameters(image.text[PARAMETERS_KEYWORD], first);
  }

  it("a class and a --config from another folder than the checkpoint's", async () => {
    // No YAML beside the checkpoint: without the recorded config, the run from the PNG could not load it.
    mkdirSync(join(dir, "cin", "configs"), { recursive: true });
    const model = join(dir, "cin", "cin.safetensors");
    const config = join(dir, "cin", "configs", "cin256-v2.yaml");
    copyFileSync(join(DUMPS, "tiny-cin.safetensors"), model);
    copyFileSync(join(DUMPS, "tiny-cin.yaml"), config);
    const stored = await roundTrip("cin", ["--model", model, "--config", config, "--class", "7", "--cfg", "3"]);
    expect(stored).toMatchObject({ classLabel: 7, config, modelPath: model, guidanceScale: 3 });
    // Another class is another image: the restored class is what made the pixels equal.
    const other = join(dir, "cin-other.png");
    const run = await runCli("generate", "--params-from", join(dir, "cin.png"), "--class", "2", "--out", other);
    expect(run.code, run.err).toBe(0);
    const [a, b] = [join(dir, "cin.png"), other].map((p) => decodePng(readFileSync(p), p).data);
    expect(b).not.toEqual(a);
  }, 120_000);

  it("a layout, and a segmentation map found beside the PNG", async () => {
    const layout = [{ class: 3, box: [0.1, 0.2, 0.6, 0.9] }];
    const stored = await roundTrip("layout", [
      "--model",
      join(DUMPS, "tiny-layout2img.safetensors"),
      "--layout",
      JSON.stringify(layout),
    ]);
    expect(stored.layout).toEqual(layout);
    const map = Uint8Array.from({ length: 32 * 32 }, (_, p) => Math.floor(p / 32 / 8) * 3);
    writeFileSync(join(dir, "map.png"), encode({ width: 32, height: 32, data: map, depth: 8, channels: 1 }));
    const seg = await roundTrip("seg", [
      "--model",
      join(DUMPS, "tiny-seg.safetensors"),
      "--segmentation",
      join(dir, "map.png"),
    ]);
    expect(seg.segmentation).toBe("map.png");
  }, 120_000);
});
