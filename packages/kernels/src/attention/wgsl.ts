/**
 * WGSL for the attention kernel. Both variants are emitted fully unrolled over rows, columns and the keys of
 * a block, one WGSL variable per value: lavapipe lowers a dynamically indexed private array to a ladder of
 * branches per access (a 40-wide head took tens of seconds to compile and ran at a fraction of this speed).
 *
 * Per block of keys, for each of the invocation's rows r: scores s = q_r·k·scale (masked ones −1e30),
 * m' = max(m, s…), acc = acc·e^(m−m') + Σ e^(s−m')·v, l likewise; out = acc / l at the end.
 */
import type { DType } from "@ldm/tensor";
import type { KernelDecl } from "../common/kernel.ts";
import { wgslAll } from "../common/wgsl.ts";
import type { FusedTiling } from "./tiling.ts";

export interface AttentionWgsl extends FusedTiling {
  dtype: DType;
  d: number;
  causal: boolean;
}

/** Masked scores: far below any real logit, yet finite so `s - max` cannot overflow to -inf. */
export const MASKED = "-1.0e30";

export const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** One line per combination of the indices (row-major over the ranges). */
export function lines(f: (...i: number[]) => string, ...dims: number[][]): string {
  const out: string[] = [];
  const walk = (prefix: number[], rest: number[][]) => {
    if (rest.length === 0) out.push(f(...prefix));
    else for (const i of rest[0]) walk([...prefix, i], rest.slice(1));
  };
  walk([], dims);
  return out.join("\n");
}

/** Whether q and out are declared as vec4 arrays: the lanes kernel's unit, or the subgroup kernel's vector q/out. */
function qOutUnit(g: AttentionWgsl): number {
  if (g.kind === "lanes") return g.d % 4 === 0 ? 4 : 1;
  return subgroupVectorQOut(g) ? 4 : 1;
}

/**
 * A workgroup per item (a tile): consecutive row groups of one (batch, head, column chunk). Everything but the
 * rows is uniform across it, as the subgroup operations and the shared key loop need.
 */
export const ATTENTION: KernelDecl<AttentionWgsl> = {
  name: "attention",
  params: { heads: "u32", nq: "u32", nk: "u32", rowGroups: "u32", chunks: "u32", rowStride: "u32", scale: "f32" },
  bindings: (g) => {
    const S = g.kind === "lanes" && g.d % 4 === 0 ? `vec4<${g.dtype}>` : g.dtype;
    const QO = qOutUnit(g) === 4 ? `vec4<${g.dtype}>` : g.dtype;
    return [
      { name: "q", type: QO },
      { name: "k", type: S },
      { name: "v", type: S },
      { name: "out", type: QO, access: "read_write" },
    ];
  },
  workgroupSize: (g) => g.workgroupSize,
  itemsPerWorkgroup: 1,
  enables: (g) => (g.kind === "subgroup" ? ["subgroups"] : []),
  main: (g) => `
${tileDecoding(g, g.kind === "lanes" && g.d % 4 === 0 ? 4 : 1)}
${g.kind === "subgroup" ? subgroupMain(g) : lanesMain(g)}`,
};

/** The tile's batch, head, column chunk and rows; \`unit\` is the element width that indices count in. */
function tileDecoding(g: AttentionWgsl, unit: number): string {
  const rows = g.rowsPerInvocation;
  return `  let tile = item;
  let tilesPerHead = (p.rowGroups + ${g.workgroupSize - 1}u) / ${g.workgroupSize}u;
  var rest = tile / tilesPerHead;
  let chunk = rest % p.chunks;
  rest = rest / p.chunks;
  let head = rest % p.heads;
  let batch = rest / p.heads;
  let firstRow = (tile % tilesPerHead) * ${g.workgroupSize * rows}u;
  let row0 = firstRow + lid * ${rows}u;
  let headOffset = head * ${g.d / unit}u;
  let columnOffset = headOffset + chunk * ${g.dChunk / unit}u;
  // Keys past the workgroup's last row are masked for all its rows under the causal mask.
  let keyEnd = ${g.causal ? `min(p.nk, firstRow + ${g.workgroupSize * rows}u)` : "p.nk"};`;
}

function visible(g: AttentionWgsl, r: number, kk: number): string {
  const inRange = `key0 + ${kk}u < keyEnd`;
  return g.causal ? wgslAll(inRange, `key0 + ${kk}u <= row0 + ${r}u`) : inRange;
}

