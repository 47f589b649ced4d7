/**
 * Attention through uniform windows of K and V (WindowTiling, for CPU adapters). lavapipe bounds-checks every
 * storage-buffer load per lane and per component in a branchy scalar loop, while a uniform-buffer load is a
 * branch-free gather (benchmarks/RESULTS.md, "Uniform windows of B on an AVX2 lavapipe"); a uniform binding
 * holds 64 KiB, so K and V are packed per (batch item, head) into windows of keys and each window is one
 * dispatch over all of the head's query rows.
 *
 * Window w of a head holds, row-major as f32, keys w · windowKeys + j (j < the window's `keys`), d values each.
 * Each invocation owns `rowsPerInvocation` query rows; it carries their online softmax (running max m, sum l and
 * the f32 accumulator, as in wgsl.ts) from window to window in `state`: per row d/4 vec4s of accumulator and a
 * vec4 (m, l, 0, 0). The first window starts from m = −1e30, l = 0, the last writes out = acc / l.
 */
import type { DType } from "@ldm/tensor";
import type { KernelDecl } from "../common/kernel.ts";
import type { WindowTiling } from "./tiling.ts";
import { lines, MASKED, range, softmaxUpdate } from "./wgsl.ts";

export interface PackKvSpec {
  dtype: DType;
  d: number;
}

/**
 * K and V of one (batch item, head) into windows: one work item per value of the head's Nk keys, window
 * w = key / windowKeys at float w · windowFloats.
 */
export const PACK_KV: KernelDecl<PackKvSpec> = {
  name: "attention_pack_kv",
  params: { nk: "u32", batch: "u32", head: "u32", windowKeys: "u32", windowFloats: "u32", rowStride: "u32" },
  bindings: (s) => [
    { name: "k", type: s.dtype },
    { name: "v", type: s.dtype },
    { name: "pk", type: "f32", access: "read_write" },
    { name: "pv", type: "f32", access: "read_write" },
  ],
  workgroupSize: 64,
  main: (s) => `
  let key = item / ${s.d}u;
  let t = item % ${s.d}u;
  let src = (p.batch * p.nk + key) * p.rowStride + p.head * ${s.d}u + t;
  let dst = (key / p.windowKeys) * p.windowFloats + (key % p.windowKeys) * ${s.d}u + t;
  pk[dst] = f32(k[src]);
  pv[dst] = f32(v[src]);`,
};

/** A window's kernel: everything of WindowTiling but `windowKeys`, which only the dispatches read (as `keys`), so
 * one pipeline serves every window size of a head width. */
export interface WindowAttentionSpec extends Omit<WindowTiling, "windowKeys"> {
  /** Storage dtype of q and out (the windows are f32). */
  dtype: DType;
  d: number;
}

/** vec4s in a window binding (array<vec4<f32>, n>: uniform arrays have a 16-byte stride). */
export const WINDOW_VEC4S = 4096;

/**
 * One window of keys of one (batch item, head) for all of its query rows: a workgroup per `workgroupSize ·
 * rowsPerInvocation` consecutive rows. Per key block, for each row r: s = q_r·k·scale (keys past the window's
 * `keys` −1e30), the online-softmax update of wgsl.ts, acc = acc·e^(m−m') + Σ p·v.
 */
export const ATTENTION_WINDOW: KernelDecl<WindowAttentionSpec> = {
  name: "attention_window",
  params: {
    heads: "u32",
    nq: "u32",
    rowStride: "u32",
    batch: "u32",
    head: "u32",
    keys: "u32",
    firstWindow: "u32",
    lastWindow: "u32",
    scale: "f32",
  },
  bindings: (s) => [
    { name: "q", type: `vec4<${s.dtype}>` },
    { name: "kw", type: "vec4<f32>", uniform: WINDOW_VEC4S },
    { name: "vw", type: "vec4<f32>", uniform: WINDOW_VEC4S },
    { name: "state", type: "vec4<f32>", access: "read_write" },
    { name: "out", type: `vec4<${s.dtype}>`, access: "read_write" },
  ],
  workgroupSize: (s) => s.workgroupSize,
  itemsPerWorkgroup: 1,
  enables: ["subgroups"],
  main: (s) => windowMain(s),
};

