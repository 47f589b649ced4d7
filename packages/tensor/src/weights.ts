import type { DType } from "./dtype.ts";
import type { Tensor } from "./tensor.ts";

/** What a checkpoint stores under one key (dtype as stored: "F32", "F16", "BF16", …). */
export interface StoredTensorInfo {
  shape: readonly number[];
  dtype: string;
}

/** A request to fill `tensor` (already allocated, in its own dtype) with the data stored under `key`. */
export interface WeightRequest {
  key: string;
  tensor: Tensor;
}

/**
 * A source of named parameters, keyed by our canonical names (the original single-file checkpoint keys,
 * e.g. `model.diffusion_model.input_blocks.0.0.weight`). Implemented by @ldm/weights for safetensors files and
 * diffusers folders; consumed by @ldm/nn's VarBuilder. Describing is cheap (header only); `load` streams data.
 */
export interface WeightSource {
  describe(key: string): StoredTensorInfo | undefined;
  keys(): Iterable<string>;
  /** Streams each key's data into its tensor, converting dtype (f16/bf16/f32 → the tensor's dtype). */
  load(requests: readonly WeightRequest[]): Promise<void>;
  /** Human-readable origin for error messages (a file or folder path). */
  readonly origin: string;
}

export type ParamDType = Extract<DType, "f32" | "f16">;
