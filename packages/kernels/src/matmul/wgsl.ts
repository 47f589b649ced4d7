/**
 * WGSL for the GEMM kernels, generated from a tile config and the operands' layouts.
 *
 * Problem: C[b, m, n] = epilogue(alpha · Σ_k A[b, m, k] · B[b, k, n]) for one piece (see plan.ts); A is
 * [M, K] or, transposed, [K, M] (likewise B), every operand bound from an element offset with a row and a
 * batch stride given as uniforms. Epilogue order: alpha · acc (+ the partial sum already in C when a k range
 * continues) + bias → activation → + residual, then stored in C's dtype.
 *
 * Gated (GEGLU) products: B has N columns, value then gate halves, and C has N/2: C[b, m, j] = (alpha · v +
 * bias[j]) · gelu(alpha · g + bias[N/2 + j]) for the value v (B's column j) and gate g (column N/2 + j). The kernel
 * walks logical columns n interleaving the halves, (v0, g0, v1, g1, …): n reads B's column (n >> 1) + (n & 1) ·
 * N/2, so every epilogue call gets two whole value/gate pairs in its four consecutive columns, and the product
 * is never stored. B is not reordered: checkpoints keep their layout.
 */
import type { DType } from "@ldm/tensor";
import type { KernelBinding, KernelDecl } from "../common/kernel.ts";
import { wgslAll } from "../common/wgsl.ts";
import type { MatrixTiles } from "../subgroup-matrix/plan.ts";
import { matrixDirectives, matrixEnables, matrixMain, matrixModule } from "../subgroup-matrix/wgsl.ts";
import type { Activation } from "./activation.ts";
import { accumulatorsWgsl, EPILOGUE_PARAMS, epilogueWgsl } from "./epilogue.ts";
import {
  type SubgroupTiles,
  stagedRowVec4s,
  type TileConfig,
  UNIFORM_WINDOW_BYTES,
  type WorkgroupTiles,
  workgroupSize,
  workgroupTile,
} from "./tiles.ts";

export interface GemmKernelSpec {
  tiles: TileConfig;
  transposeA: boolean;
  transposeB: boolean;
  a: DType;
  b: DType;
  c: DType;
  /** Bias per output column (n, the Linear case) or per output row (m, a convolution's channel). */
  bias: { axis: "m" | "n"; dtype: DType } | null;
  residual: DType | null;
  activation: Activation;
  /** A is declared and read as vec4 along its contiguous dimension (see gemmVectorReads). */
  vecA: boolean;
  vecB: boolean;
  /** N is a multiple of 4: C, the residual and a per-column bias are read and written as vec4. */
  vecC: boolean;
  /** K is not a multiple of 4: the last block of 4 reduction steps reads guarded. */
  kTail: boolean;
  /** A GEGLU product (see above): no residual, activation "none", a bias only along n, scalar C. */
  gated: boolean;
}

/**
 * Which operands the kernel reads as vec4: those read along their contiguous dimension (K, or M / N when
 * transposed) where that dimension is a multiple of 4 (`aligned*`), so every row starts 16-byte aligned.
 */
export function gemmVectorReads(
  tiles: TileConfig,
  transposeA: boolean,
  transposeB: boolean,
  alignedA: boolean,
  alignedB: boolean,
): { vecA: boolean; vecB: boolean } {
  // Workgroup tiles with vector loads stage either operand along its contiguous dimension.
  if (tiles.kind === "workgroup" && tiles.vecLoads) return { vecA: alignedA, vecB: alignedB };
  if (tiles.kind !== "subgroup") return { vecA: false, vecB: false };
  // The broadcast operand is only read as vectors along k; the owned one along k or along its own index.
  // A uniform window of B is read as vectors of its own (packed) layout.
  return tiles.laneOwns === "n"
    ? { vecA: alignedA && !transposeA, vecB: alignedB && !tiles.uniformB }
    : { vecA: alignedA, vecB: alignedB && transposeB };
}

/**
 * An operand read as vectors of 4: f16 ones are declared as vec2<u32> (4 halves) and unpacked, since
 * llvmpipe loads every vector component of a per-lane address separately: 2 loads instead of 4 (f16
 * GEMMs took 9–19% less CPU time than with vec4<f16> on lavapipe, interleaved runs).
 */
