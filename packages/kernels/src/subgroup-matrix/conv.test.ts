import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, it } from "vitest";
import { conv2d } from "../conv2d/index.ts";
import { conv2dRef } from "../conv2d/reference.ts";
import type { Activation } from "../matmul/activation.ts";
import {
  assertClose,
  conv2dOutputShape,
  EMULATED_MATRIX_TILES,
  elementCount,
  randomArray,
  roundF16,
} from "../testing.ts";
import type { MatrixTiles } from "./plan.ts";

const device = await useDevice();

/** Emulated matrix tiles for the implicit GEMM's gather, tiles and epilogue, with the 2 subgroups along N. */
const TILES: MatrixTiles = { ...EMULATED_MATRIX_TILES, subgroupsM: 1, subgroupsN: 2, matsM: 2, matsN: 1 };

interface Case {
  x: [number, number, number, number];
  w: [number, number, number, number];
  stride?: number;
  padding?: number | [number, number, number, number];
  bias?: boolean;
  residual?: boolean;
  activation?: Activation;
  dtype?: "f32" | "f16";
}

async function check(c: Case, tol: { atol: number; rtol: number }) {
  const dtype = c.dtype ?? "f32";
  const round = (a: Float32Array) => (dtype === "f16" ? roundF16(a) : a);
  const x = round(randomArray(elementCount(c.x), 1));
  const w = round(randomArray(elementCount(c.w), 2));
  const bias = c.bias ? round(randomArray(c.w[0], 3)) : undefined;
  const opts = { stride: c.stride, padding: c.padding, activation: c.activation };
  const plain = conv2dRef(x, c.x, w, c.w, { ...opts, bias });
  const residual = c.residual ? round(randomArray(plain.length, 4)) : undefined;
  const want = conv2dRef(x, c.x, w, c.w, { ...opts, bias, residual });
  const tx = Tensor.from(device, x, c.x, dtype);
  const tw = Tensor.from(device, w, c.w, dtype);
  const tb = bias && Tensor.from(device, bias, [c.w[0]], dtype);
  const tr = residual && Tensor.from(device, residual, conv2dOutputShape(c.x, c.w, c.stride, c.padding), dtype);
  const out = conv2d(tx, tw, { ...opts, bias: tb, residual: tr }, { matrixTiles: { ...TILES, component: dtype } });
  const got = await out.toFloat32();
  for (const t of [tx, tw, tb, tr, out]) t?.dispose();
  assertClose(got, want, tol, JSON.stringify(c));
}

describe("conv2d as an implicit GEMM on emulated subgroup-matrix tiles", () => {
  it("matches the reference: 3×3 with padding, batches, odd channels and sizes, the epilogue", async () => {
    // K = 5 · 9 = 45 products of values in [-1, 1): f32 rounding in another order than float64's.
    await check(
      { x: [2, 5, 9, 7], w: [11, 5, 3, 3], padding: 1, bias: true, residual: true, activation: "silu" },
      { atol: 1e-5, rtol: 1e-5 },
    );
  }, 600_000);

  it.skipIf(!device.features.shaderF16)(
    "f16, stride 2 with the VAE Downsample's one-sided padding",
    async () => {
      // f16 inputs (rounded for the reference too), f32 accumulation, f16 output: 2^-11 relative.
      await check(
        { x: [1, 6, 11, 10], w: [9, 6, 3, 3], stride: 2, padding: [0, 1, 0, 1], dtype: "f16" },
        {
          atol: 1e-3,
          rtol: 2 ** -10,
        },
      );
    },
    600_000,
  );
});
