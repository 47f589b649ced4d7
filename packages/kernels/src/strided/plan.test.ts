import { describe, expect, it } from "vitest";
import { randomArray } from "../testing.ts";
import { coalesce, coveringRange, type SplitOperand, splitForBindings } from "./plan.ts";

/** Brute force: the min and max element index a view touches over linear positions [s, e). */
function touched(shape: number[], strides: number[], offset: number, s: number, e: number) {
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (let i = s; i < e; i++) {
    let rem = i;
    let idx = offset;
    for (let d = shape.length - 1; d >= 0; d--) {
      idx += (rem % shape[d]) * strides[d];
      rem = Math.floor(rem / shape[d]);
    }
    lo = Math.min(lo, idx);
    hi = Math.max(hi, idx);
  }
  return { lo, hi };
}

describe("coalesce", () => {
  it("merges contiguous runs and keeps broadcast boundaries", () => {
    // [B, C, H, W] + [B, C, 1, 1]: two runs, [B·C, H·W].
    const r = coalesce(
      [2, 3, 4, 5],
      [
        { strides: [60, 20, 5, 1], offset: 0 },
        { strides: [3, 1, 0, 0], offset: 0 },
      ],
    );
    expect(r.shape).toEqual([6, 20]);
    expect(r.strides).toEqual([
      [20, 1],
      [1, 0],
    ]);
  });

  it("drops size-1 dimensions and keeps a permuted view apart", () => {
    const r = coalesce([1, 3, 1, 5], [{ strides: [0, 1, 7, 3], offset: 0 }]);
    expect(r.shape).toEqual([3, 5]);
    expect(r.strides).toEqual([[1, 3]]);
    expect(coalesce([1, 1], [{ strides: [1, 1], offset: 0 }]).shape).toEqual([1]);
  });
});

describe("coveringRange", () => {
  it("matches brute force on random shapes, strides (with broadcasts) and ranges", () => {
    const r = randomArray(4000, 7);
    let k = 0;
    const next = (n: number) => Math.floor(((r[k++ % r.length] + 1) / 2) * n);
    for (let trial = 0; trial < 300; trial++) {
      const rank = 1 + next(4);
      const shape = Array.from({ length: rank }, () => 1 + next(5));
      const strides = shape.map(() => (next(3) === 0 ? 0 : next(40)));
      const total = shape.reduce((a, b) => a * b, 1);
      const s = next(total);
      const e = s + 1 + next(total - s);
      const offset = next(10);
      expect(coveringRange(shape, { strides, offset }, s, e)).toEqual(touched(shape, strides, offset, s, e));
    }
  });
});

describe("splitForBindings", () => {
  const limits = { maxBindingBytes: 4096, offsetAlignment: 256 };

  it("returns one piece binding exactly the used range when everything fits", () => {
    const pieces = splitForBindings(
      "t",
      [10, 10],
      [{ name: "x", strides: [10, 1], offset: 3, bytesPerElement: 4 }],
      4,
      limits,
    );
    expect(pieces).toEqual([{ start: 0, end: 100, bindings: [{ byteOffset: 0, byteSize: 412, baseElement: 0 }] }]);
  });

  it("splits large walks into aligned pieces that each fit and cover what they touch", () => {
    // Output [3, 700] f32, a same-shape f16 input, and one broadcast along the rows: 8400 bytes > 4096.
    const shape = [3, 700];
    const operands: SplitOperand[] = [
      { name: "out", strides: [700, 1], offset: 0, bytesPerElement: 4 },
      { name: "half", strides: [700, 1], offset: 0, bytesPerElement: 2 },
      { name: "row", strides: [0, 1], offset: 5, bytesPerElement: 4 },
    ];
    const pieces = splitForBindings("t", shape, operands, 64, limits);
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces[0].start).toBe(0);
    expect(pieces.at(-1)!.end).toBe(2100);
    for (const [i, p] of pieces.entries()) {
      if (i > 0) expect(p.start).toBe(pieces[i - 1].end);
      if (p.end !== 2100) expect(p.end % 64).toBe(0);
      operands.forEach((o, k) => {
        const b = p.bindings[k];
        expect(b.byteOffset % 256).toBe(0);
        expect(b.byteSize).toBeLessThanOrEqual(4096);
        const t = touched(shape, [...o.strides], o.offset, p.start, p.end);
        expect(b.byteOffset).toBeLessThanOrEqual(t.lo * o.bytesPerElement);
        expect(b.byteOffset + b.byteSize).toBeGreaterThanOrEqual((t.hi + 1) * o.bytesPerElement);
      });
    }
  });

  it("names the operand that cannot be bound even in the smallest piece", () => {
    // A view whose first granule already spans 2000 f32 elements (a transposed read of a big tensor).
    const op: SplitOperand = { name: "wide", strides: [1, 2000], offset: 0, bytesPerElement: 4 };
    expect(() => splitForBindings("permute", [2000, 2], [op], 4, limits)).toThrow(/permute: operand 'wide' needs/);
  });
});