export function operandBinding(name: string, dtype: DType, vec: boolean): KernelBinding {
  if (vec && dtype === "f16") return { name, type: "vec2<u32>" };
  return { name, type: vec ? `vec4<${dtype}>` : dtype };
}

/**
 * `fn <name>_at(i) -> f32`: element i of an operand, whether it is declared as scalars or vectors, and for
 * vectors `fn <name>4(i) -> vec4f`: its i-th group of 4.
 */
export function operandReaders(name: string, dtype: DType, vec: boolean): string {
  if (!vec) return `fn ${name}_at(i: u32) -> f32 { return f32(${name}[i]); }`;
  const four =
    dtype === "f16"
      ? `let h = ${name}[i]; return vec4f(unpack2x16float(h.x), unpack2x16float(h.y));`
      : `return vec4f(${name}[i]);`;
  return `fn ${name}4(i: u32) -> vec4f { ${four} }\nfn ${name}_at(i: u32) -> f32 { return ${name}4(i >> 2u)[i & 3u]; }`;
}

/** Index expressions of A[b, m, k] and B[b, k, n] (b relative to the piece). */
function aIndex(s: GemmKernelSpec, b: string, m: string, k: string): string {
  return `p.aOff + ${b} * p.aBatch + ${s.transposeA ? `(${k}) * p.aRow + (${m})` : `(${m}) * p.aRow + (${k})`}`;
}
function bIndex(s: GemmKernelSpec, b: string, k: string, logicalN: string): string {
  const n = s.gated ? `gated_column(${logicalN})` : logicalN;
  return `p.bOff + ${b} * p.bBatch + ${s.transposeB ? `(${n}) * p.bRow + (${k})` : `(${k}) * p.bRow + (${n})`}`;
}

/** B's column of a gated product's logical column n: values at even n, their gates at odd n. */
const GATED_COLUMN_WGSL = "fn gated_column(n: u32) -> u32 { return (n >> 1u) + (n & 1u) * (p.N >> 1u); }";

/**
 * finish4(bi, m, n, acc) of a GEMM's output C[bi, m, n] (rows of N): also the epilogue of any kernel whose
 * output is such a GEMM's (the convolution as an implicit GEMM: m the channel, n the pixel).
 */
export function gemmEpilogue(
  s: Pick<GemmKernelSpec, "gated" | "bias" | "c" | "residual" | "activation" | "vecC">,
): string {
  if (s.gated) return gatedEpilogue(s);
  const bias =
    s.bias?.axis === "m"
      ? "vec4f(f32(Bias[p.biasOff + m]))"
      : s.bias?.axis === "n"
        ? s.vecC
          ? "vec4f(Bias[(p.biasOff + n) >> 2u])"
          : `vec4f(${[0, 1, 2, 3].map((j) => `f32(Bias[p.biasOff + min(n + ${j}u, p.N - 1u)])`).join(", ")})`
        : null;
  return epilogueWgsl({
    out: s.c,
    residual: s.residual,
    activation: s.activation,
    alpha: true,
    vec: s.vecC,
    params: "bi: u32, m: u32, n: u32",
    locate: [
      "  let live = select(min(p.N - min(n, p.N), 4u), 0u, m >= p.M);",
      "  let at = p.cOff + bi * p.cBatch + m * p.N + n;",
      "  let rat = p.rOff + bi * p.cBatch + m * p.N + n;",
    ].join("\n"),
    bias,
  });
}

/** finish4 of a gated product: acc = (value j, gate j, value j + 1, gate j + 1) for the output column j = n/2. */
function gatedEpilogue(s: Pick<GemmKernelSpec, "bias" | "c">): string {
  // The bias of an absent second pair (odd N/2) is clamped to a real element and its output not stored.
  const pair = ["col", "min(col + 1u, half - 1u)"];
  const bias = `vec4f(${pair.flatMap((j) => [`f32(Bias[${j}])`, `f32(Bias[half + ${j}])`]).join(", ")})`;
  return epilogueWgsl({
    out: s.c,
    residual: null,
    activation: "none",
    alpha: true,
    vec: false,
    gated: true,
    params: "bi: u32, m: u32, n: u32",
    locate: [
      "  let half = p.N >> 1u;",
      "  let col = n >> 1u;",
      "  let live = select(min(half - min(col, half), 2u), 0u, m >= p.M);",
      "  let at = p.cOff + bi * p.cBatch + m * half + col;",
    ].join("\n"),
    bias: s.bias ? bias : null,
  });
}

