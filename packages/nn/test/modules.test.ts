import { permute } from "@ldm/kernels";
import { assertClose, randomArray } from "@ldm/kernels/testing";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { attentionRef } from "../../kernels/src/attention/reference.ts";
import { conv2dRef } from "../../kernels/src/conv2d/reference.ts";
import { gegluRef } from "../../kernels/src/elementwise/reference.ts";
import { groupNormRef } from "../../kernels/src/groupnorm/reference.ts";
import { layerNormRef } from "../../kernels/src/layernorm/reference.ts";
import { matmulRef } from "../../kernels/src/matmul/reference.ts";
import {
  Conv2d,
  CrossAttention,
  Embedding,
  FeedForward,
  GroupNorm,
  LayerNorm,
  Linear,
  VarBuilder,
} from "../src/index.ts";
import { type MemorySource, randomSource } from "./memory-source.ts";

const device = await useDevice();

// These modules are thin over the kernels, whose own tests bound their rounding; here the question is
// whether a module wires the right parameters, shapes and options into them. References accumulate in
// float64; outputs are O(1), and f32 GEMM/softmax/norm sums over ≤ 64 terms stay within ~1e-6 of them.
const F32 = { atol: 2e-5, rtol: 2e-5 };

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

async function build<T>(source: MemorySource, make: (vb: VarBuilder) => T, dtype: "f32" | "f16" = "f32"): Promise<T> {
  const vb = VarBuilder.from(device, source, dtype);
  const module = make(vb);
  await vb.load([""]);
  return module;
}

function input(shape: number[], seed: number, dtype: "f32" | "f16" = "f32"): { host: Float32Array; t: Tensor } {
  const host = randomArray(size(shape), seed);
  return { host, t: Tensor.from(device, host, shape, dtype) };
}

describe("Linear", () => {
  it("computes x·Wᵀ + b over the last dimension, with fused activation and residual", async () => {
    const src = randomSource({ weight: [7, 5], bias: [7] }, 1);
    const linear = await build(src, (vb) => new Linear(vb, { inFeatures: 5, outFeatures: 7 }));
    const x = input([2, 3, 5], 11);
    const r = input([2, 3, 7], 12);
    const problem = { batch: 1, M: 6, N: 7, K: 5, transposeB: true, bias: src.get("bias") };
    assertClose(await linear.forward(x.t).toFloat32(), matmulRef(x.host, src.get("weight"), problem), F32);
    const fused = linear.forward(x.t, { activation: "silu", residual: r.t });
    expect(fused.shape).toEqual([2, 3, 7]);
    const expected = matmulRef(x.host, src.get("weight"), { ...problem, activation: "silu", residual: r.host });
    assertClose(await fused.toFloat32(), expected, F32);
  });

  it("asks for no bias when bias is false", async () => {
    const src = randomSource({ weight: [3, 4] }, 2);
    const linear = await build(src, (vb) => new Linear(vb, { inFeatures: 4, outFeatures: 3, bias: false }));
    expect(linear.bias).toBeUndefined();
  });
});

describe("Conv2d", () => {
  it("convolves NCHW with stride, symmetric padding and a fused residual", async () => {
    const src = randomSource({ weight: [4, 3, 3, 3], bias: [4] }, 3);
    const conv = await build(
      src,
      (vb) => new Conv2d(vb, { inChannels: 3, outChannels: 4, kernelSize: 3, stride: 2, padding: 1 }),
    );
    const x = input([2, 3, 7, 6], 13);
    const y = conv.forward(x.t);
    expect(y.shape).toEqual([2, 4, 4, 3]);
    const geometry = { stride: 2, padding: [1, 1, 1, 1] as const };
    const expected = conv2dRef(x.host, [2, 3, 7, 6], src.get("weight"), [4, 3, 3, 3], {
      ...geometry,
      bias: src.get("bias"),
    });
    assertClose(await y.toFloat32(), expected, F32);
    const r = input([2, 4, 4, 3], 14);
    const withResidual = expected.map((v: number, i: number) => v + r.host[i]);
    assertClose(await conv.forward(x.t, { residual: r.t }).toFloat32(), withResidual, F32);
  });

  it("takes a per-call asymmetric padding (the VAE's Downsample pads right and bottom only)", async () => {
    const src = randomSource({ weight: [2, 2, 3, 3], bias: [2] }, 4);
    const conv = await build(src, (vb) => new Conv2d(vb, { inChannels: 2, outChannels: 2, kernelSize: 3, stride: 2 }));
    const x = input([1, 2, 8, 6], 15);
    const y = conv.forward(x.t, { padding: [0, 1, 0, 1] });
    expect(y.shape).toEqual([1, 2, 4, 3]);
    const expected = conv2dRef(x.host, [1, 2, 8, 6], src.get("weight"), [2, 2, 3, 3], {
      stride: 2,
      padding: [0, 1, 0, 1],
      bias: src.get("bias"),
    });
    assertClose(await y.toFloat32(), expected, F32);
  });

  it("a 1×1 convolution writes or reads tokens as forward and a rearrange would, and refuses stride or padding", async () => {
    const src = randomSource({ weight: [5, 3, 1, 1], bias: [5] }, 5);
    const conv = await build(src, (vb) => new Conv2d(vb, { inChannels: 3, outChannels: 5, kernelSize: 1 }));
    const x = input([2, 3, 4, 6], 16);
    const tokens = conv.forwardToTokens(x.t);
    const viaImage = permute(conv.forward(x.t).reshape([2, 5, 24]), [0, 2, 1]);
    expect(await tokens.toFloat32()).toEqual(await viaImage.toFloat32());
    const back = await build(
      randomSource({ weight: [3, 5, 1, 1], bias: [3] }, 6),
      (vb) => new Conv2d(vb, { inChannels: 5, outChannels: 3, kernelSize: 1 }),
    );
    const image = back.forwardFromTokens(tokens, [4, 6], { residual: x.t });
    const expected = back.forward(permute(tokens, [0, 2, 1]).reshape([2, 5, 4, 6]), { residual: x.t });
    expect(await image.toFloat32()).toEqual(await expected.toFloat32());
    const padded = await build(
      src,
      (vb) => new Conv2d(vb, { inChannels: 3, outChannels: 5, kernelSize: 1, padding: 1 }),
    );
    expect(() => padded.forwardToTokens(x.t)).toThrow(
      /Conv2d.forwardToTokens needs .* \(kernel 1, stride 1, padding 1\)/,
    );
    expect(() => padded.forwardFromTokens(tokens, [4, 6])).toThrow(/Conv2d.forwardFromTokens needs/);
  });
});

