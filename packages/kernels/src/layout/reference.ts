/** Plain TypeScript references for the data-movement ops. */
import { stridesOf } from "@ldm/tensor";

/** Calls f(outIndex, coords) for every position of `shape`, row-major. */
function forEachIndex(shape: readonly number[], f: (i: number, coord: readonly number[]) => void): void {
  const n = shape.reduce((a, b) => a * b, 1);
  const coord = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    f(i, coord);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++coord[d] < shape[d]) break;
      coord[d] = 0;
    }
  }
}

export function upsampleNearest2xRef(x: ArrayLike<number>, shape: readonly number[]): Float32Array {
  const [h, w] = shape.slice(-2);
  const lead = x.length / (h * w);
  const out = new Float32Array(x.length * 4);
  for (let l = 0; l < lead; l++)
    for (let i = 0; i < 2 * h; i++)
      for (let j = 0; j < 2 * w; j++) out[(l * 2 * h + i) * 2 * w + j] = x[(l * h + (i >> 1)) * w + (j >> 1)];
  return out;
}

export function concatRef(
  parts: readonly { data: ArrayLike<number>; shape: readonly number[] }[],
  dim: number,
): Float32Array {
  const shape = [...parts[0].shape];
  shape[dim] = parts.reduce((a, p) => a + p.shape[dim], 0);
  const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
  const os = stridesOf(shape);
  let at = 0;
  for (const p of parts) {
    forEachIndex(p.shape, (i, c) => {
      let o = 0;
      for (let d = 0; d < c.length; d++) o += (d === dim ? c[d] + at : c[d]) * os[d];
      out[o] = p.data[i];
    });
    at += p.shape[dim];
  }
  return out;
}

export function permuteRef(x: ArrayLike<number>, shape: readonly number[], perm: readonly number[]): Float32Array {
  const xs = stridesOf(shape);
  const outShape = perm.map((p) => shape[p]);
  const out = new Float32Array(x.length);
  forEachIndex(outShape, (i, c) => {
    let src = 0;
    for (let d = 0; d < c.length; d++) src += c[d] * xs[perm[d]];
    out[i] = x[src];
  });
  return out;
}

export function sliceRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  dim: number,
  start: number,
  end: number,
): Float32Array {
  const xs = stridesOf(shape);
  const outShape = [...shape];
  outShape[dim] = end - start;
  const out = new Float32Array(outShape.reduce((a, b) => a * b, 1));
  forEachIndex(outShape, (i, c) => {
    let src = start * xs[dim];
    for (let d = 0; d < c.length; d++) src += c[d] * xs[d];
    out[i] = x[src];
  });
  return out;
}
