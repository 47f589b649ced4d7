/**
 * Declared kernels: every WGSL kernel of this package is one `KernelDecl` — name, typed uniforms, storage
 * bindings, workgroup size and body, each a function of one plain configuration object — and `runKernel` is
 * the only code that turns a declaration into WGSL and a dispatch. The runner writes the enable lines, the
 * `Params` struct, the bindings, `main`'s header with its linear index and bounds guard, folds the grid, packs
 * the uniforms by name and binds the buffers by name.
 *
 * The pipeline cache key is the kernel's name and its configuration as JSON. A declaration's functions see
 * nothing but the configuration (and module constants), so whatever changes the generated WGSL is in the key: a
 * generator input cannot be left out of it. The first dispatch of a key checks that the configuration is plain
 * data (a function or NaN would vanish from JSON). Build a kernel's configuration in one place: the same values
 * in another key order make another key (a second, identical pipeline, never a wrong one).
 */
import type { BufferSlice, Device } from "@ldm/tensor";
import { Uniforms } from "@ldm/tensor";
import { foldGrid, LINEAR_WORKGROUP_ID } from "./grid.ts";
import { wgslEnables } from "./wgsl.ts";

export type ParamType = "u32" | "i32" | "f32";

/** A buffer binding; bindings are numbered from 1 in declaration order (0 is the uniform block). */
export interface KernelBinding {
  /** The WGSL variable, and the name the buffer is passed under. */
  name: string;
  /** Element type of the array: "f32", "vec4<f16>", "vec2<u32>" … (a 16-byte type for a uniform array). */
  type: string;
  /** Default "read". */
  access?: "read" | "read_write";
  /** A uniform buffer of this many elements (a fixed-size array) instead of a storage buffer. */
  uniform?: number;
}

/** A field of the declaration: fixed, or computed from the configuration. */
type Of<C, T> = T | ((c: C) => T);

export interface KernelDecl<C> {
  /** First field of the cache key and of the pipeline label (profiles group kernels by it). */
  name: string;
  /** Uniform fields by name, in struct order. `count` is the runner's (the number of work items). */
  params: Of<C, Record<string, ParamType>>;
  bindings: Of<C, readonly KernelBinding[]>;
  workgroupSize: Of<C, number>;
  /**
   * Work items per workgroup: the workgroup size (the default: one item per invocation), 1 (one item per
   * workgroup, e.g. an output tile) or anything between (invocations share an item in equal groups). `main`
   * starts with `let item = …;`, the item's linear index over the folded grid.
   */
  itemsPerWorkgroup?: Of<C, number>;
  /**
   * "return" (the default): invocations past `count` return at once. "flag": they carry on with
   * `let inRange = item < p.count;`, for kernels whose workgroup barriers every invocation must reach.
   */
  guard?: "return" | "flag";
  /** Extensions besides f16, which is enabled when a binding stores f16 (e.g. ["subgroups"]). */
  enables?: Of<C, readonly string[]>;
  /** Global directives after the enables, e.g. "diagnostic(off, chromium.subgroup_matrix_uniformity);". */
  directives?: Of<C, readonly string[]>;
  /**
   * Module-scope WGSL after the bindings: aliases, helper functions, workgroup variables. The builtins
   * `wid`, `nwg`, `lid` (local_invocation_index) and, with subgroups, `lane` are `main`'s parameters.
   */
  module?: Of<C, string>;
  /** The body of `main` after the guard. */
  main: Of<C, string>;
}

/** What one dispatch of a kernel needs besides its configuration. */
export interface KernelRun {
  /** Work items (see itemsPerWorkgroup); 0 dispatches nothing. */
  count: number;
  /** A value for every declared uniform, by name. */
  params: Record<string, number>;
  /** A buffer for every declared binding, by name. */
  buffers: Record<string, GPUBuffer | BufferSlice>;
}

function resolve<C, T>(field: Of<C, T>, c: C): T {
  return typeof field === "function" ? (field as (c: C) => T)(c) : field;
}

/**
 * The configuration as text with sorted keys, refusing anything but plain data (numbers, strings, booleans,
 * null, arrays, objects).
 */
export function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${k}:${canonical(x)}`).join(",")}}`;
  }
  if (typeof v === "number" && !Number.isFinite(v)) throw new Error(`kernel configuration holds ${v}`);
  if (v === null || typeof v === "number" || typeof v === "string" || typeof v === "boolean") {
    return JSON.stringify(v);
  }
  throw new Error(`kernel configuration holds a ${typeof v}; only plain data can configure a kernel`);
}

/** The pipeline cache key of a kernel under a configuration (JSON: native, a few µs per dispatch). */
export function kernelKey<C>(kernel: KernelDecl<C>, config: C): string {
  return `${kernel.name}:${JSON.stringify(config)}`;
}

/** What the runner derives once per pipeline. */
interface Layout {
  params: [string, ParamType][];
  bindings: string[];
  /** Per binding: read_write (the dispatch may change the buffer). */
  writes: boolean[];
  itemsPerWorkgroup: number;
  f16: boolean;
}

