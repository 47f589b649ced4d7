import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng } from "../src/image/png.ts";
import { embeddingFilesIn, readEmbeddingFile } from "../src/pipeline/embedding-files.ts";
import { parseEmbedding } from "../src/pipeline/embeddings.ts";
import { formatInfotext, parametersFromInfotext, StableDiffusion } from "../src/pipeline/index.ts";
import { checkpointAt } from "../src/server/models.ts";
import { serve } from "../src/server/server.ts";
import { expectConditioning } from "./helpers/compare.ts";
import { runCli } from "./helpers/run-cli.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

// Golden file: reference/prompting/embedding_fixtures.py, the embeddings' vectors written over the token embeddings
// of the ORIGINAL text encoders (transformers' CLIPTextModel, OpenCLIP's) at the trigger's positions, A1111's
// chunking with each vector counted as a token, and its "Original" emphasis.
const FIXTURES = fileURLToPath(new URL("./fixtures/", import.meta.url));
const FOLDER = join(FIXTURES, "prompts/embeddings");
interface Case {
  model: string;
  clip_skip: number | null;
  prompt: string;
  ids: number[][];
  multipliers: number[][];
  token_count: number;
  embeddings: string[];
  tensor: string;
}
const golden: { vocab: number; cases: Case[]; embeddings: { file: string; name: string; vectors: number }[] } =
  JSON.parse(readFileSync(join(FIXTURES, "prompts/embeddings.json"), "utf8"));

const device = await useDevice();
let scratch: string;
const pipes = new Map<string, StableDiffusion>();
beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "ldm-embeddings-"));
  const vocab = writeTinyVocab(join(scratch, "tokenizer"), golden.vocab);
  for (const name of ["tiny-sd1", "tiny-sd2"]) {
    const path = join(FIXTURES, "dumps", name);
    const pipe = await StableDiffusion.load(`${path}.safetensors`, { device, config: `${path}.yaml`, vocab });
    await pipe.loadEmbeddings({ dir: FOLDER });
    pipes.set(name, pipe);
  }
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

// As the long-prompt conditioning (prompt-conditioning.test.ts): the encoder matches PyTorch to ~1e-6 of max|ref|
// per chunk, the emphasis is float64 there and float32 here. Measured on lavapipe: 4.1e-7 to 6.0e-7 of max|ref|;
// the vectors scaled by 1.01 move every case by 1.3e-3 or more.
const TOLERANCE = 5e-6;

