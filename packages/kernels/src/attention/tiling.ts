/**
 * How the attention kernel is tiled: a pure function of the adapter and the problem, unit-tested.
 *
 * Measured on lavapipe (2-core EPYC, 2026-11): a storage load inside a loop costs on the order of a hundred
 * cycles per SIMD lane group whether or not every lane reads the same address (no broadcast), while
 * arithmetic runs at ~20 GFLOP/s. Loading a key row cooperatively — lane i of a subgroup loads element i,
 * then `subgroupBroadcast` hands each element to all lanes — cut the cost of q·kᵀ by 4×; giving each lane
 * four query rows amortised it 4× more (QK alone: 1 → 16 GFLOP/s). GPUs broadcast uniform loads in
 * hardware, so there each invocation takes one row and vectorised loads.
 */

import { UNIFORM_WINDOW_BYTES } from "../matmul/tiles.ts";

export interface AdapterTraits {
  isCpu: boolean;
  /** The subgroup size when the device has subgroups and the adapter reports one fixed size, else null. */
  subgroupSize: number | null;
}

/** Tiles of the fused (flash) kernel. */
export interface FusedTiling {
  /**
   * "subgroup": lanes load key/value rows cooperatively and broadcast them (CPU adapters);
   * "lanes": every invocation loads whole rows itself (GPUs).
   */
  kind: "subgroup" | "lanes";
  /** Lanes that share loads in the "subgroup" kind (the adapter's subgroup size); 1 for "lanes". */
  subgroupSize: number;
  /** Query rows per invocation: every loaded key and value serves this many rows. */
  rowsPerInvocation: number;
  /** Output columns per invocation; divides d. Below d, invocations split a head's columns and each recomputes the scores. */
  dChunk: number;
  /** Keys scored per online-softmax step (one rescale of the accumulator per block). */
  keyBlock: number;
  /**
   * "subgroup" kind: elements of d per step of the score loop. d keeps the q rows in registers; a divisor
   * of d (a multiple of subgroupSize) reloads q in chunks each key block, bounding code size for wide heads.
   */
  qChunk: number;
  workgroupSize: number;
}

/**
 * Wide heads on CPU adapters: blocks of query rows run as GEMM (scores), row softmax and GEMM (output), so
 * the score block of one query block is materialised. Single heads without a causal mask only.
 */
export interface BlockedTiling {
  kind: "blocked";
  /** Query rows per block, summed over the batch (each batch item takes ⌊queryBlock / B⌋ rows, at least 1). */
  queryBlock: number;
}

/**
 * CPU adapters with subgroups: K and V of one (batch item, head) are packed as f32 into windows of `windowKeys`
 * keys, each read through a 64 KiB uniform binding (K and V one each), and every window is one dispatch over all
 * of the head's query rows. The lanes of a subgroup gather a key block's vec4s (one each) and hand them to all
 * lanes with subgroupBroadcast. The online softmax state of each row (max, sum, accumulator) is carried from
 * window to window in an f32 buffer. Heads whose width is a multiple of 4, without a causal mask.
 */
export interface WindowTiling {
  kind: "window";
  /** The adapter's subgroup size. */
  subgroupSize: number;
  /** Query rows per invocation: every loaded key and value serves this many rows. */
  rowsPerInvocation: number;
  /** Keys scored per online-softmax step. */
  keyBlock: number;
  /** Keys per window (dispatch); at most WINDOW_FLOATS / d. */
  windowKeys: number;
  workgroupSize: number;
}

export type AttentionTiling = FusedTiling | BlockedTiling | WindowTiling;

/** What else decides between the fused kernel and blocked GEMMs. */
export interface AttentionShape {
  heads: number;
  causal: boolean;
}

/** The largest divisor of d that is a multiple of `unit` and at most `limit` (d itself when it fits). */
export function columnChunk(d: number, unit: number, limit: number): number {
  if (d <= limit) return d;
  for (let c = limit - (limit % unit); c >= unit; c -= unit) if (d % c === 0) return c;
  return unit;
}

/** Columns one GPU invocation accumulates: registers, so wide heads are split over invocations. */
const GPU_MAX_COLUMNS = 64;
/**
 * Columns one CPU lane accumulates. Its q row and accumulator are private variables (spilled to the stack
 * when they outgrow registers, which is cheap); the limit bounds the unrolled code and so compile time.
 */
const CPU_MAX_COLUMNS = 160;