describe("norms", () => {
  it("GroupNorm uses its configured eps and fuses SiLU", async () => {
    const src = randomSource({ weight: [8], bias: [8] }, 5);
    const norm = await build(src, (vb) => new GroupNorm(vb, { groups: 4, channels: 8, eps: 1e-6 }));
    // A tiny-variance input makes eps visible: 1e-6 vs 1e-5 changes the output by several percent.
    const x = input([2, 8, 3, 5], 16);
    const small = Tensor.from(
      device,
      x.host.map((v) => v * 1e-3),
      x.t.shape,
    );
    const expected = groupNormRef(
      x.host.map((v) => v * 1e-3),
      [2, 8, 3, 5],
      src.get("weight"),
      src.get("bias"),
      4,
      1e-6,
      true,
    );
    assertClose(await norm.forward(small, { silu: true }).toFloat32(), expected, F32);
  });

  it("LayerNorm normalises the last dimension with eps 1e-5 by default", async () => {
    const src = randomSource({ weight: [6], bias: [6] }, 6);
    const norm = await build(src, (vb) => new LayerNorm(vb, { dim: 6 }));
    const x = input([3, 2, 6], 17);
    const expected = layerNormRef(x.host, 6, src.get("weight"), src.get("bias"), 1e-5);
    assertClose(await norm.forward(x.t).toFloat32(), expected, F32);
  });
});

describe("Embedding", () => {
  it("picks rows by id", async () => {
    const src = randomSource({ weight: [10, 4] }, 7);
    const emb = await build(src, (vb) => new Embedding(vb, { count: 10, dim: 4 }));
    const ids = [3, 0, 9, 3, 5, 1];
    const y = emb.forward(Tensor.from(device, Int32Array.from(ids), [2, 3], "i32"));
    expect(y.shape).toEqual([2, 3, 4]);
    const table = src.get("weight");
    expect(Array.from(await y.toFloat32())).toEqual(
      ids.flatMap((id) => Array.from(table.subarray(id * 4, id * 4 + 4))),
    );
  });
});

/** CompVis CrossAttention in float64 from its parameters: heads split from the projections' last dimension. */
function crossAttentionRef(
  src: MemorySource,
  x: Float32Array,
  context: Float32Array,
  dims: { batch: number; n: number; l: number; queryDim: number; contextDim: number; heads: number; d: number },
): Float32Array {
  const { batch, n, l, queryDim, contextDim, heads, d } = dims;
  const inner = heads * d;
  const project = (v: Float32Array, rows: number, k: number, key: string) =>
    matmulRef(v, src.get(key), { batch: 1, M: rows, N: inner, K: k, transposeB: true });
  const q = project(x, batch * n, queryDim, "to_q.weight");
  const k = project(context, batch * l, contextDim, "to_k.weight");
  const v = project(context, batch * l, contextDim, "to_v.weight");
  const heads_ = Float32Array.from(attentionRef(q, k, v, { batch, nq: n, nk: l, heads, d }));
  return matmulRef(heads_, src.get("to_out.0.weight"), {
    batch: 1,
    M: batch * n,
    N: queryDim,
    K: inner,
    transposeB: true,
    bias: src.get("to_out.0.bias"),
    residual: x,
  });
}