/**
 * The GEMM: a workgroup per item, one output tile of one batch item. Tile kinds: subgroup-broadcast register
 * tiles (CPU adapters) and workgroup-memory tiles (GPUs), below.
 */
export const GEMM: KernelDecl<GemmKernelSpec> = {
  name: "gemm",
  params: {
    batch: "u32",
    M: "u32",
    N: "u32",
    K: "u32",
    tilesX: "u32",
    tilesY: "u32",
    aRow: "u32",
    aBatch: "u32",
    aOff: "u32",
    bRow: "u32",
    bBatch: "u32",
    bOff: "u32",
    nOff: "u32",
    ...EPILOGUE_PARAMS,
    tileRows: "u32",
    alpha: "f32",
  },
  bindings: (s) => {
    const vecC = (t: DType) => (s.vecC ? `vec4<${t}>` : t);
    return [
      operandBinding("A", s.a, s.vecA),
      s.tiles.kind === "subgroup" && s.tiles.uniformB
        ? { name: "B", type: "vec4<f32>", uniform: UNIFORM_WINDOW_BYTES / 16 }
        : operandBinding("B", s.b, s.vecB),
      { name: "C", type: vecC(s.c), access: "read_write" },
      ...(s.bias ? [{ name: "Bias", type: s.bias.axis === "n" ? vecC(s.bias.dtype) : s.bias.dtype }] : []),
      ...(s.residual ? [{ name: "R", type: vecC(s.residual) }] : []),
    ];
  },
  workgroupSize: (s) => workgroupSize(s.tiles),
  itemsPerWorkgroup: 1,
  enables: (s) =>
    s.tiles.kind === "subgroup" ? ["subgroups"] : s.tiles.kind === "matrix" ? matrixEnables(s.tiles) : [],
  directives: (s) => (s.tiles.kind === "matrix" ? matrixDirectives(s.tiles) : []),
  module: (s) => `
${operandReaders("A", s.a, s.vecA)}
${s.tiles.kind === "subgroup" && s.tiles.uniformB ? "" : operandReaders("B", s.b, s.vecB)}
${s.gated ? GATED_COLUMN_WGSL : ""}
${gemmEpilogue(s)}
${
  s.tiles.kind === "subgroup"
    ? subgroupModule(s, s.tiles)
    : s.tiles.kind === "matrix"
      ? matrixModule(s.tiles)
      : workgroupModule(s.tiles)
}`,
  main: (s) =>
    s.tiles.kind === "subgroup"
      ? subgroupMain(s, s.tiles)
      : s.tiles.kind === "matrix"
        ? gemmMatrixMain(s, s.tiles)
        : workgroupMain(s, s.tiles),
};

// ---- subgroup-matrix tiles (GPUs with chromium-experimental-subgroup-matrix) ------------------------

/** The GEMM on subgroup matrices (subgroup-matrix/wgsl.ts): A and B read through their index expressions. */
function gemmMatrixMain(s: GemmKernelSpec, t: MatrixTiles): string {
  const tile = workgroupTile(t);
  return matrixMain(t, {
    prologue: `  let perBatch = p.tilesX * p.tilesY;
  let bi = item / perBatch;
  let tile = item % perBatch;
  let m0 = (tile / p.tilesY) * ${tile.m}u;
  let n0 = (tile % p.tilesY) * ${tile.n}u;`,
    M: "p.M",
    N: "p.N",
    K: "p.K",
    a: (m, k) => `A_at(${aIndex(s, "bi", m, k)})`,
    b: (k, n) => `B_at(${bIndex(s, "bi", k, n)})`,
    aContiguous: s.transposeA ? "m" : "k",
    bContiguous: s.transposeB ? "k" : "n",
    finish: (m, n, v) => `finish4(bi, ${m}, ${n}, ${v});`,
  });
}

// ---- subgroup-broadcast tiles (CPU adapters) -------------------------------------------------------

