/**
 * Generated WGSL never uses the short-circuit `&&` (see wgslAll): SwiftShader, Chromium's CPU adapter, takes
 * gigabytes and minutes to compile unrolled loops of such branches. Checked over every tile kind and the
 * geometries that emit guards (padding, strides, ragged edges, causal masks), without a device.
 */
import { describe, expect, it } from "vitest";
import { attentionTiling } from "../attention/tiling.ts";
import { ATTENTION, type AttentionWgsl } from "../attention/wgsl.ts";
import { ATTENTION_WINDOW } from "../attention/window.ts";
import { CONV2D, type ConvTiles } from "../conv2d/wgsl.ts";
import type { TileConfig } from "../matmul/tiles.ts";
import { GEMM } from "../matmul/wgsl.ts";
import { kernelWgsl } from "./kernel.ts";
import { wgslAll } from "./wgsl.ts";

describe("wgslAll", () => {
  it("joins conditions with the non-short-circuit &, each in parentheses", () => {
    expect(wgslAll("a < b", "c")).toBe("(a < b) & (c)");
  });
});

describe("generated WGSL has no short-circuit &&", () => {
  const convTiles: ConvTiles[] = [
    { kind: "subgroup", lanes: 8, subgroups: 4, rows: 16, groups: 2 },
    { kind: "plain", rows: 4, groups: 1, pixelLanes: 16, channelGroups: 4 },
  ];
  it.each(
    convTiles.flatMap((tiles) =>
      [1, 2].flatMap((stride) => [true, false].map((vecRow) => ({ tiles, stride, vecRow: vecRow && stride === 1 }))),
    ),
  )("conv2d 3×3 padded, $tiles.kind tiles, stride $stride, vecRow $vecRow", ({ tiles, stride, vecRow }) => {
    const code = kernelWgsl(CONV2D, {
      ...{ kh: 3, kw: 3, strideH: stride, strideW: stride, padTop: 1, padLeft: 1 },
      ...{ x: "f32", w: "f32", out: "f32", bias: "f32", residual: "f32", activation: "silu" },
      ...{ tiles, vecOut: false, vecRow },
    });
    expect(code).toContain("fn xin");
    expect(code).not.toContain("&&");
  });

  const gemmTiles: TileConfig[] = [
    { kind: "workgroup", tileM: 32, tileN: 32, tileK: 16, threadM: 4, threadN: 4 },
    { kind: "subgroup", lanes: 8, subgroups: 4, rows: 16, laneOwns: "n", cols: 1, uniformB: false },
    { kind: "subgroup", lanes: 8, subgroups: 4, rows: 16, laneOwns: "n", cols: 1, uniformB: true },
    { kind: "subgroup", lanes: 8, subgroups: 4, rows: 16, laneOwns: "m", cols: 2, uniformB: false },
  ];
  const epilogues = [
    { gated: false, residual: "f32", activation: "gelu" },
    { gated: true, residual: null, activation: "none" },
  ] as const;
  it.each(gemmTiles.flatMap((tiles) => epilogues.map((epilogue) => ({ tiles, ...epilogue }))))(
    "gemm with $tiles.kind tiles, ragged K, gated $gated",
    ({ tiles, ...epilogue }) => {
      const code = kernelWgsl(GEMM, {
        ...{ tiles, transposeA: false, transposeB: true, a: "f32", b: "f32", c: "f32" },
        ...{ bias: { axis: "n", dtype: "f32" }, ...epilogue },
        ...{ vecA: false, vecB: false, vecC: false, kTail: true },
      });
      expect(code).toContain(epilogue.gated ? "gated_column" : "fn main");
      expect(code).not.toContain("&&");
    },
  );

  it.each([
    { isCpu: true, subgroupSize: 8 },
    { isCpu: false, subgroupSize: 32 },
  ])("causal attention, isCpu $isCpu", (adapter) => {
    const tiling = attentionTiling(adapter, 40, 77, 77, { heads: 2, causal: true });
    if (tiling.kind === "blocked" || tiling.kind === "window") throw new Error("causal attention is fused");
    const spec: AttentionWgsl = { dtype: "f32", d: 40, causal: true, ...tiling };
    const code = kernelWgsl(ATTENTION, spec);
    expect(code).toContain("key0");
    expect(code).not.toContain("&&");
  });

  it("attention through uniform windows", () => {
    const tiling = attentionTiling({ isCpu: true, subgroupSize: 8 }, 40, 4096, 4096);
    if (tiling.kind !== "window") throw new Error(`expected window tiling, got ${tiling.kind}`);
    const code = kernelWgsl(ATTENTION_WINDOW, { dtype: "f16", d: 40, ...tiling });
    expect(code).toContain("key0");
    expect(code).not.toContain("&&");
  });
});
