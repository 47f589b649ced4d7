/**
 * Splitting a (batched) GEMM so that every operand fits one storage binding (common/pieces.ts): a piece is
 * a block of batch items × rows [m0, m1) × reduction steps [k0, k1) of the problem.
 */
import { type Binding, type BindingLimits, type Block, bindingOf, planPieces } from "../common/pieces.ts";

export interface GemmGeometry {
  batch: number;
  M: number;
  N: number;
  K: number;
  transposeA: boolean;
  transposeB: boolean;
  /** Element strides between batch items; 0 broadcasts the operand over the batch. */
  aBatchStride: number;
  bBatchStride: number;
  /**
   * The output holds GEGLU of B's column halves, value · gelu(gate) for the columns n and n + N/2: it has N/2
   * columns (see wgsl.ts).
   */
  gated?: boolean;
  bytes: { a: number; b: number; c: number; residual?: number };
}

export interface GemmPiece {
  b0: number;
  b1: number;
  m0: number;
  m1: number;
  k0: number;
  k1: number;
  /** The output already holds a partial sum of earlier k ranges. */
  accumulate: boolean;
  /** The last k range: apply bias, activation and residual. */
  finalize: boolean;
  a: Binding;
  b: Binding;
  c: Binding;
  residual?: Binding;
}

/**
 * Reduction chunks, and row chunks of a transposed A (whose rows run along M), stay multiples of this so
 * that 4-wide vector loads stay aligned.
 */
const CHUNK_ALIGN = 4;

/** First and last element an operand touches over a block (rows are m). */
function spans(g: GemmGeometry, blk: Block): Record<"a" | "b" | "c", [number, number]> {
  const { M, N, K } = g;
  const cN = g.gated ? N / 2 : N;
  const bLast = blk.b1 - 1;
  const mLast = blk.r1 - 1;
  const kLast = blk.k1 - 1;
  const aAt = (b: number, m: number, k: number) => b * g.aBatchStride + (g.transposeA ? k * M + m : m * K + k);
  const bLo = g.transposeB ? blk.k0 : blk.k0 * N;
  const bHi = g.transposeB ? (N - 1) * K + kLast : kLast * N + N - 1;
  return {
    a: [aAt(blk.b0, blk.r0, blk.k0), aAt(bLast, mLast, kLast)],
    b: [blk.b0 * g.bBatchStride + bLo, bLast * g.bBatchStride + bHi],
    c: [blk.b0 * M * cN + blk.r0 * cN, bLast * M * cN + mLast * cN + cN - 1],
  };
}

function bindingsOf(g: GemmGeometry, blk: Block, align: number) {
  const s = spans(g, blk);
  return {
    a: bindingOf(s.a, g.bytes.a, align),
    b: bindingOf(s.b, g.bytes.b, align),
    c: bindingOf(s.c, g.bytes.c, align),
    residual: g.bytes.residual === undefined ? undefined : bindingOf(s.c, g.bytes.residual, align),
  };
}

export function planGemm(op: string, g: GemmGeometry, limits: BindingLimits): GemmPiece[] {
  if (g.batch === 0 || g.M === 0 || g.N === 0) return [];
  const pieces = planPieces(
    {
      batch: g.batch,
      rows: g.M,
      reduction: g.K,
      rowAlign: g.transposeA ? CHUNK_ALIGN : 1,
      reductionAlign: CHUNK_ALIGN,
      bindings: (blk) => bindingsOf(g, blk, limits.offsetAlignment),
      tooBig: (name, rows, steps) =>
        `${op}: cannot split the product so that '${name}' fits one storage binding ` +
        `(maxStorageBufferBindingSize ${limits.maxBindingBytes} bytes): even ${rows} row(s) × ${steps} reduction step(s) are too big`,
    },
    limits,
  );
  return pieces.map(({ r0, r1, bindings, ...piece }) => ({ ...piece, m0: r0, m1: r1, ...bindings }));
}
