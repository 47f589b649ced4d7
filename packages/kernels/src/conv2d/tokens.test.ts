import { f16ArrayToF32, f32ArrayToF16, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { permute } from "../layout/index.ts";
import { fixedSubgroupSize } from "../matmul/index.ts";
import type { TileConfig } from "../matmul/tiles.ts";
import { assertClose, randomArray } from "../testing.ts";
import { conv2d } from "./index.ts";
import { conv2dRef } from "./reference.ts";
import { conv1x1FromTokens, conv1x1ToTokens } from "./tokens.ts";

const device = await useDevice();

/** [B, C, P] → [B, P, C] on the host. */
function transposeLast(data: Float32Array, b: number, c: number, p: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let n = 0; n < b; n++) {
    for (let i = 0; i < c; i++) for (let j = 0; j < p; j++) out[(n * p + j) * c + i] = data[(n * c + i) * p + j];
  }
  return out;
}

/** Both GEMM strategies the adapter can run: lavapipe's subgroup tiles (where the subgroup size is 8), GPU tiles. */
function strategies(): (TileConfig | undefined)[] {
  const workgroup: TileConfig = { kind: "workgroup", tileM: 32, tileN: 32, tileK: 16, threadM: 4, threadN: 4 };
  return fixedSubgroupSize(device) === 8 ? [undefined, workgroup] : [workgroup];
}

interface Case {
  b: number;
  cin: number;
  cout: number;
  h: number;
  w: number;
  bias?: boolean;
  residual?: boolean;
  dtype?: "f32" | "f16";
}

function inputs(c: Case) {
  const round = (v: Float32Array) => (c.dtype === "f16" ? f16ArrayToF32(f32ArrayToF16(v)) : v);
  const p = c.h * c.w;
  return {
    image: round(randomArray(c.b * c.cin * p, 1)),
    weight: round(randomArray(c.cout * c.cin, 2, 0.5)),
    bias: c.bias ? round(randomArray(c.cout, 3)) : undefined,
    residual: c.residual ? round(randomArray(c.b * c.cout * p, 4)) : undefined,
  };
}

/** f32 sums of Cin products against the float64 reference; f16 storage rounds to 2^-11 relative. */
function tolerance(c: Case) {
  return c.dtype === "f16" ? { atol: 2e-3, rtol: 2 ** -10 } : { atol: 2e-6 * Math.sqrt(c.cin + 1) + 1e-6, rtol: 1e-5 };
}

const CASES: Case[] = [
  { b: 2, cin: 5, cout: 6, h: 3, w: 7, bias: true },
  { b: 1, cin: 13, cout: 3, h: 5, w: 5 },
  { b: 3, cin: 8, cout: 9, h: 1, w: 11, bias: true, residual: true },
  { b: 2, cin: 7, cout: 5, h: 4, w: 3, bias: true, residual: true, dtype: "f16" },
];

describe("conv1x1ToTokens", () => {
  it("equals the convolution's output permuted to [B, H·W, C] (odd shapes, both GEMM strategies, f16)", async () => {
    for (const c of CASES) {
      if (c.dtype === "f16" && !device.features.shaderF16) continue;
      const { image, weight, bias } = inputs(c);
      const p = c.h * c.w;
      const want = transposeLast(
        conv2dRef(image, [c.b, c.cin, c.h, c.w], weight, [c.cout, c.cin, 1, 1], { bias }),
        c.b,
        c.cout,
        p,
      );
      const dtype = c.dtype ?? "f32";
      const x = Tensor.from(device, image, [c.b, c.cin, c.h, c.w], dtype);
      const w = Tensor.from(device, weight, [c.cout, c.cin, 1, 1], dtype);
      const tb = bias && Tensor.from(device, bias, [c.cout], dtype);
      for (const gemmTiles of strategies()) {
        const out = conv1x1ToTokens(x, w, { bias: tb }, { gemmTiles });
        expect(out.shape).toEqual([c.b, p, c.cout]);
        assertClose(await out.toFloat32(), want, tolerance(c), `${JSON.stringify(c)} ${JSON.stringify(gemmTiles)}`);
        out.dispose();
      }
      for (const t of [x, w, tb]) t?.dispose();
    }
  });
});

