/**
 * Splitting work so that every operand fits one storage binding, for the kernels whose work is a block of
 * batch items × rows × reduction steps (GEMM: rows of the output and K; convolution: output channels and
 * input channels). Each operand is bound from its first touched element (rounded down to the offset
 * alignment) to its last, and the kernel gets the element offset of the block's corner inside that binding.
 * Pieces over the same outputs but different reduction ranges accumulate into the output in order (the first
 * overwrites, the last applies the epilogue). Usually there is one piece.
 */
import type { BufferSlice, Device, Tensor } from "@ldm/tensor";

export interface Binding {
  byteOffset: number;
  byteSize: number;
  /** Element offset, inside the binding, of the piece's first element (the kernel's base index). */
  elementOffset: number;
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

/** Bound sizes are rounded up to whole 16-byte vectors (pool buffers are multiples of 256 bytes). */
const VECTOR_BYTES = 16;

/** The binding of elements [lo, hi] of an operand: from the aligned offset at or below lo, in whole vectors. */
export function bindingOf([lo, hi]: [number, number], bytesPerElement: number, align: number): Binding {
  const byteOffset = Math.floor((lo * bytesPerElement) / align) * align;
  const byteEnd = Math.ceil(((hi + 1) * bytesPerElement) / VECTOR_BYTES) * VECTOR_BYTES;
  return { byteOffset, byteSize: byteEnd - byteOffset, elementOffset: lo - byteOffset / bytesPerElement };
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

/** Batch items [b0, b1) × rows [r0, r1) × reduction steps [k0, k1). */
export interface Block {
  b0: number;
  b1: number;
  r0: number;
  r1: number;
  k0: number;
  k1: number;
}

export interface Piece<B> extends Block {
  /** The output already holds a partial sum of earlier reduction ranges. */
  accumulate: boolean;
  /** The last reduction range: apply bias, activation and residual. */
  finalize: boolean;
  bindings: B;
}

export interface PieceProblem<B extends Record<string, Binding | undefined>> {
  batch: number;
  rows: number;
  reduction: number;
  /** Row and reduction chunks stay multiples of these (so that vector loads stay aligned). */
  rowAlign: number;
  reductionAlign: number;
  /** The operands' bindings over a block (undefined: an operand the problem does not have). */
  bindings: (block: Block) => B;
  /** The error when even the smallest block does not fit: the operand's name, that block's rows and steps. */
  tooBig: (name: string, rows: number, steps: number) => string;
}

/**
 * The pieces of a non-empty problem: whole batch items when one fits (as many per piece as fit), otherwise
 * one batch item at a time in the largest reduction chunks that fit with the fewest rows, then the largest
 * row chunks that fit with those.
 */
export function planPieces<B extends Record<string, Binding | undefined>>(
  p: PieceProblem<B>,
  limits: BindingLimits,
): Piece<B>[] {
  const { batch, rows } = p;
  const kEnd = Math.max(p.reduction, 1); // an empty reduction still binds (and reads nothing of) one element
  const block = (b1: number, r1: number, k1: number): Block => ({ b0: 0, b1, r0: 0, r1, k0: 0, k1 });
  const overflow = (blk: Block): string | null => {
    for (const [name, b] of Object.entries(p.bindings(blk))) {
      if (b && b.byteSize > limits.maxBindingBytes) return name;
    }
    return null;
  };

  let batchChunk = 1;
  let rowChunk = rows;
  let kChunk = kEnd;
  if (!overflow(block(1, rows, kEnd))) {
    batchChunk = largest(batch, (n) => !overflow(block(n, rows, kEnd)));
  } else {
    const smallestRows = Math.min(rows, p.rowAlign);
    const smallestK = Math.min(kEnd, p.reductionAlign);
    const tooBig = overflow(block(1, smallestRows, smallestK));
    if (tooBig) throw new Error(p.tooBig(tooBig, smallestRows, smallestK));
    kChunk = alignedLargest(kEnd, p.reductionAlign, (kc) => !overflow(block(1, smallestRows, kc)));
    rowChunk = alignedLargest(rows, p.rowAlign, (r) => !overflow(block(1, r, kChunk)));
  }

  const pieces: Piece<B>[] = [];
  const kRanges = p.reduction === 0 ? [[0, 0] as [number, number]] : chunks(p.reduction, kChunk);
  for (const [b0, b1] of chunks(batch, batchChunk)) {
    for (const [r0, r1] of chunks(rows, rowChunk)) {
      kRanges.forEach(([k0, k1], i) => {
        const range = { b0, b1, r0, r1, k0, k1 };
        const bindings = p.bindings({ ...range, k1: Math.max(k1, k0 + 1) });
        pieces.push({ ...range, accumulate: i > 0, finalize: i === kRanges.length - 1, bindings });
      });
    }
  }
  return pieces;
}
