/**
 * f16 storage with f32 arithmetic where the numerics need it: sums that an f16 accumulator would get wrong.
 * f16 holds integers exactly only up to 2048 (2048 + 1 rounds back to 2048) and overflows past 65504, so each
 * case below sums more than that: an f16 accumulator would be off by 2× or give Inf, where f32 sums are exact
 * to well within the f16 output's rounding.
 */
import { f16ArrayToF32, f32ArrayToF16, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, it } from "vitest";
import { attention } from "../attention/index.ts";
import { attentionRef } from "../attention/reference.ts";
import { groupNorm } from "../groupnorm/index.ts";
import { groupNormRef } from "../groupnorm/reference.ts";
import { softmax } from "../softmax/index.ts";
import { softmaxRef } from "../softmax/reference.ts";
import { assertClose, randomArray } from "../testing.ts";

const device = await useDevice();
const roundF16 = (x: Float32Array) => f16ArrayToF32(f32ArrayToF16(x));
/** One rounding of the f16 output (2^-11 relative), near zero an absolute 1e-3. */
const F16_OUT = { atol: 1e-3, rtol: 2 ** -10 };

describe.skipIf(!device.features.shaderF16)("f16 tensors accumulate in f32", () => {
  it("group norm: a group of 32768 values near 3 (sum 98304, over f16's 65504)", async () => {
    const shape = [1, 2, 128, 128];
    const x = roundF16(randomArray(2 * 128 * 128, 1).map((v) => 3 + 0.5 * v));
    const gamma = new Float32Array([1, 0.5]);
    const beta = new Float32Array([0, 0.25]);
    const t = Tensor.from(device, x, shape, "f16");
    const g = Tensor.from(device, gamma, [2], "f16");
    const b = Tensor.from(device, beta, [2], "f16");
    const out = groupNorm(t, g, b, { groups: 1, eps: 1e-5 });
    const got = await out.toFloat32();
    for (const u of [t, g, b, out]) u.dispose();
    // Normalised values reach ~3.5: f16 output rounding 2^-11 · 3.5.
    assertClose(got, groupNormRef(x, shape, gamma, beta, 1, 1e-5), F16_OUT);
  });

  it("softmax: 4096 equal scores give 1/4096 each (an f16 running sum stops at 2048)", async () => {
    const x = new Float32Array(2 * 4096);
    x.set(roundF16(randomArray(4096, 2)), 4096);
    const t = Tensor.from(device, x, [2, 4096], "f16");
    const out = softmax(t);
    const got = await out.toFloat32();
    for (const u of [t, out]) u.dispose();
    // Probabilities near 2.4e-4 are f16 subnormal-free (≥ 6.1e-5): relative rounding only.
    assertClose(got, softmaxRef(x, [2, 4096]), { atol: 1e-7, rtol: 2 ** -10 });
  });

  it("attention: one query over 4096 keys with equal scores averages the values", async () => {
    const dims = { batch: 1, nq: 3, nk: 4096, heads: 1, d: 8 };
    const q = new Float32Array(3 * 8);
    const k = roundF16(randomArray(4096 * 8, 3));
    const v = roundF16(randomArray(4096 * 8, 4).map((x) => x + 1));
    const [tq, tk, tv] = [
      Tensor.from(device, q, [1, 3, 8], "f16"),
      Tensor.from(device, k, [1, 4096, 8], "f16"),
      Tensor.from(device, v, [1, 4096, 8], "f16"),
    ];
    const out = attention(tq, tk, tv, { heads: 1 });
    const got = await out.toFloat32();
    for (const u of [tq, tk, tv, out]) u.dispose();
    assertClose(got, Float32Array.from(attentionRef(q, k, v, dims)), F16_OUT);
  });
});
