import { type Activation, linear } from "@ldm/kernels";
import type { Tensor } from "@ldm/tensor";
import type { VarBuilder } from "./var-builder.ts";

export interface LinearConfig {
  inFeatures: number;
  outFeatures: number;
  /** torch.nn.Linear's `bias` (default true). */
  bias?: boolean;
}

/** What the GEMM may fuse after x·Wᵀ + b: an activation, then a residual add. */
export interface Epilogue {
  activation?: Activation;
  residual?: Tensor;
}

/** torch.nn.Linear: y = x·Wᵀ + b over the last dimension, weight [out, in]. */
export class Linear {
  readonly weight: Tensor;
  readonly bias?: Tensor;

  constructor(
    vb: VarBuilder,
    readonly cfg: LinearConfig,
  ) {
    this.weight = vb.get("weight", [cfg.outFeatures, cfg.inFeatures]);
    if (cfg.bias ?? true) this.bias = vb.get("bias", [cfg.outFeatures]);
  }

  forward(x: Tensor, epilogue: Epilogue = {}): Tensor {
    return linear(x, this.weight, { bias: this.bias, ...epilogue });
  }
}
