/**
 * Attention reference in float64, materialising the scores: q [B, Nq, H·d], k/v [B, Nk, H·d] → [B, Nq, H·d].
 * `rows` limits which query rows are computed (others stay 0), so big problems can be spot-checked.
 */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dims: { batch: number; nq: number; nk: number; heads: number; d: number },
  options: { scale?: number; causal?: boolean; rows?: readonly number[] } = {},
): Float64Array {
  const { batch, nq, nk, heads, d } = dims;
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const width = heads * d;
  const out = new Float64Array(batch * nq * width);
  const rows = options.rows ?? Array.from({ length: nq }, (_, i) => i);
  const scores = new Float64Array(nk);
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < heads; h++)
      for (const i of rows) {
        const qo = (b * nq + i) * width + h * d;
        let max = Number.NEGATIVE_INFINITY;
        for (let j = 0; j < nk; j++) {
          if (options.causal && j > i) {
            scores[j] = Number.NEGATIVE_INFINITY;
            continue;
          }
          const ko = (b * nk + j) * width + h * d;
          let s = 0;
          for (let t = 0; t < d; t++) s += q[qo + t] * k[ko + t];
          scores[j] = s * scale;
          max = Math.max(max, scores[j]);
        }
        let sum = 0;
        for (let j = 0; j < nk; j++) {
          scores[j] = Math.exp(scores[j] - max);
          sum += scores[j];
        }
        for (let j = 0; j < nk; j++) {
          const vo = (b * nk + j) * width + h * d;
          const p = scores[j] / sum;
          for (let t = 0; t < d; t++) out[qo + t] += p * v[vo + t];
        }
      }
  return out;
}