/**
 * Operand roles: the lanes own 4 consecutive indices y of the "owned" operand (B's columns when
 * laneOwns = n), and the rows x of the "broadcast" operand are each loaded by one lane and shared.
 * Both are read as elements (x or y, k) through these helpers.
 */
function roles(s: GemmKernelSpec, t: SubgroupTiles) {
  const aAt = (b: string, m: string, k: string) => aIndex(s, b, m, k);
  const bAt = (b: string, k: string, n: string) => bIndex(s, b, k, n);
  if (t.laneOwns === "n") {
    return {
      xName: "A",
      xExtent: "p.M",
      yExtent: "p.N",
      xAt: (b: string, x: string, k: string) => aAt(b, x, k),
      yAt: (b: string, y: string, k: string) => bAt(b, k, y),
      xAlongK: !s.transposeA,
      xVec: s.vecA,
      yName: "B",
      yAlongK: s.transposeB,
      yVec: s.vecB,
    };
  }
  return {
    xName: "B",
    xExtent: "p.N",
    yExtent: "p.M",
    xAt: (b: string, x: string, k: string) => bAt(b, k, x),
    yAt: (b: string, y: string, k: string) => aAt(b, y, k),
    xAlongK: s.transposeB,
    xVec: s.vecB,
    yName: "A",
    yAlongK: !s.transposeA,
    yVec: s.vecA,
  };
}

/** x4: X(x, k..k+3) for one broadcast row x; yblock: column t holds Y(y[j], k + t) for the lane's 4 indices j. */
function subgroupModule(s: GemmKernelSpec, t: SubgroupTiles): string {
  const r = roles(s, t);
  // Reads of step k + j. With a K tail the last block reads past K: such reads are clamped to the last
  // step and zeroed (one loop serves all blocks; a separate tail block would double the compile time).
  const guarded = (k: string, read: (k: string) => string, zero: string) =>
    s.kTail ? `select(${zero}, ${read(`min(${k}, p.K - 1u)`)}, ${k} < p.K)` : read(k);
  const x4 =
    r.xAlongK && r.xVec
      ? `return ${r.xName}4((${r.xAt("bi", "x", "k")}) >> 2u);`
      : `return vec4f(${[0, 1, 2, 3].map((j) => guarded(`k + ${j}u`, (kk) => `${r.xName}_at(${r.xAt("bi", "x", kk)})`, "0.0")).join(", ")});`;
  const yVec4 = (y: string, k: string) => `${r.yName}4((${r.yAt("bi", y, k)}) >> 2u)`;
  // Four rows along k (one per owned index), transposed into the block's columns.
  const transposed = (row: (j: number) => string) =>
    `${[0, 1, 2, 3].map((j) => `let r${j} = ${row(j)};`).join(" ")}
  return mat4x4f(${[0, 1, 2, 3].map((c) => `vec4f(r0[${c}], r1[${c}], r2[${c}], r3[${c}])`).join(", ")});`;
  let yblock: string;
  if (t.uniformB) {
    // y are columns of the window, whose rows hold its p.bRow steps (packed with zeros past N and K).
    yblock = transposed((j) => `B[(y[${j}] * p.bRow + k) >> 2u]`);
  } else if (r.yVec && r.yAlongK) {
    yblock = transposed((j) => yVec4(`y[${j}]`, "k"));
  } else if (r.yVec) {
    // The owned indices are 4 consecutive ones starting 4-aligned: one vector per step.
    const col = (c: number) => guarded(`k + ${c}u`, (kk) => yVec4("y[0]", kk), "vec4f(0.0)");
    yblock = `return mat4x4f(${[0, 1, 2, 3].map(col).join(", ")});`;
  } else {
    const col = (c: number) =>
      `vec4f(${[0, 1, 2, 3].map((j) => guarded(`k + ${c}u`, (kk) => `${r.yName}_at(${r.yAt("bi", `y[${j}]`, kk)})`, "0.0")).join(", ")})`;
    yblock = `return mat4x4f(${[0, 1, 2, 3].map(col).join(", ")});`;
  }
  return `
fn x4(bi: u32, x: u32, k: u32) -> vec4f {
  ${x4}
}
fn yblock(bi: u32, y: vec4u, k: u32) -> mat4x4f {
  ${yblock}
}`;
}

