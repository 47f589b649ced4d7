/** Plain TypeScript reference for matmul (float64 accumulation, stored as float32). */
import { type Activation, activationRef } from "./activation.ts";

export interface MatmulRefProblem {
  batch: number;
  M: number;
  N: number;
  K: number;
  transposeA?: boolean;
  transposeB?: boolean;
  /** Elements between batch items; 0 shares the operand. Default: a full matrix. */
  aBatchStride?: number;
  bBatchStride?: number;
  bias?: ArrayLike<number>;
  residual?: ArrayLike<number>;
  activation?: Activation;
  alpha?: number;
}

export function matmulRef(a: ArrayLike<number>, b: ArrayLike<number>, p: MatmulRefProblem): Float32Array {
  const { batch, M, N, K, transposeA = false, transposeB = false, alpha = 1 } = p;
  const aStride = p.aBatchStride ?? M * K;
  const bStride = p.bBatchStride ?? K * N;
  const act = activationRef(p.activation ?? "none");
  const out = new Float32Array(batch * M * N);
  for (let bi = 0; bi < batch; bi++) {
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let acc = 0;
        for (let k = 0; k < K; k++) {
          const av = a[bi * aStride + (transposeA ? k * M + m : m * K + k)];
          const bv = b[bi * bStride + (transposeB ? n * K + k : k * N + n)];
          acc += av * bv;
        }
        const o = (bi * M + m) * N + n;
        let v = alpha * acc + (p.bias ? p.bias[n] : 0);
        v = act(v);
        out[o] = v + (p.residual ? p.residual[o] : 0);
      }
    }
  }
  return out;
}
