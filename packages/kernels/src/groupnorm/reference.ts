/**
 * GroupNorm reference in float64: two-pass mean and biased variance per (batch, group), then affine and optional
 * SiLU; with `shift` [B, C], of x + shift[b, c].
 */
export function groupNormRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  groups: number,
  eps: number,
  silu = false,
  shift?: ArrayLike<number>,
): Float32Array {
  const [batch, channels] = shape;
  const spatial = shape.slice(2).reduce((a, b) => a * b, 1);
  const cpg = channels / groups;
  const n = cpg * spatial;
  const out = new Float32Array(x.length);
  const input = (g: number, i: number) =>
    x[g * n + i] +
    (shift ? shift[Math.floor(g / groups) * channels + (g % groups) * cpg + Math.floor(i / spatial)] : 0);
  for (let g = 0; g < batch * groups; g++) {
    const base = g * n;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += input(g, i);
    mean /= n;
    let variance = 0;
    for (let i = 0; i < n; i++) variance += (input(g, i) - mean) ** 2;
    variance /= n;
    const rstd = 1 / Math.sqrt(variance + eps);
    for (let i = 0; i < n; i++) {
      const c = (g % groups) * cpg + Math.floor(i / spatial);
      const y = (input(g, i) - mean) * rstd * gamma[c] + beta[c];
      out[base + i] = silu ? y / (1 + Math.exp(-y)) : y;
    }
  }
  return out;
}
