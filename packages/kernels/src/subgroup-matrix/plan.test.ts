import type { SubgroupMatrixConfig } from "@ldm/tensor";
import { describe, expect, it } from "vitest";
import { chooseTiles, isTileConfig, tileCandidates, tileKey } from "../matmul/tiles.ts";
import { chooseMatrixConfig, chooseMatrixTiles, type MatrixInputs, matrixStorageBytes, matrixTile } from "./plan.ts";

const config = (componentType: string, resultComponentType: string, M: number, N: number, K: number) => ({
  componentType,
  resultComponentType,
  M,
  N,
  K,
});

/** The shapes VK_KHR_cooperative_matrix lists on NVIDIA (f16 in, f16 or f32 out, 16 × 16 × 16; 8-bit integers). */
const NVIDIA: SubgroupMatrixConfig[] = [
  config("f16", "f16", 16, 16, 16),
  config("f16", "f32", 16, 16, 16),
  config("u8", "u32", 16, 16, 32),
  config("i8", "i32", 16, 16, 32),
];
/** Apple's simdgroup matrices: 8 × 8 × 8 in f32 and f16. */
const APPLE: SubgroupMatrixConfig[] = [
  config("f32", "f32", 8, 8, 8),
  config("f16", "f16", 8, 8, 8),
  config("f16", "f32", 8, 8, 8),
];

const gpu: MatrixInputs = {
  configs: NVIDIA,
  a: "f16",
  b: "f16",
  subgroupMaxSize: 32,
  maxInvocations: 1024,
  maxWorkgroupStorageBytes: 49152,
  M: 8192,
  N: 320,
  K: 320,
};

describe("chooseMatrixConfig", () => {
  it("takes the operands' component type with f32 results, the largest shape", () => {
    expect(chooseMatrixConfig(NVIDIA, "f16")).toEqual(config("f16", "f32", 16, 16, 16));
    expect(chooseMatrixConfig(NVIDIA, "f32")).toBeNull();
    expect(chooseMatrixConfig(APPLE, "f32")).toEqual(config("f32", "f32", 8, 8, 8));
    expect(chooseMatrixConfig([config("f16", "f32", 8, 8, 8), config("f16", "f32", 16, 8, 16)], "f16")).toEqual(
      config("f16", "f32", 16, 8, 16),
    );
    // Result columns the epilogue cannot take 4 at a time.
    expect(chooseMatrixConfig([config("f16", "f32", 8, 2, 8)], "f16")).toBeNull();
  });
});

describe("chooseMatrixTiles", () => {
  it("tiles SD's GEMMs 64 × 64 with 4 subgroups of 2 × 2 matrices, 32 deep", () => {
    const t = chooseMatrixTiles(gpu);
    expect(t).toEqual({
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
    });
    if (!t) throw new Error("no tiles");
    expect(matrixTile(t)).toEqual({ m: 64, n: 64 });
    // A: 64 × (32 + 8) f16, B: 32 × (64 + 8) f16, results: 4 × 16 × 16 f32.
    expect(matrixStorageBytes(t)).toBe(64 * 40 * 2 + 32 * 72 * 2 + 4 * 256 * 4);
  });

  it("shrinks the tile to small extents: 40 rows take 48, 4 channels one matrix", () => {
    expect(chooseMatrixTiles({ ...gpu, M: 40 })).toMatchObject({ subgroupsM: 1, matsM: 3 });
    expect(chooseMatrixTiles({ ...gpu, M: 77 })).toMatchObject({ subgroupsM: 2, matsM: 2 });
    expect(chooseMatrixTiles({ ...gpu, N: 4 })).toMatchObject({ subgroupsN: 1, matsN: 1 });
    // Apple's 8 × 8 matrices: 4 per subgroup along each side of a 64 × 64 tile.
    expect(chooseMatrixTiles({ ...gpu, configs: APPLE, a: "f32", b: "f32" })).toMatchObject({
      shape: { M: 8, N: 8, K: 8 },
      component: "f32",
      subgroupsM: 2,
      matsM: 4,
      tileK: 32,
    });
  });

  it("fits the workgroup limits, or gives up", () => {
    const small = chooseMatrixTiles({ ...gpu, maxInvocations: 64, maxWorkgroupStorageBytes: 8192 });
    if (!small) throw new Error("no tiles");
    expect(small.lanes * small.subgroupsM * small.subgroupsN).toBeLessThanOrEqual(64);
    expect(matrixStorageBytes(small)).toBeLessThanOrEqual(8192);
    expect(chooseMatrixTiles({ ...gpu, maxWorkgroupStorageBytes: 1024 })).toBeNull();
  });

  it("declines what the configs or the adapter cannot serve", () => {
    expect(chooseMatrixTiles({ ...gpu, a: "f32", b: "f32" })).toBeNull();
    expect(chooseMatrixTiles({ ...gpu, b: "f32" })).toBeNull();
    expect(chooseMatrixTiles({ ...gpu, subgroupMaxSize: null })).toBeNull();
    expect(chooseMatrixTiles({ ...gpu, K: 8 })).toBeNull();
    expect(chooseMatrixTiles({ ...gpu, configs: [] })).toBeNull();
  });
});

describe("chooseTiles with subgroup matrices", () => {
  const inputs = {
    isCpu: false,
    subgroupSize: null,
    maxInvocations: 1024,
    maxWorkgroupStorageBytes: 49152,
    M: 4096,
    N: 320,
    K: 320,
    transposeA: false,
    transposeB: true,
    matrix: { configs: NVIDIA, a: "f16", b: "f16", subgroupMaxSize: 32 },
  } as const;

  it("prefers them on GPUs and falls back to the present tiles", () => {
    expect(chooseTiles(inputs)).toMatchObject({ kind: "matrix" });
    expect(chooseTiles({ ...inputs, matrix: { ...inputs.matrix, a: "f32", b: "f32" } })).toMatchObject({
      kind: "workgroup",
    });
    expect(chooseTiles({ ...inputs, matrix: undefined })).toMatchObject({ kind: "workgroup" });
    // CPU adapters never take them (none has the feature; an emulation would only be slower).
    expect(chooseTiles({ ...inputs, isCpu: true, subgroupSize: 8 })).toMatchObject({ kind: "subgroup" });
  });

  it("offers autotuning the matrix tiles first, then the present candidates", () => {
    const candidates = tileCandidates(inputs);
    expect(candidates[0]).toMatchObject({ kind: "matrix" });
    expect(candidates.slice(1).every((c) => c.kind === "workgroup")).toBe(true);
    for (const c of candidates) expect(isTileConfig(JSON.parse(JSON.stringify(c)))).toBe(true);
    expect(tileKey(candidates[0])).toBe("smf16_16x16x16l32s2x2m2x2k32");
    expect(isTileConfig({ ...candidates[0], tileK: 24 })).toBe(false);
    expect(isTileConfig({ ...candidates[0], shape: { M: 16, N: 6, K: 16 } })).toBe(false);
  });
});
