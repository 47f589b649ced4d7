import { describe, expect, it } from "vitest";
import { ClipTokenizer } from "../src/tokenizer/index.ts";

describe("merges files smaller than CLIP's", () => {
  it("builds the vocabulary from every merge given, with the special tokens last", () => {
    // 256 byte tokens + 256 with </w> + 2 merges + 2 specials, as simple_tokenizer builds it.
    const tok = ClipTokenizer.fromBpeMerges("#version: test\nh i</w>\nc a");
    expect(tok.startId).toBe(512 + 2);
    expect(tok.endId).toBe(512 + 3);
    const hi = tok.tokenize("hi", { maxLength: 4 });
    expect(hi.ids).toEqual([514, 512, 515]);
  });

  it("refuses a file with no merges", () => {
    expect(() => ClipTokenizer.fromBpeMerges("#version: test\n")).toThrow(/no merges/);
  });
});
