/**
 * Benchmark rows for the non-GEMM kernels: group norm and fused attention at SD 1.x shapes (64×64 latents).
 * Registered by the harness's registerKernelRows, which imports every benchmarks/kernels-*.ts.
 */
import { adapterTraits, attention, attentionTiling, type GroupStrategy, groupNorm, groupStrategy } from "@ldm/kernels";
import { randomArray } from "@ldm/kernels/testing";
import { type Device, type DType, Tensor } from "@ldm/tensor";
import { defineRows, disposer, registerBench, type Tfjs } from "./harness.ts";

type TfTensor = import("@tensorflow/tfjs-core").Tensor;

/** `strategy` forces how groups spread over invocations (default: what this adapter gets), to compare them. */
function groupNormRow(batch: number, channels: number, size: number, groups: number, strategy?: GroupStrategy) {
  const n = batch * channels * size * size;
  const forced = strategy
    ? strategy.threadsPerGroup === 1
      ? ", one invocation per group"
      : ", a workgroup per group"
    : "";
  registerBench({
    name: `group norm [${batch}, ${channels}, ${size}, ${size}] / ${groups} groups${forced}`,
    dtype: "f32",
    // At least one read of x and one write of the result.
    bytes: 2 * 4 * n,
    ours(device) {
      const x = Tensor.from(device, randomArray(n, 1), [batch, channels, size, size]);
      const gamma = Tensor.from(device, randomArray(channels, 2), [channels]);
      const beta = Tensor.from(device, randomArray(channels, 3), [channels]);
      return {
        run: () => groupNorm(x, gamma, beta, { groups, eps: 1e-5, strategy }),
        dispose: disposer(x, gamma, beta),
      };
    },
    peer(tf) {
      const x = tf.tensor4d(randomArray(n, 1), [batch, channels, size, size]);
      const gamma = tf.tensor4d(randomArray(channels, 2), [1, channels, 1, 1]);
      const beta = tf.tensor4d(randomArray(channels, 3), [1, channels, 1, 1]);
      const run = () =>
        tf.tidy(() => {
          const grouped = tf.reshape(x, [batch, groups, n / batch / groups]);
          const { mean, variance } = tf.moments(grouped, 2, true);
          const normed = tf.mul(tf.sub(grouped, mean), tf.rsqrt(tf.add(variance, 1e-5)));
          return tf.add(tf.mul(tf.reshape(normed, [batch, channels, size, size]), gamma), beta);
        });
      return { run, dispose: () => tf.dispose([x, gamma, beta]) };
    },
    peerNote: "tfjs has no group norm: reshape to groups, tf.moments, normalise, scale and shift.",
  });
}

/**
 * tfjs peer: per head, softmax(q·kᵀ·scale)·v as matMul, softmax, matMul on [N, d] slices, then concat.
 * One head at a time because all heads' scores at once ([8, 4096, 4096] f32, 512 MiB) exceed the 128 MiB
 * storage binding tfjs gets on lavapipe.
 */
function attentionPeer(tf: Tfjs, nq: number, nk: number, heads: number, d: number) {
  const width = heads * d;
  const q = tf.tensor2d(randomArray(nq * width, 1), [nq, width]);
  const k = tf.tensor2d(randomArray(nk * width, 2), [nk, width]);
  const v = tf.tensor2d(randomArray(nk * width, 3), [nk, width]);
  const split = (t: TfTensor, n: number) => Array.from({ length: heads }, (_, h) => tf.slice(t, [0, h * d], [n, d]));
  const [qs, ks, vs] = [split(q, nq), split(k, nk), split(v, nk)];
  const scale = 1 / Math.sqrt(d);
  const run = () =>
    tf.tidy(() =>
      tf.concat(
        qs.map((qh, h) => tf.matMul(tf.softmax(tf.mul(tf.matMul(qh, ks[h], false, true), scale)), vs[h])),
        1,
      ),
    );
  return { run, dispose: () => tf.dispose([q, k, v, ...qs, ...ks, ...vs]) };
}

/** q, k, v of one batch item in `dtype`; `present` forces attentionTiling's choice (no subgroup matrices). */
function attentionSetup(nq: number, nk: number, heads: number, d: number, dtype: DType, present: boolean) {
  const width = heads * d;
  return (device: Device) => {
    const q = Tensor.from(device, randomArray(nq * width, 1), [1, nq, width], dtype);
    const k = Tensor.from(device, randomArray(nk * width, 2), [1, nk, width], dtype);
    const v = Tensor.from(device, randomArray(nk * width, 3), [1, nk, width], dtype);
    const tiling = present ? attentionTiling(adapterTraits(device), d, nq, nk, { heads, causal: false }) : undefined;
    return { run: () => attention(q, k, v, { heads, tiling }), dispose: disposer(q, k, v) };
  };
}

/**
 * f32 rows time the fused kernel against tfjs; f16 rows time attention as the adapter runs it (on subgroup
 * matrices where it has them for f16) against the present fused kernel in the same run (the baseline; the same
 * kernel on adapters without matrices).
 */
function attentionRow(name: string, nq: number, nk: number, heads: number, d: number, dtype: "f32" | "f16" = "f32") {
  const versus =
    dtype === "f32"
      ? {
          peer: (tf: Tfjs) => attentionPeer(tf, nq, nk, heads, d),
          peerNote:
            "tfjs: per head matMul(q, k, false, true)·scale, softmax, matMul(·, v), concat (all heads' scores at once exceed tfjs's 128 MiB binding).",
        }
      : { baseline: { name: "present attention kernel", ours: attentionSetup(nq, nk, heads, d, dtype, true) } };
  registerBench({
    name,
    dtype,
    flops: 4 * heads * nq * nk * d,
    ours: attentionSetup(nq, nk, heads, d, dtype, false),
    ...versus,
  });
}

defineRows((quick) => {
  if (quick) {
    groupNormRow(1, 32, 16, 8);
    attentionRow("self-attention 256 tokens × 2 heads × 40", 256, 256, 2, 40);
  } else {
    groupNormRow(1, 320, 64, 32);
    // Both strategies on this adapter, at SD's size and at the built-in model's (batch 2 for guidance).
    for (const isCpu of [true, false]) {
      groupNormRow(1, 320, 64, 32, groupStrategy(isCpu));
      groupNormRow(2, 64, 16, 32, groupStrategy(isCpu));
    }
    attentionRow("self-attention 4096 tokens × 8 heads × 40", 4096, 4096, 8, 40);
    attentionRow("cross-attention 4096×77, 8 heads × 40", 4096, 77, 8, 40);
  }
});

/**
 * The f16 attention rows of the GPU script's kernel table (benchmarks/gpu.ts registers them; on lavapipe both
 * sides would be the present kernel): the UNet's levels at 64² and 32², and its deepest (16², d = 160).
 */
export function registerAttentionF16Rows(quick: boolean): void {
  if (quick) {
    attentionRow("self-attention 256 tokens × 2 heads × 40", 256, 256, 2, 40, "f16");
    return;
  }
  attentionRow("self-attention 4096 tokens × 8 heads × 40", 4096, 4096, 8, 40, "f16");
  attentionRow("cross-attention 4096×77, 8 heads × 40", 4096, 77, 8, 40, "f16");
  attentionRow("self-attention 1024 tokens × 8 heads × 80", 1024, 1024, 8, 80, "f16");
  attentionRow("self-attention 256 tokens × 8 heads × 160", 256, 256, 8, 160, "f16");
}
