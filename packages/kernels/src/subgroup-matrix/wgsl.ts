/**
 * WGSL of a GEMM tile on subgroup matrices, shared by every kernel that is a GEMM at heart (matmul/linear, the
 * 3×3 convolution as an implicit GEMM): the caller says how to read A[m, k] and B[k, n] and how to finish four
 * outputs, this writes the staging, the multiply-accumulate loop and the path from the result matrices into
 * the epilogue.
 *
 * Per step of tileK: every invocation of the workgroup stages part of the A block (tileM × tileK, row-major,
 * rows padded by 16 bytes) and of the B block (tileK × tileN) in workgroup memory, zero past the problem's
 * edges; after a barrier each subgroup loads its left and right matrices from there (row-major) and
 * accumulates into its matsM × matsN result matrices (f32). At the end each subgroup stores one result matrix
 * at a time into its slice of `Cs` and its lanes hand groups of 4 columns to the epilogue.
 *
 * Subgroup matrix builtins must see subgroup-uniform pointers and offsets. Here offsets depend on the
 * subgroup's index `lid / lanes` (lanes = the adapter's largest subgroup size, so the workgroup is whole
 * subgroups of consecutive invocations, as Dawn requires full subgroups); Tint's analysis only knows workgroup
 * uniformity, so its `chromium.subgroup_matrix_uniformity` diagnostic is turned off, as ONNX Runtime's and
 * llama.cpp's WebGPU kernels do. Should an adapter split a workgroup into smaller subgroups, two of them
 * compute the same matrices and store the same values: slower, not wrong.
 *
 * WGSL syntax as Dawn in `webgpu` 0.6.2 parses it (checked on lavapipe, whose Tint reports parse errors before
 * the missing feature): types `subgroup_matrix_left<T, K, M>` (columns before rows), `right<T, N, K>`,
 * `result<T, N, M>`; `subgroupMatrixLoad<type, row_major>(ptr, offset, stride)` and
 * `subgroupMatrixStore<row_major>(ptr, offset, value, stride)` (the layout a template argument, since 2026).
 *
 * Emulated tiles (MatrixTiles.emulate) replace the types by private arrays holding a whole matrix in every invocation
 * and the builtins by loops with the same meaning, so the rest of the kernel runs unchanged on any adapter.
 */
import { wgslAll } from "../common/wgsl.ts";
import { type MatrixTiles, matrixTile, matrixWorkgroupSize, stagePad } from "./plan.ts";

/** How the kernel reads its operands and finishes its outputs. */
export interface MatrixGemmParts {
  /** Statements defining `m0` and `n0`, the workgroup's first output row and column (and whatever reads need). */
  prologue: string;
  /** Extents of the problem (WGSL u32 expressions). */
  M: string;
  N: string;
  K: string;
  /** An f32 expression of A[m, k] for m < M and k < K. */
  a: (m: string, k: string) => string;
  /** An f32 expression of B[k, n] for k < K and n < N. */
  b: (k: string, n: string) => string;
  /** The index along which A's (B's) elements are consecutive in memory: consecutive invocations stage along it. */
  aContiguous: "m" | "k";
  bContiguous: "k" | "n";
  /** A statement finishing outputs (m, n … n + 3) from the vec4f `v`. */
  finish: (m: string, n: string, v: string) => string;
}

/** Extensions and global directives a matrix kernel needs. */
export function matrixEnables(t: Pick<MatrixTiles, "emulate">): string[] {
  return t.emulate ? [] : ["subgroups", "chromium_experimental_subgroup_matrix"];
}

export function matrixDirectives(t: Pick<MatrixTiles, "emulate">): string[] {
  return t.emulate ? [] : ["diagnostic(off, chromium.subgroup_matrix_uniformity);"];
}

/** Which matrix a load declares, from which workgroup array, laid out how. */
export interface MatrixLoad {
  kind: "left" | "right" | "result";
  array: string;
  layout: "row_major" | "col_major";
}

