/**
 * dtype casts: f32 ↔ f16 on the strided-map kernel, and bf16 → f32/f16 from raw 16-bit words.
 *
 * bf16 has no WGSL type, so a bf16 tensor is held as its raw bytes: a u32 tensor of ⌈n/2⌉ words, element
 * 2i in the low half of word i and 2i+1 in the high half — exactly the bytes of a little-endian bf16
 * blob (a safetensors "BF16" payload), so upload the file's bytes as they are (`packBf16` pads an odd count).
 */
import { assertValidShape, formatShape, type Shape, shapeSize, stridesOf, Tensor } from "@ldm/tensor";
import { type KernelDecl, runKernel } from "../common/kernel.ts";
import { assertBindable } from "../common/wgsl.ts";
import { stridedMap } from "../strided/map.ts";

export type FloatDType = "f32" | "f16";

/** A copy of x in `dtype`: f16 rounds to nearest even (±inf beyond ±65504 on lavapipe, see the tests). */
export function cast(x: Tensor, dtype: FloatDType): Tensor {
  const out = Tensor.empty(x.device, x.shape, dtype);
  const strides = stridesOf(x.shape);
  stridedMap({
    op: "cast",
    shape: x.shape,
    inputs: [{ tensor: x, strides }],
    output: { tensor: out, strides },
    expr: "a0",
  });
  return out;
}

/** Raw bf16 words as the u32 words `bf16ToFloat` reads (the little-endian byte image; odd counts padded). */
export function packBf16(bits: Uint16Array): Uint32Array {
  const words = new Uint32Array(Math.ceil(bits.length / 2));
  new Uint16Array(words.buffer, 0, bits.length).set(bits);
  return words;
}

/** Element i of the bf16 words, widened to f32 (exact) and stored in the output's dtype. */
const BF16_TO_FLOAT: KernelDecl<{ dtype: FloatDType }> = {
  name: "bf16-to-float",
  params: {},
  bindings: ({ dtype }) => [
    { name: "packed", type: "u32" },
    { name: "out", type: dtype, access: "read_write" },
  ],
  workgroupSize: 256,
  main: ({ dtype }) => `
  let word = packed[item >> 1u];
  let bits = select(word << 16u, word & 0xffff0000u, (item & 1u) == 1u);
  out[item] = ${dtype}(bitcast<f32>(bits));`,
};

/** bf16 → f32 or f16: `packed` is a u32 tensor of ⌈n/2⌉ words (see the module note), `shape` the bf16 tensor's. */
export function bf16ToFloat(packed: Tensor, shape: Shape, dtype: FloatDType = "f32"): Tensor {
  assertValidShape(shape, "bf16ToFloat shape");
  const n = shapeSize(shape);
  if (packed.dtype !== "u32") {
    throw new Error(`bf16ToFloat: packed ${packed} must be u32 (two bf16 words per element, low half first)`);
  }
  if (packed.size !== Math.ceil(n / 2)) {
    throw new Error(
      `bf16ToFloat: ${formatShape(shape)} holds ${n} bf16 values = ${Math.ceil(n / 2)} u32 words, but packed ${packed} has ${packed.size}`,
    );
  }
  const device = packed.device;
  const out = Tensor.empty(device, shape, dtype);
  assertBindable("bf16ToFloat", { packed, out });
  if (n === 0) return out;
  runKernel(
    device,
    BF16_TO_FLOAT,
    { dtype },
    { count: n, params: {}, buffers: { packed: packed.slice(), out: out.slice() } },
  );
  return out;
}
