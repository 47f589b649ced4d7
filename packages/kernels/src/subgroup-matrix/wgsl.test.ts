import { useDevice } from "@ldm/tensor/testing";
import { describe, expect, it } from "vitest";
import { kernelWgsl } from "../common/kernel.ts";
import { GEMM, type GemmKernelSpec } from "../matmul/wgsl.ts";
import { type MatrixTiles, matrixStorageBytes } from "../subgroup-matrix/plan.ts";
import { MATRIX_CONV } from "./conv.ts";
import { assertParses, assertSyntaxError, declaredWorkgroupBytes } from "./wgsl-testing.ts";

const device = await useDevice();

const TILES: MatrixTiles = {
  kind: "matrix",
  shape: { M: 16, N: 16, K: 16 },
  component: "f16",
  lanes: 32,
  subgroupsM: 2,
  subgroupsN: 2,
  matsM: 2,
  matsN: 2,
  tileK: 32,
  emulate: false,
};

function spec(over: Partial<GemmKernelSpec> = {}): GemmKernelSpec {
  return {
    tiles: TILES,
    transposeA: false,
    transposeB: true,
    a: "f16",
    b: "f16",
    c: "f16",
    bias: { axis: "n", dtype: "f16" },
    residual: "f16",
    activation: "silu",
    vecA: false,
    vecB: false,
    vecC: true,
    kTail: false,
    gated: false,
    ...over,
  };
}

describe("subgroup-matrix GEMM WGSL", () => {
  it("uses the types and builtins of Dawn's syntax, the config's shape, and f32 results", () => {
    const code = kernelWgsl(GEMM, spec());
    expect(code.split("\n").slice(0, 4)).toEqual([
      "enable f16;",
      "enable subgroups;",
      "enable chromium_experimental_subgroup_matrix;",
      "diagnostic(off, chromium.subgroup_matrix_uniformity);",
    ]);
    // Template arguments are columns then rows: left K × M, right N × K, result N × M.
    expect(code).toContain("subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&As, ");
    expect(code).toContain("subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&Bs, ");
    expect(code).toContain("subgroupMatrixStore<row_major>(&Cs, sgBase, acc_1_1, 16u);");
    expect(code.match(/= subgroup_matrix_result<f32, 16, 16>\(\);/g)).toHaveLength(4);
    expect(code.match(/subgroupMatrixMultiplyAccumulate\(l\d, r\d, acc_\d_\d\)/g)).toHaveLength(4);
    expect(code).toContain("@compute @workgroup_size(128)");
    // The workgroup memory declared is what the planner budgets.
    expect(declaredWorkgroupBytes(code)).toBe(matrixStorageBytes(TILES));
    // A non-square config keeps rows and columns apart: 8 × 16 results, 16-deep left.
    const wide = kernelWgsl(GEMM, spec({ tiles: { ...TILES, shape: { M: 8, N: 16, K: 16 } } }));
    expect(wide).toContain("subgroup_matrix_left<f16, 16, 8>");
    expect(wide).toContain("subgroup_matrix_right<f16, 16, 16>");
    expect(wide).toContain("subgroup_matrix_result<f32, 16, 8>()");
  });

  it("emulated tiles need no extension", () => {
    const code = kernelWgsl(GEMM, spec({ tiles: { ...TILES, emulate: true } }));
    expect(code).not.toMatch(/subgroup_matrix|subgroupMatrix|diagnostic/);
  });

  // Tint parses a whole module before it checks the enables against the device's features, so on an adapter
  // without subgroup matrices every syntax error shows up first (the control below shows that it does). Type
  // errors would not: those are for the GPU script's run of every kernel against the CPU reference.
  it.skipIf(device.features.subgroupMatrix || !device.features.shaderF16)(
    "parses in Dawn's WGSL front end (lavapipe: only the missing feature is reported)",
    async () => {
      const variants: GemmKernelSpec[] = [
        spec(),
        spec({ transposeA: true, transposeB: false, bias: null, residual: null, activation: "none", vecC: false }),
        spec({ gated: true, residual: null, activation: "none", vecC: false }),
        spec({ tiles: { ...TILES, shape: { M: 8, N: 16, K: 16 }, matsM: 1, subgroupsN: 1 } }),
        spec({
          a: "f32",
          b: "f32",
          c: "f32",
          bias: null,
          residual: null,
          tiles: { ...TILES, component: "f32", shape: { M: 8, N: 8, K: 8 } },
        }),
      ];
      const conv = {
        tiles: TILES,
        x: "f16",
        w: "f16",
        out: "f16",
        bias: "f16",
        residual: "f16",
        activation: "silu",
        vecC: true,
      } as const;
      const modules = [...variants.map((s) => kernelWgsl(GEMM, s)), kernelWgsl(MATRIX_CONV, conv)];
      for (const code of modules) await assertParses(device, code, code.slice(0, 400));
      // A missing comma: a syntax error, reported instead of the feature (a resolver error would not be).
      await assertSyntaxError(
        device,
        kernelWgsl(GEMM, spec()).replace("(&Cs, sgBase, acc_1_1", "(&Cs, sgBase acc_1_1"),
      );
    },
  );
});