describe("CrossAttention", () => {
  const shapes = (queryDim: number, contextDim: number, inner: number) => ({
    "to_q.weight": [inner, queryDim],
    "to_k.weight": [inner, contextDim],
    "to_v.weight": [inner, contextDim],
    "to_out.0.weight": [queryDim, inner],
    "to_out.0.bias": [queryDim],
  });

  it("attends to the context (cross) with per-head softmax and a fused residual", async () => {
    const dims = { batch: 2, n: 5, l: 7, queryDim: 12, contextDim: 6, heads: 3, d: 4 };
    const src = randomSource(shapes(12, 6, 12), 8);
    const attn = await build(
      src,
      (vb) => new CrossAttention(vb, { queryDim: 12, contextDim: 6, heads: 3, dimHead: 4 }),
    );
    const x = input([2, 5, 12], 18);
    const ctx = input([2, 7, 6], 19);
    const y = attn.forward(x.t, { context: ctx.t, residual: x.t });
    assertClose(await y.toFloat32(), crossAttentionRef(src, x.host, ctx.host, dims), F32);
    // The context's keys and values projected beforehand: the same kernels on the same inputs, the same bits.
    const kv = attn.projectContext(ctx.t);
    const reused = attn.forward(x.t, { kv, residual: x.t });
    expect(await reused.toFloat32()).toEqual(await y.toFloat32());
    expect(() => attn.forward(x.t, { context: ctx.t, kv })).toThrow(/the context or its kv, not both/);
    for (const t of [y, reused, kv.k, kv.v]) t.dispose();
  });

  it("attends to x itself without a context", async () => {
    const dims = { batch: 1, n: 9, l: 9, queryDim: 8, contextDim: 8, heads: 2, d: 5 };
    const src = randomSource(shapes(8, 8, 10), 9);
    const attn = await build(src, (vb) => new CrossAttention(vb, { queryDim: 8, heads: 2, dimHead: 5 }));
    const x = input([1, 9, 8], 20);
    const y = attn.forward(x.t, { residual: x.t });
    assertClose(await y.toFloat32(), crossAttentionRef(src, x.host, x.host, dims), F32);
  });
});

describe("FeedForward", () => {
  it("is GEGLU (value first, gate second) then net.2, with a fused residual", async () => {
    const src = randomSource(
      { "net.0.proj.weight": [32, 4], "net.0.proj.bias": [32], "net.2.weight": [4, 16], "net.2.bias": [4] },
      10,
    );
    const ff = await build(src, (vb) => new FeedForward(vb, { dim: 4 }));
    const x = input([2, 3, 4], 21);
    const projected = matmulRef(x.host, src.get("net.0.proj.weight"), {
      batch: 1,
      M: 6,
      N: 32,
      K: 4,
      transposeB: true,
      bias: src.get("net.0.proj.bias"),
    });
    const gated = gegluRef(projected, [6, 32]);
    const expected = matmulRef(gated, src.get("net.2.weight"), {
      batch: 1,
      M: 6,
      N: 4,
      K: 16,
      transposeB: true,
      bias: src.get("net.2.bias"),
      residual: x.host,
    });
    assertClose(await ff.forward(x.t, { residual: x.t }).toFloat32(), expected, F32);
  });
});

describe("parameter names", () => {
  it("a module asks for exactly the checkpoint's keys, and a missing or mis-shaped key is named", async () => {
    const keys = {
      "to_q.weight": [8, 8],
      "to_k.weight": [8, 8],
      "to_v.weight": [8, 8],
      "to_out.0.weight": [8, 8],
      "to_out.0.bias": [8],
    };
    // Every key present: loading under the prefix finds nothing unexpected and nothing missing.
    const full = randomSource(Object.fromEntries(Object.entries(keys).map(([k, s]) => [`attn1.${k}`, s])), 11);
    await build(full, (vb) => new CrossAttention(vb.pp("attn1"), { queryDim: 8, heads: 2, dimHead: 4 }));

    const broken = randomSource(
      {
        "attn1.to_q.weight": [8, 8],
        "attn1.to_k.weight": [8, 4],
        "attn1.to_v.weight": [8, 8],
        "attn1.to_out.0.weight": [8, 8],
        "attn1.extra": [1],
      },
      12,
    );
    const vb = VarBuilder.from(device, broken);
    new CrossAttention(vb.pp("attn1"), { queryDim: 8, heads: 2, dimHead: 4 });
    const error = await vb.load(["attn1"]).then(
      () => null,
      (e: Error) => e.message,
    );
    expect(error).toContain("missing: attn1.to_out.0.bias");
    expect(error).toContain("wrong shape: attn1.to_k.weight is [8, 4] in the checkpoint, the model needs [8, 8]");
    expect(error).toContain("unexpected: attn1.extra");
  });
});
