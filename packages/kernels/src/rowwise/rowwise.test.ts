import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { layerNorm } from "../layernorm/index.ts";
import { layerNormRef } from "../layernorm/reference.ts";
import { softmax } from "../softmax/index.ts";
import { softmaxRef } from "../softmax/reference.ts";
import { elementCount, roundF16 } from "../test-values.ts";
import { assertClose, randomArray } from "../testing.ts";
import { rowStrategy } from "./kernel.ts";

const device = await useDevice();

// f16 output: one rounding to half precision (2^-11 relative) on top of the f32 error.
const F16_TOL = { atol: 2e-3, rtol: 1.2e-3 };

// Both code paths run on every adapter: one invocation per row (CPU choice) and teams with
// workgroup-memory reductions (GPU choice), including a team wider than the row.
const STRATEGIES = [
  undefined,
  { threadsPerRow: 1, workgroupSize: 64 },
  { threadsPerRow: 8, workgroupSize: 64 },
  { threadsPerRow: 256, workgroupSize: 256 },
];

describe("rowStrategy", () => {
  it("gives a CPU adapter one invocation per row and a GPU a power-of-two team per row", () => {
    expect(rowStrategy(true, 320)).toEqual({ threadsPerRow: 1, workgroupSize: 64 });
    expect(rowStrategy(false, 1)).toEqual({ threadsPerRow: 1, workgroupSize: 64 });
    expect(rowStrategy(false, 80)).toEqual({ threadsPerRow: 16, workgroupSize: 64 });
    expect(rowStrategy(false, 100_000)).toEqual({ threadsPerRow: 256, workgroupSize: 256 });
  });
});

describe("layerNorm", () => {
  for (const [shape, dtype] of [
    [[2, 7, 5], "f32"], // odd D: scalar path
    [[3, 77, 64], "f32"], // CLIP-like rows, vec4
    [[1, 1, 1], "f32"], // D = 1: output is beta
    [[4, 1283], "f32"],
    [[2, 9, 320], "f16"],
  ] as const) {
    it.skipIf(dtype === "f16" && !device.features.shaderF16)(`${JSON.stringify(shape)} ${dtype}`, async () => {
      const d = shape.at(-1)!;
      let x: Float32Array = randomArray(elementCount(shape), 51, 3).map((v, i) => v + (i % 5));
      if (dtype === "f16") x = roundF16(x);
      const gamma = randomArray(d, 52, 2);
      const beta = randomArray(d, 53);
      const t = Tensor.from(device, x, shape, dtype);
      const [tg, tb] = [Tensor.from(device, gamma, [d]), Tensor.from(device, beta, [d])];
      // Normalised values are O(1)·|gamma| ≤ 2 (+|beta| ≤ 1); f32 sums over D ≤ 1283 lose ~1e-6 relative.
      const tol = dtype === "f16" ? F16_TOL : { atol: 1e-5, rtol: 1e-5 };
      const ref = layerNormRef(x, d, gamma, beta, 1e-5);
      for (const strategy of STRATEGIES) {
        const out = layerNorm(t, tg, tb, { eps: 1e-5, strategy });
        assertClose(await out.toFloat32(), ref, tol, `layerNorm ${JSON.stringify(strategy)}`);
      }
    });
  }

  it("rejects gamma of the wrong length", () => {
    const x = Tensor.zeros(device, [2, 4]);
    const g = Tensor.zeros(device, [3]);
    expect(() => layerNorm(x, g, g, { eps: 1e-5 })).toThrow(/layerNorm: gamma Tensor\(\[3\], f32\) must be \[4\]/);
  });
});

describe("softmax", () => {
  for (const [shape, scale, causal, dtype] of [
    [[3, 5, 7], 1, false, "f32"],
    [[2, 77, 77], 0.125, true, "f32"], // CLIP's causal self-attention scores
    [[1, 4, 9], 1, true, "f32"],
    [[6, 16], 0.3, false, "f32"],
    [[1], 1, false, "f32"],
    [[2, 8, 12], 0.5, true, "f16"],
  ] as const) {
    it.skipIf(dtype === "f16" && !device.features.shaderF16)(
      `${JSON.stringify(shape)} scale ${scale}${causal ? " causal" : ""} ${dtype}`,
      async () => {
        let x = randomArray(elementCount(shape), 61, 8);
        if (dtype === "f16") x = roundF16(x);
        const t = Tensor.from(device, x, shape, dtype);
        // Probabilities ≤ 1: f32 exp (a few ulps) and a sum over ≤ 77 terms give ~1e-6 absolute error.
        const tol = dtype === "f16" ? F16_TOL : { atol: 2e-6, rtol: 1e-5 };
        const ref = softmaxRef(x, shape, scale, causal);
        for (const strategy of STRATEGIES) {
          const got = await softmax(t, { scale, causal, strategy }).toFloat32();
          assertClose(got, ref, tol, `softmax ${JSON.stringify(strategy)}`);
          if (causal) expect(got[1]).toBe(0);
        }
      },
    );
  }

  it("keeps huge logits finite (max subtraction)", async () => {
    const x = Tensor.from(device, [1000, 999, -1000, 0], [4]);
    assertClose(await softmax(x).toFloat32(), softmaxRef([1000, 999, -1000, 0], [4]), { atol: 1e-6 });
  });
});
