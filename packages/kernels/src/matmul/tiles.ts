/**
 * Tile strategy for the GEMM kernels: a pure function of the adapter and the problem, so it is unit-tested
 * and the WGSL is a function of its result.
 *
 * CPU adapters (lavapipe) run an invocation as one SIMD lane, and Mesa 25's llvmpipe turns every storage or
 * workgroup-memory load whose address differs per lane into a per-lane scalar loop with a bounds check per
 * component, while a broadcast between lanes of a subgroup is one register shuffle. So the "subgroup" tiles
 * load each element once per subgroup and share it with `subgroupBroadcast`: the lanes of a subgroup own
 * 4 consecutive indices each along one output dimension, and every lane loads a few rows of the other
 * operand, which are then broadcast to all lanes. Barriers (coroutine switches on llvmpipe) are avoided.
 * Uniform-buffer loads are gathered without branches (about a third of the instructions of a storage load), but
 * a uniform binding holds only 64 KiB: with `uniformB` the owned operand B is packed into windows of that size
 * (the workgroup's columns × a range of K) and each window is one dispatch over all rows.
 *
 * GPUs get the classic workgroup-memory tiling, or subgroup-matrix tiles (tensor cores) where the adapter has
 * them for the operands' dtype.
 */
import {
  chooseMatrixTiles,
  isMatrixTiles,
  type MatrixInputs,
  type MatrixTiles,
  matrixTile,
  matrixTileKey,
  matrixWorkgroupSize,
} from "../subgroup-matrix/plan.ts";

export interface TileInputs {
  /**
   * Subgroup-matrix tiles are tried first where given (GPU adapters with `chromium-experimental-subgroup-matrix`;
   * subgroup-matrix/plan.ts); the present tiles are the fallback.
   */
  matrix?: Omit<MatrixInputs, "M" | "N" | "K" | "maxInvocations" | "maxWorkgroupStorageBytes">;
  /** The adapter is a CPU rasteriser (lavapipe, SwiftShader). */
  isCpu: boolean;
  /** The subgroup size when the device has the subgroups feature and a fixed size (min = max), else null. */
  subgroupSize: number | null;
  maxInvocations: number;
  maxWorkgroupStorageBytes: number;
  M: number;
  N: number;
  K: number;
  transposeA: boolean;
  transposeB: boolean;
  /**
   * Sets of windows of B (uniformB): the batch items whose B is packed apart, one dispatch per item and window
   * (GemmCall.windowsPerItem). Default 1: one B for the whole batch.
   */
  windowSets?: number;
  /** Batch items of one dispatch (default 1): they multiply its workgroups. */
  batch?: number;
}

/** Subgroup-broadcast register tiles (CPU adapters). */
export interface SubgroupTiles {
  kind: "subgroup";
  /** The subgroup size the WGSL is written for. */
  lanes: number;
  /** Subgroups per workgroup, stacked along the broadcast dimension. */
  subgroups: number;
  /** Broadcast rows per subgroup (a multiple of `lanes` and of 4); each lane keeps rows × 4 accumulators. */
  rows: number;
  /** The output dimension whose indices lanes own (4 · cols consecutive each); the other one is broadcast. */
  laneOwns: "m" | "n";
  /** Groups of 4 owned indices per lane (1 or 2): each lane keeps rows × 4 · cols accumulators. */
  cols: number;
  /**
   * B is packed into windows of uniformWindow(tiles) (the workgroup's owned columns × a range of K) and read
   * through a uniform binding, one dispatch per window. Needs laneOwns "n".
   */
  uniformB: boolean;
}

