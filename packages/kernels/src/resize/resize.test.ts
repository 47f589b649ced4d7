import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { upsampleNearest2x } from "../layout/index.ts";
import { elementCount, roundF16 } from "../test-values.ts";
import { randomArray } from "../testing.ts";
import { resizeNearest } from "./index.ts";
import { nearestSourceIndex, resizeNearestRef } from "./reference.ts";

const device = await useDevice();

const dtypes = () => (device.features.shaderF16 ? (["f32", "f16"] as const) : (["f32"] as const));

describe("nearestSourceIndex", () => {
  it("rounds like torch 1.13's CPU kernel, not the exact floor(dst·in/out)", () => {
    // torch.nn.functional.interpolate(torch.arange(14.).view(1, 1, 14, 1), size=(46, 1), mode="nearest").flatten()
    const torch = [
      0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10, 10,
      11, 11, 11, 12, 12, 12, 13, 13, 13,
    ];
    const ours = Array.from({ length: 46 }, (_, d) => nearestSourceIndex(d, 14, 46));
    expect(ours).toEqual(torch);
    // The exact rational floor gives 7 at dst 23 (23·14/46 = 7): f32(14/46) rounds down.
    expect(Math.floor((23 * 14) / 46)).toBe(7);
  });
});

// A copy moves values unchanged (f16 data is f16-representable), so every test expects exact equality.
describe("resizeNearest", () => {
  const cases: { shape: number[]; size: [number, number] }[] = [
    { shape: [1, 2, 3, 5], size: [6, 9] }, // the UNet case: 2·in and 2·in − 1
    { shape: [2, 3, 4, 4], size: [7, 8] },
    { shape: [1, 1, 1, 1], size: [3, 2] },
    { shape: [1, 2, 14, 6], size: [46, 74] }, // where torch's f32 rounding differs from the exact floor
    { shape: [3, 26, 9], size: [22, 4] }, // downsizing, rank 3
    { shape: [5, 7], size: [5, 7] }, // identity, rank 2
  ];
  for (const { shape, size } of cases) {
    it(`${JSON.stringify(shape)} → ${size.join("×")}`, async () => {
      for (const dtype of dtypes()) {
        const x = roundF16(randomArray(elementCount(shape), 7));
        const t = Tensor.from(device, x, shape, dtype);
        const out = resizeNearest(t, size);
        expect(out.shape).toEqual([...shape.slice(0, -2), ...size]);
        expect(await out.toFloat32()).toEqual(resizeNearestRef(x, shape, ...size));
        t.dispose();
        out.dispose();
      }
    });
  }

  it("at exactly 2× equals upsampleNearest2x", async () => {
    const shape = [2, 3, 5, 4];
    const t = Tensor.from(device, randomArray(elementCount(shape), 9), shape);
    const resized = resizeNearest(t, [10, 8]);
    const doubled = upsampleNearest2x(t);
    expect(await resized.toFloat32()).toEqual(await doubled.toFloat32());
    for (const u of [t, resized, doubled]) u.dispose();
  });

  it("rejects bad sizes and inputs, naming them", () => {
    const t = Tensor.zeros(device, [1, 2, 3, 3]);
    expect(() => resizeNearest(t, [0, 4])).toThrow(/output size \[0, 4\] must be two positive integers/);
    expect(() => resizeNearest(t, [2.5, 4])).toThrow(/must be two positive integers/);
    const flat = Tensor.zeros(device, [4]);
    expect(() => resizeNearest(flat, [2, 2])).toThrow(/needs at least two \(spatial\) dimensions/);
    const ids = Tensor.zeros(device, [2, 2], "i32");
    expect(() => resizeNearest(ids, [4, 4])).toThrow(/x has dtype i32/);
    for (const u of [t, flat, ids]) u.dispose();
  });
});
