/**
 * Nearest-neighbour resize of the last two dimensions to any size (torch `F.interpolate(x, size=(H', W'),
 * mode="nearest")`), for UNet latents whose size does not halve cleanly (diffusers' Upsample2D with
 * `output_size`). Exact ×2 has its own strided copy, `upsampleNearest2x`.
 *
 * Source index = min(floor(dst · scale), in − 1) with scale = f32(in / out) and an f32 product, as
 * PyTorch's CPU kernel computes it: the exact rational floor(dst · in / out) differs where the rounded
 * scale lands a product just below an integer.
 */
import { formatShape, shapeSize, Tensor, Uniforms } from "@ldm/tensor";
import { foldGrid, LINEAR_WORKGROUP_ID } from "../common/grid.ts";
import { assertBindable, assertDType, wgslEnables } from "../common/wgsl.ts";

const WORKGROUP = 256;

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
  const lead = shapeSize(x.shape.slice(0, -2));
  const device = x.device;
  const out = Tensor.empty(device, [...x.shape.slice(0, -2), outH, outW], x.dtype);
  assertBindable("resizeNearest", { x, out });
  if (out.size === 0) return out;
  if (out.size >= 2 ** 32) throw new Error(`resizeNearest: ${out} has more elements than a kernel can index`);

  const T = x.dtype;
  const pipeline = device.pipeline(
    `resize-nearest|${T}`,
    () => `${wgslEnables(device, T)}
struct Params { items: u32, inH: u32, inW: u32, outH: u32, outW: u32, scaleH: f32, scaleW: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> out: array<${T}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let item = ${LINEAR_WORKGROUP_ID} * ${WORKGROUP}u + lid;
  if (item >= p.items) { return; }
  let j = item % p.outW;
  let i = (item / p.outW) % p.outH;
  let plane = item / (p.outW * p.outH);
  let si = min(u32(floor(f32(i) * p.scaleH)), p.inH - 1u);
  let sj = min(u32(floor(f32(j) * p.scaleW)), p.inW - 1u);
  out[item] = x[(plane * p.inH + si) * p.inW + sj];
}
`,
  );
  device.dispatch({
    pipeline,
    uniforms: new Uniforms()
      .u32(out.size)
      .u32(h)
      .u32(w)
      .u32(outH)
      .u32(outW)
      .f32(nearestScale(h, outH))
      .f32(nearestScale(w, outW))
      .bytes(),
    buffers: [x.slice(), out.slice()],
    workgroups: foldGrid(Math.ceil((lead * outH * outW) / WORKGROUP), device.limits.maxComputeWorkgroupsPerDimension),
  });
  return out;
}