function windowMain(s: WindowAttentionSpec): string {
  const D4 = s.d / 4;
  const SG = s.subgroupSize;
  const R = range(s.rowsPerInvocation);
  const KB = range(s.keyBlock);
  const T = range(D4);
  // The block's keys are consecutive rows of the window: lane `lane` gathers vec4 slice·SG + lane of the block
  // (clamped to the window's last vec4; keys past the window are masked), and vec4 t of key kk, flat index
  // f = kk·d/4 + t, comes from lane f % SG of slice ⌊f / SG⌋.
  const slices = range(Math.ceil((s.keyBlock * D4) / SG));
  const gather = (w: string) =>
    lines((sl) => `    let ${w}${sl} = ${w}[min(blockBase + ${sl * SG}u + lane, windowEnd)];`, slices);
  const element = (w: string, kk: number, t: number) => {
    const f = kk * D4 + t;
    return `subgroupBroadcast(${w}${Math.floor(f / SG)}, ${f % SG}u)`;
  };
  return `  let row0 = item * ${s.workgroupSize * s.rowsPerInvocation}u + lid * ${s.rowsPerInvocation}u;
${lines((r) => `  let qRow${r} = min(row0 + ${r}u, p.nq - 1u);`, R)}
${lines((r) => `  let qBase${r} = (p.batch * p.nq + qRow${r}) * p.rowStride + p.head * ${D4}u;`, R)}
${lines((r) => `  let stBase${r} = qRow${r} * ${D4 + 1}u;`, R)}
${lines((r, t) => `  let q${r}_${t} = vec4<f32>(q[qBase${r} + ${t}u]);`, R, T)}
${lines((r) => `  var m${r} = ${MASKED};\n  var l${r} = 0.0;`, R)}
${lines((r, t) => `  var acc${r}_${t} = vec4<f32>(0.0);`, R, T)}
  if (p.firstWindow == 0u) {
${lines((r) => `    let ml${r} = state[stBase${r} + ${D4}u];\n    m${r} = ml${r}.x;\n    l${r} = ml${r}.y;`, R)}
${lines((r, t) => `    acc${r}_${t} = state[stBase${r} + ${t}u];`, R, T)}
  }
  let windowEnd = p.keys * ${D4}u - 1u;
  for (var key0 = 0u; key0 < p.keys; key0 += ${s.keyBlock}u) {
    let blockBase = key0 * ${D4}u;
${lines((r, kk) => `    var s${r}_${kk} = 0.0;`, R, KB)}
${gather("kw")}
${lines(
  (t) =>
    `    {\n${KB.map((kk) => `      let b${kk} = ${element("kw", kk, t)};`).join("\n")}\n${lines((r, kk) => `      s${r}_${kk} += dot(q${r}_${t}, b${kk});`, R, KB)}\n    }`,
  T,
)}
${lines((r, kk) => `    s${r}_${kk} = select(${MASKED}, s${r}_${kk} * p.scale, key0 + ${kk}u < p.keys);`, R, KB)}
${softmaxUpdate(R, KB)}
${gather("vw")}
${lines(
  (t) =>
    `    {\n${KB.map((kk) => `      let b${kk} = ${element("vw", kk, t)};`).join("\n")}\n${R.map((r) => `      acc${r}_${t} = acc${r}_${t} * correction${r} + ${KB.map((kk) => `p${r}_${kk} * b${kk}`).join(" + ")};`).join("\n")}\n    }`,
  T,
)}
  }
${lines(
  (r) => `  if (row0 + ${r}u < p.nq) {
    if (p.lastWindow != 0u) {
      let norm = 1.0 / l${r};
${T.map((t) => `      out[qBase${r} + ${t}u] = vec4<${s.dtype}>(acc${r}_${t} * norm);`).join("\n")}
    } else {
${T.map((t) => `      state[stBase${r} + ${t}u] = acc${r}_${t};`).join("\n")}
      state[stBase${r} + ${D4}u] = vec4<f32>(m${r}, l${r}, 0.0, 0.0);
    }
  }`,
  R,
)}`;
}