describe("textual-inversion embeddings against the original text encoders", () => {
  for (const c of golden.cases) {
    it(`${c.model}, CLIP skip ${c.clip_skip ?? "default"}: ${JSON.stringify(c.prompt.slice(0, 60))}`, async () => {
      const pipe = pipes.get(c.model) as StableDiffusion;
      const tokens = pipe.tokenize(c.prompt);
      expect([...tokens.ids]).toEqual(c.ids.flat());
      const multipliers = c.multipliers.flat();
      [...tokens.weights].forEach((w, i) => {
        expect(w).toBeCloseTo(multipliers[i], 6);
      });
      expect(tokens.embeddings.sort()).toEqual(c.embeddings);
      const context = await pipe.encodeText([c.prompt], { clipSkip: c.clip_skip ?? undefined });
      const dump = join(FIXTURES, "prompts/embedding-conditioning.safetensors");
      await expectConditioning(context, dump, c.tensor, TOLERANCE);
    });
  }

  it("reads every file of the folder: A1111's .pt, emb_params, string_to_param.* (f16, one vector)", async () => {
    const files = await embeddingFilesIn(FOLDER);
    expect(files.map((f) => f.slice(FOLDER.length + 1))).toEqual(golden.embeddings.map((e) => e.file));
    for (const [i, path] of files.entries()) {
      const embedding = await readEmbeddingFile(path);
      expect(embedding.name).toBe(golden.embeddings[i].name);
      expect(embedding.count).toBe(golden.embeddings[i].vectors);
      expect(embedding.sha256).toBe(createHash("sha256").update(readFileSync(path)).digest("hex"));
    }
    const pipe = pipes.get("tiny-sd1") as StableDiffusion;
    expect(pipe.embeddings.map((e) => e.name)).toEqual(["ink", "lumen", "zorblax-style"]);
  });

  it("refuses an embedding of another width by name, with both widths", async () => {
    const pipe = pipes.get("tiny-sd1") as StableDiffusion;
    expect(() => pipe.tokenize("a wide view")).toThrow(
      /embedding "wide" has vectors of width 48; this text encoder's token embeddings are 32 wide/,
    );
    await expect(pipe.loadEmbeddings({ files: [join(FOLDER, "wide.safetensors")] })).rejects.toThrow(
      /embedding "wide" has vectors of width 48; this text encoder's token embeddings are 32 wide/,
    );
  });

  it("refuses files that are not one embedding, naming what they hold", async () => {
    const tensor = (name: string, shape: number[]) => ({ name, shape });
    const safetensors = (tensors: { name: string; shape: number[] }[]) => {
      let offset = 0;
      const header: Record<string, unknown> = {};
      for (const t of tensors) {
        const bytes = t.shape.reduce((a, b) => a * b, 1) * 4;
        header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + bytes] };
        offset += bytes;
      }
      const json = new TextEncoder().encode(JSON.stringify(header));
      const out = new Uint8Array(8 + json.length + offset);
      new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
      out.set(json, 8);
      return out;
    };
    await expect(
      parseEmbedding(safetensors([tensor("clip_g", [1, 8]), tensor("clip_l", [1, 4])]), "x.safetensors"),
    ).rejects.toThrow(/x\.safetensors: an SDXL embedding \(clip_g, clip_l\): SDXL models are not supported/);
    await expect(
      parseEmbedding(safetensors([tensor("a", [1, 8]), tensor("b", [1, 8])]), "two.safetensors"),
    ).rejects.toThrow(/two\.safetensors: an embedding holds one tensor; this file has 2 \(a, b\)/);
    await expect(parseEmbedding(safetensors([tensor("emb_params", [1, 2, 8])]), "r.safetensors")).rejects.toThrow(
      /tensor "emb_params" is F32 \[1, 2, 8\]; an embedding is floats \[vectors, width\]/,
    );
    await expect(parseEmbedding(new Uint8Array(4), "e.txt")).rejects.toThrow(/e\.txt: not an embedding file/);
    const pipe = pipes.get("tiny-sd2") as StableDiffusion;
    const long = await parseEmbedding(safetensors([tensor("emb_params", [76, 32])]), "long.safetensors");
    expect(() => pipe.addEmbeddings([long])).toThrow(
      /embedding "long" has 76 vectors: more than the 75 tokens of a prompt chunk/,
    );
  });

  it("records the embeddings a generation used, and A1111's TI hashes in the infotext", async () => {
    const pipe = pipes.get("tiny-sd1") as StableDiffusion;
    const result = await pipe.generate({
      prompt: "a photo of lumen",
      negativePrompt: "ink",
      steps: 1,
      width: 64,
      height: 64,
      seed: 1,
    });
    const hash = (file: string) =>
      createHash("sha256")
        .update(readFileSync(join(FOLDER, file)))
        .digest("hex");
    const expected = { lumen: hash("lumen.pt").slice(0, 12), ink: hash("ink.safetensors").slice(0, 12) };
    const [parameters] = result.parameters;
    expect(parameters.embeddings).toEqual(expected);
    const infotext = formatInfotext(parameters);
    expect(infotext).toContain(`TI hashes: "lumen: ${expected.lumen}, ink: ${expected.ink}"`);
    const restored = parametersFromInfotext(infotext, "x.png");
    expect(restored.parameters.embeddings).toEqual(expected);
    expect(restored.unrestored).toEqual([]);
  });

  it("can be removed: the trigger is words again", () => {
    const pipe = pipes.get("tiny-sd2") as StableDiffusion;
    const lumen = pipe.embeddings.find((e) => e.name === "lumen");
    pipe.removeEmbeddings(["lumen"]);
    try {
      expect(pipe.tokenize("a photo of lumen").embeddings).toEqual([]);
      // zorblax-style's vectors now follow ink's directly.
      expect([...pipe.tokenize("ink zorblax-style").ids].filter((id) => id >= golden.vocab)).toEqual([
        1000, 1001, 1002,
      ]);
    } finally {
      if (lumen) pipe.addEmbeddings([lumen]);
    }
  });
});

