/**
 * Tiles of attention on subgroup matrices (attention.ts): a pure function of the adapter's configs and limits
 * and of the problem, unit-tested without such an adapter.
 *
 * A workgroup takes `subgroups × M` query rows of one (batch item, head); each subgroup owns M of them. The
 * head width d is zero-padded to `paddedD`, a multiple of the config's K (q·kᵀ reduces over d) and N (p·v has
 * d columns). Keys go `keyBlock` at a time, a multiple of N (score columns) and K (p·v reduces over keys).
 */
import type { DType } from "@ldm/tensor";
import { COMPONENT_BYTES, chooseMatrixConfig, type MatrixAdapter, stagePad } from "./plan.ts";

export interface AttentionMatrixTiles {
  kind: "attention-matrix";
  shape: { M: number; N: number; K: number };
  /** Operand component type (= q, k and v's dtype); scores, softmax and the output accumulate in f32. */
  component: "f16" | "f32";
  lanes: number;
  /** Subgroups per workgroup, each M query rows. */
  subgroups: number;
  keyBlock: number;
  paddedD: number;
  /** Plain WGSL in place of the subgroup-matrix builtins (lavapipe); never chosen by the planner. */
  emulate: boolean;
}

export interface AttentionMatrixInputs extends MatrixAdapter {
  dtype: DType;
  d: number;
  nq: number;
  causal: boolean;
}

/** Query rows of a workgroup before shrinking: 4 subgroups. */
const TARGET_SUBGROUPS = 4;
/** Keys per online-softmax step before shrinking. */
const TARGET_KEY_BLOCK = 32;

const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);
const lcm = (a: number, b: number) => (a * b) / gcd(a, b);
const roundUp = (x: number, m: number) => Math.ceil(x / m) * m;

/** Rows of workgroup memory per staged row of q, k or v (padded by 16 bytes, as the GEMM's blocks). */
export function attentionStrides(t: AttentionMatrixTiles): { qkv: number; p: number; o: number } {
  const pad = stagePad(t.component);
  return { qkv: t.paddedD + pad, p: t.keyBlock + pad, o: t.paddedD };
}

export function attentionQueryRows(t: AttentionMatrixTiles): number {
  return t.subgroups * t.shape.M;
}

/**
 * Workgroup memory: one block of q (at the start) then k then v rows; per subgroup its f32 scores, its
 * probabilities in the component type and its f32 output rows; and two f32 statistics per query row.
 */
export function attentionStorageBytes(t: AttentionMatrixTiles): number {
  const s = attentionStrides(t);
  const rows = attentionQueryRows(t);
  const qkv = Math.max(rows, t.keyBlock) * s.qkv * COMPONENT_BYTES[t.component];
  const scores = rows * t.keyBlock * 4;
  const probabilities = rows * s.p * COMPONENT_BYTES[t.component];
  const out = rows * s.o * 4;
  return qkv + scores + probabilities + out + 2 * rows * 4;
}

/**
 * Tiles, or null where the present attention kernel serves: a causal mask, no config for the dtype with f32
 * results, no known subgroup size, or no tile within the limits (wide heads on 16 KiB of workgroup memory).
 * Within the limits the key block shrinks first (to one matrix step), then the subgroups.
 */
export function chooseAttentionMatrixTiles(inp: AttentionMatrixInputs): AttentionMatrixTiles | null {
  if (inp.causal || (inp.dtype !== "f16" && inp.dtype !== "f32")) return null;
  const config = chooseMatrixConfig(inp.configs, inp.dtype);
  const lanes = inp.subgroupMaxSize;
  if (!config || !lanes || inp.d < 1) return null;
  const step = lcm(config.N, config.K);
  const tiles: AttentionMatrixTiles = {
    kind: "attention-matrix",
    shape: { M: config.M, N: config.N, K: config.K },
    component: inp.dtype,
    lanes,
    subgroups: Math.max(1, Math.min(TARGET_SUBGROUPS, Math.ceil(inp.nq / config.M))),
    keyBlock: roundUp(TARGET_KEY_BLOCK, step),
    paddedD: roundUp(inp.d, lcm(config.K, config.N)),
    emulate: false,
  };
  const fits = () =>
    tiles.lanes * tiles.subgroups <= inp.maxInvocations && attentionStorageBytes(tiles) <= inp.maxWorkgroupStorageBytes;
  while (!fits()) {
    if (tiles.keyBlock > step) tiles.keyBlock -= step;
    else if (tiles.subgroups > 1) tiles.subgroups -= 1;
    else return null;
  }
  return tiles;
}

/** Whether tiles forced by a caller fit the head width (the planner's always do). */
export function attentionTilesError(t: AttentionMatrixTiles, d: number, dtype: DType): string | null {
  const { M, N, K } = t.shape;
  const positive = [M, N, K, t.lanes, t.subgroups, t.keyBlock, t.paddedD].every((x) => Number.isInteger(x) && x > 0);
  if (!positive) return "every extent must be a positive integer";
  if (t.component !== dtype) return `its component type ${t.component} is not the tensors' ${dtype}`;
  if (t.paddedD < d || t.paddedD % K || t.paddedD % N)
    return `padded width ${t.paddedD} must be ≥ d = ${d} and a multiple of K and N`;
  if (t.keyBlock % K || t.keyBlock % N) return `key block ${t.keyBlock} must be a multiple of K and N`;
  return null;
}
