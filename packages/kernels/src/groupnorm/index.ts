/**
 * GroupNorm over x [B, C, ...spatial] with per-channel affine and optional fused SiLU, as torch.nn.GroupNorm
 * (biased variance, eps inside the square root); optionally of x + shift[B, C] (broadcast over space), the
 * ResBlock's `h + emb_out[..., None, None]`, so that sum is never written to memory and read back.
 *
 * A group's elements are contiguous, so they are read three times — mean, then the sum of squared deviations
 * (two-pass: no cancellation when |mean| ≫ std), then normalise. On GPUs a workgroup of 256 invocations shares
 * one group and sums by a tree in workgroup memory. On a CPU adapter one invocation walks a whole group, which
 * stays in its cache between passes: workgroup barriers there switch between coroutines, and the trees'
 * 20 barriers cost more than the arithmetic (lavapipe, the built-in model's UNet: 1.3–1.8 ms per GroupNorm with
 * the trees, 0.08–0.2 ms without). Tensors over one storage binding are walked in pieces of whole groups.
 */
import { DTYPE_BYTES, type DType, shapeSize, Tensor } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { assertDType } from "../common/wgsl.ts";
import { splitForBindings } from "../strided/plan.ts";

export interface GroupNormOptions {
  groups: number;
  /** 1e-6 in the VAE and SpatialTransformer, 1e-5 in UNet ResBlocks (torch's default). */
  eps: number;
  /** Apply SiLU to the result (GroupNorm → SiLU as in ResBlocks). */
  silu?: boolean;
  /** [B, C]: normalise x + shift[b, c] instead of x (the ResBlock's timestep embedding), computed in f32. */
  shift?: Tensor;
  /** Overrides groupStrategy(adapter), for tests and tuning. */
  strategy?: GroupStrategy;
}

export interface GroupStrategy {
  /** Invocations that share one group: 1, or the whole workgroup. */
  threadsPerGroup: number;
  workgroupSize: number;
}

/** How groups are spread over invocations (a pure function of the adapter kind). */
export function groupStrategy(isCpu: boolean): GroupStrategy {
  // Eight groups per workgroup: one SIMD row of lavapipe's, the fastest of 1, 2, 4 and 8 there (benchmarks/
  // RESULTS.md, "Measurements behind kernel choices"). SD's 32 groups are then 4 workgroups per image: a CPU
  // with more than 4 threads would want smaller ones (not measured).
  return isCpu ? { threadsPerGroup: 1, workgroupSize: 8 } : { threadsPerGroup: 256, workgroupSize: 256 };
}

const FLOATS: readonly DType[] = ["f32", "f16"];

export function groupNorm(x: Tensor, gamma: Tensor, beta: Tensor, options: GroupNormOptions): Tensor {
  return runGroupNorm("groupNorm", x, gamma, beta, options, "out");
}

/**
 * groupNorm written over x itself (the same bits groupNorm returns): for a caller done with x, so the
 * normalised map is not stored beside it (a VAE decoder's 512² maps). Each group is read whole for its
 * statistics before any of it is written, by the invocations that then write it.
 */
export function groupNormInPlace(x: Tensor, gamma: Tensor, beta: Tensor, options: GroupNormOptions): void {
  runGroupNorm("groupNormInPlace", x, gamma, beta, options, "inPlace");
}

/**
 * What groupNorm applies per channel, for a consumer that normalises x while reading it (the Winograd
 * convolution's input transform): [B, C, 3] f32 of (centre, scale, offset), the normalised value being
 * (x − centre) · scale + offset — the same statistics and the same f32 expression as groupNorm's, so the
 * consumer's values are groupNorm's bits. `silu` is the consumer's to apply.
 */
export function groupNormCoefficients(
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  options: Omit<GroupNormOptions, "silu">,
): Tensor {
  return runGroupNorm("groupNormCoefficients", x, gamma, beta, { ...options, silu: false }, "coefficients");
}

