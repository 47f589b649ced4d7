/**
 * Subgroup-matrix tiles (`chromium-experimental-subgroup-matrix`: tensor cores, simdgroup matrices, XMX) for the
 * GEMM kernels: which of the adapter's `subgroupMatrixConfigs` and which workgroup tile serve a problem. A pure
 * function of the adapter's configs and limits and of the problem, so it is unit-tested without such an adapter.
 *
 * A workgroup is `subgroupsM × subgroupsN` subgroups of `lanes` invocations (the adapter's largest subgroup size:
 * WGSL requires the workgroup's x size to be a multiple of it); each subgroup owns `matsM × matsN` result
 * matrices of the config's M × N. Operands are staged in workgroup memory `tileK` deep (zero-padded at the
 * problem's edges, so any M, N and K work), results leave through workgroup memory into the GEMM's epilogue.
 */
import type { Device, DType, SubgroupMatrixConfig } from "@ldm/tensor";

export interface MatrixTiles {
  kind: "matrix";
  /** The subgroup-matrix shape: left M × K, right K × N, result M × N (one of the adapter's configs). */
  shape: { M: number; N: number; K: number };
  /** Operand component type (= the operands' storage dtype); results are always f32. */
  component: "f16" | "f32";
  /** Invocations per subgroup the workgroup is laid out for. */
  lanes: number;
  subgroupsM: number;
  subgroupsN: number;
  matsM: number;
  matsN: number;
  /** Reduction depth staged per step: a multiple of shape.K. */
  tileK: number;
  /**
   * Plain WGSL in place of the subgroup-matrix types and builtins (same tiles, indices and staging), so the
   * kernels run and are checked on adapters without the feature (lavapipe). Never chosen by the planner.
   */
  emulate: boolean;
}

/** What the planners (GEMM and attention) read of the adapter. */
export interface MatrixAdapter {
  /** The device's usable configs (Device.subgroupMatrixConfigs: f16 ones only with shader-f16 enabled). */
  configs: readonly SubgroupMatrixConfig[];
  /** GPUAdapterInfo.subgroupMaxSize, or null where the adapter does not say. */
  subgroupMaxSize: number | null;
  maxInvocations: number;
  maxWorkgroupStorageBytes: number;
}

/** The device's adapter for the planners, or null where no planner applies (CPU adapters, no configs). */
export function matrixAdapter(device: Device): MatrixAdapter | null {
  if (device.info.isCpu || device.subgroupMatrixConfigs.length === 0) return null;
  return {
    configs: device.subgroupMatrixConfigs,
    subgroupMaxSize: (device.adapter.info as GPUAdapterInfo & { subgroupMaxSize?: number }).subgroupMaxSize ?? null,
    maxInvocations: device.limits.maxComputeInvocationsPerWorkgroup,
    maxWorkgroupStorageBytes: device.limits.maxComputeWorkgroupStorageSize,
  };
}

export interface MatrixInputs extends MatrixAdapter {
  /** Storage dtypes of the two operands. */
  a: DType;
  b: DType;
  M: number;
  N: number;
  K: number;
}

/** Output extent of a workgroup, before shrinking for small problems: 64 × 64 (4 subgroups of 32 × 32). */
const TARGET_TILE = 64;
/** Reduction staged per barrier pair. */
const TARGET_TILE_K = 32;

export const COMPONENT_BYTES = { f16: 2, f32: 4 } as const;

/**
 * The config for operands of `dtype`: component type equal to the storage dtype (no conversion in the kernel)
 * and f32 results (accumulation in f32, as every GEMM here); the largest M·N·K, the adapter's order among equals.
 */
export function chooseMatrixConfig(
  configs: readonly SubgroupMatrixConfig[],
  dtype: DType,
): SubgroupMatrixConfig | null {
  let best: SubgroupMatrixConfig | null = null;
  for (const c of configs) {
    // The epilogue finishes 4 consecutive columns at a time, within one result matrix.
    if (c.componentType !== dtype || c.resultComponentType !== "f32" || c.N % 4 !== 0) continue;
    if (!best || c.M * c.N * c.K > best.M * best.N * best.K) best = c;
  }
  return best;
}

/** Elements a staged row is padded by: 16 bytes, so rows start 16-byte aligned and shift banks. */
export function stagePad(component: "f16" | "f32"): number {
  return 16 / COMPONENT_BYTES[component];
}

/** Output rows and columns of one workgroup. */
export function matrixTile(t: MatrixTiles): { m: number; n: number } {
  return { m: t.shape.M * t.matsM * t.subgroupsM, n: t.shape.N * t.matsN * t.subgroupsN };
}