/** Online-softmax update of one block: block max, rescale factor, probabilities p{r}_{kk}, running sum. */
export function softmaxUpdate(R: number[], KB: number[]): string {
  return lines((r) => {
    const max = KB.reduce((acc, kk) => `max(${acc}, s${r}_${kk})`, `m${r}`);
    return `    let blockMax${r} = ${max};
    let correction${r} = exp(m${r} - blockMax${r});
    m${r} = blockMax${r};
${KB.map((kk) => `    let p${r}_${kk} = exp(s${r}_${kk} - blockMax${r});`).join("\n")}
    l${r} = l${r} * correction${r} + ${KB.map((kk) => `p${r}_${kk}`).join(" + ")};`;
  }, R);
}

function epilogue(R: number[], C: number[], S: string): string {
  return lines(
    (r) => `  if (row0 + ${r}u < p.nq) {
    let outBase = (batch * p.nq + row0 + ${r}u) * p.rowStride + columnOffset;
    let norm = 1.0 / l${r};
${C.map((t) => `    out[outBase + ${t}u] = ${S}(acc${r}_${t} * norm);`).join("\n")}
  }`,
    R,
  );
}

/** Every invocation loads whole (vec4) rows of k and v itself: for GPUs, which broadcast uniform loads. */
function lanesMain(g: AttentionWgsl): string {
  const unit = g.d % 4 === 0 ? 4 : 1;
  const R = range(g.rowsPerInvocation);
  const KB = range(g.keyBlock);
  const D = range(g.d / unit);
  const C = range(g.dChunk / unit);
  const V = unit === 4 ? "vec4<f32>" : "f32";
  const S = unit === 4 ? `vec4<${g.dtype}>` : g.dtype;
  const dot = (a: string, b: string) => (unit === 4 ? `dot(${a}, ${b})` : `${a} * ${b}`);
  return `${lines((r) => `  let qBase${r} = (batch * p.nq + min(row0 + ${r}u, p.nq - 1u)) * p.rowStride + headOffset;`, R)}
${lines((r, t) => `  let q${r}_${t} = ${V}(q[qBase${r} + ${t}u]);`, R, D)}
${lines((r) => `  var m${r} = ${MASKED};\n  var l${r} = 0.0;`, R)}
${lines((r, t) => `  var acc${r}_${t} = ${V}(0.0);`, R, C)}
  for (var key0 = 0u; key0 < keyEnd; key0 += ${KB.length}u) {
${lines((kk) => `    let kBase${kk} = (batch * p.nk + min(key0 + ${kk}u, p.nk - 1u)) * p.rowStride;`, KB)}
${lines((kk, t) => `    let k${kk}_${t} = ${V}(k[kBase${kk} + headOffset + ${t}u]);`, KB, D)}
${lines(
  (r, kk) =>
    `    let s${r}_${kk} = select(${MASKED}, (${D.map((t) => dot(`q${r}_${t}`, `k${kk}_${t}`)).join(" + ")}) * p.scale, ${visible(g, r, kk)});`,
  R,
  KB,
)}
${softmaxUpdate(R, KB)}
${lines((r, t) => `    acc${r}_${t} *= correction${r};`, R, C)}
${lines((kk, t) => `    let v${kk}_${t} = ${V}(v[kBase${kk} + columnOffset + ${t}u]);`, KB, C)}
${lines((r, t) => `    acc${r}_${t} += ${KB.map((kk) => `p${r}_${kk} * v${kk}_${t}`).join(" + ")};`, R, C)}
  }
${epilogue(R, C, S)}`;
}

/**
 * Lanes of a subgroup load a key (value) row together — lane i reads elements i, i+SG, … — and
 * `subgroupBroadcast` hands each element to every lane, so a row costs d/SG loads instead of d per lane.
 * For CPU adapters, where a load costs the same whether or not the lanes share its address.
 *
 * With `qChunk` = d the invocation's q rows stay in registers; a smaller `qChunk` walks d in a loop of
 * chunks, reloading q each key block — the unrolled code then no longer grows with d, which keeps the
 * compile time of the VAE's 512-wide head bounded.
 */
