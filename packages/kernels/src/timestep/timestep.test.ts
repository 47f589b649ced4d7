import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { assertClose } from "../testing.ts";
import { timestepEmbedding, timestepFrequencies } from "./index.ts";

const device = await useDevice();

/** cat[cos(t·f), sin(t·f)] (+ a zero column for odd dim) in float64 of the float32 products, as torch forms them. */
function timestepRef(ts: number[], dim: number, maxPeriod = 10000): Float32Array {
  const freqs = timestepFrequencies(dim, maxPeriod);
  const half = freqs.length;
  const out = new Float32Array(ts.length * dim);
  ts.forEach((t, b) => {
    for (let i = 0; i < half; i++) {
      const arg = Math.fround(Math.fround(t) * freqs[i]);
      out[b * dim + i] = Math.cos(arg);
      out[b * dim + half + i] = Math.sin(arg);
    }
  });
  return out;
}

describe("timestepFrequencies", () => {
  it("rounds like torch's float32 arange/mul/div (bit patterns from torch 1.13 for dim 320)", () => {
    const f = timestepFrequencies(320, 10000);
    const bits = new Uint32Array(Float32Array.from([f[1], f[7], f[50], f[100], f[159]]).buffer);
    // torch.exp(-math.log(10000) * torch.arange(0, 160, dtype=torch.float32) / 160)[[1, 7, 50, 100, 159]]
    expect(Array.from(bits)).toEqual([1064414713, 1059788950, 1030116801, 995049011, 954082368]);
  });
});

describe("timestepEmbedding", () => {
  // Args reach ~1000 rad: the kernel reduces them mod 2π with a split constant (error ~1e-7), then
  // cos/sin on [−π, π]; lavapipe's are accurate to a few 1e-7, so 2e-6 bounds the whole.
  const tol = { atol: 2e-6 };
  for (const [ts, dim] of [
    [[999, 1, 501], 320], // SD: t in [0, 999], dim = model_channels
    [[0, 0.5, 999.75], 7], // odd dim: zero-padded column; fractional t (k-diffusion samplers)
    [[123], 1], // dim 1: only the pad column
    [[42, 7], 2],
  ] as const) {
    it(`t ${JSON.stringify(ts)}, dim ${dim}`, async () => {
      const out = timestepEmbedding(Tensor.from(device, ts, [ts.length]), dim);
      expect(out.shape).toEqual([ts.length, dim]);
      const got = await out.toFloat32();
      assertClose(got, timestepRef([...ts], dim), tol, "timestep embedding");
      if (dim % 2) for (let b = 0; b < ts.length; b++) expect(got[b * dim + dim - 1]).toBe(0);
    });
  }

  it("matches values torch 1.13 printed for t = 999, dim 320", async () => {
    // torch: timestep_embedding(torch.tensor([999.]), 320)[0, [1, 50, 159, 161, 210, 319]]; torch's expf is
    // 1 ulp off for some frequencies (see the module note), which moves args at t = 999 by up to ~6e-5.
    const got = await timestepEmbedding(Tensor.from(device, [999], [1]), 320).toFloat32();
    const torch = [
      0.8026775121688843, 0.932046115398407, 0.9944063425064087, 0.5964133143424988, -0.36233973503112793,
      0.1056220605969429,
    ];
    assertClose(
      [1, 50, 159, 161, 210, 319].map((i) => got[i]),
      torch,
      { atol: 1e-4 },
      "vs torch",
    );
  });

  it("writes f16 when asked, and rejects a non-[B] t", async () => {
    if (device.features.shaderF16) {
      const out = timestepEmbedding(Tensor.from(device, [10], [1]), 4, { dtype: "f16" });
      expect(out.dtype).toBe("f16");
      assertClose(await out.toFloat32(), timestepRef([10], 4), { atol: 1e-3 }, "f16");
    }
    expect(() => timestepEmbedding(Tensor.zeros(device, [2, 1]), 8)).toThrow(/t Tensor\(\[2, 1\], f32\) must be \[B\]/);
  });
});