function layoutOf<C>(kernel: KernelDecl<C>, c: C): Layout {
  const params = Object.entries(resolve(kernel.params, c));
  if (params.some(([name]) => name === "count")) {
    throw new Error(`kernel ${kernel.name}: the uniform 'count' is the runner's; name the parameter otherwise`);
  }
  const bindings = resolve(kernel.bindings, c);
  const workgroupSize = resolve(kernel.workgroupSize, c);
  const items = resolve(kernel.itemsPerWorkgroup ?? workgroupSize, c);
  if (!Number.isInteger(items) || items < 1 || workgroupSize % items) {
    throw new Error(
      `kernel ${kernel.name}: ${items} items per workgroup do not divide its ${workgroupSize} invocations`,
    );
  }
  const enables = resolve(kernel.enables ?? [], c);
  return {
    params: [["count", "u32"], ...params],
    bindings: bindings.map((b) => b.name),
    writes: bindings.map((b) => b.access === "read_write"),
    itemsPerWorkgroup: items,
    f16: enables.includes("f16") || bindings.some((b) => /\bf16\b/.test(b.type)),
  };
}

/** A template's text without the line break after its opening backtick. */
function unindent(text: string): string {
  return text.startsWith("\n") ? text.slice(1) : text;
}

/** The whole WGSL module of a kernel under a configuration. */
export function kernelWgsl<C>(kernel: KernelDecl<C>, c: C): string {
  const layout = layoutOf(kernel, c);
  const workgroupSize = resolve(kernel.workgroupSize, c);
  const extensions = resolve(kernel.enables ?? [], c).filter((e) => e !== "f16");
  const subgroups = extensions.includes("subgroups");
  const items = layout.itemsPerWorkgroup;
  const linear = LINEAR_WORKGROUP_ID;
  const item =
    items === 1
      ? linear
      : items === workgroupSize
        ? `${linear} * ${items}u + lid`
        : `${linear} * ${items}u + lid / ${workgroupSize / items}u`;
  const guard = kernel.guard === "flag" ? "  let inRange = item < p.count;" : "  if (item >= p.count) { return; }";
  const bindings = resolve(kernel.bindings, c).map((b, i) =>
    b.uniform
      ? `@group(0) @binding(${i + 1}) var<uniform> ${b.name}: array<${b.type}, ${b.uniform}>;`
      : `@group(0) @binding(${i + 1}) var<storage, ${b.access ?? "read"}> ${b.name}: array<${b.type}>;`,
  );
  const builtins = [
    "@builtin(workgroup_id) wid: vec3u",
    "@builtin(num_workgroups) nwg: vec3u",
    "@builtin(local_invocation_index) lid: u32",
    ...(subgroups ? ["@builtin(subgroup_invocation_id) lane: u32"] : []),
  ];
  return [
    ...(layout.f16 ? ["enable f16;"] : []),
    ...extensions.map((e) => `enable ${e};`),
    ...resolve(kernel.directives ?? [], c),
    `struct Params { ${layout.params.map(([name, type]) => `${name}: ${type},`).join(" ")} }`,
    "@group(0) @binding(0) var<uniform> p: Params;",
    ...bindings,
    unindent(resolve(kernel.module ?? "", c)),
    `@compute @workgroup_size(${workgroupSize})`,
    `fn main(${builtins.join(", ")}) {`,
    `  let item = ${item};`,
    guard,
    unindent(resolve(kernel.main, c)),
    "}",
    "",
  ].join("\n");
}

/** The uniform block of a dispatch: every declared field from `values`, by name. */
export function packParams(
  kernelName: string,
  fields: readonly (readonly [string, ParamType])[],
  values: Record<string, number>,
): Uint8Array {
  const u = new Uniforms();
  for (const [name, type] of fields) {
    const v = values[name];
    if (v === undefined) throw new Error(`kernel ${kernelName}: no value for the uniform '${name}'`);
    u[type](v);
  }
  // Every declared field was found, so more values than fields means one that is not a field.
  const names = Object.keys(values);
  if (names.length !== fields.length) {
    const extra = names.find((name) => !fields.some(([field]) => field === name));
    throw new Error(`kernel ${kernelName}: '${extra}' is not one of its uniforms`);
  }
  return u.bytes();
}

const layouts = new WeakMap<Device, Map<string, Layout>>();

/** Dispatches `kernel` under `config` over `run.count` items (compiling its pipeline on first use). */
export function runKernel<C>(device: Device, kernel: KernelDecl<C>, config: C, run: KernelRun): void {
  const key = kernelKey(kernel, config);
  let byKey = layouts.get(device);
  if (!byKey) {
    byKey = new Map();
    layouts.set(device, byKey);
  }
  let layout = byKey.get(key);
  if (!layout) {
    canonical(config);
    layout = layoutOf(kernel, config);
    if (layout.f16) wgslEnables(device, "f16"); // throws on a device without shader-f16
    byKey.set(key, layout);
  }
  const pipeline = device.pipeline(key, () => kernelWgsl(kernel, config));
  const count = run.count;
  if (!Number.isInteger(count) || count < 0) throw new Error(`kernel ${kernel.name}: invalid item count ${count}`);
  const buffers = layout.bindings.map((name) => {
    const b = run.buffers[name];
    if (!b) throw new Error(`kernel ${kernel.name}: no buffer for the binding '${name}'`);
    return b;
  });
  if (Object.keys(run.buffers).length !== buffers.length) {
    const extra = Object.keys(run.buffers).filter((n) => !layout.bindings.includes(n));
    throw new Error(`kernel ${kernel.name}: ${extra.map((n) => `'${n}'`).join(", ")} not among its bindings`);
  }
  if ("count" in run.params) throw new Error(`kernel ${kernel.name}: pass the item count as run.count, not a uniform`);
  const uniforms = packParams(kernel.name, layout.params, { ...run.params, count });
  if (count === 0) return;
  device.dispatch({
    pipeline,
    buffers,
    writes: layout.writes,
    uniforms,
    workgroups: foldGrid(Math.ceil(count / layout.itemsPerWorkgroup), device.limits.maxComputeWorkgroupsPerDimension),
  });
}