/** Workgroup-memory tiles (GPUs, and any adapter without a fixed subgroup size). */
export interface WorkgroupTiles {
  kind: "workgroup";
  tileM: number;
  tileN: number;
  tileK: number;
  /** Outputs per invocation along M and N (multiples of 4); the workgroup is (tileN / threadN) × (tileM / threadM). */
  threadM: number;
  threadN: number;
  /**
   * Global loads of an operand as vec4s along its contiguous dimension where that is a multiple of 4 (others
   * stay scalar): a quarter of the load instructions. Absent: scalar loads.
   */
  vecLoads?: boolean;
  /**
   * Two staging buffers: the next K block is loaded while the current one is multiplied, one barrier per
   * block instead of two, at twice the workgroup memory. Absent: one buffer.
   */
  doubleBuffer?: boolean;
}

export type TileConfig = SubgroupTiles | WorkgroupTiles | MatrixTiles;

/** Subgroup sizes the broadcast tiles are written for (lavapipe has 8; 16 with LP_NATIVE_VECTOR_WIDTH=512). */
const BROADCAST_LANES = [4, 8, 16];
/**
 * Bytes of one window of packed B (uniformB tiles): 64 KiB, WebGPU's default maxUniformBufferBindingSize, which
 * every adapter supports.
 */
export const UNIFORM_WINDOW_BYTES = 65536;

/**
 * The window of B that one dispatch of uniformB tiles reads: all n columns the lanes of a workgroup own, and k
 * steps (a multiple of 4), n · k floats within UNIFORM_WINDOW_BYTES; packed row-major, n rows of k values. K steps
 * are split evenly over the fewest windows (K = 640 as 2 × 320, not 512 + 128: every dispatch a full one).
 */
export function uniformWindow(t: SubgroupTiles, K: number): { n: number; k: number } {
  const n = t.lanes * 4 * t.cols;
  const most = Math.floor(UNIFORM_WINDOW_BYTES / 4 / n / 4) * 4;
  return { n, k: Math.min(most, Math.ceil(K / Math.ceil(K / most) / 4) * 4) };
}

/** Most dispatches (windows of B) one GEMM may take with uniformB tiles. */
const MAX_WINDOWS = 1024;

/**
 * Whether windows of B pay for their dispatches: at least two workgroups of rows in each (one per lavapipe
 * thread), and at most MAX_WINDOWS of them over all window sets (a 1×1 convolution over 512² pixels would take
 * 8192 windows of 32).
 */
export function windowsPay(t: SubgroupTiles, inp: Pick<TileInputs, "M" | "N" | "K" | "windowSets">): boolean {
  return inp.M >= 2 * t.rows * t.subgroups && windowsPerSet(t, inp) * (inp.windowSets ?? 1) <= MAX_WINDOWS;
}

/** Windows (dispatches) one B of the GEMM takes with uniformB tiles. */
export function windowsPerSet(t: SubgroupTiles, inp: Pick<TileInputs, "N" | "K">): number {
  const window = uniformWindow(t, inp.K);
  return Math.ceil(inp.N / window.n) * Math.ceil(inp.K / window.k);
}

/**
 * Most windows per B that the GEMM planner takes: beyond it B from storage ran faster on a quiet machine (FLOPs per
 * second of GPU time, windows / storage, interleaved: SD's linears 512×1280×1280ᵀ in 120 windows 40.2 / 47.7,
 * 512×1280×5120ᵀ in 400 22.1 / 35.5, GEGLU 512×10240×1280 in 960 33.2 / 46.3 and 2048×5120×640 in 320 31.0 / 42.8;
 * ties at 40 and 10 windows: 2048×640×640ᵀ 30.1 / 30.8, 8192×320×320ᵀ 31.2 / 30.7–32.7).
 */
const GEMM_MAX_WINDOWS_PER_SET = 64;

/** Owned groups of 4 per lane that the broadcast tiles are written for. */
const SUBGROUP_COLS = [1, 2];

