import { groupNorm, layerNorm } from "@ldm/kernels";
import type { Tensor } from "@ldm/tensor";
import type { VarBuilder } from "./var-builder.ts";

export interface GroupNormConfig {
  groups: number;
  channels: number;
  /** No default on purpose: 1e-6 in the VAE and SpatialTransformer, 1e-5 in the UNet's ResBlocks. */
  eps: number;
}

/** The learned per-channel scale and shift both torch norms keep (elementwise_affine / affine). */
abstract class AffineNorm {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(vb: VarBuilder, channels: number) {
    this.weight = vb.get("weight", [channels]);
    this.bias = vb.get("bias", [channels]);
  }
}

/** torch.nn.GroupNorm (affine) over [B, C, ...spatial]; statistics in f32 whatever the storage dtype. */
export class GroupNorm extends AffineNorm {
  constructor(
    vb: VarBuilder,
    readonly cfg: GroupNormConfig,
  ) {
    super(vb, cfg.channels);
  }

  /**
   * `silu` fuses the SiLU that follows every GroupNorm in the ResBlocks and before conv_out; `shift` [B, C]
   * normalises x + shift broadcast over space (a ResBlock's timestep embedding) without storing the sum.
   */
  forward(x: Tensor, options: { silu?: boolean; shift?: Tensor } = {}): Tensor {
    const { groups, eps } = this.cfg;
    return groupNorm(x, this.weight, this.bias, { groups, eps, silu: options.silu, shift: options.shift });
  }
}

export interface LayerNormConfig {
  dim: number;
  /** torch.nn.LayerNorm's default is 1e-5 (BasicTransformerBlock and CLIP both use it). */
  eps?: number;
}

/** torch.nn.LayerNorm over the last dimension (affine). */
export class LayerNorm extends AffineNorm {
  constructor(
    vb: VarBuilder,
    readonly cfg: LayerNormConfig,
  ) {
    super(vb, cfg.dim);
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, { eps: this.cfg.eps ?? 1e-5 });
  }
}
