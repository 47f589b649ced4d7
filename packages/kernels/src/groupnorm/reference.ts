/** GroupNorm reference in float64: two-pass mean and biased variance per (batch, group), then affine and optional SiLU. */
export function groupNormRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  groups: number,
  eps: number,
  silu = false,
): Float32Array {
  const [batch, channels] = shape;
  const spatial = shape.slice(2).reduce((a, b) => a * b, 1);
  const cpg = channels / groups;
  const n = cpg * spatial;
  const out = new Float32Array(x.length);
  for (let g = 0; g < batch * groups; g++) {
    const base = g * n;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[base + i];
    mean /= n;
    let variance = 0;
    for (let i = 0; i < n; i++) variance += (x[base + i] - mean) ** 2;
    variance /= n;
    const rstd = 1 / Math.sqrt(variance + eps);
    for (let i = 0; i < n; i++) {
      const c = (g % groups) * cpg + Math.floor(i / spatial);
      const y = (x[base + i] - mean) * rstd * gamma[c] + beta[c];
      out[base + i] = silu ? y / (1 + Math.exp(-y)) : y;
    }
  }
  return out;
}
