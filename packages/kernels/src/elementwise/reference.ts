/** Plain TypeScript references for the elementwise ops, in float64 (stored as float32). */
import { stridesOf } from "@ldm/tensor";

/** f(a, b) with NumPy broadcasting. */
export function broadcastBinaryRef(
  a: ArrayLike<number>,
  aShape: readonly number[],
  b: ArrayLike<number>,
  bShape: readonly number[],
  f: (x: number, y: number) => number,
): { data: Float32Array; shape: number[] } {
  const rank = Math.max(aShape.length, bShape.length);
  const pad = (s: readonly number[]) => [...new Array<number>(rank - s.length).fill(1), ...s];
  const ap = pad(aShape);
  const bp = pad(bShape);
  const shape = ap.map((d, i) => Math.max(d, bp[i]));
  const as = stridesOf(ap);
  const bs = stridesOf(bp);
  const n = shape.reduce((x, y) => x * y, 1);
  const data = new Float32Array(n);
  const coord = new Array<number>(rank).fill(0);
  for (let i = 0; i < n; i++) {
    let ia = 0;
    let ib = 0;
    for (let d = 0; d < rank; d++) {
      if (ap[d] !== 1) ia += coord[d] * as[d];
      if (bp[d] !== 1) ib += coord[d] * bs[d];
    }
    data[i] = f(a[ia], b[ib]);
    for (let d = rank - 1; d >= 0; d--) {
      if (++coord[d] < shape[d]) break;
      coord[d] = 0;
    }
  }
  return { data, shape };
}

/**
 * erf in float64: Maclaurin series below 3 (terms stay under 1e3, so ~1e-13 accuracy), the Laplace
 * continued fraction for erfc above.
 */
export function erfRef(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    let term = ax;
    let sum = ax;
    for (let k = 1; k < 100 && Math.abs(term) > 1e-17 * Math.abs(sum); k++) {
      term *= (-ax * ax) / k;
      sum += term / (2 * k + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let frac = 0;
  for (let k = 60; k >= 1; k--) frac = k / 2 / (ax + frac);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + frac);
  return Math.sign(x) * (1 - erfc);
}

export const siluRef = (x: number) => x / (1 + Math.exp(-x));
export const geluRef = (x: number) => 0.5 * x * (1 + erfRef(x / Math.SQRT2));
export const geluTanhRef = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
export const quickGeluRef = (x: number) => x / (1 + Math.exp(-1.702 * x));

export function mapRef(x: ArrayLike<number>, f: (v: number) => number): Float32Array {
  return Float32Array.from(x, f);
}

/** a · gelu(gate) with a, gate = x.chunk(2, -1). */
export function gegluRef(x: ArrayLike<number>, shape: readonly number[]): Float32Array {
  const half = shape[shape.length - 1] / 2;
  const rows = x.length / (2 * half);
  const out = new Float32Array(rows * half);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < half; j++) out[r * half + j] = x[r * 2 * half + j] * geluRef(x[r * 2 * half + half + j]);
  }
  return out;
}