describe("ldm serve with embeddings", () => {
  it("lists them as A1111's /sdapi/v1/embeddings, and a prompt's trigger is recorded in the infotext", async () => {
    const vocab = join(scratch, "tokenizer");
    const path = join(FIXTURES, "dumps/tiny-sd2");
    const server = await serve({
      checkpoints: [checkpointAt(`${path}.safetensors`, { config: `${path}.yaml` })],
      loader: async (c) => {
        const pipe = await StableDiffusion.load(c.filename, { device, config: c.config ?? undefined, vocab });
        await pipe.loadEmbeddings({ dir: FOLDER });
        return pipe;
      },
      port: 0,
    });
    try {
      const listed = await (await fetch(`${server.url}/sdapi/v1/embeddings`)).json();
      const entry = (shape: number, vectors: number) => ({
        step: null,
        sd_checkpoint: null,
        sd_checkpoint_name: null,
        shape,
        vectors,
      });
      expect(listed).toEqual({
        loaded: { ink: entry(32, 1), lumen: entry(32, 3), "zorblax-style": entry(32, 2) },
        skipped: { wide: entry(48, 2) },
      });
      const response = await fetch(`${server.url}/sdapi/v1/txt2img`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "a photo of lumen", steps: 1, seed: 1, width: 48, height: 48 }),
      });
      expect(response.status).toBe(200);
      const info = JSON.parse((await response.json()).info);
      const hash = createHash("sha256")
        .update(readFileSync(join(FOLDER, "lumen.pt")))
        .digest("hex");
      expect(info.infotexts[0]).toContain(`TI hashes: "lumen: ${hash.slice(0, 12)}"`);
    } finally {
      await server.close();
    }
  });
});

describe("ldm generate and tokenize with embeddings", () => {
  it("generate --embeddings-dir: the PNG's infotext holds the TI hashes", async () => {
    const out = join(scratch, "lumen.png");
    const path = join(FIXTURES, "dumps/tiny-sd1");
    const model = ["--model", `${path}.safetensors`, "--config", `${path}.yaml`, "--vocab", join(scratch, "tokenizer")];
    const args = ["a photo of lumen", ...model, "--embeddings-dir", FOLDER, "--steps", "1", "--seed", "3"];
    const r = await runCli("generate", ...args, "--out", out);
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/embeddings: ink \(1\), lumen \(3\), zorblax-style \(2\)/);
    const hash = createHash("sha256")
      .update(readFileSync(join(FOLDER, "lumen.pt")))
      .digest("hex");
    expect(decodePng(readFileSync(out), out).text.parameters).toContain(`TI hashes: "lumen: ${hash.slice(0, 12)}"`);
    const wrong = await runCli("generate", "a wide view", ...model, "--embedding", join(FOLDER, "wide.safetensors"));
    expect(wrong.code).toBe(1);
    expect(wrong.err).toMatch(
      /embedding "wide" has vectors of width 48; this text encoder's token embeddings are 32 wide/,
    );
  });

  it("shows a trigger as its vectors' ids after the vocabulary", async () => {
    const r = await runCli("tokenize", "a photo of lumen", "--embedding", join(FOLDER, "lumen.pt"));
    expect(r.code).toBe(0);
    const printed = JSON.parse(r.out);
    expect(printed.embeddings).toEqual([{ name: "lumen", vectors: 3, ids: [49408, 49409, 49410] }]);
    expect(printed.chunks[0].ids.slice(4, 8)).toEqual([49408, 49409, 49410, 49407]);
    expect(printed.tokenCount).toBe(6);
  });

  it("names an unreadable embedding", async () => {
    const bad = join(scratch, "broken.pt");
    writeFileSync(bad, "not a checkpoint");
    const r = await runCli("tokenize", "broken", "--embedding", bad);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/broken\.pt: not a PyTorch checkpoint/);
  });
});
