import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
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
