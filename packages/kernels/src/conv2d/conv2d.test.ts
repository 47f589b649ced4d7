import { f16ArrayToF32, f32ArrayToF16, Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it, vi } from "vitest";
import { kernelKey } from "../common/kernel.ts";
import { affine } from "../elementwise/index.ts";
import { groupNorm } from "../groupnorm/index.ts";
import { upsampleNearest2x } from "../layout/index.ts";
import type { Activation } from "../matmul/activation.ts";
import { fixedSubgroupSize } from "../matmul/index.ts";
import { assertClose, f32Tol, randomArray, winogradTol } from "../testing.ts";
import { type Conv2dInternals, type Conv2dOptions, conv2d } from "./index.ts";
import { planConv } from "./plan.ts";
import { conv2dRef } from "./reference.ts";
import {
  CONV2D,
  type ConvKernelSpec,
  chooseConvTiles,
  convTileCandidates,
  isConvTiles,
  reductionSlices,
} from "./wgsl.ts";
import {
  setWinogradCacheBudget,
  tileMajorTiles,
  WINOGRAD_CACHE_BYTES,
  WINOGRAD_F4,
  windowedTileMajorTiles,
  winogradApplies,
  winogradCacheStats,
  winogradWeightsKept,
} from "./winograd.ts";

const device = await useDevice();

interface Case {
  x: [number, number, number, number];
  w: [number, number, number, number];
  stride?: number | [number, number];
  padding?: number | [number, number, number, number];
  bias?: boolean;
  residual?: boolean;
  activation?: Activation;
  dtype?: "f32" | "f16";
}

async function check(c: Case, tol: { atol: number; rtol?: number }, internals: Conv2dInternals = {}, seed = 1) {
  const dtype = c.dtype ?? "f32";
  const round = (v: Float32Array) => (dtype === "f16" ? f16ArrayToF32(f32ArrayToF16(v)) : v);
  const x = round(
    randomArray(
      c.x.reduce((p, q) => p * q),
      seed,
    ),
  );
  const w = round(
    randomArray(
      c.w.reduce((p, q) => p * q),
      seed + 1,
      0.5,
    ),
  );
  const bias = c.bias ? round(randomArray(c.w[0], seed + 2)) : undefined;
  const opts = { stride: c.stride, padding: c.padding, activation: c.activation };
  const shape = conv2dRef(new Float32Array(c.x.reduce((p, q) => p * q)), c.x, w, c.w, opts).length;
  const want0 = conv2dRef(x, c.x, w, c.w, { ...opts, bias });
  const residual = c.residual ? round(randomArray(shape, seed + 3)) : undefined;
  const want = residual ? want0.map((v, i) => v + residual[i]) : want0;
  const tx = Tensor.from(device, x, c.x, dtype);
  const tw = Tensor.from(device, w, c.w, dtype);
  const tb = bias && Tensor.from(device, bias, [c.w[0]], dtype);
  const out0 = conv2d(tx, tw, { ...opts, bias: tb } as Conv2dOptions, internals);
  const tr = residual && Tensor.from(device, residual, out0.shape, dtype);
  const out = tr ? conv2d(tx, tw, { ...opts, bias: tb, residual: tr } as Conv2dOptions, internals) : out0;
  const got = await out.toFloat32();
  for (const t of [tx, tw, tb, tr, out0, out]) t?.dispose();
  assertClose(got, want, tol, JSON.stringify(c));
}

describe("chooseConvTiles", () => {
  it("shares weights across a subgroup on CPU adapters, reads them per invocation elsewhere", () => {
    const cpu = { isCpu: true, subgroupSize: 8, maxInvocations: 1024, cout: 320, wo: 64, ho: 64, batch: 2 };
    // 20 channel tiles of 16: 4 workgroups of 5 subgroups (8 would cover 24).
    expect(chooseConvTiles(cpu)).toEqual({ kind: "subgroup", lanes: 8, subgroups: 5, rows: 16, groups: 2 });
    expect(chooseConvTiles({ ...cpu, wo: 3 })).toMatchObject({ groups: 1 });
    expect(chooseConvTiles({ ...cpu, cout: 3 })).toMatchObject({ subgroups: 1 });
    expect(chooseConvTiles({ ...cpu, cout: 20 })).toMatchObject({ subgroups: 2 });
    // Small images: few enough subgroups per workgroup for lavapipe's threads to share the work. 128 channels at
    // 4×4 × 2 images are 8 channel tiles × one tile of 8 pixel blocks; SD's 1280 at 8×8, 80 × 2.
    expect(chooseConvTiles({ ...cpu, cout: 128, wo: 4, ho: 4 })).toMatchObject({ subgroups: 1, groups: 1 });
    expect(chooseConvTiles({ ...cpu, cout: 1280, wo: 8, ho: 8 })).toMatchObject({ subgroups: 8, groups: 2 });
    expect(chooseConvTiles({ ...cpu, cout: 512, wo: 8, ho: 8 })).toMatchObject({ subgroups: 4 });
    expect(chooseConvTiles({ ...cpu, isCpu: false })).toMatchObject({ kind: "plain", rows: 8 });
    expect(chooseConvTiles({ ...cpu, isCpu: false, cout: 4 })).toMatchObject({ kind: "plain", rows: 4 });
    expect(chooseConvTiles({ ...cpu, subgroupSize: null })).toMatchObject({ kind: "plain", rows: 4 });
  });
});