/**
 * Workgroups a CPU adapter's dispatch is spread over where it has that many subgroup tiles. lavapipe hands each
 * workgroup whole to one of its threads (as many as cores) and the subgroups of a broadcast tile share nothing, so
 * fewer subgroups per workgroup cost nothing and keep every thread busy to the end: a window of B over 512 rows
 * was 3 workgroups of 8 subgroups, one thread idle for a third of the time (benchmarks/RESULTS.md, "Small GEMMs
 * and convolutions"). The 3×3 convolution's subgroup tiles (conv2d/wgsl.ts) follow the same rule.
 */
export const CPU_WORKGROUPS = 16;

/**
 * Subgroups per workgroup of a dispatch with `tiles` subgroup tiles: at most `most`, and few enough for
 * CPU_WORKGROUPS workgroups where there are tiles for them.
 */
export function spreadSubgroups(most: number, tiles: number): number {
  return Math.min(most, Math.max(1, Math.floor(tiles / CPU_WORKGROUPS)));
}

/**
 * Subgroups per workgroup for `tiles` subgroup tiles along the broadcast dimension (of each batch item): the most,
 * at most `most`, that divide them evenly. Workgroups cover whole multiples of their subgroups, and the last one's
 * subgroups past M compute clamped rows like any other, so 8 subgroups of 24 rows took 640 output channels
 * (27 tiles) as 768 rows, where 3 take them as 648; the subgroups of a broadcast tile share nothing, so fewer per
 * workgroup cost no CPU time (benchmarks/RESULTS.md, "Small GEMMs and convolutions" and "SD 1.5's UNet shapes").
 */
export function evenSubgroups(most: number, tiles: number): number {
  for (let s = Math.min(most, tiles); s > 1; s--) if (tiles % s === 0) return s;
  return 1;
}

export function chooseTiles(inp: TileInputs): TileConfig {
  const matrix = inp.matrix && !inp.isCpu ? chooseMatrixTiles({ ...inp, ...inp.matrix }) : null;
  if (matrix) return matrix;
  const lanes = inp.subgroupSize;
  if (inp.isCpu && lanes !== null && BROADCAST_LANES.includes(lanes)) {
    // The broadcast operand is read as 4 consecutive k per lane, so it should be the one whose rows run
    // along k: A unless A is transposed and B is not.
    const laneOwns = !inp.transposeA ? "n" : inp.transposeB ? "m" : "n";
    const rows = broadcastRows(lanes, broadcastExtent(inp));
    const subgroups = subgroupsFor(inp, lanes, rows);
    const tiles: SubgroupTiles = { kind: "subgroup", lanes, subgroups, rows, laneOwns, cols: 1, uniformB: false };
    const uniformB =
      laneOwns === "n" && windowsPay(tiles, inp) && windowsPerSet(tiles, inp) <= GEMM_MAX_WINDOWS_PER_SET;
    // A dispatch covers every row tile of its batch items (of one item, with a window set per item) and, with
    // windows of B, one column of workgroups (one window).
    const items = uniformB && (inp.windowSets ?? 1) > 1 ? 1 : (inp.batch ?? 1);
    const rowTiles = Math.ceil(broadcastExtent(inp) / rows) * items;
    const ownedTiles = uniformB ? 1 : Math.ceil(ownedExtent(inp) / (lanes * 4));
    const spread = spreadSubgroups(subgroups, rowTiles * ownedTiles);
    return { ...tiles, uniformB, subgroups: evenSubgroups(spread, Math.ceil(broadcastExtent(inp) / rows)) };
  }
  const big: WorkgroupTiles = { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 4 };
  const fitsBig = inp.maxInvocations >= 256 && inp.maxWorkgroupStorageBytes >= workgroupStorageBytes(big);
  return fitsBig ? big : { kind: "workgroup", tileM: 32, tileN: 32, tileK: 16, threadM: 4, threadN: 4 };
}