/**
 * Each lane owns cols groups of 4 consecutive indices y; row `row` of the subgroup's broadcast rows is loaded by
 * lane row % lanes. Accumulator row · cols + g holds (row, group g).
 */
function subgroupMain(s: GemmKernelSpec, t: SubgroupTiles): string {
  const r = roles(s, t);
  const loadsPerLane = t.rows / t.lanes;
  const acc = accumulatorsWgsl(t.rows * t.cols);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const xRows = range(loadsPerLane)
    .map((i) => `  let xr${i} = min(x0 + lane + ${i * t.lanes}u, xLast);`)
    .join("\n");
  // Vector reads along y need a 4-aligned start: a lane past the end reads the last aligned group.
  const yCols = range(t.cols)
    .map((g) =>
      t.uniformB
        ? `  let yc${g} = vec4u(y0 - p.nOff + ${4 * g}u) + vec4u(0u, 1u, 2u, 3u);`
        : r.yVec && !r.yAlongK
          ? `  let yv${g} = min(y0 + ${4 * g}u, yLast & ~3u); let yc${g} = vec4u(yv${g}, yv${g} + 1u, yv${g} + 2u, yv${g} + 3u);`
          : `  let yc${g} = min(vec4u(y0 + ${4 * g}u, y0 + ${4 * g + 1}u, y0 + ${4 * g + 2}u, y0 + ${4 * g + 3}u), vec4u(yLast));`,
    )
    .join("\n");
  const step: string[] = [];
  for (const i of range(loadsPerLane)) step.push(`let xa${i} = x4(bi, xr${i}, k);`);
  for (const g of range(t.cols)) step.push(`let yb${g} = yblock(bi, yc${g}, k);`);
  for (const row of range(t.rows)) {
    step.push(`{ let a = subgroupBroadcast(xa${Math.floor(row / t.lanes)}, ${row % t.lanes}u);`);
    for (const g of range(t.cols)) {
      const sum = acc.name(row * t.cols + g);
      const chain = [3, 2, 1, 0].reduce((inner, c) => `fma(vec4f(a.${"xyzw"[c]}), yb${g}[${c}], ${inner})`, sum);
      step.push(`  ${sum} = ${chain};`);
    }
    step.push("}");
  }
  // The epilogue loops up to a uniform (= rows · cols) so that the compiler cannot unroll it: its memory
  // accesses, a per-lane loop each on llvmpipe, would otherwise be compiled once per accumulator (seconds).
  const finish =
    t.laneOwns === "n"
      ? `  for (var q = 0u; q < p.tileRows; q++) { finish4(bi, x0 + q / ${t.cols}u, y0 + (q % ${t.cols}u) * 4u, acc[q]); }`
      : `  for (var q = 0u; q < p.tileRows; q += ${4 * t.cols}u) {
    for (var j = 0u; j < ${4 * t.cols}u; j++) {
      let g = j / 4u;
      let c = j % 4u;
      let x = q / ${t.cols}u;
      finish4(bi, y0 + j, x0 + x, vec4f(acc[q + g][c], acc[q + ${t.cols}u + g][c], acc[q + ${2 * t.cols}u + g][c], acc[q + ${3 * t.cols}u + g][c]));
    }
  }`;
  return `
  let perBatch = p.tilesX * p.tilesY;
  let bi = item / perBatch;
  let tile = item % perBatch;
  let sg = lid / ${t.lanes}u;
  let x0 = (tile / p.tilesY) * ${t.subgroups * t.rows}u + sg * ${t.rows}u;
  let y0 = p.nOff + (tile % p.tilesY) * ${t.lanes * 4 * t.cols}u + lane * ${4 * t.cols}u;
  let xLast = ${r.xExtent} - 1u;
  let yLast = ${r.yExtent} - 1u;
${xRows}
${yCols}
${acc.declare}
  for (var k = 0u; k < p.K; k += 4u) {
${step.map((l) => `    ${l}`).join("\n")}
  }
${acc.collect}
${finish}`;
}

// ---- workgroup-memory tiles (GPUs) -----------------------------------------------------------------