export function matrixWorkgroupSize(t: MatrixTiles): number {
  return t.lanes * t.subgroupsM * t.subgroupsN;
}

/** Workgroup memory: staged A (tileM × tileK) and B (tileK × tileN) rows padded, and one f32 result per subgroup. */
export function matrixStorageBytes(t: MatrixTiles): number {
  const { m, n } = matrixTile(t);
  const pad = stagePad(t.component);
  const staged = (m * (t.tileK + pad) + t.tileK * (n + pad)) * COMPONENT_BYTES[t.component];
  return staged + t.subgroupsM * t.subgroupsN * t.shape.M * t.shape.N * 4;
}

/**
 * Subgroups and matrices per subgroup along one output dimension of `extent`: a tile of up to TARGET_TILE,
 * no larger than the extent rounded up to the matrix size (40 rows take a tile of 48, not 64).
 */
function split(extent: number, matrix: number): { subgroups: number; mats: number } {
  const wanted = Math.min(TARGET_TILE, Math.ceil(extent / matrix) * matrix);
  const mats = Math.max(1, Math.ceil(wanted / matrix));
  const subgroups = mats >= 2 && mats % 2 === 0 ? 2 : 1;
  return { subgroups, mats: mats / subgroups };
}

/** Tiles for a problem, or null: no config for these operands, no known subgroup size, a reduction too short. */
export function chooseMatrixTiles(inp: MatrixInputs): MatrixTiles | null {
  if (inp.a !== inp.b || (inp.a !== "f16" && inp.a !== "f32")) return null;
  const config = chooseMatrixConfig(inp.configs, inp.a);
  const lanes = inp.subgroupMaxSize;
  if (!config || !lanes || lanes % 4 !== 0) return null;
  // A reduction shorter than one matrix wastes most of every multiply on zero padding.
  if (inp.K < config.K) return null;
  const rows = split(inp.M, config.M);
  const cols = split(inp.N, config.N);
  const tiles: MatrixTiles = {
    kind: "matrix",
    shape: { M: config.M, N: config.N, K: config.K },
    component: inp.a,
    lanes,
    subgroupsM: rows.subgroups,
    subgroupsN: cols.subgroups,
    matsM: rows.mats,
    matsN: cols.mats,
    tileK: Math.max(1, Math.round(TARGET_TILE_K / config.K)) * config.K,
    emulate: false,
  };
  // Within the limits: fewer subgroups first (larger subgroup tiles), then fewer matrices.
  const fits = () =>
    matrixWorkgroupSize(tiles) <= inp.maxInvocations && matrixStorageBytes(tiles) <= inp.maxWorkgroupStorageBytes;
  while (!fits()) {
    if (tiles.subgroupsM * tiles.subgroupsN > 1 && matrixWorkgroupSize(tiles) > inp.maxInvocations) {
      if (tiles.subgroupsM >= tiles.subgroupsN) tiles.subgroupsM /= 2;
      else tiles.subgroupsN /= 2;
    } else if (tiles.tileK > config.K) {
      tiles.tileK -= config.K;
    } else if (tiles.matsM * tiles.matsN > 1) {
      if (tiles.matsM >= tiles.matsN) tiles.matsM = Math.ceil(tiles.matsM / 2);
      else tiles.matsN = Math.ceil(tiles.matsN / 2);
    } else {
      return null;
    }
  }
  return tiles;
}

/** Whether a value (an autotune cache entry) is matrix tiles the kernels can run. */
export function isMatrixTiles(v: Record<string, unknown>): boolean {
  const positive = (x: unknown) => Number.isInteger(x) && (x as number) > 0;
  const shape = v.shape as Record<string, unknown> | undefined;
  return (
    v.kind === "matrix" &&
    typeof shape === "object" &&
    shape !== null &&
    [shape.M, shape.N, shape.K].every(positive) &&
    (shape.N as number) % 4 === 0 &&
    (v.component === "f16" || v.component === "f32") &&
    [v.lanes, v.subgroupsM, v.subgroupsN, v.matsM, v.matsN, v.tileK].every(positive) &&
    (v.tileK as number) % (shape.K as number) === 0 &&
    typeof v.emulate === "boolean"
  );
}

export function matrixTileKey(t: MatrixTiles): string {
  const { M, N, K } = t.shape;
  return `sm${t.component}_${M}x${N}x${K}l${t.lanes}s${t.subgroupsM}x${t.subgroupsN}m${t.matsM}x${t.matsN}k${t.tileK}${t.emulate ? "e" : ""}`;
}
