/** Small helpers for the kernel tests. */
import { f16ArrayToF32, f32ArrayToF16 } from "@ldm/tensor";

/** The values as f16 storage holds them, so a reference sees the same inputs as an f16 kernel. */
export function roundF16(x: Float32Array): Float32Array {
  return f16ArrayToF32(f32ArrayToF16(x));
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