describe("convTileCandidates", () => {
  const lanes = fixedSubgroupSize(device);
  const cpu = { isCpu: true, subgroupSize: lanes ?? 8, maxInvocations: 1024, cout: 20, wo: 9, ho: 5, batch: 1 };
  const candidates = [...convTileCandidates(cpu), ...convTileCandidates({ ...cpu, isCpu: false })];

  it("starts with the heuristic's choice and offers configs the kernel accepts", () => {
    expect(candidates[0]).toEqual(chooseConvTiles(cpu));
    expect(candidates.every(isConvTiles)).toBe(true);
    expect(convTileCandidates({ ...cpu, wo: 3 }).every((t) => t.groups === 1)).toBe(true);
    expect(isConvTiles({ kind: "subgroup", lanes: 8, subgroups: 1, rows: 12, groups: 1 })).toBe(false);
  });

  // The CPU candidates are written for this device's subgroup width; the direct kernel is forced (Winograd, which
  // ignores conv tiles, takes this small image once its transformed weights are kept).
  it.skipIf(lanes === null)("every candidate, CPU and GPU, matches the reference", async () => {
    for (const tiles of new Map(candidates.map((c) => [JSON.stringify(c), c])).values()) {
      await check({ x: [1, 3, 5, 9], w: [20, 3, 3, 3], padding: 1, bias: true }, f32Tol(27), {
        algorithm: "direct",
        tiles,
      });
    }
  });

  it.skipIf(lanes === null)("refuses broadcast tiles of another subgroup width, naming both", async () => {
    const other = lanes === 8 ? 16 : 8;
    const tiles = { ...chooseConvTiles(cpu), lanes: other };
    const internals = { algorithm: "direct" as const, tiles };
    await expect(check({ x: [1, 3, 5, 9], w: [20, 3, 3, 3], padding: 1 }, f32Tol(27), internals)).rejects.toThrow(
      new RegExp(
        `conv2d: tiles .* are written for ${other}-lane subgroups, but this device's subgroups have ${lanes} lanes`,
      ),
    );
  });
});

describe("convKey", () => {
  it("changes with every field of the kernel spec (the pipeline cache key)", () => {
    const base: ConvKernelSpec = {
      tiles: { kind: "subgroup", lanes: 8, subgroups: 2, rows: 8, groups: 2 },
      kh: 3,
      kw: 3,
      strideH: 1,
      strideW: 1,
      padTop: 1,
      padLeft: 1,
      x: "f32",
      w: "f32",
      out: "f32",
      bias: null,
      residual: null,
      activation: "none",
      vecOut: false,
      vecRow: false,
    };
    const variants: ConvKernelSpec[] = [
      base,
      { ...base, tiles: { kind: "subgroup", lanes: 4, subgroups: 2, rows: 8, groups: 2 } },
      { ...base, tiles: { kind: "subgroup", lanes: 8, subgroups: 4, rows: 8, groups: 2 } },
      { ...base, tiles: { kind: "subgroup", lanes: 8, subgroups: 2, rows: 16, groups: 2 } },
      { ...base, tiles: { kind: "subgroup", lanes: 8, subgroups: 2, rows: 8, groups: 4 } },
      { ...base, tiles: { kind: "plain", rows: 8, groups: 2, pixelLanes: 8, channelGroups: 2 } },
      { ...base, tiles: { kind: "plain", rows: 8, groups: 2, pixelLanes: 16, channelGroups: 2 } },
      { ...base, tiles: { kind: "plain", rows: 8, groups: 2, pixelLanes: 8, channelGroups: 4 } },
      { ...base, kh: 1 },
      { ...base, kw: 1 },
      { ...base, strideH: 2 },
      { ...base, strideW: 2 },
      { ...base, padTop: 0 },
      { ...base, padLeft: 0 },
      { ...base, x: "f16" },
      { ...base, w: "f16" },
      { ...base, out: "f16" },
      { ...base, bias: "f32" },
      { ...base, residual: "f32" },
      { ...base, activation: "silu" },
      { ...base, vecOut: true },
      { ...base, vecRow: true },
    ];
    expect(new Set(variants.map((v) => kernelKey(CONV2D, v))).size).toBe(variants.length);
  });
});

describe("planConv", () => {
  const g = { batch: 2, cin: 6, cout: 5, inPlane: 100, outPlane: 64, taps: 9, bytes: { x: 4, w: 4, out: 4 } };
  it("is one piece when everything fits, else splits input and output channels", () => {
    expect(planConv("t", g, { maxBindingBytes: 1 << 20, offsetAlignment: 256 })).toHaveLength(1);
    const pieces = planConv("t", g, { maxBindingBytes: 1024, offsetAlignment: 256 });
    expect(pieces.every((p) => p.x.byteSize <= 1024 && p.w.byteSize <= 1024 && p.out.byteSize <= 1024)).toBe(true);
    const first = pieces.filter((p) => p.b0 === 0 && p.co0 === 0);
    expect(first.map((p) => [p.ci0, p.accumulate, p.finalize])).toEqual(
      first.map((p, i) => [p.ci0, i > 0, i === first.length - 1]),
    );
    expect(first.map((p) => p.ci1 - p.ci0).reduce((a, b) => a + b)).toBe(6);
  });
  it("names an operand that does not fit even one channel", () => {
    expect(() => planConv("t", { ...g, inPlane: 1000 }, { maxBindingBytes: 1024, offsetAlignment: 256 })).toThrow(
      /'x' does not fit/,
    );
  });
});

const plain: Conv2dInternals = { tiles: { kind: "plain", rows: 4, groups: 1, pixelLanes: 16, channelGroups: 4 } };