/** What the dialect needs of the tiles: the config's shape and component type, native or emulated. */
export type MatrixOperands = Pick<MatrixTiles, "shape" | "component" | "emulate">;

/** The subgroup-matrix operations, written natively or emulated: statements on named matrices. */
export interface Dialect {
  /** Module-scope helpers (emulation only). */
  module: string;
  /** Declares the result matrix `name`, zero. */
  zero: (name: string) => string;
  /** Declares and loads the matrix `name` (a `var` for results, which accumulate). */
  load: (name: string, from: MatrixLoad, offset: string, stride: string) => string;
  /** acc += left · right. */
  mma: (left: string, right: string, acc: string) => string;
  /** Stores the result matrix `name` into the workgroup array `array`, row-major. */
  store: (array: string, offset: string, name: string, stride: string) => string;
}

/** Rows and columns of each kind of matrix. */
function extents(t: MatrixOperands, kind: MatrixLoad["kind"]): [number, number] {
  const { M, N, K } = t.shape;
  return kind === "left" ? [M, K] : kind === "right" ? [K, N] : [M, N];
}

function nativeDialect(t: MatrixOperands): Dialect {
  const { M, N } = t.shape;
  // WGSL's template arguments are columns, then rows.
  const type = (kind: MatrixLoad["kind"]) => {
    const [rows, cols] = extents(t, kind);
    return `subgroup_matrix_${kind}<${kind === "result" ? "f32" : t.component}, ${cols}, ${rows}>`;
  };
  return {
    module: "",
    zero: (name) => `var ${name} = subgroup_matrix_result<f32, ${N}, ${M}>();`,
    load: (name, from, o, s) =>
      `${from.kind === "result" ? "var" : "let"} ${name} = subgroupMatrixLoad<${type(from.kind)}, ${from.layout}>(&${from.array}, ${o}, ${s});`,
    mma: (l, r, acc) => `${acc} = subgroupMatrixMultiplyAccumulate(${l}, ${r}, ${acc});`,
    store: (array, o, name, s) => `subgroupMatrixStore<row_major>(&${array}, ${o}, ${name}, ${s});`,
  };
}

/**
 * Every invocation holds whole matrices in private arrays (row-major) and updates them through pointers: no
 * array is passed by value, which llvmpipe compiles slowly. Loop bounds go through `sm_n`, which the compiler
 * cannot fold (p.count is never 0 in a dispatch), so it does not unroll them: unrolled, one emulated kernel
 * took minutes to compile on a busy lavapipe. A helper per load (array, kind, layout) and per stored array.
 */
