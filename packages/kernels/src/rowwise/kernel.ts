/**
 * A three-pass kernel over the rows (last dimension) of a contiguous tensor: reduce, reduce again using
 * the first result, then write every element. LayerNorm (mean; squared deviations; normalise) and softmax
 * (max; sum of exponentials; divide) are both this shape.
 *
 * `threadsPerRow` invocations share a row. On a CPU adapter one invocation per row is best: workgroup
 * barriers there switch between coroutines, and a row of a few hundred floats is cheap to walk three times.
 * GPUs want a row spread over many invocations and a tree reduction in workgroup memory.
 */
import { type DType, Tensor } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { assertBindable } from "../common/wgsl.ts";

export interface RowStrategy {
  threadsPerRow: number;
  workgroupSize: number;
}

/** How a row of `rowLength` elements is spread over invocations (a pure function of adapter kind and length). */
export function rowStrategy(isCpu: boolean, rowLength: number): RowStrategy {
  if (isCpu) return { threadsPerRow: 1, workgroupSize: 64 };
  let threads = 1;
  while (threads < 256 && threads * 8 < rowLength) threads *= 2;
  return { threadsPerRow: threads, workgroupSize: Math.max(64, threads) };
}

export interface RowReduction {
  kind: "sum" | "max";
  /** WGSL expression of type V for each element: `v` (the loaded value(s), f32), `col` (column index, u32 or vec4<u32>), `row`. */
  term: string;
  /** WGSL f32 expression of the reduced `total` (and earlier results). */
  result: string;
}

export interface RowKernel {
  /** Op name for errors and the pipeline cache key. */
  op: string;
  x: Tensor;
  /** Read-only tensors bound after x, named as given (e.g. gamma, beta), read as f32 via `load_<name>(col)`. */
  extras?: Record<string, Tensor>;
  /** Two reductions, whose results are `r1` and `r2`. */
  reductions: [RowReduction, RowReduction];
  /** WGSL expression of type V for each output element, from `v`, `col`, `row`, `r1`, `r2`, extras and params. */
  write: string;
  /** f32 uniforms, readable as `p.<name>`. */
  params?: Record<string, number>;
  /** u32 uniforms, readable as `p.<name>`. */
  intParams?: Record<string, number>;
  /** Overrides rowStrategy(adapter, length), for tests and tuning. */
  strategy?: RowStrategy;
}

const NEG_LARGE = "-3.0e38";

export function runRowKernel(k: RowKernel): Tensor {
  const { x, op } = k;
  const device = x.device;
  const len = x.shape.at(-1) ?? 1;
  const rows = len === 0 ? 0 : x.size / len;
  const out = Tensor.empty(device, x.shape, x.dtype);
  const extras = Object.entries(k.extras ?? {});
  assertBindable(op, { x, out, ...k.extras });
  if (rows === 0) return out;
  const width = len % 4 === 0 ? 4 : 1;
  const strategy = k.strategy ?? rowStrategy(device.info.isCpu, len / width);
  const floats = k.params ?? {};
  const ints = k.intParams ?? {};
  const config: RowConfig = {
    op,
    dtype: x.dtype,
    width,
    strategy,
    extras: extras.map(([name, t]) => [name, t.dtype]),
    floats: Object.keys(floats),
    ints: Object.keys(ints),
    reductions: k.reductions,
    write: k.write,
  };
  runKernel(device, ROWWISE, config, {
    count: rows,
    params: { len: len / width, ...ints, ...floats },
    buffers: { x: x.slice(), ...Object.fromEntries(extras.map(([name, t]) => [name, t.slice()])), out: out.slice() },
  });
  return out;
}

interface RowConfig extends Pick<RowKernel, "op" | "reductions" | "write"> {
  dtype: DType;
  width: number;
  strategy: RowStrategy;
  extras: [string, DType][];
  floats: string[];
  ints: string[];
}