// Each geometry compiles its own pipeline (about a second on lavapipe): few, chosen to cover odd sizes,
// both strides, asymmetric padding, size-1 dimensions and vector or scalar output access.
describe("conv2d with the device's kernel", () => {
  it("matches the reference on odd shapes, strides and paddings", async () => {
    await check({ x: [2, 3, 5, 7], w: [5, 3, 3, 3], padding: 1 }, f32Tol(27));
    // The VAE Downsample: pad (0, 1, 0, 1), 3×3, stride 2, no other padding; one output channel.
    await check({ x: [1, 4, 9, 11], w: [1, 4, 3, 3], stride: 2, padding: [0, 1, 0, 1] }, f32Tol(36));
    await check({ x: [1, 2, 6, 9], w: [17, 2, 1, 3], stride: [1, 2], padding: [0, 0, 2, 1] }, f32Tol(6));
    // W a multiple of 4 with stride 1 reads the input columns under 4 pixels as one vector; no padding
    // leaves Wo = 6 (scalar stores), and the last block's vector still lies inside the row.
    await check({ x: [1, 3, 5, 8], w: [3, 3, 3, 3] }, f32Tol(27));
    // Row-vector reads with a last pixel block that runs past the row (W = 40, 20: not multiples of the
    // 16 pixels a lane covers): the right padding column must read as zero, not as clamped data.
    await check({ x: [1, 3, 6, 40], w: [4, 3, 3, 3], padding: 1 }, f32Tol(27));
    await check({ x: [1, 2, 3, 20], w: [9, 2, 3, 3], padding: 1, bias: true }, f32Tol(18));
    // 1×1 runs as a matmul (the 1×3 kernel above covers a 1-row kernel on the direct one).
    await check({ x: [2, 5, 3, 7], w: [6, 5, 1, 1] }, f32Tol(5));
  });

  it("fuses bias, activation and residual, with vector output rows", async () => {
    await check(
      { x: [1, 6, 8, 8], w: [20, 6, 3, 3], padding: 1, bias: true, residual: true, activation: "silu" },
      { atol: f32Tol(54).atol + 1e-6, rtol: 1e-5 },
    );
    await check({ x: [2, 5, 4, 8], w: [6, 5, 1, 1], bias: true, residual: true, activation: "gelu" }, f32Tol(5));
    // A subgroup's pixel blocks span images (4 per 4×4 image, and stride 2 from 7×7): each lane's own batch item.
    await check({ x: [3, 4, 4, 4], w: [9, 4, 3, 3], padding: 1, bias: true, residual: true }, f32Tol(36));
    await check({ x: [3, 2, 7, 7], w: [5, 2, 3, 3], stride: 2, padding: 1, residual: true }, f32Tol(18));
  });

  it.skipIf(!device.features.shaderF16)("stores and reads f16", async () => {
    // Inputs are f16-rounded for the reference too; the f16 output rounds to 2^-11 relative.
    await check(
      { x: [1, 3, 7, 5], w: [4, 3, 3, 3], padding: 1, bias: true, dtype: "f16" },
      { atol: 2e-3, rtol: 2 ** -10 },
    );
    // W a multiple of 4: the row vectors are read as packed halves (vec2<u32>).
    await check(
      { x: [1, 3, 5, 12], w: [18, 3, 3, 3], padding: 1, bias: true, residual: true, dtype: "f16" },
      { atol: 2e-3, rtol: 2 ** -10 },
    );
  });

  it("rejects bad geometry by name", () => {
    const x = Tensor.zeros(device, [1, 3, 4, 4]);
    expect(() => conv2d(x, Tensor.zeros(device, [2, 4, 3, 3]))).toThrow(/4 input channels but x .* has 3/);
    expect(() => conv2d(x, Tensor.zeros(device, [2, 3, 5, 5]))).toThrow(/5×5 kernel does not fit/);
    expect(() => conv2d(x, Tensor.zeros(device, [2, 3, 3, 3]), { stride: 0 })).toThrow(/stride must be an integer ≥ 1/);
    expect(() => conv2d(x, Tensor.zeros(device, [2, 3, 3, 3]), { padding: [1, 1] as never })).toThrow(/padding/);
    expect(() => conv2d(x, Tensor.zeros(device, [2, 3, 3, 3]), { bias: Tensor.zeros(device, [3]) })).toThrow(
      /bias .* \[2\]/,
    );
    x.dispose();
  });
});

describe("conv2d with per-invocation weights (GPUs)", () => {
  it("matches the reference", async () => {
    await check({ x: [2, 3, 5, 7], w: [5, 3, 3, 3], padding: 1, bias: true, residual: true }, f32Tol(27), plain);
    await check({ x: [1, 4, 9, 11], w: [1, 4, 3, 3], stride: 2, padding: [0, 1, 0, 1] }, f32Tol(36), plain);
  });
});

describe("reductionSlices", () => {
  it("splits the reduction on GPUs when a convolution has too few invocations, in slices of ≥ 32 channels", () => {
    const gpu = { isCpu: false, cin: 1280, invocations: 320 * 128 }; // 1280 → 1280 @ 16×16, batch 2, 4 × 4 each
    expect(reductionSlices(gpu)).toBe(6);
    expect(reductionSlices({ ...gpu, invocations: 320 * 32 })).toBe(8);
    expect(reductionSlices({ ...gpu, invocations: 1 << 18 })).toBe(1);
    expect(reductionSlices({ ...gpu, cin: 64, invocations: 100 })).toBe(2);
    expect(reductionSlices({ ...gpu, cin: 40 })).toBe(1);
    expect(reductionSlices({ ...gpu, isCpu: true })).toBe(1);
  });
});

describe("conv2d with its reduction in slices", () => {
  it("sums the slices, then adds bias, activation and residual, on every tile kind", async () => {
    const kinds: Conv2dInternals[] = [{}, plain];
    for (const [i, internals] of kinds.entries()) {
      // 7 input channels in 3 slices of 3 (the last short); Wo = 7: scalar stores.
      const odd = { x: [2, 7, 5, 7], w: [5, 7, 3, 3], padding: 1, bias: true, residual: true, activation: "silu" };
      await check(odd as Case, f32Tol(63), { ...internals, slices: 3 }, 10 + i);
      // More slices than channels: empty slices add zeros. Wo = 8: vector stores; stride 2.
      await check({ x: [1, 3, 9, 16], w: [6, 3, 3, 3], stride: 2, padding: 1, bias: true }, f32Tol(27), {
        ...internals,
        slices: 5,
      });
    }
  });

  it.skipIf(!device.features.shaderF16)("keeps f32 partial sums for an f16 output", async () => {
    await check(
      { x: [1, 8, 5, 12], w: [6, 8, 3, 3], padding: 1, bias: true, residual: true, dtype: "f16" },
      { atol: 2e-3, rtol: 2 ** -10 },
      { slices: 4 },
    );
  });
});

