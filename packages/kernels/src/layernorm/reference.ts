/** LayerNorm reference in float64 over the last dimension. */
export function layerNormRef(
  x: ArrayLike<number>,
  d: number,
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  eps: number,
): Float32Array {
  const out = new Float32Array(x.length);
  for (let base = 0; base < x.length; base += d) {
    let mean = 0;
    for (let j = 0; j < d; j++) mean += x[base + j];
    mean /= d;
    let variance = 0;
    for (let j = 0; j < d; j++) variance += (x[base + j] - mean) ** 2;
    const rstd = 1 / Math.sqrt(variance / d + eps);
    for (let j = 0; j < d; j++) out[base + j] = (x[base + j] - mean) * rstd * gamma[j] + beta[j];
  }
  return out;
}