describe("conv1x1FromTokens", () => {
  it("equals the convolution of the tokens laid out as an image, plus the residual", async () => {
    for (const c of CASES) {
      if (c.dtype === "f16" && !device.features.shaderF16) continue;
      const { image, weight, bias, residual } = inputs(c);
      const p = c.h * c.w;
      const conv = conv2dRef(image, [c.b, c.cin, c.h, c.w], weight, [c.cout, c.cin, 1, 1], { bias });
      const want = residual ? conv.map((v, i) => v + residual[i]) : conv;
      const dtype = c.dtype ?? "f32";
      const tokens = Tensor.from(device, transposeLast(image, c.b, c.cin, p), [c.b, p, c.cin], dtype);
      const w = Tensor.from(device, weight, [c.cout, c.cin, 1, 1], dtype);
      const tb = bias && Tensor.from(device, bias, [c.cout], dtype);
      const tr = residual && Tensor.from(device, residual, [c.b, c.cout, c.h, c.w], dtype);
      for (const gemmTiles of strategies()) {
        const out = conv1x1FromTokens(tokens, w, [c.h, c.w], { bias: tb, residual: tr }, { gemmTiles });
        expect(out.shape).toEqual([c.b, c.cout, c.h, c.w]);
        assertClose(await out.toFloat32(), want, tolerance(c), `${JSON.stringify(c)} ${JSON.stringify(gemmTiles)}`);
        out.dispose();
      }
      for (const t of [tokens, w, tb, tr]) t?.dispose();
    }
  });
});

describe("token 1×1 convolutions against the convolution and a permute on the device", () => {
  it("give the same bits: the same products summed over Cin in the same order", async () => {
    const [b, cin, cout, h, w] = [2, 40, 24, 6, 10];
    const x = Tensor.from(device, randomArray(b * cin * h * w, 5), [b, cin, h, w]);
    const weight = Tensor.from(device, randomArray(cout * cin, 6, 0.5), [cout, cin, 1, 1]);
    const bias = Tensor.from(device, randomArray(cout, 7), [cout]);
    const conv = conv2d(x, weight, { bias });
    const twoStep = permute(conv.reshape([b, cout, h * w]), [0, 2, 1]);
    const oneStep = conv1x1ToTokens(x, weight, { bias });
    expect(await oneStep.toFloat32()).toEqual(await twoStep.toFloat32());

    const back = Tensor.from(device, randomArray(cin * cin, 8, 0.5), [cin, cin, 1, 1]);
    const tokens = permute(x.reshape([b, cin, h * w]), [0, 2, 1]);
    const viaImage = conv2d(permute(tokens, [0, 2, 1]).reshape([b, cin, h, w]), back, { residual: x });
    const fromTokens = conv1x1FromTokens(tokens, back, [h, w], { residual: x });
    expect(await fromTokens.toFloat32()).toEqual(await viaImage.toFloat32());
    for (const t of [x, weight, bias, conv, twoStep, oneStep, back, tokens, viaImage, fromTokens]) t.dispose();
  });
});

describe("token 1×1 convolutions refuse", () => {
  it("weights that are not 1×1, and inputs, biases or residuals of the wrong shape, naming them", () => {
    const x = Tensor.zeros(device, [1, 4, 2, 3]);
    const w = Tensor.zeros(device, [5, 4, 1, 1]);
    expect(() => conv1x1ToTokens(x, Tensor.zeros(device, [5, 4, 3, 3]))).toThrow(/weight .* must be a 1×1/);
    expect(() => conv1x1ToTokens(Tensor.zeros(device, [1, 3, 2, 3]), w)).toThrow(/x .* must be \[B, 4, H, W\]/);
    expect(() => conv1x1ToTokens(x, w, { bias: Tensor.zeros(device, [4]) })).toThrow(/bias .* must be \[5\]/);
    const tokens = Tensor.zeros(device, [1, 6, 4]);
    expect(() => conv1x1FromTokens(tokens, w, [3, 3])).toThrow(/tokens .* must be \[B, 9, 4\] \(3×3 pixels/);
    expect(() => conv1x1FromTokens(tokens, w, [2, 3], { residual: Tensor.zeros(device, [1, 5, 3, 2]) })).toThrow(
      /residual .* must be \[1, 5, 2, 3\]/,
    );
  });
});
