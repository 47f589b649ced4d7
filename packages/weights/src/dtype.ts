import type { ParamDType } from "@ldm/tensor";

/** Element types of the safetensors format, with their sizes in bytes. */
export const STORED_DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
} as const;

export type StoredDType = keyof typeof STORED_DTYPE_BYTES;

export function isStoredDType(name: string): name is StoredDType {
  return Object.hasOwn(STORED_DTYPE_BYTES, name);
}

/** Stored types that can fill a floating-point parameter tensor. */
export type FloatStoredDType = "F64" | "F32" | "F16" | "BF16";

export function isFloatStoredDType(name: string): name is FloatStoredDType {
  return name === "F64" || name === "F32" || name === "F16" || name === "BF16";
}

export const PARAM_DTYPE_BYTES: Readonly<Record<ParamDType, number>> = { f32: 4, f16: 2 };

let f16Table: Float32Array | null = null;

/** All 65,536 half-precision values as float32: a table lookup beats decoding bits one by one. */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) bits[h] = sign | 0x7f800000 | (mant << 13);
    else if (exp !== 0) bits[h] = sign | ((exp + 112) << 23) | (mant << 13);
    else table[h] = (sign ? -1 : 1) * mant * 2 ** -24;
  }
  f16Table = table;
  return table;
}

/**
 * Converts `count` stored elements in `src` to `to` in `dst` (both byte views with room for them); returns
 * the bytes written. Float32 → half rounds to nearest even (overflow → ±Inf) as PyTorch's `.half()` does.
 */
export function convertElements(
  from: FloatStoredDType,
  to: ParamDType,
  src: Uint8Array,
  dst: Uint8Array,
  count: number,
): number {
  const outBytes = count * PARAM_DTYPE_BYTES[to];
  if ((from === "F32" && to === "f32") || (from === "F16" && to === "f16")) {
    dst.set(src.subarray(0, outBytes));
    return outBytes;
  }
  if (to === "f32") {
    toFloat32(from, src, new Float32Array(dst.buffer, dst.byteOffset, count), count);
    return outBytes;
  }
  const out = new Uint16Array(dst.buffer, dst.byteOffset, count);
  if (from === "F32") {
    float32BitsToHalf(new Uint32Array(src.buffer, src.byteOffset, count), out, count);
    return outBytes;
  }
  // BF16 and F64 reach half precision through float32, which holds both exactly enough: bf16 exactly,
  // f64 with one rounding to f32 before the rounding to f16 (PyTorch's .half() on a double rounds once;
  // the two can differ only on values within 2^-29 relative of a half-way point).
  const values = new Float32Array(count);
  toFloat32(from, src, values, count);
  float32BitsToHalf(new Uint32Array(values.buffer), out, count);
  return outBytes;
}

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);
const HALF_MIN_NORMAL = 113 << 23; // 2^-14 as float32 bits
const HALF_OVERFLOW = 143 << 23; // 2^16: from here on (after rounding) only infinity
const F32_INFINITY = 255 << 23;
// Adding 0.5 (as float32 bits: 126 << 23) shifts a value below 2^-14 so that float32's own round-to-nearest-even
// leaves the half subnormal's bits in the low mantissa bits.
const SUBNORMAL_MAGIC = 126 << 23;

/**
 * Float32 bits → half bits, rounding to nearest even, overflow to ±Inf, NaN to 0x7e00 (sign kept) as PyTorch's
 * `.half()` does — the same results as @ldm/tensor's f32ToF16Bits for every non-NaN input, with integer
 * arithmetic on whole arrays (float32 checkpoints loaded as f16 convert a billion values).
 */
export function float32BitsToHalf(bits: Uint32Array, out: Uint16Array, count: number): void {
  for (let i = 0; i < count; i++) {
    let f = bits[i];
    const sign = (f >>> 16) & 0x8000;
    f &= 0x7fffffff;
    let h: number;
    if (f >= HALF_OVERFLOW) h = f > F32_INFINITY ? 0x7e00 : 0x7c00;
    else if (f < HALF_MIN_NORMAL) {
      scratchBits[0] = f;
      scratch[0] += 0.5;
      h = scratchBits[0] - SUBNORMAL_MAGIC;
    } else {
      // Rebias the exponent, add just under half an ulp of the result plus its lowest kept bit (ties to even).
      h = (f + ((15 - 127) << 23) + 0xfff + ((f >>> 13) & 1)) >>> 13;
    }
    out[i] = sign | h;
  }
}

function toFloat32(from: FloatStoredDType, src: Uint8Array, out: Float32Array, count: number): void {
  switch (from) {
    case "F32":
      out.set(new Float32Array(src.buffer, src.byteOffset, count));
      return;
    case "F64":
      out.set(new Float64Array(src.buffer, src.byteOffset, count));
      return;
    case "F16": {
      const table = f16ToF32Table();
      const halves = new Uint16Array(src.buffer, src.byteOffset, count);
      for (let i = 0; i < count; i++) out[i] = table[halves[i]];
      return;
    }
    case "BF16": {
      const halves = new Uint16Array(src.buffer, src.byteOffset, count);
      const bits = new Uint32Array(out.buffer, out.byteOffset, count);
      for (let i = 0; i < count; i++) bits[i] = halves[i] << 16;
      return;
    }
  }
}

/** Decodes stored float elements to float64 on the host (schedule buffers, small tensors). */
export function decodeFloats(from: FloatStoredDType, bytes: Uint8Array, count: number): Float64Array {
  if (from === "F64") return Float64Array.from(new Float64Array(bytes.buffer, bytes.byteOffset, count));
  const f32 = new Float32Array(count);
  toFloat32(from, bytes, f32, count);
  return Float64Array.from(f32);
}
