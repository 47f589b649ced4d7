/**
 * Elementwise ops with NumPy broadcasting, activations and GEGLU, all on the strided-map kernel.
 * Math runs in f32 whatever the storage dtype; the output has the input's dtype.
 */
import { formatShape, type Shape, shapeSize, stridesOf, Tensor } from "@ldm/tensor";
import { stridedMap } from "../strided/map.ts";
import { ERF_WGSL } from "./erf.ts";

/** The NumPy broadcast of two shapes (right-aligned; a dimension of 1 stretches). */
export function broadcastShapes(op: string, a: Shape, b: Shape): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`${op}: shapes ${formatShape(a)} and ${formatShape(b)} do not broadcast (dimension ${i})`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Strides that read a contiguous tensor of `shape` broadcast to `target` (stride 0 on stretched dims). */
export function broadcastStrides(shape: Shape, target: Shape): number[] {
  const own = stridesOf(shape);
  const lead = target.length - shape.length;
  return target.map((_, i) => (i < lead || shape[i - lead] === 1 ? 0 : own[i - lead]));
}

function binary(op: string, a: Tensor, b: Tensor, expr: string): Tensor {
  if (a.dtype !== b.dtype) {
    throw new Error(`${op}: a is ${a.dtype} and b is ${b.dtype}; cast one of them first`);
  }
  const shape = broadcastShapes(op, a.shape, b.shape);
  const out = Tensor.empty(a.device, shape, a.dtype);
  stridedMap({
    op,
    shape,
    inputs: [
      { tensor: a, strides: broadcastStrides(a.shape, shape) },
      { tensor: b, strides: broadcastStrides(b.shape, shape) },
    ],
    output: { tensor: out, strides: stridesOf(shape) },
    expr,
  });
  return out;
}

function unary(op: string, x: Tensor, expr: string, params: number[] = [], helpers = ""): Tensor {
  const out = Tensor.empty(x.device, x.shape, x.dtype);
  const strides = stridesOf(x.shape);
  stridedMap({
    op,
    shape: x.shape,
    inputs: [{ tensor: x, strides }],
    output: { tensor: out, strides },
    expr,
    params,
    helpers,
  });
  return out;
}

/** a + b, broadcasting. */
export function add(a: Tensor, b: Tensor): Tensor {
  return binary("add", a, b, "a0 + a1");
}

/** a − b, broadcasting. */
export function sub(a: Tensor, b: Tensor): Tensor {
  return binary("sub", a, b, "a0 - a1");
}

/** a · b, broadcasting. */
export function mul(a: Tensor, b: Tensor): Tensor {
  return binary("mul", a, b, "a0 * a1");
}

/** x · scale + shift (scalars; one compiled kernel for all values). */
export function affine(x: Tensor, scale: number, shift = 0): Tensor {
  return unary("affine", x, "a0 * p.c0 + p.c1", [scale, shift]);
}

/** x · sigmoid(x). */
export function silu(x: Tensor): Tensor {
  return unary("silu", x, "a0 / (V(1.0) + exp(-a0))");
}

/** The exact GELU, x · Φ(x) = x/2 · (1 + erf(x/√2)) (torch's default, approximate='none'). */
export function gelu(x: Tensor): Tensor {
  return unary("gelu", x, "gelu_erf(a0)", [], ERF_WGSL);
}

/** torch's gelu(approximate='tanh'): x/2 · (1 + tanh(√(2/π) (x + 0.044715 x³))). */
export function geluTanh(x: Tensor): Tensor {
  // tanh of |u| ≥ 15 is ±1 in f32; the clamp keeps an exp-based tanh from computing inf/inf.
  return unary(
    "geluTanh",
    x,
    "0.5 * a0 * (V(1.0) + tanh(clamp(0.7978845608028654 * (a0 + 0.044715 * a0 * a0 * a0), V(-15.0), V(15.0))))",
  );
}

/** CLIP's quick_gelu: x · sigmoid(1.702 x). */
export function quickGelu(x: Tensor): Tensor {
  return unary("quickGelu", x, "a0 / (V(1.0) + exp(-1.702 * a0))");
}

/**
 * GEGLU on the projection output x [..., 2F] → [..., F]: `a, gate = x.chunk(2, -1); a · gelu(gate)`
 * (the CompVis / diffusers order: the first half is the value, the second the gate). Written into `into`
 * (any shape with [..., F]'s elements) when given, else into a new tensor of x's dtype.
 */
export function geglu(x: Tensor, into?: Tensor): Tensor {
  const last = x.shape.at(-1) ?? 0;
  if (x.shape.length === 0 || last % 2) {
    throw new Error(`geglu: the last dimension of ${x} must be even (value and gate halves)`);
  }
  const half = last / 2;
  const shape = [...x.shape.slice(0, -1), half];
  if (into && into.size !== shapeSize(shape)) {
    throw new Error(`geglu: output ${into} must have the ${shapeSize(shape)} elements of ${formatShape(shape)}`);
  }
  const strides = stridesOf(x.shape);
  const out = into ?? Tensor.empty(x.device, shape, x.dtype);
  stridedMap({
    op: "geglu",
    shape,
    inputs: [
      { tensor: x, strides },
      { tensor: x, strides, offset: half },
    ],
    output: { tensor: out, strides: stridesOf(shape) },
    expr: "a0 * gelu_erf(a1)",
    helpers: ERF_WGSL,
  });
  return out;
}
