/**
 * Splitting a convolution so that every operand fits one storage binding (common/pieces.ts): pieces over
 * batch items, output channels and input channels (the reduction). Within a batch item a range of channels
 * is contiguous in x, the output and the residual, and a range of output channels in the weight.
 */
import type { Tensor } from "@ldm/tensor";
import { type Binding, type BindingLimits, type Block, bindingOf, planPieces } from "../common/pieces.ts";
import type { Activation } from "../matmul/activation.ts";

/** The tensors of one convolution and its epilogue, whichever algorithm runs it. */
export interface ConvOperands {
  x: Tensor;
  w: Tensor;
  out: Tensor;
  bias?: Tensor;
  residual?: Tensor;
  activation: Activation;
}

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
export interface ConvPiece {
  b0: number;
  b1: number;
  co0: number;
  co1: number;
  ci0: number;
  ci1: number;
  accumulate: boolean;
  finalize: boolean;
  x: Binding;
  w: Binding;
  out: Binding;
  residual?: Binding;
}

/** The bindings over a block whose rows are output channels and whose reduction is input channels. */
function bindingsOf(g: ConvGeometry, k: Block, align: number) {
  const { cin, cout, inPlane, outPlane, taps } = g;
  const out: [number, number] = [
    k.b0 * cout * outPlane + k.r0 * outPlane,
    (k.b1 - 1) * cout * outPlane + k.r1 * outPlane - 1,
  ];
  return {
    x: bindingOf(
      [k.b0 * cin * inPlane + k.k0 * inPlane, (k.b1 - 1) * cin * inPlane + k.k1 * inPlane - 1],
      g.bytes.x,
      align,
    ),
    w: bindingOf([(k.r0 * cin + k.k0) * taps, ((k.r1 - 1) * cin + k.k1) * taps - 1], g.bytes.w, align),
    out: bindingOf(out, g.bytes.out, align),
    residual: g.bytes.residual === undefined ? undefined : bindingOf(out, g.bytes.residual, align),
  };
}

export function planConv(op: string, g: ConvGeometry, limits: BindingLimits): ConvPiece[] {
  if (g.batch === 0 || g.cout === 0 || g.outPlane === 0) return [];
  const pieces = planPieces(
    {
      batch: g.batch,
      rows: g.cout,
      reduction: g.cin,
      rowAlign: 1,
      reductionAlign: 1,
      bindings: (blk) => bindingsOf(g, blk, limits.offsetAlignment),
      tooBig: (name) =>
        `${op}: '${name}' does not fit one storage binding (maxStorageBufferBindingSize ${limits.maxBindingBytes} bytes) ` +
        "even for one batch item, one input and one output channel",
    },
    limits,
  );
  return pieces.map(({ r0, r1, k0, k1, bindings, ...piece }) => ({
    ...piece,
    co0: r0,
    co1: r1,
    ci0: k0,
    ci1: k1,
    ...bindings,
  }));
}
