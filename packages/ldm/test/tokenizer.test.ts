import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import { CLIP_CONTEXT_LENGTH, ClipTokenizer, cleanText, gunzipText } from "../src/tokenizer/index.ts";
import { loadClipTokenizer, SHIPPED_CLIP_VOCAB } from "../src/tokenizer/vocab-files.ts";
import { runCli } from "./helpers/run-cli.ts";

// CLIP's vocabulary ships with @ldm/ldm: see vocab/clip/README.md.
const VOCAB_PATH = new URL("../vocab/clip/bpe_simple_vocab_16e6.txt.gz", import.meta.url).pathname;
const gzipped = readFileSync(VOCAB_PATH);
const tokenizer = ClipTokenizer.fromBpeMerges(gunzipSync(gzipped).toString("utf8"));

// Fixture: reference/tokenizer/clip_tokenizer_fixtures.py, openai/CLIP's own tokenizer (see fixtures/README.md).
interface PromptCase {
  prompt: string;
  bpe: number[];
  tokenize_zero_padded: number[];
  decoded: string;
}
const cases: PromptCase[] = JSON.parse(
  readFileSync(new URL("./fixtures/tokenizer/clip-prompts.json", import.meta.url), "utf8"),
).cases;

const scratch = mkdtempSync(join(tmpdir(), "ldm-tokenizer-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const preview = (prompt: string) => JSON.stringify(prompt.length > 50 ? `${prompt.slice(0, 47)}...` : prompt);

describe("ClipTokenizer against openai/CLIP", () => {
  it("knows CLIP's special tokens", () => {
    expect([tokenizer.startId, tokenizer.endId]).toEqual([49406, 49407]);
  });
  for (const c of cases) {
    it(`tokenizes ${preview(c.prompt)}`, () => {
      expect(tokenizer.encode(c.prompt)).toEqual(c.bpe);
      // clip.tokenize pads with 0 and truncates to 77, overwriting the last kept token with the end token.
      const zero = tokenizer.tokenize(c.prompt, { padWith: "zero" });
      expect(zero.padded).toEqual(c.tokenize_zero_padded);
      expect(zero.truncated).toBe(Math.max(0, c.bpe.length - (CLIP_CONTEXT_LENGTH - 2)));
      // The same ids padded with the end token (HF CLIPTokenizer's pad_token for SD1).
      const end = tokenizer.tokenize(c.prompt);
      expect(end.ids).toEqual(zero.ids);
      expect(end.padded).toEqual([...end.ids, ...new Array(CLIP_CONTEXT_LENGTH - end.ids.length).fill(49407)]);
      expect(tokenizer.decode(c.bpe)).toBe(c.decoded);
    });
  }
  it("covers truncation: some fixture prompts are longer than 75 BPE tokens", () => {
    expect(cases.filter((c) => c.bpe.length > CLIP_CONTEXT_LENGTH - 2).length).toBeGreaterThanOrEqual(2);
  });
});

describe("cleanText", () => {
  it("unescapes HTML twice, collapses Python whitespace, strips, lowercases", () => {
    expect(cleanText(" &amp;amp; A\u0085\u00a0B\u2003 ")).toBe("& a b");
    // U+001C is whitespace to str.strip() but not to the regex module's \s; U+FEFF is the reverse in JS.
    expect(cleanText("\u001cX\u001cY\u001c")).toBe("x\u001cy");
    expect(cleanText("a\ufeffb")).toBe("a\ufeffb");
  });
});

describe("vocabulary sources", () => {
  it("DecompressionStream (browser path) and zlib read the same merges", async () => {
    expect(await gunzipText(new Uint8Array(gzipped))).toBe(gunzipSync(gzipped).toString("utf8"));
  });

  it("a HF folder (vocab.json + merges.txt) written from the merges gives identical ids", () => {
    const { vocabJson, mergesText } = tokenizer.toVocabAndMerges();
    const vocab = JSON.parse(vocabJson);
    // Facts of HF's openai/clip-vit-large-patch14 vocab.json.
    expect(Object.keys(vocab).length).toBe(49408);
    expect([vocab["!"], vocab["!</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]]).toEqual([
      0, 256, 49406, 49407,
    ]);
    const folder = join(scratch, "hf", "tokenizer");
    mkdirSync(folder, { recursive: true });
    writeFileSync(join(folder, "vocab.json"), vocabJson);
    writeFileSync(join(folder, "merges.txt"), mergesText);
    writeFileSync(join(folder, "special_tokens_map.json"), JSON.stringify({ pad_token: "!" }));
    const fromModel = loadClipTokenizer({ model: join(scratch, "hf") });
    expect(fromModel.padWith).toBe("zero");
    const fromFolder = loadClipTokenizer({ vocab: folder }).tokenizer;
    for (const c of cases) {
      expect(fromModel.tokenizer.encode(c.prompt), c.prompt).toEqual(c.bpe);
      expect(fromFolder.encode(c.prompt), c.prompt).toEqual(c.bpe);
    }
  });

  it("without --vocab, no model or a single file gets the shipped CLIP vocabulary", () => {
    const single = join(scratch, "single.safetensors");
    writeFileSync(single, "");
    for (const source of [{}, { model: single }]) {
      const loaded = loadClipTokenizer(source);
      expect(loaded.path).toBe(SHIPPED_CLIP_VOCAB);
      expect(loaded.tokenizer.encode(cases[0].prompt)).toEqual(cases[0].bpe);
    }
  });

  it("errors name the file and say what to pass", () => {
    expect(() => loadClipTokenizer({ model: scratch })).toThrow(/has no tokenizer\/ folder; pass --vocab/);
    expect(() => loadClipTokenizer({ model: join(scratch, "nope.safetensors") })).toThrow(
      /nope.safetensors: no such file or folder$/,
    );
    expect(() => loadClipTokenizer({ vocab: join(scratch, "nope.gz") })).toThrow(/nope.gz does not exist/);
    // A merges file cut mid-line (here: after a newline) has an empty merge, which simple_tokenizer would
    // silently turn into a token; we name the file and the line instead.
    const truncated = join(scratch, "short.txt");
    writeFileSync(truncated, "#version\ni n\nt h\n");
    expect(() => loadClipTokenizer({ vocab: truncated })).toThrow(/short.txt: BPE merges file: merge 3 is ""/);
    const badJson = join(scratch, "bad");
    mkdirSync(badJson);
    writeFileSync(join(badJson, "vocab.json"), "{");
    writeFileSync(join(badJson, "merges.txt"), "#version: 0.2\n");
    expect(() => loadClipTokenizer({ vocab: badJson })).toThrow(/vocab.json is not valid JSON/);
  });
});

describe("ldm tokenize", () => {
  const run = (...args: string[]) => runCli("tokenize", ...args);

  it("prints ids and the padded form as JSON", async () => {
    const r = await run("a photograph of an astronaut riding a horse", "--vocab", VOCAB_PATH);
    expect(r.code).toBe(0);
    const printed = JSON.parse(r.out);
    expect(printed.ids).toEqual([49406, ...cases[0].bpe, 49407]);
    expect(printed.padded.length).toBe(77);
    expect(printed.padded.slice(printed.ids.length)).toEqual(new Array(77 - printed.ids.length).fill(49407));
    const zero = JSON.parse((await run("a photograph", "--vocab", VOCAB_PATH, "--pad-with", "zero")).out);
    expect(zero.padded.at(-1)).toBe(0);
  });

  it("--weights prints the A1111 parse and the weighted 77-id chunks", async () => {
    const r = await run("a (red:1.5) apple BREAK [green] pear", "--weights");
    expect(r.code).toBe(0);
    const printed = JSON.parse(r.out);
    expect(printed.parsed).toEqual([
      ["a ", 1],
      ["red", 1.5],
      [" apple", 1],
      ["BREAK", -1],
      ["", 1],
      ["green", 1 / 1.1],
      [" pear", 1],
    ]);
    expect(printed.chunks.length).toBe(2);
    const [first] = printed.chunks;
    expect(first.ids.slice(0, 5)).toEqual([49406, ...tokenizer.encode("a red apple"), 49407]);
    expect(first.weights.slice(0, 5)).toEqual([1, 1, 1.5, 1, 1]);
    expect(printed.tokenCount).toBe(75 + 2);
    const bad = await run("(a:1.2.3)", "--weights");
    expect(bad.err).toMatch(/emphasis weight "1.2.3" is not a number/);
  });

  it("uses the shipped vocabulary without --vocab", async () => {
    const r = await run("a photograph of an astronaut riding a horse");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).ids).toEqual([49406, ...cases[0].bpe, 49407]);
  });

  it("exits 1 with what to pass when no vocabulary is found, 1 on a bad --pad-with", async () => {
    const missing = await run("hello", "--model", scratch);
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/has no tokenizer\/ folder; pass --vocab/);
    const bad = await run("hello", "--vocab", VOCAB_PATH, "--pad-with", "left");
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/--pad-with must be "end" or "zero"/);
  });
});
