import { embedding } from "@ldm/kernels";
import type { Tensor } from "@ldm/tensor";
import type { VarBuilder } from "./var-builder.ts";

export interface EmbeddingConfig {
  count: number;
  dim: number;
}

/** torch.nn.Embedding: rows of weight [count, dim] picked by integer ids. */
export class Embedding {
  readonly weight: Tensor;

  constructor(
    vb: VarBuilder,
    readonly cfg: EmbeddingConfig,
  ) {
    this.weight = vb.get("weight", [cfg.count, cfg.dim]);
  }

  /** ids: an i32 tensor of any shape → [...ids.shape, dim]. */
  forward(ids: Tensor): Tensor {
    return embedding(this.weight, ids);
  }
}
