/**
 * Nearest-neighbour resize of the last two dimensions to any size (torch `F.interpolate(x, size=(H', W'),
 * mode="nearest")`), for UNet latents whose size does not halve cleanly (diffusers' Upsample2D with
 * `output_size`). Exact ×2 has its own strided copy, `upsampleNearest2x`.
 *
 * Source index = min(floor(dst · scale), in − 1) with scale = f32(in / out) and an f32 product, as
 * PyTorch's CPU kernel computes it: the exact rational floor(dst · in / out) differs where the rounded
 * scale lands a product just below an integer.
 */
import { type DType, formatShape, Tensor } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { assertBindable, assertDType } from "../common/wgsl.ts";

/** One output element per item, read from its nearest source element. */
const RESIZE_NEAREST: KernelDecl<{ dtype: DType }> = {
  name: "resize-nearest",
  params: { inH: "u32", inW: "u32", outH: "u32", outW: "u32", scaleH: "f32", scaleW: "f32" },
  bindings: ({ dtype }) => [
    { name: "x", type: dtype },
    { name: "out", type: dtype, access: "read_write" },
  ],
  workgroupSize: 256,
  main: `
  let j = item % p.outW;
  let i = (item / p.outW) % p.outH;
  let plane = item / (p.outW * p.outH);
  let si = min(u32(floor(f32(i) * p.scaleH)), p.inH - 1u);
  let sj = min(u32(floor(f32(j) * p.scaleW)), p.inW - 1u);
  out[item] = x[(plane * p.inH + si) * p.inW + sj];`,
};

/** torch's float32 scale for `size=`: in / out, correctly rounded (double then f32 is exact for this quotient). */
export function nearestScale(inSize: number, outSize: number): number {
  return Math.fround(inSize / outSize);
}

/** [..., H, W] → [..., outH, outW] by nearest neighbour. */
export function resizeNearest(x: Tensor, size: readonly [number, number]): Tensor {
  assertDType("resizeNearest", "x", x, ["f32", "f16"]);
  if (x.shape.length < 2) throw new Error(`resizeNearest: ${x} needs at least two (spatial) dimensions`);
  const [outH, outW] = size;
  if (!Number.isInteger(outH) || !Number.isInteger(outW) || outH <= 0 || outW <= 0) {
    throw new Error(`resizeNearest: output size ${formatShape([...size])} must be two positive integers`);
  }
  const [h, w] = x.shape.slice(-2);
  if (h === 0 || w === 0) throw new Error(`resizeNearest: ${x} has an empty spatial dimension to resize from`);
  const device = x.device;
  const out = Tensor.empty(device, [...x.shape.slice(0, -2), outH, outW], x.dtype);
  assertBindable("resizeNearest", { x, out });
  if (out.size === 0) return out;
  if (out.size >= 2 ** 32) throw new Error(`resizeNearest: ${out} has more elements than a kernel can index`);

  runKernel(
    device,
    RESIZE_NEAREST,
    { dtype: x.dtype },
    {
      count: out.size,
      params: { inH: h, inW: w, outH, outW, scaleH: nearestScale(h, outH), scaleW: nearestScale(w, outW) },
      buffers: { x: x.slice(), out: out.slice() },
    },
  );
  return out;
}