describe("conv2d over split bindings", () => {
  it("splits input channels (accumulating), output channels and batch items", async () => {
    const limits = { maxBindingBytes: 1024, offsetAlignment: 256 };
    if (fixedSubgroupSize(device) !== null) {
      await check({ x: [2, 5, 7, 6], w: [6, 5, 3, 3], padding: 1, bias: true, residual: true }, f32Tol(45), {
        bindingLimits: limits,
      });
    }
    // The 1×1 path splits as a matmul.
    await check({ x: [2, 5, 7, 6], w: [6, 5, 1, 1], bias: true }, f32Tol(5), { bindingLimits: limits });
  });

  it("convolves an input larger than maxStorageBufferBindingSize", async () => {
    const max = device.limits.maxStorageBufferBindingSize;
    const cin = 5;
    const side = Math.ceil(Math.sqrt(max / (cin * 4))) + 3; // x [1, 5, side, side] f32 just over one binding
    const x = randomArray(cin * side * side, 31);
    const w = randomArray(cin * 9, 32, 0.5);
    const tx = Tensor.from(device, x, [1, cin, side, side]);
    const tw = Tensor.from(device, w, [1, cin, 3, 3]);
    expect(tx.byteLength).toBeGreaterThan(max);
    const y = conv2d(tx, tw, { padding: 1 });
    const got = await y.toFloat32();
    for (const t of [tx, tw, y]) t.dispose();
    // The reference on a band of rows at the top, the middle and the bottom (the whole would take seconds).
    for (const r0 of [0, Math.floor(side / 2), side - 6]) {
      const band = new Float32Array(cin * 8 * side);
      const lo = Math.max(0, r0 - 1);
      const hi = Math.min(side, r0 + 7);
      for (let ci = 0; ci < cin; ci++) {
        band.set(x.subarray((ci * side + lo) * side, (ci * side + hi) * side), ci * (hi - lo) * side);
      }
      // Padding the band like the image: zero rows only at the image's own edges.
      const want = conv2dRef(band.subarray(0, cin * (hi - lo) * side), [1, cin, hi - lo, side], w, [1, cin, 3, 3], {
        padding: [r0 === 0 ? 1 : 0, hi === side ? 1 : 0, 1, 1],
      });
      const rows = want.length / side;
      assertClose(got.subarray(r0 * side, (r0 + rows) * side), want, f32Tol(45), `rows from ${r0}`);
    }
  });
});

