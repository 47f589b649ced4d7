/**
 * Host-side planning for kernels that walk a tensor as strided views: merging dimensions, and
 * splitting the walk into pieces whose every operand fits one storage binding.
 *
 * A view maps a position of the iteration shape to `offset + Σ coord[d] · strides[d]` elements of its
 * tensor. Stride 0 broadcasts; strides are never negative.
 */
import { formatShape, type Shape } from "@ldm/tensor";

export interface ViewLayout {
  strides: readonly number[];
  offset: number;
}

/** Drops size-1 dimensions and merges neighbours that every view walks as one (row-major) run. */
export function coalesce(shape: Shape, views: readonly ViewLayout[]): { shape: number[]; strides: number[][] } {
  const dims: number[] = [];
  for (let d = 0; d < shape.length; d++) if (shape[d] !== 1) dims.push(d);
  const outShape: number[] = [];
  const outStrides: number[][] = views.map(() => []);
  for (const d of dims) {
    const last = outShape.length - 1;
    const mergeable = last >= 0 && views.every((v, k) => outStrides[k][last] === v.strides[d] * shape[d]);
    if (mergeable) {
      outShape[last] *= shape[d];
      views.forEach((v, k) => {
        outStrides[k][last] = v.strides[d];
      });
    } else {
      outShape.push(shape[d]);
      views.forEach((v, k) => {
        outStrides[k].push(v.strides[d]);
      });
    }
  }
  if (outShape.length === 0) {
    outShape.push(1);
    for (const s of outStrides) s.push(0);
  }
  return { shape: outShape, strides: outStrides };
}

/**
 * The smallest and largest element index a view touches while the walk covers linear positions
 * [start, end) of `shape` (row-major). Exact: the range is split into whole sub-blocks, whose extremes
 * are their first and last corners because strides are non-negative.
 */
export function coveringRange(shape: Shape, view: ViewLayout, start: number, end: number): { lo: number; hi: number } {
  if (!(start < end)) throw new Error(`coveringRange: empty range [${start}, ${end})`);
  const n = shape.length;
  const blockSize = new Array<number>(n + 1);
  const span = new Array<number>(n + 1);
  blockSize[n] = 1;
  span[n] = 0;
  for (let d = n - 1; d >= 0; d--) {
    blockSize[d] = blockSize[d + 1] * shape[d];
    span[d] = span[d + 1] + (shape[d] - 1) * view.strides[d];
  }
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  const visit = (d: number, base: number, s: number, e: number): void => {
    if (s === 0 && e === blockSize[d]) {
      lo = Math.min(lo, base);
      hi = Math.max(hi, base + span[d]);
      return;
    }
    const inner = blockSize[d + 1];
    const stride = view.strides[d];
    const first = Math.floor(s / inner);
    const last = Math.floor((e - 1) / inner);
    if (first === last) {
      visit(d + 1, base + first * stride, s - first * inner, e - first * inner);
      return;
    }
    visit(d + 1, base + first * stride, s - first * inner, inner);
    if (last > first + 1) {
      lo = Math.min(lo, base + (first + 1) * stride);
      hi = Math.max(hi, base + (last - 1) * stride + span[d + 1]);
    }
    visit(d + 1, base + last * stride, 0, e - last * inner);
  };
  visit(0, view.offset, start, end);
  return { lo, hi };
}

/** One operand as the splitter sees it. */
export interface SplitOperand extends ViewLayout {
  name: string;
  bytesPerElement: number;
}

/** The byte range of one operand bound for one piece, and where its view starts inside it. */
export interface OperandBinding {
  byteOffset: number;
  byteSize: number;
  /** First element of the binding, in elements of the operand's dtype. */
  baseElement: number;
}

export interface Piece {
  start: number;
  end: number;
  bindings: OperandBinding[];
}

export interface SplitLimits {
  maxBindingBytes: number;
  /** minStorageBufferOffsetAlignment (256 on every adapter we know). */
  offsetAlignment: number;
}

function bindingFor(shape: Shape, op: SplitOperand, start: number, end: number, align: number): OperandBinding {
  const { lo, hi } = coveringRange(shape, op, start, end);
  const byteOffset = Math.floor((lo * op.bytesPerElement) / align) * align;
  const byteEnd = Math.ceil(((hi + 1) * op.bytesPerElement) / 4) * 4;
  return { byteOffset, byteSize: byteEnd - byteOffset, baseElement: byteOffset / op.bytesPerElement };
}

/**
 * Splits the walk over `shape` into pieces of whole granules (positions [k·granule, …)) such that
 * every operand's bound byte range fits `maxBindingBytes`. Usually one piece; large tensors get several.
 * Throws, naming the operand, when even one granule cannot be bound.
 */
export function splitForBindings(
  op: string,
  shape: Shape,
  operands: readonly SplitOperand[],
  granule: number,
  limits: SplitLimits,
): Piece[] {
  const total = shape.reduce((a, b) => a * b, 1);
  if (!Number.isInteger(granule) || granule <= 0) throw new Error(`${op}: invalid split granule ${granule}`);
  const pieces: Piece[] = [];
  const bindingsFor = (s: number, e: number) => operands.map((o) => bindingFor(shape, o, s, e, limits.offsetAlignment));
  const fits = (bs: OperandBinding[]) => bs.every((b) => b.byteSize <= limits.maxBindingBytes);
  let start = 0;
  while (start < total) {
    const units = Math.ceil((total - start) / granule);
    const endOf = (k: number) => Math.min(total, start + k * granule);
    const one = bindingsFor(start, endOf(1));
    if (!fits(one)) {
      const worst = one.findIndex((b) => b.byteSize > limits.maxBindingBytes);
      throw new Error(
        `${op}: operand '${operands[worst].name}' needs a ${one[worst].byteSize}-byte binding for the smallest piece ` +
          `of the walk over ${formatShape(shape)} (granule ${granule}), over maxStorageBufferBindingSize ${limits.maxBindingBytes}`,
      );
    }
    let good = 1;
    let goodBindings = one;
    let bad = units + 1;
    while (bad - good > 1) {
      const mid = good === 1 && bad === units + 1 ? units : Math.floor((good + bad) / 2);
      const bs = bindingsFor(start, endOf(mid));
      if (fits(bs)) {
        good = mid;
        goodBindings = bs;
      } else bad = mid;
    }
    pieces.push({ start, end: endOf(good), bindings: goodBindings });
    start = endOf(good);
  }
  return pieces;
}