const stored = (g: RowConfig, t: DType) => (g.width === 4 ? `vec4<${t}>` : t);

/** A row per item (`row`), walked by `threadsPerRow` invocations `lane` apart; rows past the end only reach the barriers. */
const ROWWISE: KernelDecl<RowConfig> = {
  name: "rows",
  params: (g) => ({
    len: "u32",
    ...Object.fromEntries(g.ints.map((n) => [n, "u32"])),
    ...Object.fromEntries(g.floats.map((n) => [n, "f32"])),
  }),
  bindings: (g) => [
    { name: "x", type: stored(g, g.dtype) },
    ...g.extras.map(([name, t]) => ({ name, type: stored(g, t) })),
    { name: "out", type: stored(g, g.dtype), access: "read_write" as const },
  ],
  workgroupSize: (g) => g.strategy.workgroupSize,
  itemsPerWorkgroup: (g) => g.strategy.workgroupSize / g.strategy.threadsPerRow,
  guard: "flag",
  module: (g) => {
    const T = g.strategy.threadsPerRow;
    const reduceFn = (kind: "sum" | "max") =>
      T === 1
        ? `fn reduce_${kind}(v: f32, lid: u32) -> f32 { return v; }`
        : `fn reduce_${kind}(v: f32, lid: u32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  let t = lid % ${T}u;
  for (var s = ${T / 2}u; s > 0u; s >>= 1u) {
    if (t < s) { partial[lid] = ${kind === "sum" ? "partial[lid] + partial[lid + s]" : "max(partial[lid], partial[lid + s])"}; }
    workgroupBarrier();
  }
  let r = partial[lid - t];
  workgroupBarrier();
  return r;
}`;
    const [first, second] = g.reductions;
    return `
alias V = ${g.width === 4 ? "vec4<f32>" : "f32"};
alias VU = ${g.width === 4 ? "vec4<u32>" : "u32"};
${g.extras.map(([name]) => `fn load_${name}(j: u32) -> V { return V(${name}[j]); }`).join("\n")}
${T > 1 ? `var<workgroup> partial: array<f32, ${g.strategy.workgroupSize}>;` : ""}
${reduceFn(first.kind)}
${first.kind !== second.kind ? reduceFn(second.kind) : ""}`;
  },
  main: (g) => {
    const vec = g.width === 4;
    const T = g.strategy.threadsPerRow;
    const collapse = (kind: "sum" | "max", e: string) =>
      vec ? (kind === "sum" ? `dot(${e}, vec4<f32>(1.0))` : `max(max(${e}.x, ${e}.y), max(${e}.z, ${e}.w))`) : e;
    const combine = (kind: "sum" | "max", acc: string, e: string) =>
      kind === "sum" ? `${acc} + ${collapse(kind, e)}` : `max(${acc}, ${collapse(kind, e)})`;
    const walk = (body: string) => `if (inRange) {
    for (var j = lane; j < p.len; j += ${T}u) {
      let v = V(x[base + j]);
      let col = ${vec ? "vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u)" : "j"};
      ${body}
    }
  }`;
    const [first, second] = g.reductions;
    const init = (kind: "sum" | "max") => (kind === "sum" ? "0.0" : NEG_LARGE);
    return `
  let row = item;
  let lane = lid % ${T}u;
  let base = row * p.len;
  var acc = ${init(first.kind)};
  ${walk(`let term = ${first.term};
      acc = ${combine(first.kind, "acc", "term")};`)}
  var r1: f32;
  {
    let total = reduce_${first.kind}(acc, lid);
    r1 = ${first.result};
  }
  acc = ${init(second.kind)};
  ${walk(`let term = ${second.term};
      acc = ${combine(second.kind, "acc", "term")};`)}
  var r2: f32;
  {
    let total = reduce_${second.kind}(acc, lid);
    r2 = ${second.result};
  }
  ${walk(`out[base + j] = ${stored(g, g.dtype)}(${g.write});`)}`;
  },
};
