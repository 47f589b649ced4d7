import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { elementCount, roundF16 } from "../test-values.ts";
import { assertClose, randomArray } from "../testing.ts";
import { type GroupStrategy, groupNorm, groupNormCoefficients, groupNormInPlace, groupStrategy } from "./index.ts";
import { groupNormRef } from "./reference.ts";

const device = await useDevice();

// Outputs are O(1)·gamma + beta (|·| ≲ 10 here). f32: the group sums are tree reductions or sums of √n-long
// blocks (relative error ~log2(n)·2^-24, resp. 2√n·2^-24, ≲ 1e-6 on mean and variance for these n), which moves
// outputs by ~1e-6·|y|; 1e-5 leaves room.
const F32_TOL = { atol: 1e-5, rtol: 1e-5 };
// f16 output: one rounding to half precision (2^-11 relative) on top.
const F16_TOL = { atol: 2e-3, rtol: 1.2e-3 };

interface Case {
  shape: number[];
  groups: number;
  eps: number;
  silu?: boolean;
  dtype?: "f32" | "f16";
  mean?: number;
  /** Normalise x + shift[b, c] (the ResBlock's timestep embedding, fused). */
  shift?: boolean;
}

const cases: Case[] = [
  { shape: [2, 6, 5, 3], groups: 3, eps: 1e-5 }, // odd spatial: scalar path
  { shape: [1, 64, 8, 8], groups: 32, eps: 1e-6, silu: true }, // vec4 path, SD's 32 groups
  { shape: [1, 32, 7, 9], groups: 32, eps: 1e-6 }, // one channel per group
  { shape: [3, 4], groups: 2, eps: 1e-5, silu: true }, // no spatial dims
  { shape: [1, 8, 1, 1], groups: 4, eps: 1e-5 }, // 2 elements per group
  { shape: [2, 6, 4, 2], groups: 1, eps: 1e-6 }, // one group (LayerNorm-over-CHW)
  { shape: [1, 64, 16, 16], groups: 32, eps: 1e-6, silu: true, dtype: "f16" },
  { shape: [2, 12, 3, 5], groups: 4, eps: 1e-5, dtype: "f16" },
  // |mean| ≫ std: E[x²] − E[x]² in f32 would lose every digit of the variance; two-pass keeps them.
  { shape: [1, 4, 16, 16], groups: 2, eps: 1e-6, mean: 300 },
  { shape: [2, 6, 5, 3], groups: 3, eps: 1e-5, shift: true }, // shift, scalar path, 2 batch items
  { shape: [2, 64, 8, 8], groups: 32, eps: 1e-5, silu: true, shift: true }, // shift, vec4 path
  { shape: [3, 4], groups: 2, eps: 1e-5, shift: true }, // shift without spatial dims
  { shape: [2, 12, 3, 4], groups: 4, eps: 1e-5, silu: true, shift: true, dtype: "f16" },
  { shape: [3, 12, 5, 5], groups: 6, eps: 1e-5, silu: true }, // 18 groups: a CPU workgroup of 8 left part-empty
];

// Both ways of spreading groups over invocations, whatever this adapter would pick.
const strategies: [string, GroupStrategy][] = [
  ["one invocation per group (CPU)", groupStrategy(true)],
  ["a workgroup per group (GPU)", groupStrategy(false)],
];

describe.each(strategies)("groupNorm, %s", (_, strategy) => {
  for (const c of cases) {
    const dtype = c.dtype ?? "f32";
    it.skipIf(dtype === "f16" && !device.features.shaderF16)(
      `${JSON.stringify(c.shape)} groups ${c.groups} eps ${c.eps}${c.silu ? " +silu" : ""}${c.shift ? " +shift" : ""} ${dtype}${c.mean ? ` mean ${c.mean}` : ""}`,
      async () => {
        const channels = c.shape[1];
        let x: Float32Array = randomArray(elementCount(c.shape), 31, 2).map(
          (v, i) => v * (1 + (i % 7)) * (c.mean ? 0.05 : 1) + (c.mean ?? 0.5),
        );
        const gamma = randomArray(channels, 32, 1.5);
        const beta = randomArray(channels, 33, 0.5);
        if (dtype === "f16") x = roundF16(x);
        const tx = Tensor.from(device, x, c.shape, dtype);
        const tg = Tensor.from(device, gamma, [channels]);
        const tb = Tensor.from(device, beta, [channels]);
        // A shift of the size of x's values and larger (|·| ≤ 3), so a misplaced one shows.
        let shift = c.shift ? randomArray(c.shape[0] * channels, 37, 3) : undefined;
        if (shift && dtype === "f16") shift = roundF16(shift);
        const ts = shift && Tensor.from(device, shift, [c.shape[0], channels], dtype);
        const out = groupNorm(tx, tg, tb, { groups: c.groups, eps: c.eps, silu: c.silu, shift: ts, strategy });
        expect(out.shape).toEqual(c.shape);
        expect(out.dtype).toBe(dtype);
        const ref = groupNormRef(x, c.shape, gamma, beta, c.groups, c.eps, c.silu, shift);
        // mean 300 with std 0.05·…: inputs carry 300·2^-24 ≈ 2e-5 absolute rounding, ~1e-4 of the std.
        const tol = dtype === "f16" ? F16_TOL : c.mean ? { atol: 2e-4, rtol: 2e-4 } : F32_TOL;
        const values = await out.toFloat32();
        assertClose(values, ref, tol, "groupNorm");
        // Over x itself: the same bits (each group is read whole before any of it is written).
        groupNormInPlace(tx, tg, tb, { groups: c.groups, eps: c.eps, silu: c.silu, shift: ts, strategy });
        expect(await tx.toFloat32()).toEqual(values);
        for (const t of [tx, tg, tb, out, ...(ts ? [ts] : [])]) t.dispose();
      },
    );
  }
});

