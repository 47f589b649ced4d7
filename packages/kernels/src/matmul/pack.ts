/**
 * Packs a GEMM's B into the windows that uniformB tiles read (tiles.ts, uniformWindow): window w = set · perSet +
 * nWin · kWins + kWin starts at float w · UNIFORM_WINDOW_BYTES / 4 and holds, row-major, the B of batch item `set`
 * (one set for a B shared by the batch): its logical columns nWin · n + j (j < n) over steps kWin · k + i (i < k),
 * as f32, with zeros past N and K. Logical columns are those the GEMM's output
 * walks: a gated product's interleave value and gate columns (wgsl.ts), so the window holds them side by side.
 */
import type { Device, DType, Tensor } from "@ldm/tensor";
import { type DerivedCache, derivedCache } from "../common/derived.ts";
import type { KernelDecl } from "../common/kernel.ts";
import { UNIFORM_WINDOW_BYTES } from "./tiles.ts";
import { operandBinding, operandReaders } from "./wgsl.ts";

export interface PackSpec {
  b: DType;
  transposeB: boolean;
  gated: boolean;
  /** The window's columns and steps (uniformWindow; k is a multiple of 4). */
  n: number;
  k: number;
  /** B is read as vectors of 4 steps: transposed (its rows run along K), K a multiple of 4. */
  vec: boolean;
}

/**
 * One work item per 4 steps of one column of every window, stored as one vector; the bytes after a window's n · k
 * floats are left unwritten. (One item per element took a quarter of a 512-row GEMM's CPU time on lavapipe: two
 * scalar storage accesses and two divisions by a uniform per element; benchmarks/RESULTS.md, "Small GEMMs and
 * convolutions".)
 */
export const PACK_B: KernelDecl<PackSpec> = {
  name: "gemm_pack_b",
  params: { N: "u32", K: "u32", kWins: "u32", perSet: "u32", bOff: "u32", bRow: "u32", bBatch: "u32" },
  bindings: (s) => [operandBinding("B", s.b, s.vec), { name: "P", type: "vec4<f32>", access: "read_write" }],
  workgroupSize: 64,
  module: (s) => operandReaders("B", s.b, s.vec),
  main: (s) => {
    const column = s.gated ? "(n >> 1u) + (n & 1u) * (p.N >> 1u)" : "n";
    const quads = s.k / 4;
    const at = (k: string) =>
      `p.bOff + bi * p.bBatch + ${s.transposeB ? `col * p.bRow + ${k}` : `(${k}) * p.bRow + col`}`;
    const read = s.vec
      ? `if (k < p.K) { v = B4((${at("k")}) >> 2u); }`
      : [0, 1, 2, 3].map((j) => `if (k + ${j}u < p.K) { v[${j}] = B_at(${at(`k + ${j}u`)}); }`).join("\n    ");
    return `
  let w = item / ${s.n * quads}u;
  let r = item % ${s.n * quads}u;
  let bi = w / p.perSet;
  let n = ((w % p.perSet) / p.kWins) * ${s.n}u + r / ${quads}u;
  let k = (w % p.kWins) * ${s.k}u + (r % ${quads}u) * 4u;
  var v = vec4f(0.0);
  if (n < p.N) {
    let col = ${column};
    ${read}
  }
  P[w * ${UNIFORM_WINDOW_BYTES / 16}u + r] = v;`;
  },
};

/** A device's packed windows kept across calls (common/derived.ts), off until setPackCacheBudget. */
function cacheOf(device: Device): DerivedCache {
  return derivedCache(device, "gemm-pack", 0);
}

/**
 * Keeps the packed windows of a GEMM's B (PACK_B's output) across calls, for up to `bytes` of GPU memory on
 * `device`; 0 (the default) packs B anew on every call, and frees what the cache held. B is a weight in the Linear
 * and GEGLU layers, the same on every call, so its pack pass is done once (common/derived.ts says when an entry is
 * used and which are kept).
 */
export function setPackCacheBudget(device: Device, bytes: number): void {
  cacheOf(device).setBudget("setPackCacheBudget", bytes);
}

/** What the pack cache of `device` holds: entries, their bytes and the budget. */
export function packCacheStats(device: Device): { entries: number; bytes: number; budget: number } {
  return cacheOf(device).stats();
}

/**
 * B's packed windows for a GEMM reading all of `b` under `key` (its geometry): the cached ones where valid, else
 * `pack()`'s, kept when the budget has room. `owned`: the caller disposes it after use.
 */
export function cachedPack(b: Tensor, key: string, pack: () => Tensor): { packed: Tensor; owned: boolean } {
  const { value, owned } = cacheOf(b.device).get(b, key, pack);
  return { packed: value, owned };
}
