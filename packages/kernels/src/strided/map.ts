/**
 * The strided-map kernel: out[view] = f(in0[view0], in1[view1], …) over an iteration shape, where every
 * operand is a strided view of a tensor (stride 0 broadcasts). Elementwise ops, broadcasting, casts,
 * permutes, slices, concatenation and nearest upsampling are all this one kernel with different views.
 *
 * Shapes and strides travel as uniforms, so one pipeline serves every shape with the same rank and
 * operand kinds. Operands larger than one storage binding are walked in pieces, each binding only the
 * byte range its piece touches (see plan.ts).
 */
import { DTYPE_BYTES, type DType, formatShape, type Shape, shapeSize, type Tensor } from "@ldm/tensor";
import { type KernelDecl, type ParamType, runKernel } from "../common/kernel.ts";
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

  const params = spec.params ?? [];
  const config: MapConfig = {
    rank,
    width,
    dtypes: operands.map((o) => o.tensor.dtype),
    access,
    paramCount: params.length,
    expr: spec.expr,
    helpers: spec.helpers ?? "",
  };
  for (const piece of pieces) {
    const values: Record<string, number> = { start: piece.start };
    merged.shape.forEach((e, d) => {
      values[`e${d}`] = e;
    });
    operands.forEach((_, k) => {
      values[`o${k}`] = (offsets[k] - piece.bindings[k].baseElement) >>> 0;
      merged.strides[k].forEach((stride, d) => {
        values[`s${k}_${d}`] = stride;
      });
    });
    params.forEach((c, i) => {
      values[`c${i}`] = c;
    });
    runKernel(device, STRIDED_MAP, config, {
      count: (piece.end - piece.start) / width,
      params: values,
      buffers: Object.fromEntries(
        operands.map((o, k) => [
          bindingName(k, operands.length),
          { buffer: o.tensor.buffer, offset: piece.bindings[k].byteOffset, size: piece.bindings[k].byteSize },
        ]),
      ),
    });
  }
}

interface MapConfig {
  rank: number;
  /** Elements per item: 4 on the vectorised path. */
  width: number;
  /** Inputs', then the output's. */
  dtypes: DType[];
  access: Access[];
  paramCount: number;
  expr: string;
  helpers: string;
}

/** in0, in1, …, out. */
function bindingName(k: number, operands: number): string {
  return k === operands - 1 ? "out" : `in${k}`;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Element `item · width` of the walk: its coordinates c0… (row-major), then the inputs a0…, then the output. */
const STRIDED_MAP: KernelDecl<MapConfig> = {
  name: "strided-map",
  params: (g) => {
    const fields: [string, ParamType][] = [
      ["start", "u32"],
      ...range(g.rank).map((d): [string, ParamType] => [`e${d}`, "u32"]),
      ...g.dtypes.flatMap((_, k) => [
        [`o${k}`, "u32"] as [string, ParamType],
        ...range(g.rank).map((d): [string, ParamType] => [`s${k}_${d}`, "u32"]),
      ]),
      ...range(g.paramCount).map((c): [string, ParamType] => [`c${c}`, "f32"]),
    ];
    return Object.fromEntries(fields);
  },
  bindings: (g) =>
    g.dtypes.map((dtype, k) => ({
      name: bindingName(k, g.dtypes.length),
      type: g.access[k] === "vec" ? `vec4<${dtype}>` : dtype,
      access: k === g.dtypes.length - 1 ? "read_write" : "read",
    })),
  workgroupSize: WORKGROUP,
  module: (g) => `
alias V = ${g.width === 4 ? "vec4<f32>" : "f32"};
${g.helpers}`,
  main: (g) => {
    const outIndex = g.dtypes.length - 1;
    const dims = range(g.rank);
    const index = (k: number) => {
      const idx = `(p.o${k} + ${dims.map((d) => `c${d} * p.s${k}_${d}`).join(" + ")})`;
      return g.access[k] === "vec" ? `${idx} / 4u` : idx;
    };
    const decompose = dims
      .slice(1)
      .reverse()
      .map((d) => `  let c${d} = rem % p.e${d};\n  rem = rem / p.e${d};`);
    const loads = range(outIndex).map(
      (k) => `  let a${k} = ${g.access[k] === "vec" ? `V(in${k}[${index(k)}])` : `V(f32(in${k}[${index(k)}]))`};`,
    );
    const outType = g.width === 4 ? `vec4<${g.dtypes[outIndex]}>` : g.dtypes[outIndex];
    return `
  let g = p.start + item * ${g.width}u;
  var rem = g;
${decompose.join("\n")}
  let c0 = rem;
${loads.join("\n")}
  out[${index(outIndex)}] = ${outType}(${g.expr});`;
  },
};
