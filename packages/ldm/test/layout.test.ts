import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { LayoutBuilder, type LayoutObject, parseLayout } from "../src/tokenizer/index.ts";

// Fixture: reference/tokenizer/layout_fixtures.py, taming-transformers' ObjectsBoundingBoxConditionalBuilder.
const cases: { layout: LayoutObject[]; tokens: number[] }[] = JSON.parse(
  readFileSync(new URL("./fixtures/tokenizer/layout-cases.json", import.meta.url), "utf8"),
).cases;

// layout2img-openimages256's cond stage: BERTEmbedder(vocab_size 8192, max_seq_len 92).
const builder = LayoutBuilder.forCondStage(8192, 92);

describe("LayoutBuilder against taming's ObjectsBoundingBoxConditionalBuilder", () => {
  it("reads layout2img's cond stage as 30 objects on a 90 × 90 grid with the crop encoded", () => {
    expect(builder.cfg).toEqual({ noTokens: 8192, maxObjects: 30, encodeCrop: true, classNames: undefined });
    expect([builder.sections, builder.none, builder.length]).toEqual([90, 8191, 92]);
  });
  for (const c of cases) {
    it(`builds the sequence of a layout of ${c.layout.length} objects`, () => {
      expect(builder.build(c.layout)).toEqual(c.tokens);
      expect(builder.build(parseLayout(JSON.stringify(c.layout)))).toEqual(c.tokens);
    });
  }
  it("the fixture covers half-way coordinates, where rounding is to even", () => {
    const last = builder.sections - 1;
    const halfway = cases.flatMap((c) => c.layout.flatMap((o) => o.box)).filter((v) => (v * last) % 1 === 0.5);
    expect(halfway.length).toBeGreaterThanOrEqual(4);
    expect([builder.coordinateToken(0.5 / 89, 0), builder.coordinateToken(1.5 / 89, 0)]).toEqual([0, 2]);
  });
});

describe("layouts", () => {
  it("takes class names where the model has them", () => {
    const named = LayoutBuilder.forCondStage(8192, 92, ["cat", "dog"]);
    expect(named.build([{ class: "dog", box: [0, 0, 1, 1] }]).slice(0, 3)).toEqual([1, 0, 8099]);
    expect(() => named.build([{ class: "cow", box: [0, 0, 1, 1] }])).toThrow(/class "cow" is not one of the model's 2/);
    expect(() => named.build([{ class: 2, box: [0, 0, 1, 1] }])).toThrow(/class 2 must be an integer in \[0, 2\)/);
    expect(() => builder.build([{ class: "cat", box: [0, 0, 1, 1] }])).toThrow(/this model has no class names/);
  });
  it("refuses bad layouts with the object and the problem named", () => {
    expect(() => parseLayout("{")).toThrow(/layout is not valid JSON/);
    expect(() => parseLayout('{"class": 1}')).toThrow(/must be a JSON array/);
    expect(() => parseLayout('[{"class": 1, "box": [0, 0, 1]}]')).toThrow(
      /layout\[0\]\.box must be \[x0, y0, x1, y1\]/,
    );
    expect(() => parseLayout('[{"class": 1, "box": [0.5, 0, 0.5, 1]}]')).toThrow(/0 ≤ x0 < x1 ≤ 1/);
    expect(() => parseLayout('[{"class": 1, "box": [0, 0, 1.2, 1]}]')).toThrow(/layout\[0\]\.box \[0, 0, 1.2, 1\]/);
    expect(() => parseLayout('[{"box": [0, 0, 1, 1]}]')).toThrow(/layout\[0\]\.class must be a class index or name/);
    const many = Array.from({ length: 31 }, () => ({ class: 0, box: [0, 0, 1, 1] as const }));
    expect(() => builder.build(many)).toThrow(/31 objects; this model takes at most 30/);
    expect(() => builder.build([{ class: 8191, box: [0, 0, 1, 1] }])).toThrow(
      /class 8191 must be an integer in \[0, 8191\)/,
    );
    expect(() => LayoutBuilder.forCondStage(8192, 91)).toThrow(/max_seq_len 91 is neither/);
  });
});
