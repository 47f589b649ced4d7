/**
 * Attention on subgroup matrices, flash style: per query block, per block of keys, scores s = q·kᵀ and the
 * output's update p·v are subgroup-matrix GEMMs, with an f32 online softmax between them. Layouts are
 * attention()'s: q, out [B, Nq, H·d], k, v [B, Nk, H·d].
 *
 * A workgroup owns `subgroups × M` query rows of one (batch item, head), each subgroup M of them. The q block
 * is staged once in workgroup memory (zero past d and Nq) and kept as left matrices; then per key block:
 *   1. the k block is staged (zero past d and Nk) and each subgroup computes its M × keyBlock scores with k
 *      loaded column-major as the right operand (kᵀ without a transpose), storing them (f32) in `Ss`;
 *   2. the v block replaces k while each subgroup's lanes run the online softmax of its rows in f32: running
 *      max and sum, the output rows rescaled by e^(m−m'), probabilities in the component type in `Ps` (the
 *      sum is taken over the rounded values the multiply sees);
 *   3. each subgroup loads its output rows as result matrices, accumulates p·v on them and stores them back.
 * The output rows live in workgroup memory (f32) because a result matrix cannot be scaled row by row; out
 * = rows / sum at the end. Masked keys (past Nk) have probability 0 and take no part in the max.
 *
 * Causal masks are not handled here (the planner leaves them to the present kernel).
 */
import type { Device, DType, Tensor } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { wgslAll } from "../common/wgsl.ts";
import {
  type AttentionMatrixTiles,
  attentionQueryRows,
  attentionStrides,
  attentionTilesError,
  chooseAttentionMatrixTiles,
} from "./attention-plan.ts";
import { matrixAdapter } from "./plan.ts";
import { type MatrixLoad, matrixDialect, matrixDirectives, matrixEnables } from "./wgsl.ts";

export interface MatrixAttentionSpec {
  tiles: AttentionMatrixTiles;
  d: number;
  /** Storage dtype of q, k, v and out. */
  dtype: DType;
}

/** Below any real logit, yet finite so that `m − m'` cannot be inf − inf. */
const MASKED = "-1.0e30";

const Q_LEFT: MatrixLoad = { kind: "left", array: "KV", layout: "row_major" };
const K_RIGHT: MatrixLoad = { kind: "right", array: "KV", layout: "col_major" };
const V_RIGHT: MatrixLoad = { kind: "right", array: "KV", layout: "row_major" };
const P_LEFT: MatrixLoad = { kind: "left", array: "Ps", layout: "row_major" };
const O_RESULT: MatrixLoad = { kind: "result", array: "Os", layout: "row_major" };
const dialectOf = (t: AttentionMatrixTiles) =>
  matrixDialect(t, [Q_LEFT, K_RIGHT, V_RIGHT, P_LEFT, O_RESULT], ["Ss", "Os"]);

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

