/** Softmax reference in float64 over the last dimension of x [..., Nq, Nk]; causal masks j > i. */
export function softmaxRef(x: ArrayLike<number>, shape: readonly number[], scale = 1, causal = false): Float32Array {
  const nk = shape[shape.length - 1];
  const nq = shape.length > 1 ? shape[shape.length - 2] : 1;
  const out = new Float32Array(x.length);
  for (let row = 0; row * nk < x.length; row++) {
    const i = row % nq;
    const kept = (j: number) => !causal || j <= i;
    let max = Number.NEGATIVE_INFINITY;
    for (let j = 0; j < nk; j++) if (kept(j)) max = Math.max(max, x[row * nk + j] * scale);
    let sum = 0;
    for (let j = 0; j < nk; j++) if (kept(j)) sum += Math.exp(x[row * nk + j] * scale - max);
    for (let j = 0; j < nk; j++) out[row * nk + j] = kept(j) ? Math.exp(x[row * nk + j] * scale - max) / sum : 0;
  }
  return out;
}