function runGroupNorm(
  op: string,
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  options: GroupNormOptions,
  target: GroupNormTarget,
): Tensor {
  const coefficients = target === "coefficients";
  const { groups, eps, silu = false, shift } = options;
  const strategy = options.strategy ?? groupStrategy(x.device.info.isCpu);
  const { threadsPerGroup, workgroupSize } = strategy;
  if (threadsPerGroup !== 1 && threadsPerGroup !== workgroupSize) {
    throw new Error(`${op}: strategy ${JSON.stringify(strategy)} must share a group among 1 or all of its invocations`);
  }
  if (x.shape.length < 2) throw new Error(`${op}: x ${x} must be [B, C, ...spatial]`);
  const [batch, channels] = x.shape;
  if (!Number.isInteger(groups) || groups <= 0 || channels % groups) {
    throw new Error(`${op}: ${channels} channels of x ${x} do not split into ${groups} groups`);
  }
  if (!(eps >= 0)) throw new Error(`${op}: eps must be a non-negative number, got ${eps}`);
  for (const [name, t] of [
    ["gamma", gamma],
    ["beta", beta],
  ] as const) {
    assertDType(op, name, t, FLOATS);
    if (t.size !== channels || t.shape.length !== 1) {
      throw new Error(`${op}: ${name} ${t} must be [${channels}] (one per channel of x ${x})`);
    }
  }
  assertDType(op, "x", x, FLOATS);
  if (shift) {
    assertDType(op, "shift", shift, FLOATS);
    if (shift.shape.length !== 2 || shift.shape[0] !== batch || shift.shape[1] !== channels) {
      throw new Error(`${op}: shift ${shift} must be [${batch}, ${channels}] (per batch item and channel of x ${x})`);
    }
  }
  const device = x.device;
  const out =
    target === "inPlace"
      ? x
      : coefficients
        ? Tensor.empty(device, [batch, channels, 3], "f32")
        : Tensor.empty(device, x.shape, x.dtype);
  const spatial = shapeSize(x.shape.slice(2));
  const channelsPerGroup = channels / groups;
  const groupElements = channelsPerGroup * spatial;
  const totalGroups = batch * groups;
  if (totalGroups === 0 || groupElements === 0) return out;

  const width = spatial % 4 === 0 ? 4 : 1;
  const pieces = splitForBindings(
    op,
    [totalGroups, groupElements],
    [
      { name: "x", strides: [groupElements, 1], offset: 0, bytesPerElement: DTYPE_BYTES[x.dtype] },
      ...(target !== "out"
        ? []
        : [{ name: "out", strides: [groupElements, 1], offset: 0, bytesPerElement: DTYPE_BYTES[x.dtype] }]),
    ],
    groupElements,
    {
      maxBindingBytes: device.limits.maxStorageBufferBindingSize,
      offsetAlignment: device.limits.minStorageBufferOffsetAlignment,
    },
  );
  const config: GroupNormConfig = {
    dtype: x.dtype,
    gammaType: gamma.dtype,
    betaType: beta.dtype,
    width,
    silu,
    shiftType: shift?.dtype ?? "none",
    threadsPerGroup,
    workgroupSize,
    target,
  };
  for (const piece of pieces) {
    const [xb, ob = target === "inPlace" ? xb : { byteOffset: 0, byteSize: out.buffer.size, baseElement: 0 }] =
      piece.bindings;
    runKernel(device, GROUP_NORM, config, {
      count: (piece.end - piece.start) / groupElements,
      params: {
        first: piece.start / groupElements,
        xOff: (piece.start - xb.baseElement) / width,
        outOff: coefficients ? 0 : (piece.start - ob.baseElement) / width,
        groups,
        cpg: channelsPerGroup,
        spatial: spatial / width,
        invN: 1 / groupElements,
        eps,
      },
      buffers: {
        x: { buffer: x.buffer, offset: xb.byteOffset, size: xb.byteSize },
        gamma: gamma.slice(),
        beta: beta.slice(),
        ...(target === "inPlace" ? {} : { out: { buffer: out.buffer, offset: ob.byteOffset, size: ob.byteSize } }),
        ...(shift ? { shift: shift.slice() } : {}),
      },
    });
  }
  return out;
}

interface GroupNormConfig {
  dtype: DType;
  gammaType: DType;
  betaType: DType;
  width: number;
  silu: boolean;
  /** The shift's dtype, or "none" without one. */
  shiftType: DType | "none";
  threadsPerGroup: number;
  workgroupSize: number;
  target: GroupNormTarget;
}

/**
 * Where the result goes: a new tensor `out`; x itself ("inPlace": x bound read_write, no `out`); or each
 * channel's (centre, scale, offset) into `out` [B, C, 3] f32 instead of normalising ("coefficients").
 */
type GroupNormTarget = "out" | "inPlace" | "coefficients";

/** WGSL that sums one f32 per invocation over the workgroup (tree reduction in workgroup memory). */
function workgroupSumWgsl(size: number): string {
  return `var<workgroup> partial: array<f32, ${size}>;
fn workgroup_sum(v: f32, lid: u32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var s = ${size / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { partial[lid] += partial[lid + s]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}`;
}

