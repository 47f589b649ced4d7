import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { elementCount, roundF16 } from "../test-values.ts";
import { randomArray } from "../testing.ts";
import { chunk, concat, permute, slice, upsampleNearest2x } from "./index.ts";
import { concatRef, permuteRef, sliceRef, upsampleNearest2xRef } from "./reference.ts";

const device = await useDevice();

const dtypes = () => (device.features.shaderF16 ? (["f32", "f16"] as const) : (["f32"] as const));

// Copies move values unchanged (f16 data is f16-representable), so every test expects exact equality.

describe("upsampleNearest2x", () => {
  for (const shape of [
    [2, 3, 5, 7],
    [1, 1, 1, 1],
    [1, 4, 8, 8],
    [3, 2],
  ]) {
    it(`${JSON.stringify(shape)}`, async () => {
      for (const dtype of dtypes()) {
        const x = roundF16(randomArray(elementCount(shape), 3));
        const t = Tensor.from(device, x, shape, dtype);
        const out = upsampleNearest2x(t);
        expect(out.shape).toEqual([...shape.slice(0, -2), 2 * shape.at(-2)!, 2 * shape.at(-1)!]);
        expect(await out.toFloat32()).toEqual(upsampleNearest2xRef(x, shape));
        t.dispose();
        out.dispose();
      }
    });
  }
});

describe("concat", () => {
  const cases: { shapes: number[][]; dim: number }[] = [
    {
      shapes: [
        [2, 3, 5, 5],
        [2, 1, 5, 5],
        [2, 4, 5, 5],
      ],
      dim: 1,
    }, // UNet skip connections, odd sizes
    {
      shapes: [
        [1, 8, 4, 4],
        [1, 4, 4, 4],
      ],
      dim: 1,
    }, // vectorised
    {
      shapes: [
        [3, 2],
        [3, 5],
      ],
      dim: -1,
    },
    {
      shapes: [
        [1, 7],
        [2, 7],
      ],
      dim: 0,
    },
  ];
  for (const { shapes, dim } of cases) {
    it(`${JSON.stringify(shapes)} along ${dim}`, async () => {
      for (const dtype of dtypes()) {
        const parts = shapes.map((s, i) => ({ data: roundF16(randomArray(elementCount(s), 40 + i)), shape: s }));
        const ts = parts.map((p) => Tensor.from(device, p.data, p.shape, dtype));
        const out = concat(ts, dim);
        const d = dim < 0 ? dim + shapes[0].length : dim;
        expect(out.shape[d]).toBe(shapes.reduce((a, s) => a + s[d], 0));
        expect(await out.toFloat32()).toEqual(concatRef(parts, d));
        for (const t of [...ts, out]) t.dispose();
      }
    });
  }

  it("rejects mismatched shapes and dtypes", () => {
    const a = Tensor.zeros(device, [1, 2, 3]);
    const b = Tensor.zeros(device, [1, 2, 4]);
    expect(() => concat([a, b], 1)).toThrow(
      /concat: tensor 1 \[1, 2, 4\] does not match \[1, 2, 3\] outside dimension 1/,
    );
    expect(() => concat([a], 3)).toThrow(/concat: dimension 3 is out of range/);
    a.dispose();
    b.dispose();
  });
});

describe("permute", () => {
  for (const { shape, perm } of [
    { shape: [2, 5, 12], perm: [0, 2, 1] }, // [B, C, HW] → [B, HW, C]
    { shape: [2, 12, 5], perm: [0, 2, 1] }, // and back
    { shape: [1, 3, 1, 4], perm: [3, 1, 0, 2] },
    { shape: [2, 3, 4, 5], perm: [0, 2, 3, 1] },
  ]) {
    it(`${JSON.stringify(shape)} by ${JSON.stringify(perm)}`, async () => {
      for (const dtype of dtypes()) {
        const x = roundF16(randomArray(elementCount(shape), 8));
        const t = Tensor.from(device, x, shape, dtype);
        const out = permute(t, perm);
        expect(out.shape).toEqual(perm.map((p) => shape[p]));
        expect(await out.toFloat32()).toEqual(permuteRef(x, shape, perm));
        t.dispose();
        out.dispose();
      }
    });
  }

  it("rejects a non-permutation", () => {
    const t = Tensor.zeros(device, [2, 3]);
    expect(() => permute(t, [0, 0])).toThrow(/permute: \[0, 0\] is not a permutation/);
    t.dispose();
  });
});

describe("slice and chunk", () => {
  it("slices any dimension, including the last and empty ranges", async () => {
    const shape = [3, 4, 9];
    const x = randomArray(elementCount(shape), 9);
    const t = Tensor.from(device, x, shape);
    for (const [dim, s, e] of [
      [0, 1, 3],
      [1, 0, 1],
      [2, 3, 8],
      [-1, 0, 9],
      [2, 4, 4],
    ]) {
      const out = slice(t, dim, s, e);
      expect(await out.toFloat32()).toEqual(sliceRef(x, shape, dim < 0 ? dim + 3 : dim, s, e));
      out.dispose();
    }
    expect(() => slice(t, 1, 2, 5)).toThrow(/slice: \[2, 5\) is not a range within dimension 1 \(size 4\)/);
    t.dispose();
  });

  it("chunks the CFG batch and a GEGLU-style last dimension", async () => {
    const shape = [2, 3, 6];
    const x = randomArray(elementCount(shape), 10);
    const t = Tensor.from(device, x, shape);
    const [uncond, cond] = chunk(t, 2, 0);
    expect(await uncond.toFloat32()).toEqual(x.slice(0, 18));
    expect(await cond.toFloat32()).toEqual(x.slice(18));
    const thirds = chunk(t, 3, -1);
    for (const [i, c] of thirds.entries()) expect(await c.toFloat32()).toEqual(sliceRef(x, shape, 2, 2 * i, 2 * i + 2));
    expect(() => chunk(t, 4, 1)).toThrow(/chunk: dimension 1 .* does not split into 4 equal chunks/);
    for (const c of [uncond, cond, ...thirds, t]) c.dispose();
  });
});