/**
 * Broadcast rows per subgroup: 24 (rounded up to a multiple of the lanes), or 16 where 24 pads the
 * broadcast extent over 10% more (M = 77 takes 5 × 16 rows, not 4 × 24). With register accumulators
 * (matmul/epilogue.ts) 24–32 rows × 4 columns ran 10–30% less CPU time than 16 on lavapipe (1024³,
 * 4096×320×320, 4096×1280×320, 4096×640×768ᵀ, interleaved runs); 8 rows were 15–20% worse than 16. An extent of
 * at most 8 takes 8 rows (rounded up likewise): 16 would be half padding (a Winograd GEMM over the 8 tiles of an
 * 8×8 image pair, the timestep embedding's 2 rows).
 */
export function broadcastRows(lanes: number, extent: number): number {
  const roundUp = (n: number) => Math.ceil(n / lanes) * lanes;
  const least = roundUp(8);
  if (extent <= least) return least;
  const wide = roundUp(24);
  const narrow = roundUp(16);
  const padded = (rows: number) => Math.ceil(extent / rows) * rows;
  return padded(wide) > 1.1 * padded(narrow) ? narrow : wide;
}

/**
 * Configs worth timing for a problem (autotune.ts): the heuristic's first, then its neighbours — other
 * broadcast row counts and fewer subgroups on CPU adapters, other workgroup tiles elsewhere.
 */
export function tileCandidates(inp: TileInputs): TileConfig[] {
  const chosen = chooseTiles(inp);
  if (chosen.kind === "matrix") return [chosen, ...tileCandidates({ ...inp, matrix: undefined })];
  const out: TileConfig[] = [chosen];
  if (chosen.kind === "subgroup") {
    for (const rows of [16, 24, 32].map((r) => Math.ceil(r / chosen.lanes) * chosen.lanes)) {
      out.push({ ...chosen, rows, subgroups: subgroupsFor(inp, chosen.lanes, rows) });
    }
    if (chosen.subgroups > 2) out.push({ ...chosen, subgroups: Math.ceil(chosen.subgroups / 2) });
    if (chosen.uniformB) out.push({ ...chosen, uniformB: false });
    out.push({ ...chosen, cols: 2 });
    return out;
  }
  const plain: WorkgroupTiles[] = [
    { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 4, threadN: 4 },
    { kind: "workgroup", tileM: 64, tileN: 64, tileK: 16, threadM: 8, threadN: 4 },
    { kind: "workgroup", tileM: 32, tileN: 32, tileK: 16, threadM: 4, threadN: 4 },
    { kind: "workgroup", tileM: 128, tileN: 64, tileK: 8, threadM: 8, threadN: 4 },
  ];
  // The vector-load and double-buffered variants of the two 64 × 64 tiles (not yet measured against them).
  const options = [...plain, ...plain.slice(0, 2).flatMap(stagingVariants)];
  const fits = (t: WorkgroupTiles) =>
    workgroupSize(t) <= inp.maxInvocations && workgroupStorageBytes(t) <= inp.maxWorkgroupStorageBytes;
  const unique = new Map([...out, ...options.filter(fits)].map((t) => [tileKey(t), t]));
  return [...unique.values()];
}

/** A workgroup tile with vector loads, with double buffering, and with both. */
export function stagingVariants(t: WorkgroupTiles): WorkgroupTiles[] {
  return [
    { ...t, vecLoads: true },
    { ...t, doubleBuffer: true },
    { ...t, vecLoads: true, doubleBuffer: true },
  ];
}

/** The extent of the broadcast dimension: M, unless lanes own M (both operands transposed). */
function broadcastExtent(inp: TileInputs): number {
  return inp.transposeA && inp.transposeB ? inp.N : inp.M;
}

/** The extent of the dimension whose indices lanes own: N, unless lanes own M. */
function ownedExtent(inp: TileInputs): number {
  return inp.transposeA && inp.transposeB ? inp.M : inp.N;
}