/** A group per item (`local`, within the piece): one invocation, or the whole workgroup, walks it. */
const GROUP_NORM: KernelDecl<GroupNormConfig> = {
  name: "groupnorm",
  params: {
    first: "u32",
    xOff: "u32",
    outOff: "u32",
    groups: "u32",
    cpg: "u32",
    spatial: "u32",
    invN: "f32",
    eps: "f32",
  },
  bindings: (g) => {
    const stored = g.width === 4 ? `vec4<${g.dtype}>` : g.dtype;
    return [
      { name: "x", type: stored, ...(g.target === "inPlace" ? { access: "read_write" as const } : {}) },
      { name: "gamma", type: g.gammaType },
      { name: "beta", type: g.betaType },
      ...(g.target === "inPlace"
        ? []
        : [{ name: "out", type: g.target === "coefficients" ? "f32" : stored, access: "read_write" as const }]),
      ...(g.shiftType !== "none" ? [{ name: "shift", type: g.shiftType }] : []),
    ];
  },
  workgroupSize: (g) => g.workgroupSize,
  itemsPerWorkgroup: (g) => g.workgroupSize / g.threadsPerGroup,
  module: (g) => (g.threadsPerGroup > 1 ? workgroupSumWgsl(g.threadsPerGroup) : ""),
  main: (g) => {
    const vec = g.width === 4;
    const V = vec ? "vec4<f32>" : "f32";
    const stored = vec ? `vec4<${g.dtype}>` : g.dtype;
    const horizontal = (e: string) => (vec ? `dot(${e}, vec4<f32>(1.0))` : e);
    const activation = g.silu ? "y = y / (1.0 + exp(-y));" : "";
    const shifted = g.shiftType !== "none";
    // Passes over the whole group: element i is in the group's channel i / spatial.
    const load = (i: string) => `${V}(x[xBase + ${i}])${shifted ? ` + f32(shift[shiftBase + ${i} / p.spatial])` : ""}`;
    const T = g.threadsPerGroup;
    const shared = T > 1;
    // The sum over the group of \`term\` (of type V, from the element \`v\`), into the f32 \`name\`. Shared: a
    // strided walk per invocation, then the tree. Serial: blocks of about √n elements summed apart, so the
    // rounding error grows like 2√n, not n (lavapipe, 131 K-element groups summed in one line: 16× the tree's
    // error; in blocks: 1.5×).
    const groupSum = (name: string, term: string) =>
      shared
        ? `var ${name}Part = 0.0;
  for (var i = lid; i < n; i += ${T}u) {
    let v = ${load("i")};
    ${name}Part += ${horizontal(term)};
  }
  let ${name} = workgroup_sum(${name}Part, lid);`
        : `var ${name} = 0.0;
  for (var b = 0u; b < n; b += block) {
    var part = ${V}(0.0);
    for (var i = b; i < min(b + block, n); i++) {
      let v = ${load("i")};
      part += ${term};
    }
    ${name} += ${horizontal("part")};
  }`;
    return `
  let local = item;
  let lane = ${shared ? "lid" : "0u"};
  let n = p.cpg * p.spatial;
  ${shared ? "" : "let block = u32(ceil(sqrt(f32(n))));"}
  let xBase = p.xOff + local * n;
  let outBase = p.outOff + local * n;
  let firstChannel = ((p.first + local) % p.groups) * p.cpg;
  let shiftBase = ((p.first + local) / p.groups) * p.groups * p.cpg + firstChannel;
  ${groupSum("total", "v")}
  let mean = total * p.invN;
  ${groupSum("squares", "(v - mean) * (v - mean)")}
  let rstd = inverseSqrt(squares * p.invN + p.eps);
  for (var c = 0u; c < p.cpg; c++) {
    let scale = rstd * f32(gamma[firstChannel + c]);
    let offset = f32(beta[firstChannel + c]);
    let centre = mean${shifted ? " - f32(shift[shiftBase + c])" : ""};
    ${
      g.target === "coefficients"
        ? `if (lane == 0u) {
      let at = ((p.first + local) * p.cpg + c) * 3u;
      out[at] = centre;
      out[at + 1u] = scale;
      out[at + 2u] = offset;
    }`
        : `let row = c * p.spatial;
    for (var i = lane; i < p.spatial; i += ${T}u) {
      var y = (${V}(x[xBase + row + i]) - centre) * scale + offset;
      ${activation}
      ${g.target === "inPlace" ? "x[xBase" : "out[outBase"} + row + i] = ${stored}(y);
    }`
    }
  }`;
  },
};
