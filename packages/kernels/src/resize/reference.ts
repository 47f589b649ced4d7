import { nearestScale } from "./index.ts";

/** torch's nearest source index for `size=` (CPU kernel, float32 scale and product). */
export function nearestSourceIndex(dst: number, inSize: number, outSize: number): number {
  return Math.min(Math.floor(Math.fround(dst * nearestScale(inSize, outSize))), inSize - 1);
}

export function resizeNearestRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  outH: number,
  outW: number,
): Float32Array {
  const [h, w] = shape.slice(-2);
  const lead = x.length / (h * w);
  const out = new Float32Array(lead * outH * outW);
  for (let l = 0; l < lead; l++)
    for (let i = 0; i < outH; i++)
      for (let j = 0; j < outW; j++)
        out[(l * outH + i) * outW + j] =
          x[(l * h + nearestSourceIndex(i, h, outH)) * w + nearestSourceIndex(j, w, outW)];
  return out;
}
