/**
 * Packs a GEMM's B into the windows that uniformB tiles read (tiles.ts, uniformWindow): window w = set · perSet +
 * nWin · kWins + kWin starts at float w · UNIFORM_WINDOW_BYTES / 4 and holds, row-major, the B of batch item `set`
 * (one set for a B shared by the batch): its logical columns nWin · n + j (j < n) over steps kWin · k + i (i < k),
 * as f32, with zeros past N and K. Logical columns are those the GEMM's output
 * walks: a gated product's interleave value and gate columns (wgsl.ts), so the window holds them side by side.
 */
import type { DType } from "@ldm/tensor";
import type { KernelDecl } from "../common/kernel.ts";
import { UNIFORM_WINDOW_BYTES } from "./tiles.ts";

export interface PackSpec {
  b: DType;
  transposeB: boolean;
  gated: boolean;
  /** The window's columns and steps (uniformWindow). */
  n: number;
  k: number;
}

/** One work item per element of every window; the bytes after a window's n · k floats are left unwritten. */
export const PACK_B: KernelDecl<PackSpec> = {
  name: "gemm_pack_b",
  params: { N: "u32", K: "u32", kWins: "u32", perSet: "u32", bOff: "u32", bRow: "u32", bBatch: "u32" },
  bindings: (s) => [
    { name: "B", type: s.b },
    { name: "P", type: "f32", access: "read_write" },
  ],
  workgroupSize: 64,
  main: (s) => {
    const column = s.gated ? "(n >> 1u) + (n & 1u) * (p.N >> 1u)" : "n";
    return `
  let w = item / ${s.n * s.k}u;
  let r = item % ${s.n * s.k}u;
  let bi = w / p.perSet;
  let n = ((w % p.perSet) / p.kWins) * ${s.n}u + r / ${s.k}u;
  let k = (w % p.kWins) * ${s.k}u + r % ${s.k}u;
  var v = 0.0;
  if (n < p.N && k < p.K) {
    let col = ${column};
    v = f32(B[p.bOff + bi * p.bBatch + ${s.transposeB ? "col * p.bRow + k" : "k * p.bRow + col"}]);
  }
  P[w * ${UNIFORM_WINDOW_BYTES / 4}u + r] = v;`;
  },
};
