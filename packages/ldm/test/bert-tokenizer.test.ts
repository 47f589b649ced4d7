import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  BERT_MAX_LENGTH,
  BERT_VOCAB_SIZE,
  BertTokenizer,
  normalizeBertText,
  splitBertWords,
} from "../src/tokenizer/index.ts";
import { runCli } from "./helpers/run-cli.ts";

// bert-base-uncased's vocabulary ships with @ldm/ldm: see vocab/bert/README.md.
const tokenizer = new BertTokenizer(readFileSync(new URL("../vocab/bert/vocab.txt", import.meta.url), "utf8"));

// Fixture: reference/tokenizer/bert_tokenizer_fixtures.py, BERT's own tokenization.py with Hugging Face's rules.
interface PromptCase {
  prompt: string;
  tokens: string[];
  wordpiece: number[];
  input_ids: number[];
}
const cases: PromptCase[] = JSON.parse(
  readFileSync(new URL("./fixtures/tokenizer/bert-prompts.json", import.meta.url), "utf8"),
).cases;

const preview = (prompt: string) => JSON.stringify(prompt.length > 50 ? `${prompt.slice(0, 47)}...` : prompt);

describe("BertTokenizer against BERT's tokenization.py", () => {
  it("reads bert-base-uncased: 30,522 tokens, [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102", () => {
    expect(tokenizer.vocabSize).toBe(BERT_VOCAB_SIZE);
    expect([tokenizer.padId, tokenizer.unkId, tokenizer.clsId, tokenizer.sepId]).toEqual([0, 100, 101, 102]);
  });
  for (const c of cases) {
    it(`tokenizes ${preview(c.prompt)}`, () => {
      expect(tokenizer.wordpieces(c.prompt)).toEqual(c.tokens);
      expect(tokenizer.encode(c.prompt)).toEqual(c.wordpiece);
      const { ids, padded, truncated } = tokenizer.tokenize(c.prompt);
      expect(padded).toEqual(c.input_ids);
      expect(ids).toEqual(c.input_ids.slice(0, ids.length));
      expect(padded.slice(ids.length).every((id) => id === 0)).toBe(true);
      expect(truncated).toBe(Math.max(0, c.wordpiece.length - (BERT_MAX_LENGTH - 2)));
    });
  }
  it("the fixture covers truncation, [UNK], continuations and the empty prompt", () => {
    expect(cases.filter((c) => c.wordpiece.length > BERT_MAX_LENGTH - 2).length).toBeGreaterThanOrEqual(2);
    expect(cases.some((c) => c.tokens.includes("[UNK]"))).toBe(true);
    expect(cases.some((c) => c.tokens.some((t) => t.startsWith("##")))).toBe(true);
    expect(cases.some((c) => c.tokens.length === 0)).toBe(true);
  });
});

describe("BERT normalization and word splitting", () => {
  it("strips accents before lowercasing each character alone", () => {
    expect(normalizeBertText("Ångström İ ΣΟΣ")).toBe("angstrom i σοσ");
    expect(normalizeBertText("a\u0000b\ufffdc\u200dd\ue000e")).toBe("abcde");
    expect(normalizeBertText("中文x")).toBe(" 中  文 x");
  });
  it("splits on whitespace and makes each punctuation mark a word", () => {
    expect(splitBertWords("it's  $3.50!\u2028ok")).toEqual(["it", "'", "s", "$", "3", ".", "50", "!", "ok"]);
  });
  it("gives [UNK] for a word over 100 characters and for a word with an unmatched piece", () => {
    expect(tokenizer.wordpieces("a".repeat(100)).includes("[UNK]")).toBe(false);
    expect(tokenizer.wordpieces("a".repeat(101))).toEqual(["[UNK]"]);
    expect(tokenizer.wordpieces("🚀")).toEqual(["[UNK]"]);
  });
  it("decodes wordpieces back to text", () => {
    expect(tokenizer.decode(tokenizer.encode("Unbelievably photorealistic, isn't it?"))).toBe(
      "unbelievably photorealistic , isn ' t it ?",
    );
  });
  it("refuses a vocabulary without BERT's special tokens and bad lengths", () => {
    expect(() => new BertTokenizer("a\nb\n")).toThrow(/no \[PAD\] line/);
    expect(() => tokenizer.tokenize("x", { maxLength: 1 })).toThrow(/maxLength 1/);
    expect(() => tokenizer.decode([BERT_VOCAB_SIZE])).toThrow(/token id 30522 is not in the vocabulary/);
  });
});

describe("ldm tokenize --tokenizer bert", () => {
  const run = (...args: string[]) => runCli("tokenize", ...args);

  it("prints the golden ids with the shipped vocabulary", async () => {
    const r = await run(cases[0].prompt, "--tokenizer", "bert");
    expect(r.code).toBe(0);
    const printed = JSON.parse(r.out);
    expect(printed.padded).toEqual(cases[0].input_ids);
    expect(printed.ids).toEqual([101, ...cases[0].wordpiece, 102]);
    expect(printed.truncated).toBe(0);
  });

  it("exits 1 naming the problem for a bad --tokenizer, a missing vocab or a CLIP-only flag", async () => {
    expect((await run("x", "--tokenizer", "t5")).err).toMatch(/--tokenizer must be one of clip, bert, got "t5"/);
    expect((await run("x", "--tokenizer", "bert", "--vocab", "/nonexistent/vocab.txt")).err).toMatch(
      /BERT vocab \/nonexistent\/vocab.txt does not exist/,
    );
    const pad = await run("x", "--tokenizer", "bert", "--pad-with", "end");
    expect([pad.code, pad.err]).toEqual([1, expect.stringMatching(/--pad-with is for CLIP/)]);
  });
});