/**
 * q values one CPU lane keeps in registers across the key loop (rows · d). Every key and value element a
 * subgroup loads (a per-lane scalar loop in lavapipe's code, ~12 instructions per lane) serves 8 · rows query
 * rows, so more rows amortise the loads; the unrolled body, and with it compile time, grows with rows · d.
 * For d = 40, four rows ran 1.2–1.3× the speed of two (d = 80: two rows 1.6× one) for a few more seconds of
 * compiling; eight rows compiled 3× as long again for little more (benchmarks/RESULTS.md, "Kernels: group norm
 * and attention").
 */
const CPU_ROW_BUDGET = 160;
/**
 * Heads wider than this reload q in chunks instead of keeping it in registers: whole rows of the VAE's d = 512
 * per lane do not finish compiling on lavapipe. (A subgroup per row with the lanes splitting d serves one row
 * per key load instead of eight, and K/V then fall out of cache at N = 4096; benchmarks/RESULTS.md.)
 */
const CPU_RESIDENT_D = 160;
/** Elements of d per step when q is reloaded. */
const CPU_Q_CHUNK = 32;

/**
 * From this head width on, CPU adapters run single non-causal heads as blocked GEMMs: matmul reaches
 * 10–24 GFLOP/s on lavapipe where the fused kernel's q reloads and column splits held d = 512 to 0.5.
 */
export const CPU_BLOCKED_MIN_D = 256;
/**
 * Bytes of one f32 score block; the probabilities are a second block of the same size. Bounds the extra
 * memory (2 × 8 MiB) while keeping blocks large enough (512 rows at Nk = 4096) that GEMM tiles stay full.
 */
const SCORE_BLOCK_BYTES = 8 << 20;

/**
 * Query rows per blocked step: as many as the score budget allows for one batch item, in multiples of 64
 * (a GEMM tile height) when more than 64 fit.
 */
export function queryBlockRows(nq: number, nk: number): number {
  const fit = Math.max(1, Math.floor(SCORE_BLOCK_BYTES / (4 * nk)));
  const rows = fit > 64 ? fit - (fit % 64) : fit;
  return Math.min(rows, Math.max(nq, 1));
}

/**
 * Most query rows per lane, fused kernel and windows alike (within CPU_ROW_BUDGET). Windows had 2 from runs on a
 * loaded machine (d = 40: 2 rows as fast as 4); on a quiet one 4 rows ran SD's 4096-token self-attention in 903 /
 * 956 ms of GPU time against 1111 / 1045 (26.6 / 27.2 against 21.1 / 22.4 GFLOP/CPU-s, interleaved) and tied on its
 * cross-attention (4096×77: 19.0 / 17.9), compiling in about a second either way. Eight rows compiled for 19 s and
 * ran slower (fused: 19.9 against 21.4).
 */
const CPU_MAX_ROWS = 4;

/**
 * Query rows from which windows beat the fused kernel. Windows cost a pack dispatch and one dispatch per window
 * for every (batch item, head), so they need many rows per head to pay. Where the fused kernel keeps 4 rows per
 * lane (d ≤ 40), its loads are amortised as well as the windows' and only the largest heads gain (interleaved, CPU
 * time: 4096×77 at d = 40 1.07–1.2× with windows, 4096² 1.0×, 1024×77 0.83×, 256×77 0.64×, 512² at d = 32 0.83×); with
 * fewer rows per lane (d = 80, 160) windows win from 128 rows (128×77 at d = 160 1.7×, 1024² at d = 80 1.8×)
 * and tie at 64. The built-in model's heads (d = 32, 16–64 rows) ran 16 dispatches per call as windows, 1 fused.
 * (Those windows had 2 rows per lane; with 4, GPU ms windows / fused: 1024×77 at d = 40 12 / 12, 1024² 90 / 85,
 * 512² at d = 32 12 / 9.)
 */
export function windowMinQueries(d: number): number {
  return cpuRows(d, Number.POSITIVE_INFINITY, CPU_MAX_ROWS) >= CPU_MAX_ROWS ? 4096 : 128;
}

/**
 * Multiply-adds per batch item (heads · Nq · Nk · d) below which the fused kernel runs where windows would be
 * faster: a window kernel compiles the first time for longer than the fused one, and at such sizes saves under a
 * millisecond a call. The built-in model's VAE head (one head of 256 tokens × 64: 4.2 M) compiled cold in 6.0 s as
 * windows against 2.4 s fused (8 lanes) and ran in 1.5 against 1.7 ms (benchmarks/RESULTS.md); SD-sized heads keep
 * windows down to 8 heads of 128 queries × 77 keys × 80 (6.3 M).
 */