/**
 * Each K step stages a tileK × tileM block of A and a tileK × tileN block of B in workgroup memory as vec4s
 * of 4 consecutive rows (columns), then every invocation multiplies threadM × threadN outputs held in vec4
 * registers. An invocation's outputs are not one contiguous block: its rows are threadM / 4 groups of 4,
 * spread threadsM groups apart, and likewise its columns, so neighbouring invocations read neighbouring vec4s
 * of workgroup memory (no bank conflicts) and the stores stay 4 consecutive columns.
 *
 * Accumulators are separate variables and the epilogue is written out, so that no private array is indexed at
 * run time. 4 × 4 outputs per invocation in 64 × 64 tiles: the fastest config at every UNet GEMM shape on an
 * H200 (benchmarks/gemm-tiles.ts; numbers in benchmarks/RESULTS.md, "GPU script"). Variants, not yet timed on a
 * GPU: vec4 global loads (WorkgroupTiles.vecLoads) and two staging buffers (WorkgroupTiles.doubleBuffer).
 */
function workgroupModule(t: WorkgroupTiles): string {
  const buffers = t.doubleBuffer ? 2 : 1;
  return `
var<workgroup> As: array<vec4f, ${buffers * t.tileK * stagedRowVec4s(t.tileM)}>;
var<workgroup> Bs: array<vec4f, ${buffers * t.tileK * stagedRowVec4s(t.tileN)}>;`;
}

/** One operand of the workgroup-tile kernel as its staging sees it: x is its row (A) or column (B) index. */
interface Operand {
  tile: "As" | "Bs";
  /** Extent of the tile along x. */
  rows: number;
  /** vec4s per staged k row. */
  stride: number;
  /** The operand's contiguous axis in memory. */
  along: "k" | "x";
  /** Read as vec4s along that axis. */
  vec: boolean;
  x0: string;
  extent: string;
  /** Element index of (x, k). */
  at: (x: string, k: string) => string;
  name: "A" | "B";
}

/**
 * Stages the operand's block of K steps from `kBase` into its tile at `buf` (a vec4 offset, "" or "… + ").
 * Neighbouring invocations read neighbouring addresses: the block is walked along the operand's contiguous
 * axis, one element or (vec) one vec4 each. A vec4 along x is one staged vec4; one along k fills a component of
 * 4 staged rows. Out-of-range reads are clamped and zeroed; vector reads start at multiples of 4 of an extent
 * that is one, so a vec4 is in range or entirely out.
 */
function stage(t: WorkgroupTiles, threads: number, o: Operand, kBase: string, buf: string): string {
  const x = `${o.x0} + xx`;
  const k = `${kBase} + kk`;
  const guard = wgslAll(`${x} < ${o.extent}`, `${k} < p.K`);
  const clamped = o.at(`min(${x}, ${o.extent} - 1u)`, `min(${k}, p.K - 1u)`);
  if (!o.vec) {
    return `
    for (var e = lid; e < ${t.tileK * o.rows}u; e += ${threads}u) {
      ${o.along === "k" ? `let kk = e % ${t.tileK}u; let xx = e / ${t.tileK}u;` : `let kk = e / ${o.rows}u; let xx = e % ${o.rows}u;`}
      ${o.tile}[${buf}kk * ${o.stride}u + (xx >> 2u)][xx & 3u] = select(0.0, ${o.name}_at(${clamped}), ${guard});
    }`;
  }
  const read = `select(vec4f(0.0), ${o.name}4((${clamped}) >> 2u), ${guard})`;
  if (o.along === "x") {
    return `
    for (var e = lid; e < ${(t.tileK * o.rows) / 4}u; e += ${threads}u) {
      let kk = e / ${o.rows / 4}u;
      let xx = (e % ${o.rows / 4}u) * 4u;
      ${o.tile}[${buf}kk * ${o.stride}u + (xx >> 2u)] = ${read};
    }`;
  }
  return `
    for (var e = lid; e < ${(t.tileK / 4) * o.rows}u; e += ${threads}u) {
      let kk = (e % ${t.tileK / 4}u) * 4u;
      let xx = e / ${t.tileK / 4}u;
      let v = ${read};
${[0, 1, 2, 3].map((j) => `      ${o.tile}[${buf}(kk + ${j}u) * ${o.stride}u + (xx >> 2u)][xx & 3u] = v.${"xyzw"[j]};`).join("\n")}
    }`;
}

