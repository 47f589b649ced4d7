import { cast } from "@ldm/kernels";
import type { ParamDType, Tensor } from "@ldm/tensor";

/** x itself when it already has `dtype`, else a cast copy (models take inputs in either float dtype). */
export function asDType(x: Tensor, dtype: ParamDType): Tensor {
  if (x.dtype === dtype) return x;
  if (x.dtype !== "f32" && x.dtype !== "f16") throw new Error(`expected a float tensor, got ${x}`);
  return cast(x, dtype);
}