export const MATRIX_ATTENTION: KernelDecl<MatrixAttentionSpec> = {
  name: "attention_matrix",
  params: { heads: "u32", nq: "u32", nk: "u32", qBlocks: "u32", rowStride: "u32", scale: "f32" },
  bindings: (s) => [
    { name: "q", type: s.dtype },
    { name: "k", type: s.dtype },
    { name: "v", type: s.dtype },
    { name: "out", type: s.dtype, access: "read_write" },
  ],
  workgroupSize: (s) => s.tiles.lanes * s.tiles.subgroups,
  itemsPerWorkgroup: 1,
  enables: (s) => matrixEnables(s.tiles),
  directives: (s) => matrixDirectives(s.tiles),
  module: (s) => {
    const t = s.tiles;
    const st = attentionStrides(t);
    const rows = attentionQueryRows(t);
    return `
var<workgroup> KV: array<${t.component}, ${Math.max(rows, t.keyBlock) * st.qkv}>;
var<workgroup> Ss: array<f32, ${rows * t.keyBlock}>;
var<workgroup> Ps: array<${t.component}, ${rows * st.p}>;
var<workgroup> Os: array<f32, ${rows * st.o}>;
var<workgroup> rowMax: array<f32, ${rows}>;
var<workgroup> rowSum: array<f32, ${rows}>;
${dialectOf(t).module}`;
  },
  main: (s) => {
    const t = s.tiles;
    const { M, N, K } = t.shape;
    const d = dialectOf(t);
    const st = attentionStrides(t);
    const rows = attentionQueryRows(t);
    const threads = t.lanes * t.subgroups;
    const DP = t.paddedD;
    const KB = t.keyBlock;
    const C = t.component;
    // Rows of q, k or v into KV, zero past the head's d columns and past `count` rows.
    const stage = (src: string, n: number, first: string, count: string, tokens: string) => `
    for (var e = lid; e < ${n * DP}u; e += ${threads}u) {
      let r = e / ${DP}u;
      let c = e % ${DP}u;
      let at = (batch * ${tokens} + min(${first} + r, ${count} - 1u)) * p.rowStride + headOffset + min(c, ${s.d - 1}u);
      KV[r * ${st.qkv}u + c] = ${C}(select(0.0, f32(${src}[at]), ${wgslAll(`${first} + r < ${count}`, `c < ${s.d}u`)}));
    }`;
    const qs = range(DP / K);
    const scoreMats = range(KB / N);
    const pSteps = range(KB / K);
    const outMats = range(DP / N);
    const lines = (xs: string[]) => xs.map((x) => `    ${x}`).join("\n");
    return `
  let qBlock = item % p.qBlocks;
  let head = (item / p.qBlocks) % p.heads;
  let batch = item / p.qBlocks / p.heads;
  let q0 = qBlock * ${rows}u;
  let headOffset = head * ${s.d}u;
  let sg = lid / ${t.lanes}u;
  let sgLane = lid % ${t.lanes}u;
  let rows0 = sg * ${M}u;
  ${stage("q", rows, "q0", "p.nq", "p.nq")}
  for (var e = lid; e < ${rows * st.o}u; e += ${threads}u) { Os[e] = 0.0; }
  for (var r = lid; r < ${rows}u; r += ${threads}u) {
    rowMax[r] = ${MASKED};
    rowSum[r] = 0.0;
  }
  workgroupBarrier();
${qs.map((i) => `  ${d.load(`ql${i}`, Q_LEFT, `rows0 * ${st.qkv}u + ${i * K}u`, `${st.qkv}u`)}`).join("\n")}
  workgroupBarrier();
  for (var key0 = 0u; key0 < p.nk; key0 += ${KB}u) {${stage("k", KB, "key0", "p.nk", "p.nk")}
    workgroupBarrier();
${scoreMats
  .map((j) =>
    lines([
      d.zero(`s${j}`),
      ...qs.flatMap((i) => [
        d.load(`k${j}_${i}`, K_RIGHT, `${j * N * st.qkv + i * K}u`, `${st.qkv}u`),
        d.mma(`ql${i}`, `k${j}_${i}`, `s${j}`),
      ]),
      d.store("Ss", `rows0 * ${KB}u + ${j * N}u`, `s${j}`, `${KB}u`),
    ]),
  )
  .join("\n")}
    workgroupBarrier();${stage("v", KB, "key0", "p.nk", "p.nk")}
    let valid = min(${KB}u, p.nk - key0);
    for (var r = sgLane; r < ${M}u; r += ${t.lanes}u) {
      let row = rows0 + r;
      var m = rowMax[row];
      for (var j = 0u; j < valid; j++) { m = max(m, Ss[row * ${KB}u + j] * p.scale); }
      let correction = exp(rowMax[row] - m);
      var l = rowSum[row] * correction;
      for (var j = 0u; j < ${KB}u; j++) {
        let pr = ${C}(select(0.0, exp(Ss[row * ${KB}u + j] * p.scale - m), j < valid));
        Ps[row * ${st.p}u + j] = pr;
        l += f32(pr);
      }
      rowMax[row] = m;
      rowSum[row] = l;
      for (var c = 0u; c < ${DP}u; c++) { Os[row * ${st.o}u + c] *= correction; }
    }
    workgroupBarrier();
${lines(pSteps.map((i) => d.load(`p${i}`, P_LEFT, `rows0 * ${st.p}u + ${i * K}u`, `${st.p}u`)))}
${outMats
  .map((j) =>
    lines([
      d.load(`o${j}`, O_RESULT, `rows0 * ${st.o}u + ${j * N}u`, `${st.o}u`),
      ...pSteps.flatMap((i) => [
        d.load(`v${i}_${j}`, V_RIGHT, `${i * K * st.qkv + j * N}u`, `${st.qkv}u`),
        d.mma(`p${i}`, `v${i}_${j}`, `o${j}`),
      ]),
      d.store("Os", `rows0 * ${st.o}u + ${j * N}u`, `o${j}`, `${st.o}u`),
    ]),
  )
  .join("\n")}
    workgroupBarrier();
  }
  for (var e = lid; e < ${rows * s.d}u; e += ${threads}u) {
    let r = e / ${s.d}u;
    let c = e % ${s.d}u;
    if (q0 + r < p.nq) {
      out[(batch * p.nq + q0 + r) * p.rowStride + headOffset + c] = ${s.dtype}(Os[r * ${st.o}u + c] / rowSum[r]);
    }
  }`;
  },
};

/** The planner's tiles for this device's adapter (null on CPU adapters and without configs). */
export function deviceAttentionMatrixTiles(
  device: Device,
  problem: { dtype: DType; d: number; nq: number; causal: boolean },
): AttentionMatrixTiles | null {
  const adapter = matrixAdapter(device);
  return adapter && chooseAttentionMatrixTiles({ ...problem, ...adapter });
}

/** out = softmax(scale · q·kᵀ)·v per head on subgroup matrices (attention() has checked the shapes). */
export function attentionOnMatrices(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  options: { heads: number; scale: number; causal: boolean; tiles: AttentionMatrixTiles },
): void {
  const { heads, scale, tiles } = options;
  if (options.causal) throw new Error("attention: subgroup-matrix tiles do not apply a causal mask");
  const [batch, nq, width] = q.shape;
  const d = width / heads;
  const error = attentionTilesError(tiles, d, q.dtype);
  if (error) throw new Error(`attention: subgroup-matrix tiles ${JSON.stringify(tiles)} do not fit: ${error}`);
  const qBlocks = Math.ceil(nq / attentionQueryRows(tiles));
  runKernel(
    q.device,
    MATRIX_ATTENTION,
    { tiles, d, dtype: q.dtype },
    {
      count: batch * heads * qBlocks,
      params: { heads, nq, nk: k.shape[1], qBlocks, rowStride: width, scale },
      buffers: { q: q.slice(), k: k.slice(), v: v.slice(), out: out.slice() },
    },
  );
}
