/**
 * The crop geometry of the UNet's split_input tiling (pipeline/split-input.ts) against upstream's rules: the
 * crops torch.nn.Unfold takes ((h − ks) // stride + 1, every stride), one more flush with the edge where they
 * leave a rest, and get_weighting's clipped delta_border. Sampling with them is checked against upstream's own
 * tiled DDIM in ldm-family.test.ts.
 */
import { describe, expect, it } from "vitest";
import { checkSplitInput, cropStarts, cropWeights } from "../src/pipeline/split-input.ts";

describe("split_input crops", () => {
  it("start every stride while a crop fits, as Unfold; a last crop flush with the edge covers any rest", () => {
    expect(cropStarts(16, 8, 4)).toEqual([0, 4, 8]);
    expect(cropStarts(256, 128, 64)).toEqual([0, 64, 128]);
    expect(cropStarts(18, 8, 4)).toEqual([0, 4, 8, 10]);
    expect(cropStarts(8, 8, 4)).toEqual([0]);
    expect(cropStarts(5, 8, 4)).toEqual([0]);
    expect(cropStarts(9, 8, 8)).toEqual([0, 1]);
  });

  it("weigh cells by delta_border clipped to [0.01, 0.5]: the distance to the nearest edge over the size − 1", () => {
    // delta_border(5, 5): coordinates / 4, so the distances are 0, 0.25, 0.5 towards the middle.
    const w = cropWeights(5, 5);
    expect(w[0]).toBeCloseTo(0.01, 7);
    expect(w[1 * 5 + 1]).toBeCloseTo(0.25, 7);
    expect(w[2 * 5 + 2]).toBeCloseTo(0.5, 7);
    expect(w[2 * 5 + 4]).toBeCloseTo(0.01, 7);
    expect(w[1 * 5 + 2]).toBeCloseTo(0.25, 7);
    // Non-square: each axis normalised by its own size − 1.
    const r = cropWeights(3, 9);
    expect(r[1 * 9 + 4]).toBeCloseTo(0.5, 7);
    expect(r[1 * 9 + 2]).toBeCloseTo(0.25, 7);
  });

  it("refuse a stride past the crop (cells no crop covers) or not a positive integer", () => {
    expect(() => checkSplitInput({ size: 8, stride: 9 })).toThrow(/stride 9 must be integers with 1 ≤ stride ≤ size/);
    expect(() => checkSplitInput({ size: 0, stride: 0 })).toThrow(/size 0/);
    expect(() => checkSplitInput({ size: 8, stride: 2.5 })).toThrow(/stride 2.5/);
  });
});