export const WINDOW_MIN_MACS = 5_000_000;

/** Floats in one window of packed K or V: WebGPU's default maxUniformBufferBindingSize, which every adapter has. */
export const WINDOW_FLOATS = UNIFORM_WINDOW_BYTES / 4;

/**
 * Keys per window: Nk split evenly over the fewest windows of at most WINDOW_FLOATS / d keys (4096 keys of
 * d = 40 as 11 windows of 373 and one of 366, not 10 of 409 and one of 6).
 */
export function windowKeys(d: number, nk: number): number {
  const most = Math.floor(WINDOW_FLOATS / d);
  return Math.ceil(nk / Math.ceil(nk / most));
}

export function attentionTiling(
  adapter: AdapterTraits,
  d: number,
  nq: number,
  nk: number,
  shape: AttentionShape = { heads: 1, causal: false },
): AttentionTiling {
  // f16 rows of odd width would not start on the 4-byte boundaries the block copies need.
  if (adapter.isCpu && d >= CPU_BLOCKED_MIN_D && d % 2 === 0 && shape.heads === 1 && !shape.causal) {
    return { kind: "blocked", queryBlock: queryBlockRows(nq, nk) };
  }
  const windowed =
    d % 4 === 0 && d <= CPU_RESIDENT_D && nq >= windowMinQueries(d) && shape.heads * nq * nk * d >= WINDOW_MIN_MACS;
  if (adapter.isCpu && adapter.subgroupSize !== null && !shape.causal && windowed) {
    return {
      kind: "window",
      subgroupSize: adapter.subgroupSize,
      rowsPerInvocation: cpuRows(d, nq, CPU_MAX_ROWS),
      keyBlock: 2,
      windowKeys: windowKeys(d, nk),
      workgroupSize: 64,
    };
  }
  return fusedTiling(adapter, d, nq);
}

/** Query rows per CPU lane: as many as CPU_ROW_BUDGET values of q allow, at most `most` and at most Nq. */
function cpuRows(d: number, nq: number, most: number): number {
  return Math.max(1, Math.min(Math.floor(CPU_ROW_BUDGET / d), most, nq));
}

/**
 * Subgroups per workgroup of the fused kernel on CPU adapters: one. llvmpipe hands whole workgroups to its threads,
 * and small heads have few invocations (the built-in model's 16 queries × 4 heads × batch 2 at 4 rows per lane: 32),
 * which 64-lane workgroups left on one core. GPU time per call, one subgroup against eight (40 calls timed together,
 * quiet machine): 16×77 × 4 heads × 32 0.92 → 0.15 ms, 64×64 0.80 → 0.39, 64×77 0.84 → 0.25, 16×16 0.37 → 0.12;
 * larger heads the same within noise (1024×77 × 8 × 40 9.8 / 10.1 ms, 512² × 4 × 32 7.6 / 6.5, 64×77 × 8 × 160
 * 7.2 / 6.6).
 */
const CPU_FUSED_WORKGROUP_SUBGROUPS = 1;

/** The fused kernel's tiles: where windows and blocked GEMMs do not apply (and to compare them against). */
export function fusedTiling(adapter: AdapterTraits, d: number, nq: number): FusedTiling {
  const sg = adapter.subgroupSize;
  if (!adapter.isCpu || sg === null) {
    const unit = d % 4 === 0 ? 4 : 1;
    return {
      kind: "lanes",
      subgroupSize: 1,
      rowsPerInvocation: 1,
      dChunk: columnChunk(d, unit, GPU_MAX_COLUMNS),
      keyBlock: adapter.isCpu ? 2 : 8,
      qChunk: d,
      workgroupSize: 64,
    };
  }
  const qChunk = d <= CPU_RESIDENT_D ? d : columnChunk(d, sg, CPU_Q_CHUNK);
  return {
    kind: "subgroup",
    subgroupSize: sg,
    rowsPerInvocation: cpuRows(d, nq, CPU_MAX_ROWS),
    dChunk: columnChunk(d, 1, CPU_MAX_COLUMNS),
    keyBlock: qChunk === d ? 2 : 8,
    qChunk: d % qChunk === 0 ? qChunk : d,
    workgroupSize: CPU_FUSED_WORKGROUP_SUBGROUPS * sg,
  };
}
