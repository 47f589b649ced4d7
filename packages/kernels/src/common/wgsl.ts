import { type Device, DeviceLimitError, type DType, type Tensor } from "@ldm/tensor";

/** The WGSL scalar type that stores `dtype`. */
export function wgslType(dtype: DType): string {
  return dtype;
}

/**
 * The WGSL conjunction of `conditions`, joined with the non-short-circuit `&`. WGSL's `&&` short-circuits, so
 * compilers lower each one to a branch; SwiftShader (Chromium's WebGPU adapter without a GPU) then needs more
 * than 5 GB and minutes to compile a convolution whose unrolled loop tests 27 padded reads that way, where
 * with `&` it takes 0.2–0.4 s. Kernels never emit `&&` (common/wgsl.test.ts).
 */
export function wgslAll(...conditions: string[]): string {
  return conditions.map((c) => `(${c})`).join(" & ");
}

/** `enable f16;` when any of the dtypes is f16 (and the device can). */
export function wgslEnables(device: Device, ...dtypes: DType[]): string {
  if (!dtypes.includes("f16")) return "";
  if (!device.features.shaderF16) {
    throw new Error("this device has no shader-f16 feature: use f32 tensors (dtype 'f32') on it");
  }
  return "enable f16;\n";
}

/**
 * Throws unless every tensor fits one storage binding (for kernels that do not split work). A DeviceLimitError:
 * the adapter's limit, not a bug or a lack of memory, so callers can offer a smaller problem (e.g. VAE tiling).
 */
export function assertBindable(op: string, tensors: Record<string, Tensor>): void {
  for (const [name, t] of Object.entries(tensors)) {
    const max = t.device.limits.maxStorageBufferBindingSize;
    if (t.byteLength > max) {
      throw new DeviceLimitError(
        `${op}: ${name} ${t.toString()} is ${t.byteLength} bytes, over this device's maxStorageBufferBindingSize ${max}`,
      );
    }
  }
}

export function assertDType(op: string, name: string, t: Tensor, allowed: readonly DType[]): void {
  if (!allowed.includes(t.dtype)) {
    throw new Error(`${op}: ${name} has dtype ${t.dtype}; expected ${allowed.join(" or ")}`);
  }
}