function emulatedDialect(t: MatrixOperands, loads: readonly MatrixLoad[], stores: readonly string[]): Dialect {
  const { M, N, K } = t.shape;
  const ptr = (n: number) => `ptr<function, array<f32, ${n}>>`;
  const loader = (from: MatrixLoad) => `sm_load_${from.kind}_${from.array}_${from.layout}`;
  const loadFns = loads.map((from) => {
    const [rows, cols] = extents(t, from.kind);
    const at = from.layout === "row_major" ? "r * stride + c" : "c * stride + r";
    return `
fn ${loader(from)}(m: ${ptr(rows * cols)}, offset: u32, stride: u32) {
  for (var r = 0u; r < sm_n(${rows}u); r++) {
    for (var c = 0u; c < sm_n(${cols}u); c++) { (*m)[r * ${cols}u + c] = f32(${from.array}[offset + ${at}]); }
  }
}`;
  });
  const storeFns = stores.map(
    (array) => `
fn sm_store_${array}(offset: u32, m: ${ptr(M * N)}, stride: u32) {
  for (var r = 0u; r < sm_n(${M}u); r++) {
    for (var c = 0u; c < sm_n(${N}u); c++) { ${array}[offset + r * stride + c] = (*m)[r * ${N}u + c]; }
  }
}`,
  );
  return {
    module: `
fn sm_n(n: u32) -> u32 { return select(n, 0u, p.count == 0u); }${loadFns.join("")}
fn sm_mma(l: ${ptr(M * K)}, r: ${ptr(K * N)}, acc: ${ptr(M * N)}) {
  for (var i = 0u; i < sm_n(${M}u); i++) {
    for (var j = 0u; j < sm_n(${N}u); j++) {
      var s = (*acc)[i * ${N}u + j];
      for (var k = 0u; k < sm_n(${K}u); k++) { s = fma((*l)[i * ${K}u + k], (*r)[k * ${N}u + j], s); }
      (*acc)[i * ${N}u + j] = s;
    }
  }
}${storeFns.join("")}`,
    // Initialised explicitly: a declaration inside a loop must start from zero on every iteration.
    zero: (name) => `var ${name} = array<f32, ${M * N}>();`,
    load: (name, from, o, s) => {
      const [rows, cols] = extents(t, from.kind);
      return `var ${name}: array<f32, ${rows * cols}>; ${loader(from)}(&${name}, ${o}, ${s});`;
    },
    mma: (l, r, acc) => `sm_mma(&${l}, &${r}, &${acc});`,
    // Every invocation holds the whole matrix: one per subgroup writes it.
    store: (array, o, name, s) => `if (sgLane == 0u) { sm_store_${array}(${o}, &${name}, ${s}); }`,
  };
}

/**
 * The operations of a kernel that loads `loads` and stores result matrices into `stores` (workgroup arrays of
 * f32); stores assume `sgLane`, the invocation's index in its subgroup.
 */
export function matrixDialect(t: MatrixOperands, loads: readonly MatrixLoad[], stores: readonly string[]): Dialect {
  return t.emulate ? emulatedDialect(t, loads, stores) : nativeDialect(t);
}

/** The GEMM's loads: A and B blocks row-major; results through Cs. */
const GEMM_LOADS: readonly MatrixLoad[] = [
  { kind: "left", array: "As", layout: "row_major" },
  { kind: "right", array: "Bs", layout: "row_major" },
];

function dialect(t: MatrixTiles): Dialect {
  return matrixDialect(t, GEMM_LOADS, ["Cs"]);
}

/** Row strides of the staged blocks, in elements. */
function strides(t: MatrixTiles): { a: number; b: number } {
  const pad = stagePad(t.component);
  return { a: t.tileK + pad, b: matrixTile(t).n + pad };
}

/** Workgroup memory and (emulated) helper functions. */
export function matrixModule(t: MatrixTiles): string {
  const { m } = matrixTile(t);
  const s = strides(t);
  const subgroups = t.subgroupsM * t.subgroupsN;
  return `
var<workgroup> As: array<${t.component}, ${m * s.a}>;
var<workgroup> Bs: array<${t.component}, ${t.tileK * s.b}>;
var<workgroup> Cs: array<f32, ${subgroups * t.shape.M * t.shape.N}>;
${dialect(t).module}`;
}

/**
 * A `prologue` for batched problems: workgroup `item` takes batch item `bi` and, within it, output tile
 * (m0, n0), the tiles numbered row by row over p.tilesX × p.tilesY.
 */
