import { f32ToF16Bits } from "@ldm/tensor";
import { describe, expect, it } from "vitest";
import { float32BitsToHalf } from "../src/index.ts";
import { xorshift } from "./synthetic.ts";

/** Float32 bit patterns around every place rounding to half can go wrong, plus random ones. */
function patterns(): Uint32Array {
  const out: number[] = [];
  for (let exp = 0; exp < 256; exp++) {
    // The mantissa bits that decide rounding (the 13 dropped) at and around half-way, with odd and even kept bits.
    for (const high of [0, 1, 2, 3, 0x3fe, 0x3ff]) {
      for (const low of [0, 1, 0xfff, 0x1000, 0x1001, 0x1fff]) {
        const mant = (high << 13) | low;
        out.push((exp << 23) | mant, 0x80000000 | (exp << 23) | mant);
      }
    }
  }
  const next = xorshift(42);
  for (let i = 0; i < 1 << 20; i++) out.push(next());
  return Uint32Array.from(out);
}

describe("float32BitsToHalf", () => {
  it("rounds exactly as @ldm/tensor's f32ToF16Bits for every non-NaN input", () => {
    const bits = patterns();
    const values = new Float32Array(bits.buffer);
    const out = new Uint16Array(bits.length);
    float32BitsToHalf(bits, out, bits.length);
    let compared = 0;
    for (let i = 0; i < bits.length; i++) {
      if (Number.isNaN(values[i])) continue;
      if (out[i] !== f32ToF16Bits(values[i])) {
        throw new Error(
          `0x${bits[i].toString(16)} (${values[i]}): got 0x${out[i].toString(16)}, expected 0x${f32ToF16Bits(values[i]).toString(16)}`,
        );
      }
      compared++;
    }
    expect(compared).toBeGreaterThan(1 << 20);
  });

  it("turns NaN into PyTorch's quiet NaN, keeping the sign", () => {
    const out = new Uint16Array(3);
    float32BitsToHalf(Uint32Array.of(0x7fc00000, 0xff800001, 0x7f800001), out, 3);
    expect(Array.from(out)).toEqual([0x7e00, 0xfe00, 0x7e00]);
  });
});
