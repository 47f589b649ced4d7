import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { elementCount, roundF16 } from "../test-values.ts";
import { assertClose, randomArray } from "../testing.ts";
import { add, affine, broadcastShapes, geglu, gelu, geluTanh, mul, quickGelu, silu, sub } from "./index.ts";
import {
  broadcastBinaryRef,
  erfRef,
  gegluRef,
  geluRef,
  geluTanhRef,
  mapRef,
  quickGeluRef,
  siluRef,
} from "./reference.ts";

const device = await useDevice();

// f32 results: the kernel computes in f32 what the reference computes in f64; a few ulps of the
// largest magnitude (≤ ~30 here) cover the rounding of up to ~10 f32 operations.
const F32_TOL = { atol: 2e-6, rtol: 2e-6 };
// f16 storage: the f32 result is rounded once to f16 (half an ulp = 2^-11 relative), plus the f32 error.
const F16_TOL = { atol: 1e-4, rtol: 1.2e-3 };

describe("erf reference", () => {
  it("matches tabulated values (Abramowitz & Stegun, table 7.1)", () => {
    expect(erfRef(0.5)).toBeCloseTo(0.5204998778, 9);
    expect(erfRef(1)).toBeCloseTo(0.8427007929, 9);
    expect(erfRef(2)).toBeCloseTo(0.995322265, 9);
    expect(erfRef(-3)).toBeCloseTo(-0.9999779095, 9);
    expect(1 - erfRef(4)).toBeCloseTo(1.54172579e-8, 16);
  });
});

describe("broadcasting binary ops", () => {
  const cases: [number[], number[]][] = [
    [
      [2, 5, 7, 3],
      [2, 5, 1, 1],
    ], // time embedding onto NCHW, odd spatial
    [
      [2, 8, 4, 4],
      [2, 8, 4, 4],
    ], // same shape, vectorised
    [
      [3, 1, 5],
      [4, 1],
    ], // both sides stretch
    [[1], [6, 1, 3]],
    [[7], [7]],
    [
      [2, 320, 8, 8],
      [1, 320, 1, 1],
    ],
  ];
  for (const dtype of ["f32", "f16"] as const) {
    for (const [as, bs] of cases) {
      it.skipIf(dtype === "f16" && !device.features.shaderF16)(
        `add/sub/mul ${dtype} ${JSON.stringify(as)} with ${JSON.stringify(bs)}`,
        async () => {
          let a = randomArray(elementCount(as), 11, 3);
          let b = randomArray(elementCount(bs), 12, 3);
          if (dtype === "f16") {
            a = roundF16(a);
            b = roundF16(b);
          }
          const ta = Tensor.from(device, a, as, dtype);
          const tb = Tensor.from(device, b, bs, dtype);
          const tol = dtype === "f16" ? F16_TOL : F32_TOL;
          for (const [fn, f] of [
            [add, (x: number, y: number) => x + y],
            [sub, (x: number, y: number) => x - y],
            [mul, (x: number, y: number) => x * y],
          ] as const) {
            const out = fn(ta, tb);
            const ref = broadcastBinaryRef(a, as, b, bs, f);
            expect(out.shape).toEqual(ref.shape);
            expect(out.dtype).toBe(dtype);
            assertClose(await out.toFloat32(), ref.data, tol, `${fn.name} ${dtype}`);
            out.dispose();
          }
          ta.dispose();
          tb.dispose();
        },
      );
    }
  }

  it("rejects shapes that do not broadcast, naming them", () => {
    expect(() => broadcastShapes("add", [2, 3], [4, 3])).toThrow(/add: shapes \[2, 3\] and \[4, 3\] do not broadcast/);
  });

  it.skipIf(!device.features.shaderF16)("rejects mixed dtypes, naming them", () => {
    const a = Tensor.zeros(device, [2], "f32");
    const b = Tensor.zeros(device, [2], "f16");
    expect(() => add(a, b)).toThrow(/a is f32 and b is f16/);
  });
});

