/**
 * Splitting a convolution so that every operand fits one storage binding: pieces over batch items,
 * output channels and input channels. Within a batch item a range of channels is contiguous in x, the
 * output and the residual, and a range of output channels in the weight. Pieces over the same outputs but
 * different input channels accumulate into the output in order (the first overwrites, the last applies
 * the epilogue).
 */
import { type Binding, type BindingLimits, bindingOf, chunks, largest } from "../matmul/plan.ts";

export interface ConvGeometry {
  batch: number;
  cin: number;
  cout: number;
  /** Input and output planes, in elements. */
  inPlane: number;
  outPlane: number;
  /** kh · kw. */
  taps: number;
  bytes: { x: number; w: number; out: number; residual?: number };
}

/** Batch items [b0, b1) × output channels [co0, co1) × input channels [ci0, ci1). */
interface Block {
  b0: number;
  b1: number;
  co0: number;
  co1: number;
  ci0: number;
  ci1: number;
}

export interface ConvPiece extends Block {
  accumulate: boolean;
  finalize: boolean;
  x: Binding;
  w: Binding;
  out: Binding;
  residual?: Binding;
}

function bindingsOf(g: ConvGeometry, k: Block, align: number) {
  const { cin, cout, inPlane, outPlane, taps } = g;
  const out: [number, number] = [
    k.b0 * cout * outPlane + k.co0 * outPlane,
    (k.b1 - 1) * cout * outPlane + k.co1 * outPlane - 1,
  ];
  return {
    x: bindingOf(
      [k.b0 * cin * inPlane + k.ci0 * inPlane, (k.b1 - 1) * cin * inPlane + k.ci1 * inPlane - 1],
      g.bytes.x,
      align,
    ),
    w: bindingOf([(k.co0 * cin + k.ci0) * taps, ((k.co1 - 1) * cin + k.ci1) * taps - 1], g.bytes.w, align),
    out: bindingOf(out, g.bytes.out, align),
    residual: g.bytes.residual === undefined ? undefined : bindingOf(out, g.bytes.residual, align),
  };
}

function overflow(g: ConvGeometry, k: Block, limits: BindingLimits): string | null {
  for (const [name, b] of Object.entries(bindingsOf(g, k, limits.offsetAlignment))) {
    if (b && b.byteSize > limits.maxBindingBytes) return name;
  }
  return null;
}

export function planConv(op: string, g: ConvGeometry, limits: BindingLimits): ConvPiece[] {
  const { batch, cin, cout } = g;
  if (batch === 0 || cout === 0 || g.outPlane === 0) return [];
  const cinEnd = Math.max(cin, 1); // no input channels still binds (and reads nothing of) one
  const blk = (b0: number, b1: number, co0: number, co1: number, ci0: number, ci1: number): Block => ({
    b0,
    b1,
    co0,
    co1,
    ci0,
    ci1,
  });
  let batchChunk = 1;
  let coChunk = cout;
  let ciChunk = cinEnd;
  if (!overflow(g, blk(0, 1, 0, cout, 0, cinEnd), limits)) {
    batchChunk = largest(batch, (n) => !overflow(g, blk(0, n, 0, cout, 0, cinEnd), limits));
  } else {
    const smallest = overflow(g, blk(0, 1, 0, 1, 0, 1), limits);
    if (smallest) {
      throw new Error(
        `${op}: '${smallest}' does not fit one storage binding (maxStorageBufferBindingSize ${limits.maxBindingBytes} bytes) ` +
          "even for one batch item, one input and one output channel",
      );
    }
    ciChunk = largest(cinEnd, (n) => !overflow(g, blk(0, 1, 0, 1, 0, n), limits));
    coChunk = largest(cout, (n) => !overflow(g, blk(0, 1, 0, n, 0, ciChunk), limits));
  }
  const pieces: ConvPiece[] = [];
  const ciRanges = cin === 0 ? [[0, 0] as [number, number]] : chunks(cin, ciChunk);
  for (const [b0, b1] of chunks(batch, batchChunk)) {
    for (const [co0, co1] of chunks(cout, coChunk)) {
      ciRanges.forEach(([ci0, ci1], i) => {
        const range = blk(b0, b1, co0, co1, ci0, ci1);
        const bound = { ...range, ci1: Math.max(ci1, ci0 + 1) };
        const last = i === ciRanges.length - 1;
        pieces.push({ ...range, accumulate: i > 0, finalize: last, ...bindingsOf(g, bound, limits.offsetAlignment) });
      });
    }
  }
  return pieces;
}