function subgroupMain(g: AttentionWgsl): string {
  const SG = g.subgroupSize;
  const R = range(g.rowsPerInvocation);
  const KB = range(g.keyBlock);
  const C = range(g.dChunk);
  const T = g.dtype;
  const resident = g.qChunk === g.d;
  const Q = range(g.qChunk);
  const vectorQOut = subgroupVectorQOut(g);
  const slices = (n: number) => range(Math.ceil(n / SG));
  // Lane `lane` loads element slice·SG + lane of a run of n elements (clamped inside it when n % SG ≠ 0).
  const laneElement = (slice: number, n: number) =>
    (slice + 1) * SG <= n ? `${slice * SG}u + lane` : `min(${slice * SG}u + lane, ${n - 1}u)`;
  const broadcast = (name: string, i: number) => `subgroupBroadcast(${name}_${Math.floor(i / SG)}, ${i % SG}u)`;
  const at = resident ? "" : "d0 + ";
  const indent = resident ? "  " : "    ";
  // Every per-lane load or store is a long scalar loop in lavapipe's code, so q and out move as vec4s
  // (a quarter of the accesses, and of the compile time they cost) when the widths allow.
  const loadQ = vectorQOut
    ? lines(
        (r, t) =>
          `${indent}let q${r}_v${t} = vec4<f32>(q[(qBase${r} + ${at}${4 * t}u) / 4u]);\n` +
          range(4)
            .map((i) => `${indent}let q${r}_${4 * t + i} = q${r}_v${t}.${"xyzw"[i]};`)
            .join("\n"),
        R,
        range(g.qChunk / 4),
      )
    : lines((r, t) => `${indent}let q${r}_${t} = f32(q[qBase${r} + ${at}${t}u]);`, R, Q);
  const scores = `${lines((kk, s) => `    let k${kk}_${s} = f32(k[kBase${kk} + headOffset + ${at}${laneElement(s, g.qChunk)}]);`, KB, slices(g.qChunk))}
${lines(
  (t) =>
    `    {\n${KB.map((kk) => `      let b${kk} = ${broadcast(`k${kk}`, t)};`).join("\n")}\n${lines((r, kk) => `      s${r}_${kk} += q${r}_${t} * b${kk};`, R, KB)}\n    }`,
  Q,
)}`;
  return `${lines((r) => `  let qBase${r} = (batch * p.nq + min(row0 + ${r}u, p.nq - 1u)) * p.rowStride + headOffset;`, R)}
${resident ? loadQ : ""}
${lines((r) => `  var m${r} = ${MASKED};\n  var l${r} = 0.0;`, R)}
${lines((r, t) => `  var acc${r}_${t} = 0.0;`, R, C)}
  for (var key0 = 0u; key0 < keyEnd; key0 += ${KB.length}u) {
${lines((kk) => `    let kBase${kk} = (batch * p.nk + min(key0 + ${kk}u, p.nk - 1u)) * p.rowStride;`, KB)}
${lines((r, kk) => `    var s${r}_${kk} = 0.0;`, R, KB)}
${resident ? scores : `    for (var d0 = 0u; d0 < ${g.d}u; d0 += ${g.qChunk}u) {\n${loadQ}\n${scores}\n    }`}
${lines((r, kk) => `    s${r}_${kk} = select(${MASKED}, s${r}_${kk} * p.scale, ${visible(g, r, kk)});`, R, KB)}
${softmaxUpdate(R, KB)}
${lines((kk, s) => `    let v${kk}_${s} = f32(v[kBase${kk} + columnOffset + ${laneElement(s, g.dChunk)}]);`, KB, slices(g.dChunk))}
${lines(
  (t) =>
    `    {\n${KB.map((kk) => `      let b${kk} = ${broadcast(`v${kk}`, t)};`).join("\n")}\n${R.map((r) => `      acc${r}_${t} = acc${r}_${t} * correction${r} + ${KB.map((kk) => `p${r}_${kk} * b${kk}`).join(" + ")};`).join("\n")}\n    }`,
  C,
)}
  }
${vectorQOut ? vectorEpilogue(R, C.length, T) : epilogue(R, C, T)}`;
}

/** Whether the subgroup kernel reads q and writes out as vec4s (every row, q chunk and column chunk in 4s). */
export function subgroupVectorQOut(t: { d: number; dChunk: number; qChunk: number }): boolean {
  return t.d % 4 === 0 && t.dChunk % 4 === 0 && t.qChunk % 4 === 0;
}

function vectorEpilogue(R: number[], columns: number, T: string): string {
  return lines(
    (r) => `  if (row0 + ${r}u < p.nq) {
    let outBase = ((batch * p.nq + row0 + ${r}u) * p.rowStride + columnOffset) / 4u;
    let norm = 1.0 / l${r};
${range(columns / 4)
  .map(
    (t) =>
      `    out[outBase + ${t}u] = vec4<${T}>(vec4<f32>(${range(4)
        .map((i) => `acc${r}_${4 * t + i}`)
        .join(", ")}) * norm);`,
  )
  .join("\n")}
  }`,
    R,
  );
}