describe("conv2d by Winograd F(4×4, 3×3)", () => {
  it("has matrices that compute a 1-D correlation of 4 outputs from 6 inputs", () => {
    const apply = (m: readonly (readonly number[])[], v: readonly number[]) =>
      m.map((row) => row.reduce((s: number, c: number, k: number) => s + c * v[k], 0));
    const d = [0.3, -1.2, 2.5, 0.7, -0.4, 1.9];
    const g = [0.5, -0.25, 1.5];
    const Gg = apply(WINOGRAD_F4.G, g);
    const Bd = apply(WINOGRAD_F4.BT, d);
    const y = apply(
      WINOGRAD_F4.AT,
      Gg.map((v, k) => v * Bd[k]),
    );
    const want = [0, 1, 2, 3].map((i) => g.reduce((s, gk, k) => s + gk * d[i + k], 0));
    for (const [i, v] of y.entries()) expect(v).toBeCloseTo(want[i], 12);
  });

  const winograd: Conv2dInternals = { algorithm: "winograd" };
  // Tiles that read B through uniform windows make the GEMMs tile-major at sizes a test can afford.
  const lanes8 = fixedSubgroupSize(device) === 8;
  const tileMajor: Conv2dInternals = {
    ...winograd,
    gemmTiles: { kind: "subgroup", lanes: 8, subgroups: 2, rows: 16, laneOwns: "n", cols: 1, uniformB: true },
  };
  const storageTiles = {
    kind: "subgroup",
    lanes: 8,
    subgroups: 2,
    rows: 8,
    laneOwns: "n",
    cols: 2,
    uniformB: false,
  } as const;

  it("matches the reference on odd shapes, with the epilogue, scalar and vector stores", async () => {
    const epilogue = { bias: true, residual: true, activation: "silu" as const };
    // Wo = 11: partial tiles at the right and bottom edges, scalar stores; batch 2.
    await check({ x: [2, 5, 13, 11], w: [17, 5, 3, 3], padding: 1, ...epilogue }, winogradTol(45), winograd);
    // Asymmetric padding (Ho = 7, Wo = 10): tiles start off the image at the left only.
    await check({ x: [1, 3, 9, 10], w: [6, 3, 3, 3], padding: [0, 1, 2, 0], ...epilogue }, winogradTol(27), winograd);
    // Wo = 12: vector stores and residual reads.
    await check({ x: [1, 6, 9, 12], w: [16, 6, 3, 3], padding: 1, ...epilogue }, winogradTol(54), winograd);
  });

  it("splits input and output channels over bindings, tiles into bands, weights into channel groups", async () => {
    // 1920-byte planes in 4096-byte bindings: one channel of x, out and the residual per dispatch; V and M of
    // two tile rows per band (three bands of 6 tiles).
    const limits = { maxBindingBytes: 4096, offsetAlignment: 256 };
    await check(
      { x: [2, 2, 20, 24], w: [2, 2, 3, 3], padding: 1, bias: true, residual: true, activation: "silu" },
      winogradTol(18),
      { ...winograd, bindingLimits: limits },
    );
    // 16 output channels × 2 inputs × 36 positions of f32 are 4608 bytes: weights transformed 14 channels at a time.
    await check({ x: [1, 2, 4, 4], w: [16, 2, 3, 3], padding: 1, bias: true }, winogradTol(18), {
      ...winograd,
      bindingLimits: limits,
    });
  });

  it("takes all images of a batch together where they fit one binding, with the bits of image by image", async () => {
    // x [3, 2, 14, 12] f32 is 4032 bytes: whole in the default bindings (all images in one pass of each kernel), not
    // in 4096-byte ones with their offset alignment (image by image; one image's x, output and band still fit).
    const x = Tensor.from(device, randomArray(3 * 2 * 14 * 12, 31), [3, 2, 14, 12]);
    const w = Tensor.from(device, randomArray(4 * 2 * 9, 32), [4, 2, 3, 3]);
    const bias = Tensor.from(device, randomArray(4, 33), [4]);
    const residual = Tensor.from(device, randomArray(3 * 4 * 14 * 12, 34), [3, 4, 14, 12]);
    const options = { padding: 1, bias, residual, activation: "silu" as const };
    const dispatches = vi.spyOn(device, "dispatch");
    const together = conv2d(x, w, options, winograd);
    // The weight transform, then one input transform, GEMM and output transform for all images, or for each.
    expect(dispatches).toHaveBeenCalledTimes(4);
    dispatches.mockClear();
    const apart = conv2d(x, w, options, {
      ...winograd,
      bindingLimits: { maxBindingBytes: 4096, offsetAlignment: 256 },
    });
    expect(dispatches.mock.calls.length).toBeGreaterThanOrEqual(10);
    dispatches.mockRestore();
    const direct = conv2d(x, w, options, { algorithm: "direct" });
    const [a, b, d] = await Promise.all([together, apart, direct].map((t) => t.toFloat32()));
    expect(a).toEqual(b);
    assertClose(a, d, winogradTol(18));
    for (const t of [x, w, bias, residual, together, apart, direct]) t.dispose();
  });

  it.skipIf(!device.features.shaderF16)("reads f16 weights and inputs and stores f16", async () => {
    await check(
      { x: [1, 3, 9, 12], w: [16, 3, 3, 3], padding: 1, bias: true, residual: true, dtype: "f16" },
      { atol: 2e-3, rtol: 2 ** -10 },
      winograd,
    );
  });

  it.skipIf(!lanes8)("runs the GEMMs tile-major, the weights in uniform windows, on odd shapes and bands", async () => {
    const epilogue = { bias: true, residual: true, activation: "silu" as const };
    // 37 output channels: two windows of 32 columns, the second mostly padding; batch 2 together; partial tiles.
    await check({ x: [2, 5, 13, 11], w: [37, 5, 3, 3], padding: 1, ...epilogue }, winogradTol(45), tileMajor);
    // 600 input channels: two windows of 300 steps, the second accumulating through M.
    await check({ x: [1, 600, 6, 8], w: [20, 600, 3, 3], padding: 1, bias: true }, winogradTol(5400), tileMajor);
    // Bands of two tile rows, channel ranges of x and of the output over 4096-byte bindings, images one by one.
    const limits = { maxBindingBytes: 4096, offsetAlignment: 256 };
    await check({ x: [2, 2, 20, 24], w: [2, 2, 3, 3], padding: 1, ...epilogue }, winogradTol(18), {
      ...tileMajor,
      bindingLimits: limits,
    });
  });

  it("keeps the GEMMs channel-major where the heuristic's tiles read windows; forced tile-major takes 64 channels a window", () => {
    const heuristic = { kind: "subgroup", lanes: 8, subgroups: 8, rows: 24, laneOwns: "n", cols: 1 } as const;
    // 128 channels at 512²: bands of 28 tile rows.
    const band = { M: 3584, N: 128, K: 128, windowSets: 36 };
    expect(tileMajorTiles({ ...heuristic, uniformB: true }, band)).toBeNull();
    expect(windowedTileMajorTiles({ ...heuristic, uniformB: true }, band)).toEqual({
      ...heuristic,
      subgroups: 4,
      rows: 16,
      cols: 2,
      uniformB: true,
    });
    expect(windowedTileMajorTiles({ ...heuristic, uniformB: false }, band)).toBeNull();
    // 36 × 20 × 5 windows of 64 columns × 256 steps are over the limit.
    expect(windowedTileMajorTiles({ ...heuristic, uniformB: true }, { ...band, N: 1280, K: 1280 })).toBeNull();
    expect(windowedTileMajorTiles({ ...heuristic, lanes: 16, rows: 32, uniformB: true }, band)).toMatchObject({
      rows: 16,
    });
    const workgroup = { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 4 } as const;
    expect(tileMajorTiles(workgroup, band)).toBeNull();
    expect(windowedTileMajorTiles(workgroup, band)).toBeNull();
  });

  it("takes tile-major GEMMs from storage where a band has fewer tiles than a channel-major subgroup's columns", () => {
    // 8×8 at batch 2: 8 tiles, broadcast as 8 rows, where channel-major lanes would own 32 tile columns.
    const heuristic = { kind: "subgroup", lanes: 8, subgroups: 2, rows: 8, laneOwns: "n", cols: 1 } as const;
    const band = { M: 8, N: 128, K: 128, windowSets: 36 };
    const storage = { ...heuristic, uniformB: false };
    expect(tileMajorTiles(storage, band)).toEqual(storage);
    expect(tileMajorTiles(storage, { ...band, M: 31 })).toEqual(storage);
    expect(tileMajorTiles(storage, { ...band, M: 32 })).toBeNull();
    expect(tileMajorTiles({ ...storage, lanes: 16, rows: 16 }, { ...band, M: 32 })).toMatchObject({ lanes: 16 });
    expect(tileMajorTiles({ ...storage, laneOwns: "m" }, band)).toBeNull();
  });

  it.skipIf(!lanes8)("runs tile-major GEMMs from storage on odd shapes, with storage tiles of 8 rows", async () => {
    const epilogue = { bias: true, residual: true, activation: "silu" as const };
    // 2 images of 2 × 2 partial tiles (8 columns) and 37 output channels: two groups of owned columns, one partial.
    await check({ x: [2, 5, 7, 6], w: [37, 5, 3, 3], padding: 1, ...epilogue }, winogradTol(45), winograd);
    await check({ x: [1, 9, 5, 8], w: [20, 9, 3, 3], padding: 1, bias: true }, winogradTol(81), {
      ...winograd,
      gemmTiles: storageTiles,
    });
  });

  it("keeps the transformed weights across calls while w is unchanged, with the bits of transforming them", async () => {
    const limits = { maxBindingBytes: 128 << 20, offsetAlignment: 256 };
    const shape = [2, 5, 8, 8];
    const x = Tensor.from(device, randomArray(2 * 5 * 8 * 8, 51), shape);
    const w = Tensor.from(device, randomArray(20 * 5 * 9, 52, 0.5), [20, 5, 3, 3]);
    const run = () => conv2d(x, w, { padding: 1 }, winograd);
    const outputs: Tensor[] = [];
    const dispatches = vi.spyOn(device, "dispatch");
    const count = (f: () => Tensor) => {
      const before = dispatches.mock.calls.length;
      outputs.push(f());
      return dispatches.mock.calls.length - before;
    };
    try {
      setWinogradCacheBudget(device, 0);
      expect(winogradWeightsKept(w, limits)).toBe(false);
      const transformed = count(run);
      expect(winogradCacheStats(device)).toMatchObject({ entries: 0, bytes: 0 });
      setWinogradCacheBudget(device, WINOGRAD_CACHE_BYTES);
      expect(winogradWeightsKept(w, limits)).toBe(true);
      // The first call transforms and keeps them (36 positions × 20 × 5 f32), the second skips the transform.
      expect(count(run)).toBe(transformed);
      expect(winogradCacheStats(device)).toMatchObject({ entries: 1, bytes: 36 * 20 * 5 * 4 });
      expect(count(run)).toBe(transformed - 1);
      const [fresh, first, kept] = await Promise.all(outputs.map((t) => t.toFloat32()));
      expect(first).toEqual(fresh);
      expect(kept).toEqual(fresh);
      // New values in w make the entry stale: transformed again, and the output is the new weights'.
      const w2 = randomArray(20 * 5 * 9, 53, 0.5);
      device.write(w.buffer, 0, w2);
      expect(count(run)).toBe(transformed);
      const want = conv2dRef(randomArray(2 * 5 * 8 * 8, 51), [2, 5, 8, 8], w2, [20, 5, 3, 3], { padding: 1 });
      assertClose(await outputs[3].toFloat32(), want, winogradTol(45));
      // A disposed weight's entry is dropped at the next miss.
      const other = () => Tensor.from(device, randomArray(20 * 5 * 9, 54, 0.5), [20, 5, 3, 3]);
      const [w3, w4] = [other(), other()];
      conv2d(x, w3, { padding: 1 }, winograd).dispose();
      expect(winogradCacheStats(device).entries).toBe(2);
      w3.dispose();
      conv2d(x, w4, { padding: 1 }, winograd).dispose();
      expect(winogradCacheStats(device)).toMatchObject({ entries: 2, bytes: 2 * 36 * 20 * 5 * 4 });
      w4.dispose();
      // Too small a budget keeps nothing.
      setWinogradCacheBudget(device, 36 * 20 * 5 * 4 - 4);
      expect(winogradCacheStats(device).entries).toBe(0);
      expect(winogradWeightsKept(w, limits)).toBe(false);
    } finally {
      dispatches.mockRestore();
      setWinogradCacheBudget(device, WINOGRAD_CACHE_BYTES);
      for (const t of [x, w, ...outputs]) t.dispose();
    }
  });

  it.skipIf(!device.info.isCpu)("is chosen at 8×8 while the transformed weights are kept, at 4×4 not", async () => {
    const labels = (x: [number, number, number, number]) => {
      const dispatches = vi.spyOn(device, "dispatch");
      const xt = Tensor.from(
        device,
        randomArray(
          x.reduce((p, q) => p * q),
          61,
        ),
        x,
      );
      const w = Tensor.from(device, randomArray(16 * x[1] * 9, 62, 0.5), [16, x[1], 3, 3]);
      conv2d(xt, w, { padding: 1 }).dispose();
      const names = dispatches.mock.calls.map(([d]) => d.pipeline.label.split(":")[0]);
      dispatches.mockRestore();
      xt.dispose();
      w.dispose();
      return names;
    };
    expect(labels([2, 3, 8, 8])).toContain("winograd-input");
    expect(labels([2, 3, 4, 4])).toEqual(["conv2d"]);
    setWinogradCacheBudget(device, 0);
    try {
      expect(labels([2, 3, 8, 8])).toEqual(["conv2d"]);
    } finally {
      setWinogradCacheBudget(device, WINOGRAD_CACHE_BYTES);
    }
    // The path's output at 8×8 by the heuristic (the same bits as forcing it: tested above).
    await check({ x: [2, 3, 8, 8], w: [16, 3, 3, 3], padding: 1, bias: true }, winogradTol(27));
  });

  it.skipIf(!lanes8)("runs the GEMMs channel-major by the heuristic on an image of 400 tiles", async () => {
    await check({ x: [1, 3, 80, 80], w: [5, 3, 3, 3], padding: 1, bias: true }, winogradTol(27), winograd);
    // The same bits as channel-major forced, in fewer dispatches than tile-major through windows (36 and more).
    const x = Tensor.from(device, randomArray(3 * 80 * 80, 51), [1, 3, 80, 80]);
    const w = Tensor.from(device, randomArray(5 * 3 * 9, 52), [5, 3, 3, 3]);
    const dispatches = vi.spyOn(device, "dispatch");
    const heuristic = conv2d(x, w, { padding: 1 }, winograd);
    const heuristicDispatches = dispatches.mock.calls.length;
    dispatches.mockClear();
    const windowed = conv2d(x, w, { padding: 1 }, tileMajor);
    const windowedDispatches = dispatches.mock.calls.length;
    dispatches.mockRestore();
    const channelMajor = conv2d(x, w, { padding: 1 }, { ...winograd, gemmTiles: { ...storageTiles, cols: 1 } });
    expect(heuristicDispatches).toBeLessThan(36);
    expect(windowedDispatches).toBeGreaterThanOrEqual(36);
    const [a, b] = await Promise.all([heuristic, channelMajor].map((t) => t.toFloat32()));
    expect(a).toEqual(b);
    for (const t of [x, w, heuristic, windowed, channelMajor]) t.dispose();
  });

  it.skipIf(!lanes8)("gives channel-major's bits tile-major, a dispatch per position and window", async () => {
    const x = Tensor.from(device, randomArray(2 * 19 * 12 * 9, 41), [2, 19, 12, 9]);
    const w = Tensor.from(device, randomArray(37 * 19 * 9, 42), [37, 19, 3, 3]);
    const bias = Tensor.from(device, randomArray(37, 43), [37]);
    const residual = Tensor.from(device, randomArray(2 * 37 * 12 * 9, 44), [2, 37, 12, 9]);
    const options = { padding: 1, bias, residual };
    const dispatches = vi.spyOn(device, "dispatch");
    const windowed = conv2d(x, w, options, tileMajor);
    // Weight transform, input transform, U packed into windows, 36 positions × 2 windows of 32 output channels,
    // output transform.
    expect(dispatches).toHaveBeenCalledTimes(4 + 36 * 2);
    dispatches.mockRestore();
    // Tiles from storage make them channel-major.
    const channelMajor = conv2d(x, w, options, { ...winograd, gemmTiles: { ...storageTiles, cols: 1 } });
    // 18 tiles, fewer than a channel-major subgroup's 32 columns: the heuristic's are tile-major from storage.
    const heuristic = conv2d(x, w, options, winograd);
    const [a, b, c] = await Promise.all([windowed, channelMajor, heuristic].map((t) => t.toFloat32()));
    expect(a).toEqual(b);
    expect(c).toEqual(b);
    for (const t of [x, w, bias, residual, windowed, channelMajor, heuristic]) t.dispose();
  });

  it("refuses a forced Winograd path for other kernels and strides", () => {
    const x = Tensor.zeros(device, [1, 2, 8, 8]);
    expect(() => conv2d(x, Tensor.zeros(device, [2, 2, 3, 3]), { stride: 2 }, winograd)).toThrow(
      /3×3 kernels with stride 1/,
    );
    expect(() => conv2d(x, Tensor.zeros(device, [2, 2, 5, 5]), {}, winograd)).toThrow(/3×3 kernels with stride 1/);
    x.dispose();
  });

  interface InputCase {
    x: [number, number, number, number];
    cout: number;
    padding: number | [number, number, number, number];
    groups?: number;
    silu?: boolean;
    shift?: boolean;
    upsample?: boolean;
    dtype?: "f32" | "f16";
    limits?: { maxBindingBytes: number; offsetAlignment: number };
    /** The GEMMs tile-major (the input transform writes V tiles × channels). */
    tileMajor?: boolean;
  }

  /**
   * The fused path (group norm, SiLU, upsampling read by the input transform) against the unfused one —
   * groupNorm, upsampleNearest2x, then the same Winograd convolution — to f32 rounding; and the direct path with
   * the same `input`, which runs the unfused kernels, within Winograd's tolerance.
   */
  async function checkInput(c: InputCase) {
    const dtype = c.dtype ?? "f32";
    const [batch, cin] = c.x;
    const t = (v: Float32Array, shape: number[]) => Tensor.from(device, v, shape, dtype);
    const x = t(
      randomArray(
        c.x.reduce((p, q) => p * q),
        11,
        2,
      ),
      c.x,
    );
    // Offset so that the mean is far from 0, as after a convolution.
    const xs = c.groups ? affine(x, 1.7, 3) : x;
    const w = t(randomArray(cin * c.cout * 9, 12, 0.5), [c.cout, cin, 3, 3]);
    const bias = t(randomArray(c.cout, 13), [c.cout]);
    const groupNormOpts = c.groups
      ? {
          gamma: t(randomArray(cin, 14, 1.5), [cin]),
          beta: t(randomArray(cin, 15), [cin]),
          groups: c.groups,
          eps: 1e-6,
          silu: c.silu,
          shift: c.shift ? t(randomArray(batch * cin, 16), [batch, cin]) : undefined,
        }
      : undefined;
    const input = { groupNorm: groupNormOpts, upsample2x: c.upsample };
    const internals: Conv2dInternals = { ...(c.tileMajor ? tileMajor : winograd), bindingLimits: c.limits };
    const fused = conv2d(xs, w, { padding: c.padding, bias, input }, internals);
    const normed = groupNormOpts ? groupNorm(xs, groupNormOpts.gamma, groupNormOpts.beta, groupNormOpts) : xs;
    const prepared = c.upsample ? upsampleNearest2x(normed) : normed;
    const unfused = conv2d(prepared, w, { padding: c.padding, bias }, internals);
    const direct = conv2d(xs, w, { padding: c.padding, bias, input }, { algorithm: "direct" });
    const [got, want, viaDirect] = await Promise.all([fused, unfused, direct].map((r) => r.toFloat32()));
    expect(fused.shape).toEqual(unfused.shape);
    const terms = 9 * cin;
    // Same values into the same transform; lavapipe's compiler still folds the upsampled patch's repeated
    // entries differently (measured: 0 without upsampling, ≤ 4e-6 on outputs of magnitude 19 with it; f16: one
    // ulp of the stored output).
    const sameInput =
      dtype === "f16" ? { atol: 2 ** -9, rtol: 2 ** -10 } : { atol: 4e-7 * Math.sqrt(terms), rtol: 1e-6 };
    assertClose(got, want, sameInput, `${JSON.stringify(c)} against the unfused path`);
    assertClose(got, viaDirect, dtype === "f16" ? { atol: 4e-3, rtol: 2e-3 } : winogradTol(terms), JSON.stringify(c));
    if (groupNormOpts) {
      // The direct path normalising over x itself (input.inPlace): the same bits, and x left normalised.
      const overwritten = affine(x, 1.7, 3);
      const inPlace = conv2d(
        overwritten,
        w,
        { padding: c.padding, bias, input: { ...input, inPlace: true } },
        { algorithm: "direct" },
      );
      expect(await inPlace.toFloat32()).toEqual(viaDirect);
      expect(await overwritten.toFloat32()).toEqual(await normed.toFloat32());
      for (const r of [overwritten, inPlace]) r.dispose();
    }
    const extra = groupNormOpts ? [groupNormOpts.gamma, groupNormOpts.beta, groupNormOpts.shift] : [];
    for (const r of [x, xs, w, bias, fused, normed, prepared, unfused, direct, ...extra]) r?.dispose();
  }

  it("applies group norm, SiLU and ×2 upsampling while reading x, as the unfused path", async () => {
    // 3 channels per group, 7×9 planes (partial tiles), the timestep shift, batch 2.
    await checkInput({ x: [2, 6, 7, 9], cout: 16, padding: 1, groups: 2, silu: true, shift: true });
    // Upsampling alone, odd and even paddings (the 4×4 and 3×3 source blocks), 5 channels.
    await checkInput({ x: [1, 5, 5, 7], cout: 17, padding: 1, upsample: true });
    await checkInput({ x: [1, 5, 5, 7], cout: 16, padding: [0, 1, 2, 0], upsample: true });
    // Norm, SiLU, then upsampling (an up-resampling ResBlock); 32 groups of 3 channels.
    await checkInput({ x: [1, 96, 5, 6], cout: 16, padding: 1, groups: 32, silu: true, upsample: true });
    // Norm without SiLU.
    await checkInput({ x: [1, 4, 8, 8], cout: 16, padding: 1, groups: 4 });
  });

  it.skipIf(!lanes8)("applies them while writing V tile-major", async () => {
    await checkInput({ x: [2, 6, 7, 9], cout: 16, padding: 1, groups: 2, silu: true, shift: true, tileMajor: true });
    await checkInput({
      x: [1, 96, 5, 6],
      cout: 16,
      padding: 1,
      groups: 32,
      silu: true,
      upsample: true,
      tileMajor: true,
    });
    const limits = { maxBindingBytes: 4096, offsetAlignment: 256 };
    await checkInput({ x: [2, 4, 10, 12], cout: 2, padding: 1, groups: 2, upsample: true, limits, tileMajor: true });
  });

  it("maps x a channel range at a time when x is split over bindings", async () => {
    // 1920-byte planes in 4096-byte bindings: two channels per range, coefficients from the range's first.
    const limits = { maxBindingBytes: 4096, offsetAlignment: 256 };
    await checkInput({ x: [2, 4, 20, 24], cout: 2, padding: 1, groups: 2, silu: true, shift: true, limits });
    await checkInput({ x: [2, 4, 10, 12], cout: 2, padding: 1, groups: 2, silu: true, upsample: true, limits });
  });

  it.skipIf(!device.features.shaderF16)("maps f16 inputs as groupNorm rounds its f16 output", async () => {
    await checkInput({ x: [1, 6, 7, 9], cout: 16, padding: 1, groups: 3, silu: true, upsample: true, dtype: "f16" });
  });

  it("is chosen for 3×3 stride-1 convolutions with enough tiles and channels on CPU adapters only", () => {
    const g = {
      ...{ isCpu: true, kh: 3, kw: 3, strideH: 1, strideW: 1, cin: 128, cout: 128, H: 64, W: 64, Ho: 64, Wo: 64 },
      weightsKept: false,
    };
    const limits = { maxBindingBytes: 128 << 20, offsetAlignment: 256 };
    expect(winogradApplies({ ...g, limits })).toBe(true);
    expect(winogradApplies({ ...g, limits, isCpu: false })).toBe(false);
    expect(winogradApplies({ ...g, limits, strideH: 2, strideW: 2 })).toBe(false);
    expect(winogradApplies({ ...g, limits, kh: 1, kw: 1 })).toBe(false);
    expect(winogradApplies({ ...g, limits, cout: 3 })).toBe(false);
    expect(winogradApplies({ ...g, limits, Ho: 16, Wo: 16 })).toBe(true);
    // 4 tiles per image share the weight transform (the choice is per image, so batches do not change it).
    expect(winogradApplies({ ...g, limits, Ho: 8, Wo: 8 })).toBe(false);
    // Kept transformed weights: no transform in the call, so 4 tiles per image (8×8) pay, 1 (4×4) does not.
    expect(winogradApplies({ ...g, limits, Ho: 8, Wo: 8, weightsKept: true })).toBe(true);
    expect(winogradApplies({ ...g, limits, Ho: 5, Wo: 8, weightsKept: true })).toBe(true);
    expect(winogradApplies({ ...g, limits, Ho: 4, Wo: 4, weightsKept: true })).toBe(false);
    // One plane over a binding: the direct path's planner splits it (or names it).
    expect(winogradApplies({ ...g, limits: { ...limits, maxBindingBytes: 64 * 64 * 4 } })).toBe(false);
  });
});