/** As many subgroups as the broadcast extent fills (M = 77 takes 5 × 16 rows, not 8), at most 8. */
function subgroupsFor(inp: TileInputs, lanes: number, rows: number): number {
  const maxSubgroups = Math.max(1, Math.min(8, Math.floor(inp.maxInvocations / lanes)));
  return Math.min(maxSubgroups, Math.max(1, Math.ceil(broadcastExtent(inp) / rows)));
}

/** Whether a value (from an autotune cache) is a tile config the GEMM kernels can run. */
export function isTileConfig(v: unknown): v is TileConfig {
  if (typeof v !== "object" || v === null) return false;
  const t = v as Record<string, unknown>;
  if (t.kind === "matrix") return isMatrixTiles(t);
  const positive = (...names: string[]) => names.every((n) => Number.isInteger(t[n]) && (t[n] as number) > 0);
  if (t.kind === "subgroup") {
    return (
      positive("lanes", "subgroups", "rows") &&
      BROADCAST_LANES.includes(t.lanes as number) &&
      (t.rows as number) % (t.lanes as number) === 0 &&
      (t.rows as number) % 4 === 0 &&
      (t.laneOwns === "m" || t.laneOwns === "n") &&
      SUBGROUP_COLS.includes(t.cols as number) &&
      typeof t.uniformB === "boolean" &&
      !(t.uniformB && t.laneOwns !== "n")
    );
  }
  return (
    t.kind === "workgroup" &&
    positive("tileM", "tileN", "tileK", "threadM", "threadN") &&
    (t.tileM as number) % (t.threadM as number) === 0 &&
    (t.tileN as number) % (t.threadN as number) === 0 &&
    (t.threadM as number) % 4 === 0 &&
    (t.threadN as number) % 4 === 0 &&
    // Vector loads along k fill 4 rows of a block at a time.
    (t.vecLoads !== true || (t.tileK as number) % 4 === 0) &&
    [t.vecLoads, t.doubleBuffer].every((f) => f === undefined || typeof f === "boolean")
  );
}

export function tileKey(t: TileConfig): string {
  if (t.kind === "matrix") return matrixTileKey(t);
  return t.kind === "subgroup"
    ? `sg${t.lanes}x${t.subgroups}r${t.rows}${t.laneOwns}c${t.cols}${t.uniformB ? "u" : ""}`
    : `wg${t.tileM}x${t.tileN}x${t.tileK}t${t.threadM}x${t.threadN}${t.vecLoads ? "v" : ""}${t.doubleBuffer ? "d" : ""}`;
}

/** Invocations per workgroup. */
export function workgroupSize(t: TileConfig): number {
  if (t.kind === "matrix") return matrixWorkgroupSize(t);
  return t.kind === "subgroup" ? t.lanes * t.subgroups : (t.tileM / t.threadM) * (t.tileN / t.threadN);
}

/**
 * vec4s per row of a staged block of `extent` rows or columns (workgroup-tile kernels, wgsl.ts): padded by one,
 * so that invocations storing along k spread over memory banks.
 */
export function stagedRowVec4s(extent: number): number {
  return extent / 4 + 1;
}

/** Workgroup memory of a workgroup-tile kernel: both staged blocks, tileK rows each (twice, double-buffered). */
export function workgroupStorageBytes(t: WorkgroupTiles): number {
  return (stagedRowVec4s(t.tileM) + stagedRowVec4s(t.tileN)) * t.tileK * 16 * (t.doubleBuffer ? 2 : 1);
}

/** Output extent (rows along M, columns along N) one workgroup covers. */
export function workgroupTile(t: TileConfig): { m: number; n: number } {
  if (t.kind === "matrix") return matrixTile(t);
  if (t.kind === "workgroup") return { m: t.tileM, n: t.tileN };
  const broadcast = t.subgroups * t.rows;
  const owned = t.lanes * 4 * t.cols;
  return t.laneOwns === "n" ? { m: broadcast, n: owned } : { m: owned, n: broadcast };
}
