import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToF16, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { randomArray } from "../testing.ts";
import { bf16ToFloat, cast, packBf16 } from "./index.ts";

const device = await useDevice();

/** bf16 bits of float32 values by truncation (any bit pattern is a valid input to the cast). */
function bf16Bits(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer.slice(0));
  return Uint16Array.from(u, (w) => w >>> 16);
}

describe("cast f32 ↔ f16", () => {
  it.skipIf(!device.features.shaderF16)(
    "rounds f32 → f16 exactly like the host converter (round to nearest even), odd length",
    async () => {
      const x = Float32Array.from([...randomArray(1001, 2, 100), 65504, -65504, 6e-8, 1e-9, 0.1, 1 / 3]);
      const t = Tensor.from(device, x, [x.length]);
      const h = cast(t, "f16");
      expect(h.dtype).toBe("f16");
      expect(await h.read()).toEqual(f32ArrayToF16(x));
      const back = cast(h, "f32");
      expect(await back.read()).toEqual(f16ArrayToF32(f32ArrayToF16(x)));
      for (const v of [t, h, back]) v.dispose();
    },
  );

  it.skipIf(!device.features.shaderF16)("turns f32 beyond the f16 range into ±inf on this adapter", async () => {
    const t = Tensor.from(device, [1e5, -7e4], [2]);
    const h = cast(t, "f16");
    expect(Array.from(await h.toFloat32())).toEqual([Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]);
    t.dispose();
    h.dispose();
  });
});

describe("bf16ToFloat", () => {
  for (const shape of [[7], [2, 3, 4], [1]]) {
    it(`unpacks ${JSON.stringify(shape)} to f32 bit-exactly and to f16 rounded`, async () => {
      const n = shape.reduce((a, b) => a * b, 1);
      const bits = bf16Bits(randomArray(n, 13, 50));
      const packed = Tensor.from(device, packBf16(bits), [Math.ceil(n / 2)], "u32");
      const f = bf16ToFloat(packed, shape);
      expect(f.shape).toEqual(shape);
      expect(await f.read()).toEqual(bf16ArrayToF32(bits));
      if (device.features.shaderF16) {
        const h = bf16ToFloat(packed, shape, "f16");
        expect(await h.read()).toEqual(f32ArrayToF16(bf16ArrayToF32(bits)));
        h.dispose();
      }
      packed.dispose();
      f.dispose();
    });
  }

  it("rejects a word count that does not match the shape, and non-u32 data", () => {
    const packed = Tensor.zeros(device, [3], "u32") as Tensor;
    expect(() => bf16ToFloat(packed, [2, 4])).toThrow(
      /\[2, 4\] holds 8 bf16 values = 4 u32 words, but packed .* has 3/,
    );
    const f = Tensor.zeros(device, [4]);
    expect(() => bf16ToFloat(f, [8])).toThrow(/packed .* must be u32/);
    packed.dispose();
    f.dispose();
  });
});
