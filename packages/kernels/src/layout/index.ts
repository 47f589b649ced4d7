/**
 * Data movement on the strided-map kernel: nearest ×2 upsampling, concatenation, permutation and slicing.
 * Each is a copy through strided views, so all of them split work over tensors larger than one binding.
 */
import { formatShape, shapeSize, stridesOf, Tensor } from "@ldm/tensor";
import { stridedMap } from "../strided/map.ts";

function copy(
  op: string,
  x: Tensor,
  shape: number[],
  inStrides: number[],
  inOffset: number,
  out: Tensor,
  outStrides: number[],
  outOffset = 0,
): void {
  stridedMap({
    op,
    shape,
    inputs: [{ tensor: x, strides: inStrides, offset: inOffset }],
    output: { tensor: out, strides: outStrides, offset: outOffset },
    expr: "a0",
  });
}

function checkDim(op: string, x: Tensor, dim: number): number {
  const d = dim < 0 ? dim + x.shape.length : dim;
  if (!Number.isInteger(d) || d < 0 || d >= x.shape.length) {
    throw new Error(`${op}: dimension ${dim} is out of range for ${x}`);
  }
  return d;
}

/** Nearest-neighbour ×2 upsampling of the last two dimensions: [..., H, W] → [..., 2H, 2W] (NCHW in the UNet/VAE). */
export function upsampleNearest2x(x: Tensor): Tensor {
  if (x.shape.length < 2) throw new Error(`upsampleNearest2x: ${x} needs at least two (spatial) dimensions`);
  const [h, w] = x.shape.slice(-2);
  const lead = shapeSize(x.shape.slice(0, -2));
  const out = Tensor.empty(x.device, [...x.shape.slice(0, -2), 2 * h, 2 * w], x.dtype);
  // Walk the output as [lead, H, 2, W, 2]: the two size-2 axes repeat each input pixel (stride 0).
  const walk = [lead, h, 2, w, 2];
  copy("upsampleNearest2x", x, walk, [h * w, w, 0, 1, 0], 0, out, stridesOf(walk));
  return out;
}

/** Concatenation along `dim` (channels, dim 1, in NCHW); every other dimension must agree. */
export function concat(tensors: readonly Tensor[], dim: number): Tensor {
  if (tensors.length === 0) throw new Error("concat: no tensors given");
  const first = tensors[0];
  const d = checkDim("concat", first, dim);
  for (const [i, t] of tensors.entries()) {
    const same = t.shape.length === first.shape.length && t.shape.every((s, k) => k === d || s === first.shape[k]);
    if (!same) {
      throw new Error(
        `concat: tensor ${i} ${formatShape(t.shape)} does not match ${formatShape(first.shape)} outside dimension ${d}`,
      );
    }
    if (t.dtype !== first.dtype) throw new Error(`concat: tensor ${i} is ${t.dtype}, tensor 0 is ${first.dtype}`);
  }
  const shape = [...first.shape];
  shape[d] = tensors.reduce((acc, t) => acc + t.shape[d], 0);
  const out = Tensor.empty(first.device, shape, first.dtype);
  const outStrides = stridesOf(shape);
  let at = 0;
  for (const t of tensors) {
    copy("concat", t, [...t.shape], stridesOf(t.shape), 0, out, outStrides, at * outStrides[d]);
    at += t.shape[d];
  }
  return out;
}

/** out.shape[i] = x.shape[perm[i]] (torch.permute); e.g. [B, C, HW] → [B, HW, C] with perm [0, 2, 1]. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  const rank = x.shape.length;
  const valid = perm.length === rank && [...perm].sort((a, b) => a - b).every((p, i) => p === i);
  if (!valid) throw new Error(`permute: [${perm.join(", ")}] is not a permutation of the ${rank} dimensions of ${x}`);
  const shape = perm.map((p) => x.shape[p]);
  const inStrides = stridesOf(x.shape);
  const out = Tensor.empty(x.device, shape, x.dtype);
  copy(
    "permute",
    x,
    shape,
    perm.map((p) => inStrides[p]),
    0,
    out,
    stridesOf(shape),
  );
  return out;
}

/** x[..., start:end, ...] along `dim` (a copy). */
export function slice(x: Tensor, dim: number, start: number, end: number): Tensor {
  const d = checkDim("slice", x, dim);
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > x.shape[d] || start > end) {
    throw new Error(`slice: [${start}, ${end}) is not a range within dimension ${d} (size ${x.shape[d]}) of ${x}`);
  }
  const shape = [...x.shape];
  shape[d] = end - start;
  const strides = stridesOf(x.shape);
  const out = Tensor.empty(x.device, shape, x.dtype);
  copy("slice", x, shape, strides, start * strides[d], out, stridesOf(shape));
  return out;
}

/** `chunks` equal slices along `dim` (torch.chunk with a size that divides; e.g. the CFG batch split). */
export function chunk(x: Tensor, chunks: number, dim: number): Tensor[] {
  const d = checkDim("chunk", x, dim);
  const size = x.shape[d];
  if (!Number.isInteger(chunks) || chunks <= 0 || size % chunks) {
    throw new Error(`chunk: dimension ${d} of ${x} (size ${size}) does not split into ${chunks} equal chunks`);
  }
  const step = size / chunks;
  return Array.from({ length: chunks }, (_, i) => slice(x, d, i * step, (i + 1) * step));
}