describe("activations", () => {
  // Covers the erf approximation's pieces (|x| < 1, 1..4, > 4) and saturation (exp overflow at ±100).
  const special = [0, -0, 1e-7, -1e-7, 0.5, -0.999, 1, 1.001, -2.5, 3.99, 4.01, -6, 9, -9, 20, -20, 100, -100];
  const random = randomArray(1021, 5, 8);
  const x = Float32Array.from([...special, ...random]);
  const cases = [
    [silu, siluRef],
    [gelu, geluRef],
    [geluTanh, geluTanhRef],
    [quickGelu, quickGeluRef],
  ] as const;
  for (const [fn, ref] of cases) {
    it(`${fn.name} f32 (odd length ${x.length}) and f16 (length 3·4·8, vectorised)`, async () => {
      const t = Tensor.from(device, x, [x.length]);
      const out = fn(t);
      // gelu: the WGSL erf is within 1.4e-7 of erf (fit-erf.py), times |x|/2 where erf is not yet ±1 (|x| < 6);
      // the rest is f32 rounding of a handful of operations (rtol ≈ 8 ulps).
      assertClose(await out.toFloat32(), mapRef(x, ref), { atol: 1e-6, rtol: 1e-6 }, fn.name);
      if (device.features.shaderF16) {
        const h = roundF16(randomArray(96, 6, 5));
        const th = Tensor.from(device, h, [3, 4, 8], "f16");
        const oh = fn(th);
        assertClose(await oh.toFloat32(), mapRef(h, ref), F16_TOL, `${fn.name} f16`);
        th.dispose();
        oh.dispose();
      }
      t.dispose();
      out.dispose();
    });
  }

  it("affine x·a + b with several values on one compiled kernel", async () => {
    const v = randomArray(37, 9, 4);
    const t = Tensor.from(device, v, [37]);
    const before = device.pipelineCount;
    for (const [s, b] of [
      [0.18215, 0],
      [-2, 0.5],
    ]) {
      const out = affine(t, s, b);
      assertClose(
        await out.toFloat32(),
        mapRef(v, (e) => Math.fround(e * s) + b),
        F32_TOL,
        "affine",
      );
      out.dispose();
    }
    expect(device.pipelineCount - before).toBeLessThanOrEqual(1);
    t.dispose();
  });
});

describe("geglu", () => {
  for (const [shape, dtype] of [
    [[2, 3, 10], "f32"],
    [[1, 5, 16], "f32"],
    [[4, 8], "f16"],
    [[3, 2], "f32"],
  ] as const) {
    it.skipIf(dtype === "f16" && !device.features.shaderF16)(`${JSON.stringify(shape)} ${dtype}`, async () => {
      let x = randomArray(elementCount([...shape]), 21, 4);
      if (dtype === "f16") x = roundF16(x);
      const t = Tensor.from(device, x, shape, dtype);
      const out = geglu(t);
      expect(out.shape).toEqual([...shape.slice(0, -1), shape.at(-1)! / 2]);
      assertClose(await out.toFloat32(), gegluRef(x, shape), dtype === "f16" ? F16_TOL : { atol: 1e-6, rtol: 1e-6 });
      t.dispose();
      out.dispose();
    });
  }

  it("rejects an odd last dimension", () => {
    const t = Tensor.zeros(device, [2, 3]);
    expect(() => geglu(t)).toThrow(/geglu: the last dimension of Tensor\(\[2, 3\], f32\) must be even/);
    t.dispose();
  });

  it("writes into a given tensor of the result's size, whatever its shape", async () => {
    const x = randomArray(2 * 3 * 8, 22, 4);
    const t = Tensor.from(device, x, [2, 3, 8]);
    const into = Tensor.empty(device, [24]);
    expect(geglu(t, into)).toBe(into);
    assertClose(await into.toFloat32(), gegluRef(x, [2, 3, 8]), { atol: 1e-6, rtol: 1e-6 });
    expect(() => geglu(t, Tensor.empty(device, [2, 3, 8]))).toThrow(
      /output .* must have the 24 elements of \[2, 3, 4\]/,
    );
    t.dispose();
    into.dispose();
  });
});
