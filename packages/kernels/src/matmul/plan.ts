/**
 * Splitting a (batched) GEMM so that every operand fits one storage binding.
 *
 * A piece is a block batch [b0, b1) × rows [m0, m1) × reduction [k0, k1) of the problem; each operand is
 * bound from its first touched element (rounded down to the offset alignment) to its last, and the kernel
 * gets the element offset of the block's corner inside that binding. Pieces over the same output rows but
 * different k ranges accumulate into the output in k order (the first overwrites, the last applies the
 * epilogue). Usually there is one piece.
 */
import type { BufferSlice, Device, Tensor } from "@ldm/tensor";

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

export interface Binding {
  byteOffset: number;
  byteSize: number;
  /** Element offset, inside the binding, of the piece's first element (the kernel's base index). */
  elementOffset: number;
}

/** A block of the problem: batch items [b0, b1) × rows [m0, m1) × reduction steps [k0, k1). */
interface Block {
  b0: number;
  b1: number;
  m0: number;
  m1: number;
  k0: number;
  k1: number;
}

export interface GemmPiece extends Block {
  /** The output already holds a partial sum of earlier k ranges. */
  accumulate: boolean;
  /** The last k range: apply bias, activation and residual. */
  finalize: boolean;
  a: Binding;
  b: Binding;
  c: Binding;
  residual?: Binding;
}

export interface BindingLimits {
  maxBindingBytes: number;
  offsetAlignment: number;
}

/** The device's storage binding limits, unless a test overrides them. */
export function bindingLimits(device: Device, override?: BindingLimits): BindingLimits {
  return (
    override ?? {
      maxBindingBytes: device.limits.maxStorageBufferBindingSize,
      offsetAlignment: device.limits.minStorageBufferOffsetAlignment,
    }
  );
}

/** A binding of `t`'s buffer (clamped to the buffer, whose size may not be a multiple of 16 bytes). */
export function bindingSlice(t: Tensor, b: Binding): BufferSlice {
  return { buffer: t.buffer, offset: b.byteOffset, size: Math.min(b.byteSize, t.buffer.size - b.byteOffset) };
}

/**
 * Reduction chunks, and row chunks of a transposed A (whose rows run along M), stay multiples of this so
 * that 4-wide vector loads stay aligned.
 */
const CHUNK_ALIGN = 4;
/** Bound sizes are rounded up to whole 16-byte vectors (pool buffers are multiples of 256 bytes). */
const VECTOR_BYTES = 16;

/** First and last element an operand touches over a block. */
function spans(g: GemmGeometry, blk: Block): Record<"a" | "b" | "c", [number, number]> {
  const { M, N, K } = g;
  const cN = g.gated ? N / 2 : N;
  const bLast = blk.b1 - 1;
  const mLast = blk.m1 - 1;
  const kLast = blk.k1 - 1;
  const aAt = (b: number, m: number, k: number) => b * g.aBatchStride + (g.transposeA ? k * M + m : m * K + k);
  const bLo = g.transposeB ? blk.k0 : blk.k0 * N;
  const bHi = g.transposeB ? (N - 1) * K + kLast : kLast * N + N - 1;
  return {
    a: [aAt(blk.b0, blk.m0, blk.k0), aAt(bLast, mLast, kLast)],
    b: [blk.b0 * g.bBatchStride + bLo, bLast * g.bBatchStride + bHi],
    c: [blk.b0 * M * cN + blk.m0 * cN, bLast * M * cN + mLast * cN + cN - 1],
  };
}