function workgroupMain(s: GemmKernelSpec, t: WorkgroupTiles): string {
  const threadsN = t.tileN / t.threadN;
  const threadsM = t.tileM / t.threadM;
  const threads = workgroupSize(t);
  const groupsM = t.threadM / 4;
  const groupsN = t.threadN / 4;
  const strideA = stagedRowVec4s(t.tileM);
  const strideB = stagedRowVec4s(t.tileN);
  const sizeA = t.tileK * strideA;
  const sizeB = t.tileK * strideB;
  const acc = (i: number, jv: number) => `acc_${i}_${jv}`;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const lines = (f: (i: number, jv: number) => string, indent: string) =>
    range(t.threadM)
      .flatMap((i) => range(groupsN).map((jv) => `${indent}${f(i, jv)}`))
      .join("\n");
  const A: Operand = {
    tile: "As",
    rows: t.tileM,
    stride: strideA,
    along: s.transposeA ? "x" : "k",
    vec: s.vecA,
    x0: "m0",
    extent: "p.M",
    at: (x, k) => aIndex(s, "bi", x, k),
    name: "A",
  };
  const B: Operand = {
    tile: "Bs",
    rows: t.tileN,
    stride: strideB,
    along: s.transposeB ? "k" : "x",
    vec: s.vecB,
    x0: "n0",
    extent: "p.N",
    at: (x, k) => bIndex(s, "bi", k, x),
    name: "B",
  };
  const stageBoth = (kBase: string, bufA: string, bufB: string) =>
    `${stage(t, threads, A, kBase, bufA)}${stage(t, threads, B, kBase, bufB)}`;
  const multiply = (bufA: string, bufB: string) => `
    for (var kk = 0u; kk < ${t.tileK}u; kk++) {
${range(groupsM)
  .map((g) => `      let a${g} = As[${bufA}kk * ${strideA}u + ${g * threadsM}u + ty];`)
  .join("\n")}
${range(groupsN)
  .map((jv) => `      let b${jv} = Bs[${bufB}kk * ${strideB}u + ${jv * threadsN}u + tx];`)
  .join("\n")}
${lines((i, jv) => `${acc(i, jv)} = fma(vec4f(a${Math.floor(i / 4)}.${"xyzw"[i % 4]}), b${jv}, ${acc(i, jv)});`, "      ")}
    }`;
  // Double-buffered: block k0 is in buffer (k0 / tileK) & 1 when the loop reaches it; the next block goes into
  // the other buffer, which every invocation finished reading before the previous iteration's barrier.
  const loop = t.doubleBuffer
    ? `${stageBoth("0u", "", "")}
  workgroupBarrier();
  for (var k0 = 0u; k0 < p.K; k0 += ${t.tileK}u) {
    let cur = (k0 / ${t.tileK}u) & 1u;
    if (k0 + ${t.tileK}u < p.K) {${stageBoth(`k0 + ${t.tileK}u`, `(1u - cur) * ${sizeA}u + `, `(1u - cur) * ${sizeB}u + `)}
    }${multiply(`cur * ${sizeA}u + `, `cur * ${sizeB}u + `)}
    workgroupBarrier();
  }`
    : `for (var k0 = 0u; k0 < p.K; k0 += ${t.tileK}u) {${stageBoth("k0", "", "")}
    workgroupBarrier();${multiply("", "")}
    workgroupBarrier();
  }`;
  return `
  let perBatch = p.tilesX * p.tilesY;
  let bi = item / perBatch;
  let tile = item % perBatch;
  let m0 = (tile / p.tilesY) * ${t.tileM}u;
  let n0 = (tile % p.tilesY) * ${t.tileN}u;
  let ty = lid / ${threadsN}u;
  let tx = lid % ${threadsN}u;
${lines((i, jv) => `var ${acc(i, jv)}: vec4f;`, "  ")}
  ${loop}
${lines((i, jv) => `finish4(bi, m0 + (${Math.floor(i / 4) * threadsM}u + ty) * 4u + ${i % 4}u, n0 + (${jv * threadsN}u + tx) * 4u, ${acc(i, jv)});`, "  ")}`;
}
