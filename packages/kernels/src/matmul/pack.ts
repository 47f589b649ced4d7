/**
 * Packs a GEMM's B into the windows that uniformB tiles read (tiles.ts, uniformWindow): window w = set · perSet +
 * nWin · kWins + kWin starts at float w · UNIFORM_WINDOW_BYTES / 4 and holds, row-major, the B of batch item `set`
 * (one set for a B shared by the batch): its logical columns nWin · n + j (j < n) over steps kWin · k + i (i < k),
 * as f32, with zeros past N and K. Logical columns are those the GEMM's output
 * walks: a gated product's interleave value and gate columns (wgsl.ts), so the window holds them side by side.
 */
import type { Device, DType, Tensor } from "@ldm/tensor";
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

/** A device's packed windows kept across calls (see setPackCacheBudget). */
interface PackCache {
  budget: number;
  bytes: number;
  /** By B's buffer: what was packed from it (the geometry's key), at which contentsVersion. */
  entries: Map<GPUBuffer, { key: string; version: number; packed: Tensor }>;
}

const caches = new WeakMap<Device, PackCache>();

/**
 * Keeps the packed windows of a GEMM's B (pack.ts's PACK_B output) across calls, for up to `bytes` of GPU memory
 * on `device`; 0 (the default) packs B anew on every call, and frees what the cache held. B is a weight in the
 * Linear and GEGLU layers, the same on every call, so its pack pass (a pass over B and one dispatch) is done once.
 * An entry is used only while its buffer's `contentsVersion` is unchanged: a LoRA merge writing the weight, a
 * kernel writing it, or its tensor's disposal makes it stale, and it is packed again (or dropped) on its next use.
 * Entries are kept first come, first kept, up to the budget (stale ones are dropped to make room): a model's layers
 * run in the same order every call, which would evict every entry before its reuse if the oldest made room.
 */
export function setPackCacheBudget(device: Device, bytes: number): void {
  if (!(bytes >= 0) || !Number.isFinite(bytes)) {
    throw new Error(`setPackCacheBudget: the budget must be a finite number of bytes ≥ 0, got ${bytes}`);
  }
  const cache = cacheOf(device);
  cache.budget = bytes;
  for (const [buffer, entry] of cache.entries) {
    if (cache.bytes <= bytes) break;
    drop(cache, buffer, entry.packed);
  }
}

/** What the pack cache of `device` holds: entries, their bytes and the budget. */
export function packCacheStats(device: Device): { entries: number; bytes: number; budget: number } {
  const cache = cacheOf(device);
  return { entries: cache.entries.size, bytes: cache.bytes, budget: cache.budget };
}

function cacheOf(device: Device): PackCache {
  let cache = caches.get(device);
  if (!cache) {
    cache = { budget: 0, bytes: 0, entries: new Map() };
    caches.set(device, cache);
  }
  return cache;
}

function drop(cache: PackCache, buffer: GPUBuffer, packed: Tensor): void {
  cache.entries.delete(buffer);
  cache.bytes -= packed.byteLength;
  packed.dispose();
}

/**
 * B's packed windows for a GEMM reading all of `b` under `key` (its geometry): the cached ones where valid, else
 * `pack()`'s, kept when the budget has room. `owned`: the caller disposes it after use.
 */
export function cachedPack(b: Tensor, key: string, pack: () => Tensor): { packed: Tensor; owned: boolean } {
  const device = b.device;
  const cache = caches.get(device);
  if (!cache || cache.budget === 0) return { packed: pack(), owned: true };
  const buffer = b.buffer;
  const version = device.contentsVersion(buffer);
  const hit = cache.entries.get(buffer);
  if (hit && hit.key === key && hit.version === version) return { packed: hit.packed, owned: false };
  if (hit) drop(cache, buffer, hit.packed);
  const packed = pack();
  if (cache.bytes + packed.byteLength > cache.budget) {
    for (const [stale, entry] of cache.entries) {
      if (device.contentsVersion(stale) !== entry.version) drop(cache, stale, entry.packed);
    }
  }
  if (cache.bytes + packed.byteLength > cache.budget) return { packed, owned: true };
  cache.entries.set(buffer, { key, version, packed: packed.keep() });
  cache.bytes += packed.byteLength;
  return { packed, owned: false };
}
