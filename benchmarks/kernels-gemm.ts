/**
 * Benchmark rows for the GEMM kernels (matmul, linear, conv2d) at SD 1.x shapes, or small shapes with --quick.
 * Registered by the harness's registerKernelRows, which imports every benchmarks/kernels-*.ts.
 */
import { conv2d, geglu, linear, linearGeglu, matmul } from "@ldm/kernels";
import { randomArray } from "@ldm/kernels/testing";
import { type Device, type DType, Tensor } from "@ldm/tensor";
import { defineRows, disposer, registerBench } from "./harness.ts";

function matmulRow(M: number, N: number, K: number, dtype: DType = "f32") {
  registerBench({
    name: `matmul ${M}×${N}×${K}`,
    dtype,
    flops: 2 * M * N * K,
    ours(device) {
      const a = Tensor.from(device, randomArray(M * K, 1), [M, K], dtype);
      const b = Tensor.from(device, randomArray(K * N, 2), [K, N], dtype);
      return { run: () => matmul(a, b), dispose: disposer(a, b) };
    },
    peer(tf) {
      const a = tf.tensor2d(randomArray(M * K, 1), [M, K]);
      const b = tf.tensor2d(randomArray(K * N, 2), [K, N]);
      return { run: () => tf.matMul(a, b), dispose: () => tf.dispose([a, b]) };
    },
  });
}

/** x [M, K] · W [N, K]ᵀ + bias: the SD Linear layer. */
function linearRow(M: number, N: number, K: number, dtype: DType = "f32") {
  registerBench({
    name: `linear ${M}×${N}×${K} (+bias)`,
    dtype,
    flops: 2 * M * N * K,
    ours(device) {
      const x = Tensor.from(device, randomArray(M * K, 1), [M, K], dtype);
      const w = Tensor.from(device, randomArray(N * K, 2), [N, K], dtype);
      const b = Tensor.from(device, randomArray(N, 3), [N], dtype);
      return { run: () => linear(x, w, b), dispose: disposer(x, w, b) };
    },
    peer(tf) {
      const x = tf.tensor2d(randomArray(M * K, 1), [M, K]);
      const w = tf.tensor2d(randomArray(N * K, 2), [N, K]);
      const b = tf.tensor1d(randomArray(N, 3));
      return { run: () => tf.add(tf.matMul(x, w, false, true), b), dispose: () => tf.dispose([x, w, b]) };
    },
    peerNote: "tfjs: matMul(x, w, false, true) then add (tfjs fuses bias only in its layers API).",
  });
}

/**
 * The feed-forward's GEGLU projection, x [M, K] → [M, inner] through weight [2·inner, K], fused (linearGeglu)
 * against its baseline linear then geglu, which stores and rereads the [M, 2·inner] product.
 */
function gegluRow(M: number, inner: number, K: number, dtype: DType = "f32") {
  const N = 2 * inner;
  const inputs = (device: Device) => {
    const x = Tensor.from(device, randomArray(M * K, 1), [M, K], dtype);
    const w = Tensor.from(device, randomArray(N * K, 2), [N, K], dtype);
    const b = Tensor.from(device, randomArray(N, 3), [N], dtype);
    return { x, w, b, dispose: disposer(x, w, b) };
  };
  registerBench({
    name: `linearGeglu ${M}×${N}×${K} (+bias)`,
    dtype,
    flops: 2 * M * N * K,
    ours(device) {
      const { x, w, b, dispose } = inputs(device);
      return { run: () => linearGeglu(x, w, b), dispose };
    },
    baseline: {
      name: "unfused: linear, geglu",
      ours(device) {
        const { x, w, b, dispose } = inputs(device);
        return { run: () => device.tidy(() => geglu(linear(x, w, b))), dispose };
      },
    },
  });
}

/** 3×3, padding 1, stride 1, with bias: the SD ResBlock convolution. */
function convRow(C: number, S: number, dtype: DType = "f32") {
  registerBench({
    name: `conv2d 3×3 ${C}→${C} @ ${S}×${S}`,
    dtype,
    flops: 2 * C * C * 9 * S * S,
    ours(device) {
      const x = Tensor.from(device, randomArray(C * S * S, 1), [1, C, S, S], dtype);
      const w = Tensor.from(device, randomArray(C * C * 9, 2, 0.05), [C, C, 3, 3], dtype);
      const b = Tensor.from(device, randomArray(C, 3), [C], dtype);
      return { run: () => conv2d(x, w, { bias: b, padding: 1 }), dispose: disposer(x, w, b) };
    },
    peer(tf) {
      const x = tf.tensor4d(randomArray(C * S * S, 1), [1, S, S, C]);
      const w = tf.tensor4d(randomArray(C * C * 9, 2, 0.05), [3, 3, C, C]);
      const b = tf.tensor1d(randomArray(C, 3));
      return { run: () => tf.add(tf.conv2d(x, w, 1, "same"), b), dispose: () => tf.dispose([x, w, b]) };
    },
    peerNote: "tfjs: conv2d in its native NHWC layout with an HWIO filter, then add the bias.",
  });
}

defineRows((quick) => {
  if (quick) {
    matmulRow(128, 96, 80);
    linearRow(200, 96, 64);
    gegluRow(200, 48, 64);
    convRow(16, 16);
  } else {
    matmulRow(1024, 1024, 1024);
    matmulRow(4096, 320, 320);
    matmulRow(4096, 1280, 320);
    linearRow(4096, 320, 320);
    // SD 1.5's first transformer level at a 32×32 latent, batch 2 (classifier-free guidance).
    gegluRow(2 * 1024, 1280, 320);
    convRow(320, 64);
    convRow(640, 32);
    convRow(1280, 16);
    convRow(128, 256);
    linearRow(4096, 320, 320, "f16");
    convRow(320, 64, "f16");
  }
});
