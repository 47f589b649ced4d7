/**
 * The strided-map kernel: out[view] = f(in0[view0], in1[view1], …) over an iteration shape, where every
 * operand is a strided view of a tensor (stride 0 broadcasts). Elementwise ops, broadcasting, casts,
 * permutes, slices, concatenation and nearest upsampling are all this one kernel with different views.
 *
 * Shapes and strides travel as uniforms, so one pipeline serves every shape with the same rank and
 * operand kinds. Operands larger than one storage binding are walked in pieces, each binding only the
 * byte range its piece touches (see plan.ts).
 */
import { DTYPE_BYTES, type DType, formatShape, type Shape, shapeSize, type Tensor, Uniforms } from "@ldm/tensor";
import { foldGrid, LINEAR_WORKGROUP_ID } from "../common/grid.ts";
import { wgslEnables } from "../common/wgsl.ts";
import { coalesce, splitForBindings } from "./plan.ts";

export interface MapOperand {
  tensor: Tensor;
  /** Element strides per dimension of the iteration shape (0 = broadcast). */
  strides: readonly number[];
  /** First element, default 0. */
  offset?: number;
}

export interface MapSpec {
  /** Op name for errors. */
  op: string;
  shape: Shape;
  inputs: readonly MapOperand[];
  output: MapOperand;
  /**
   * WGSL expression of type `V` (f32, or vec4<f32> on the vectorised path) over the loaded inputs
   * `a0, a1, …` (already f32) and the f32 uniforms `p.c0, p.c1, …` given in `params`.
   */
  expr: string;
  params?: readonly number[];
  /** WGSL functions the expression calls, written over the alias `V`. */
  helpers?: string;
}

const WORKGROUP = 256;
const MAX_RANK = 6;
const FLOAT_DTYPES: readonly DType[] = ["f32", "f16"];

/** How an operand is read on the vectorised path: four consecutive elements, or one element splatted. */
type Access = "vec" | "splat" | "scalar";

function vectorAccess(shape: number[], strides: number[], offset: number, isOutput: boolean): Access | null {
  const inner = strides.length - 1;
  if (strides[inner] === 0 && !isOutput) return "splat";
  if (strides[inner] !== 1 || offset % 4) return null;
  return strides.every((s, d) => d === inner || s % 4 === 0 || shape[d] === 1) ? "vec" : null;
}

export function stridedMap(spec: MapSpec): void {
  const { op, shape, inputs, output } = spec;
  const operands = [...inputs, output];
  const device = output.tensor.device;
  for (const [k, o] of operands.entries()) {
    const name = k < inputs.length ? `input ${k}` : "output";
    if (!FLOAT_DTYPES.includes(o.tensor.dtype)) {
      throw new Error(`${op}: ${name} ${o.tensor} has dtype ${o.tensor.dtype}; this op takes f32 or f16`);
    }
    if (o.strides.length !== shape.length) {
      throw new Error(
        `${op}: ${name} has ${o.strides.length} strides for the ${shape.length}-d walk ${formatShape(shape)}`,
      );
    }
    if (o.tensor.device !== device) throw new Error(`${op}: ${name} lives on another device`);
  }
  const total = shapeSize(shape);
  if (total === 0) return;
  if (total >= 2 ** 32) throw new Error(`${op}: ${total} elements exceed the 2^32 a kernel can index`);

  const merged = coalesce(
    shape,
    operands.map((o) => ({ strides: o.strides, offset: o.offset ?? 0 })),
  );
  const rank = merged.shape.length;
  if (rank > MAX_RANK) {
    throw new Error(
      `${op}: the walk over ${formatShape(shape)} still has ${rank} dimensions after merging; at most ${MAX_RANK} are supported`,
    );
  }
  const offsets = operands.map((o) => o.offset ?? 0);
  for (const [k, o] of operands.entries()) {
    const last = offsets[k] + merged.strides[k].reduce((acc, s, d) => acc + s * (merged.shape[d] - 1), 0);
    if (offsets[k] < 0 || last >= o.tensor.size) {
      throw new Error(
        `${op}: ${k < inputs.length ? `input ${k}` : "output"} view reaches element ${last} of ${o.tensor}, which has ${o.tensor.size}`,
      );
    }
  }

  const inner = merged.shape[rank - 1];
  const accessOf = operands.map((_, k) =>
    vectorAccess(merged.shape, merged.strides[k], offsets[k], k === operands.length - 1),
  );
  const vectorised = inner % 4 === 0 && accessOf.every((a) => a !== null);
  const access: Access[] = vectorised ? (accessOf as Access[]) : operands.map(() => "scalar");
  const width = vectorised ? 4 : 1;

  const pieces = splitForBindings(
    op,
    merged.shape,
    operands.map((o, k) => ({
      name: k < inputs.length ? `input ${k}` : "output",
      strides: merged.strides[k],
      offset: offsets[k],
      bytesPerElement: DTYPE_BYTES[o.tensor.dtype],
    })),
    WORKGROUP * width,
    {
      maxBindingBytes: device.limits.maxStorageBufferBindingSize,
      offsetAlignment: device.limits.minStorageBufferOffsetAlignment,
    },
  );

  const dtypes = operands.map((o) => o.tensor.dtype);
  const params = spec.params ?? [];
  const key = `strided-map|${rank}|${width}|${dtypes.join(",")}|${access.join(",")}|${params.length}|${spec.expr}|${spec.helpers ?? ""}`;
  const pipeline = device.pipeline(key, () =>
    mapWgsl({
      enables: wgslEnables(device, ...dtypes),
      rank,
      width,
      dtypes,
      access,
      paramCount: params.length,
      expr: spec.expr,
      helpers: spec.helpers ?? "",
    }),
  );
  const maxGroups = device.limits.maxComputeWorkgroupsPerDimension;
  for (const piece of pieces) {
    const items = (piece.end - piece.start) / width;
    const u = new Uniforms().u32(items).u32(piece.start);
    for (const e of merged.shape) u.u32(e);
    operands.forEach((_, k) => {
      u.u32((offsets[k] - piece.bindings[k].baseElement) >>> 0);
      for (const s of merged.strides[k]) u.u32(s);
    });
    for (const c of params) u.f32(c);
    device.dispatch({
      pipeline,
      uniforms: u.bytes(),
      buffers: operands.map((o, k) => ({
        buffer: o.tensor.buffer,
        offset: piece.bindings[k].byteOffset,
        size: piece.bindings[k].byteSize,
      })),
      workgroups: foldGrid(Math.ceil(items / WORKGROUP), maxGroups),
    });
  }
}