export function batchedTilePrologue(t: MatrixTiles): string {
  const tile = matrixTile(t);
  return `  let perBatch = p.tilesX * p.tilesY;
  let bi = item / perBatch;
  let tile = item % perBatch;
  let m0 = (tile / p.tilesY) * ${tile.m}u;
  let n0 = (tile % p.tilesY) * ${tile.n}u;`;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** The body of `main`: a workgroup per output tile (guard "return": `item` is the workgroup's tile). */
export function matrixMain(t: MatrixTiles, parts: MatrixGemmParts): string {
  const d = dialect(t);
  const { M: SM, N: SN, K: SK } = t.shape;
  const tile = matrixTile(t);
  const threads = matrixWorkgroupSize(t);
  const s = strides(t);
  const acc = (i: number, j: number) => `acc_${i}_${j}`;
  const pairs = range(t.matsM).flatMap((i) => range(t.matsN).map((j) => [i, j] as const));
  // Consecutive invocations stage consecutive elements of the operand's contiguous index.
  const stage = (
    block: string,
    rows: number,
    cols: number,
    stride: number,
    alongRows: boolean,
    value: (r: string, c: string) => string,
  ) => `
    for (var e = lid; e < ${rows * cols}u; e += ${threads}u) {
      ${alongRows ? `let r = e % ${rows}u; let c = e / ${rows}u;` : `let r = e / ${cols}u; let c = e % ${cols}u;`}
      ${block}[r * ${stride}u + c] = ${t.component}(${value("r", "c")});
    }`;
  const stageA = stage("As", tile.m, t.tileK, s.a, parts.aContiguous === "m", (r, c) => {
    const [m, k] = [`m0 + ${r}`, `k0 + ${c}`];
    return `select(0.0, ${parts.a(`min(${m}, ${parts.M} - 1u)`, `min(${k}, ${parts.K} - 1u)`)}, ${wgslAll(`${m} < ${parts.M}`, `${k} < ${parts.K}`)})`;
  });
  const stageB = stage("Bs", t.tileK, tile.n, s.b, parts.bContiguous === "k", (r, c) => {
    const [k, n] = [`k0 + ${r}`, `n0 + ${c}`];
    return `select(0.0, ${parts.b(`min(${k}, ${parts.K} - 1u)`, `min(${n}, ${parts.N} - 1u)`)}, ${wgslAll(`${k} < ${parts.K}`, `${n} < ${parts.N}`)})`;
  });
  const rowOf = (i: number) => `(sgM * ${t.matsM}u + ${i}u) * ${SM}u`;
  const colOf = (j: number) => `(sgN * ${t.matsN}u + ${j}u) * ${SN}u`;
  const multiply = [
    ...range(t.matsM).map((i) => d.load(`l${i}`, GEMM_LOADS[0], `${rowOf(i)} * ${s.a}u + kk`, `${s.a}u`)),
    ...range(t.matsN).map((j) => d.load(`r${j}`, GEMM_LOADS[1], `kk * ${s.b}u + ${colOf(j)}`, `${s.b}u`)),
    ...pairs.map(([i, j]) => d.mma(`l${i}`, `r${j}`, acc(i, j))),
  ];
  const groups = (SM * SN) / 4;
  const finish = pairs.map(
    ([i, j]) => `
  ${d.store("Cs", "sgBase", acc(i, j), `${SN}u`)}
  workgroupBarrier();
  for (var g = sgLane; g < ${groups}u; g += ${t.lanes}u) {
    let r = g / ${SN / 4}u;
    let c = (g % ${SN / 4}u) * 4u;
    let at = sgBase + r * ${SN}u + c;
    ${parts.finish(`m0 + ${rowOf(i)} + r`, `n0 + ${colOf(j)} + c`, "vec4f(Cs[at], Cs[at + 1u], Cs[at + 2u], Cs[at + 3u])")}
  }
  workgroupBarrier();`,
  );
  return `
${parts.prologue}
  let sg = lid / ${t.lanes}u;
  let sgLane = lid % ${t.lanes}u;
  let sgM = sg / ${t.subgroupsN}u;
  let sgN = sg % ${t.subgroupsN}u;
  let sgBase = sg * ${SM * SN}u;
${pairs.map(([i, j]) => `  ${d.zero(acc(i, j))}`).join("\n")}
  for (var k0 = 0u; k0 < ${parts.K}; k0 += ${t.tileK}u) {${stageA}${stageB}
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.tileK}u; kk += ${SK}u) {
${multiply.map((l) => `      ${l}`).join("\n")}
    }
    workgroupBarrier();
  }
${finish.join("\n")}`;
}