describe("groupNorm", () => {
  it.skipIf(!device.features.shaderF16)("takes f16 gamma and beta with f16 x", async () => {
    const shape = [1, 8, 4, 4];
    const x = roundF16(randomArray(elementCount(shape), 34, 3));
    const gamma = roundF16(randomArray(8, 35));
    const beta = roundF16(randomArray(8, 36));
    const out = groupNorm(
      Tensor.from(device, x, shape, "f16"),
      Tensor.from(device, gamma, [8], "f16"),
      Tensor.from(device, beta, [8], "f16"),
      { groups: 4, eps: 1e-5 },
    );
    assertClose(await out.toFloat32(), groupNormRef(x, shape, gamma, beta, 4, 1e-5), F16_TOL);
  });

  it("rejects channels that do not split into the groups, and wrong gamma/beta", () => {
    const x = Tensor.zeros(device, [1, 6, 2, 2]);
    const g = Tensor.zeros(device, [6]);
    const wrong = Tensor.zeros(device, [5]);
    expect(() => groupNorm(x, g, g, { groups: 4, eps: 1e-5 })).toThrow(/6 channels of x .* do not split into 4 groups/);
    expect(() => groupNorm(x, wrong, g, { groups: 3, eps: 1e-5 })).toThrow(/gamma Tensor\(\[5\], f32\) must be \[6\]/);
    expect(() => groupNorm(g, g, g, { groups: 3, eps: 1e-5 })).toThrow(/must be \[B, C, \.\.\.spatial\]/);
    const flatShift = Tensor.zeros(device, [6]);
    expect(() => groupNorm(x, g, g, { groups: 3, eps: 1e-5, shift: flatShift })).toThrow(
      /shift Tensor\(\[6\], f32\) must be \[1, 6\]/,
    );
    expect(() =>
      groupNorm(x, g, g, { groups: 3, eps: 1e-5, strategy: { threadsPerGroup: 4, workgroupSize: 8 } }),
    ).toThrow(/strategy .* must share a group among 1 or all of its invocations/);
  });
});

describe("groupNormCoefficients", () => {
  it("gives (centre, scale, offset) per channel whose affine map is groupNorm's, on both strategies", async () => {
    const shape = [2, 6, 5, 3];
    const [batch, channels] = shape;
    const x = randomArray(elementCount(shape), 21, 2).map((v) => v + 3);
    const gamma = randomArray(channels, 22);
    const beta = randomArray(channels, 23);
    const shift = randomArray(batch * channels, 24);
    const tx = Tensor.from(device, x, shape);
    const tg = Tensor.from(device, gamma, [channels]);
    const tb = Tensor.from(device, beta, [channels]);
    const ts = Tensor.from(device, shift, [batch, channels]);
    const spatial = 15;
    for (const strategy of [groupStrategy(true), groupStrategy(false)]) {
      const options = { groups: 3, eps: 1e-5, shift: ts, strategy };
      const coefficients = groupNormCoefficients(tx, tg, tb, options);
      expect(coefficients.shape).toEqual([batch, channels, 3]);
      const k = await coefficients.toFloat32();
      const mapped = x.map((v, i) => {
        const bc = Math.floor(i / spatial);
        return (v - k[3 * bc]) * k[3 * bc + 1] + k[3 * bc + 2];
      });
      const normed = groupNorm(tx, tg, tb, options);
      assertClose(mapped, await normed.toFloat32(), F32_TOL, JSON.stringify(strategy));
      assertClose(mapped, groupNormRef(x, shape, gamma, beta, 3, 1e-5, false, shift), F32_TOL);
      coefficients.dispose();
      normed.dispose();
    }
    for (const t of [tx, tg, tb, ts]) t.dispose();
  });
});