/** The binding of elements [lo, hi] of an operand: from the aligned offset at or below lo, in whole vectors. */
export function bindingOf([lo, hi]: [number, number], bytesPerElement: number, align: number): Binding {
  const byteOffset = Math.floor((lo * bytesPerElement) / align) * align;
  const byteEnd = Math.ceil(((hi + 1) * bytesPerElement) / VECTOR_BYTES) * VECTOR_BYTES;
  return { byteOffset, byteSize: byteEnd - byteOffset, elementOffset: lo - byteOffset / bytesPerElement };
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

/** The operand whose binding is too big for the block, or null when all fit. */
function overflow(g: GemmGeometry, blk: Block, limits: BindingLimits): string | null {
  const bs = bindingsOf(g, blk, limits.offsetAlignment);
  for (const [name, b] of Object.entries(bs)) {
    if (b && b.byteSize > limits.maxBindingBytes) return name;
  }
  return null;
}

/** The largest n in [1, max] with fits(n), given fits is monotone (true up to some n, then false). */
export function largest(max: number, fits: (n: number) => boolean): number {
  if (fits(max)) return max;
  let good = 1;
  let bad = max;
  while (bad - good > 1) {
    const mid = Math.floor((good + bad) / 2);
    if (fits(mid)) good = mid;
    else bad = mid;
  }
  return good;
}

/** The largest multiple of `align` (or `total` itself) up to `total` with fits(), given fits(min(total, align)). */
function alignedLargest(total: number, align: number, fits: (n: number) => boolean): number {
  if (total <= align || fits(total)) return total;
  return largest(Math.floor(total / align), (n) => fits(n * align)) * align;
}

/** [start, end) ranges of `size` covering [0, total). */
export function chunks(total: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  for (let s = 0; s < total; s += size) out.push([s, Math.min(total, s + size)]);
  return out;
}

export function planGemm(op: string, g: GemmGeometry, limits: BindingLimits): GemmPiece[] {
  const { batch, M, K } = g;
  if (batch === 0 || M === 0 || g.N === 0) return [];
  const kEnd = Math.max(K, 1); // K = 0 still binds (and reads nothing of) one element
  const block = (b0: number, b1: number, m0: number, m1: number, k0: number, k1: number): Block => ({
    b0,
    b1,
    m0,
    m1,
    k0,
    k1,
  });
  const fail = (what: string, name: string) =>
    new Error(
      `${op}: cannot split the product so that '${name}' fits one storage binding ` +
        `(maxStorageBufferBindingSize ${limits.maxBindingBytes} bytes): ${what}`,
    );

  let batchChunk = 1;
  let rowChunk = M;
  let kChunk = kEnd;
  if (!overflow(g, block(0, 1, 0, M, 0, kEnd), limits)) {
    batchChunk = largest(batch, (n) => !overflow(g, block(0, n, 0, M, 0, kEnd), limits));
  } else {
    const rowAlign = g.transposeA ? CHUNK_ALIGN : 1;
    const smallestRows = Math.min(M, rowAlign);
    const smallestK = Math.min(kEnd, CHUNK_ALIGN);
    const kFits = (kc: number) => !overflow(g, block(0, 1, 0, smallestRows, 0, kc), limits);
    if (!kFits(smallestK)) {
      const name = overflow(g, block(0, 1, 0, smallestRows, 0, smallestK), limits) ?? "?";
      throw fail(`even ${smallestRows} row(s) × ${smallestK} reduction step(s) are too big`, name);
    }
    kChunk = alignedLargest(kEnd, CHUNK_ALIGN, kFits);
    rowChunk = alignedLargest(M, rowAlign, (rows) => !overflow(g, block(0, 1, 0, rows, 0, kChunk), limits));
  }

  const pieces: GemmPiece[] = [];
  const kRanges = K === 0 ? [[0, 0] as [number, number]] : chunks(K, kChunk);
  for (const [b0, b1] of chunks(batch, batchChunk)) {
    for (const [m0, m1] of chunks(M, rowChunk)) {
      kRanges.forEach(([k0, k1], i) => {
        const range = block(b0, b1, m0, m1, k0, k1);
        const bound = { ...range, k1: Math.max(k1, k0 + 1) };
        const last = i === kRanges.length - 1;
        pieces.push({ ...range, accumulate: i > 0, finalize: last, ...bindingsOf(g, bound, limits.offsetAlignment) });
      });
    }
  }
  return pieces;
}
