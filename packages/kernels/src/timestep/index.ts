/**
 * The sinusoidal timestep embedding of CompVis openaimodel `timestep_embedding` (repeat_only=False):
 * half = dim // 2, freqs = exp(−ln(max_period) · arange(half) / half), args = t · freqs,
 * out = cat[cos(args), sin(args)], plus a zero column when dim is odd.
 *
 * The frequencies are computed on the host with torch's float32 rounding at every step (checked against
 * torch 1.13: equal except where torch's expf is 1 ulp off, 16 of 160 for dim 320) and uploaded once per
 * device; the products and the cos/sin run on the GPU, with the argument reduced modulo 2π first since
 * WGSL only bounds sin/cos error on [−π, π] and args reach ~1000.
 */
import { type Device, Tensor } from "@ldm/tensor";
import type { FloatDType } from "../cast/index.ts";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { assertDType } from "../common/wgsl.ts";

export interface TimestepEmbeddingOptions {
  /** 10000 in every SD model. */
  maxPeriod?: number;
  /** Output dtype, f32 by default. */
  dtype?: FloatDType;
}

/** Element (b, i) of the embedding per item: cos of the i-th frequency's angle, then sin, then the odd zero. */
const TIMESTEP_EMBEDDING: KernelDecl<{ dtype: FloatDType }> = {
  name: "timestep-embedding",
  params: { dim: "u32", half: "u32" },
  bindings: ({ dtype }) => [
    { name: "t", type: "f32" },
    { name: "freqs", type: "f32" },
    { name: "out", type: dtype, access: "read_write" },
  ],
  workgroupSize: 64,
  module: `
// x mod 2π in [−π, π]: 2π = 6.28125 + 0.0019353071795864769, the first part short enough that k · it is exact.
fn reduce_angle(x: f32) -> f32 {
  let k = round(x * 0.15915494309189535);
  return (x - k * 6.28125) - k * 0.0019353071795864769;
}`,
  main: ({ dtype }) => `
  let b = item / p.dim;
  let i = item % p.dim;
  var value = 0.0;
  if (i < 2u * p.half) {
    let angle = reduce_angle(t[b] * freqs[i % p.half]);
    value = select(sin(angle), cos(angle), i < p.half);
  }
  out[item] = ${dtype}(value);`,
};
const frequencyTables = new WeakMap<Device, Map<string, Tensor>>();

/** freqs[i] = exp(−ln(maxPeriod) · i / half) rounded as torch does in float32. */
export function timestepFrequencies(dim: number, maxPeriod: number): Float32Array {
  const half = Math.floor(dim / 2);
  const c = Math.fround(-Math.log(maxPeriod));
  return Float32Array.from({ length: half }, (_, i) => Math.exp(Math.fround(Math.fround(i * c) / half)));
}

function frequencyTable(device: Device, dim: number, maxPeriod: number): Tensor {
  let tables = frequencyTables.get(device);
  if (!tables) {
    tables = new Map();
    frequencyTables.set(device, tables);
  }
  const key = `${dim}|${maxPeriod}`;
  let table = tables.get(key);
  if (!table || table.disposed) {
    const freqs = timestepFrequencies(dim, maxPeriod);
    table = Tensor.from(device, freqs.length ? freqs : [0], [Math.max(1, freqs.length)]).keep();
    tables.set(key, table);
  }
  return table;
}

/** t: f32 [B] (timesteps, possibly fractional) → [B, dim]. */
export function timestepEmbedding(t: Tensor, dim: number, options: TimestepEmbeddingOptions = {}): Tensor {
  const { maxPeriod = 10000, dtype = "f32" } = options;
  assertDType("timestepEmbedding", "t", t, ["f32"]);
  if (t.shape.length !== 1) throw new Error(`timestepEmbedding: t ${t} must be [B]`);
  if (!Number.isInteger(dim) || dim <= 0)
    throw new Error(`timestepEmbedding: dim must be a positive integer, got ${dim}`);
  if (!(maxPeriod > 0)) throw new Error(`timestepEmbedding: maxPeriod must be positive, got ${maxPeriod}`);
  const device = t.device;
  const freqs = frequencyTable(device, dim, maxPeriod);
  const out = Tensor.empty(device, [t.size, dim], dtype);
  if (out.size === 0) return out;
  runKernel(
    device,
    TIMESTEP_EMBEDDING,
    { dtype },
    {
      count: out.size,
      params: { dim, half: Math.floor(dim / 2) },
      buffers: { t: t.slice(), freqs: freqs.slice(), out: out.slice() },
    },
  );
  return out;
}