interface MapWgsl {
  enables: string;
  rank: number;
  width: number;
  dtypes: DType[];
  access: Access[];
  paramCount: number;
  expr: string;
  helpers: string;
}

function mapWgsl(g: MapWgsl): string {
  const n = g.dtypes.length;
  const outIndex = n - 1;
  const dims = Array.from({ length: g.rank }, (_, d) => d);
  const fields = [
    "count: u32",
    "start: u32",
    ...dims.map((d) => `e${d}: u32`),
    ...g.dtypes.flatMap((_, k) => [`o${k}: u32`, ...dims.map((d) => `s${k}_${d}: u32`)]),
    ...Array.from({ length: g.paramCount }, (_, c) => `c${c}: f32`),
  ];
  const vecType = (k: number) => (g.access[k] === "vec" ? `vec4<${g.dtypes[k]}>` : g.dtypes[k]);
  const bindings = g.dtypes.map((_, k) => {
    const mode = k === outIndex ? "read_write" : "read";
    const name = k === outIndex ? "out" : `in${k}`;
    return `@group(0) @binding(${k + 1}) var<storage, ${mode}> ${name}: array<${vecType(k)}>;`;
  });
  const decompose = [
    "  var rem = g;",
    ...dims
      .slice(1)
      .reverse()
      .map((d) => `  let c${d} = rem % p.e${d};\n  rem = rem / p.e${d};`),
    "  let c0 = rem;",
  ];
  const index = (k: number) => {
    const terms = dims.map((d) => `c${d} * p.s${k}_${d}`).join(" + ");
    const idx = `(p.o${k} + ${terms})`;
    return g.access[k] === "vec" ? `${idx} / 4u` : idx;
  };
  const loads = g.dtypes
    .slice(0, outIndex)
    .map(
      (_, k) => `  let a${k} = ${g.access[k] === "vec" ? `V(in${k}[${index(k)}])` : `V(f32(in${k}[${index(k)}]))`};`,
    );
  const outType = g.width === 4 ? `vec4<${g.dtypes[outIndex]}>` : g.dtypes[outIndex];
  return `${g.enables}alias V = ${g.width === 4 ? "vec4<f32>" : "f32"};
struct Params { ${fields.join(", ")} }
@group(0) @binding(0) var<uniform> p: Params;
${bindings.join("\n")}
${g.helpers}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let item = ${LINEAR_WORKGROUP_ID} * ${WORKGROUP}u + lid;
  if (item >= p.count) { return; }
  let g = p.start + item * ${g.width}u;
${decompose.join("\n")}
${loads.join("\n")}
  out[${index(outIndex)}] = ${outType}(${g.expr});
}
`;
}
