import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { chunkPrompt, parsePromptAttention } from "../src/tokenizer/prompt-attention.ts";
import { loadClipTokenizer } from "../src/tokenizer/vocab-files.ts";
import { CLIP_VOCAB } from "./helpers/tiny-vocab.ts";

// Golden file: reference/prompting/a1111_prompt_fixtures.py, AUTOMATIC1111's own parse_prompt_attention and
// tokenize_line (see fixtures/README.md).
interface Chunks {
  ids: number[][];
  multipliers: number[][];
  token_count: number;
}
const golden: { cases: { prompt: string; parsed: [string, number][]; sd1: Chunks; sd2: Chunks }[] } = JSON.parse(
  readFileSync(new URL("./fixtures/prompts/a1111-prompts.json", import.meta.url), "utf8"),
);
const tokenizer = loadClipTokenizer({ vocab: CLIP_VOCAB }).tokenizer;
const preview = (prompt: string) => JSON.stringify(prompt.length > 50 ? `${prompt.slice(0, 47)}...` : prompt);

describe("A1111 prompt syntax against its own code", () => {
  for (const c of golden.cases) {
    it(`${preview(c.prompt)}: parse, then 75-token chunks for SD1 and SD2`, () => {
      // Weights are products of the same factors in the same order: equal to the last bit.
      expect(parsePromptAttention(c.prompt)).toEqual(c.parsed);
      for (const [variant, padWith] of [
        ["sd1", "end"],
        ["sd2", "zero"],
      ] as const) {
        const { chunks, tokenCount } = chunkPrompt(tokenizer, c.prompt, { length: 77, padWith });
        expect(chunks.map((ch) => ch.ids)).toEqual(c[variant].ids);
        expect(chunks.map((ch) => ch.weights)).toEqual(c[variant].multipliers);
        expect(tokenCount).toBe(c[variant].token_count);
      }
    });
  }

  it("the corpus exercises every rule", () => {
    const all = golden.cases;
    const weights = new Set(all.flatMap((c) => c.parsed.map(([, w]) => w)));
    for (const w of [1.1, 1 / 1.1, 1.2100000000000002, 1.4, -1]) expect(weights).toContain(w);
    expect(all.some((c) => c.sd1.ids.length > 1 && !c.prompt.includes("BREAK"))).toBe(true);
    // A chunk cut at a comma, before it was full: padding before its end token.
    expect(all.some((c) => c.sd1.ids.length > 1 && c.sd1.ids[0].indexOf(49407) < 76)).toBe(true);
    expect(all.some((c) => c.sd2.ids.some((row) => row.at(-1) === 0))).toBe(true);
    expect(all.some((c) => c.parsed.some(([text]) => text.includes("(")))).toBe(true);
  });

  it("without emphasis the prompt is plain text", () => {
    const { chunks } = chunkPrompt(tokenizer, "(a cat:1.5)", { length: 77, padWith: "end", emphasis: false });
    expect(chunks[0].ids.slice(1, 1 + tokenizer.encode("(a cat:1.5)").length)).toEqual(tokenizer.encode("(a cat:1.5)"));
    expect(chunks[0].weights.every((w) => w === 1)).toBe(true);
  });

  it("names a weight that is not a number", () => {
    expect(() => parsePromptAttention("(a:1.2.3)")).toThrow(/emphasis weight "1.2.3" is not a number/);
  });
});
