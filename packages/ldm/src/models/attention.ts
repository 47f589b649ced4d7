/**
 * SpatialTransformer and BasicTransformerBlock of CompVis/Stability `ldm/modules/attention.py`, with the
 * original module names (`norm`, `proj_in`, `transformer_blocks.N.{attn1,attn2,ff,norm1..3}`, `proj_out`).
 */
import { add, permute } from "@ldm/kernels";
import {
  type ContextKeysValues,
  Conv2d,
  CrossAttention,
  FeedForward,
  GroupNorm,
  LayerNorm,
  Linear,
  type VarBuilder,
} from "@ldm/nn";
import type { ParamDType, Tensor } from "@ldm/tensor";
import { asDType } from "./dtype.ts";
import { conv1x1 } from "./layers.ts";

/**
 * A cross-attention context with the keys and values every attn2 of a network computes from it, projected once:
 * they depend on the context alone, so a sampling run, which attends to one context at every step, computes them
 * once instead of at every UNet call (the same kernels on the same inputs: the same values).
 */
export class ProjectedContext {
  private readonly projections: Map<CrossAttention, ContextKeysValues>;

  /** `context` [B, L, contextDim]; `layers`: the cross-attentions that attend to it, whose weights are in `dtype`. */
  constructor(
    readonly context: Tensor,
    layers: readonly CrossAttention[],
    dtype: ParamDType,
  ) {
    this.projections = context.device.tidy(() => {
      const input = asDType(context, dtype);
      return new Map(layers.map((attn) => [attn, attn.projectContext(input)]));
    });
  }

  /** attn's keys and values of the context. */
  of(attn: CrossAttention): ContextKeysValues {
    const kv = this.projections.get(attn);
    if (!kv) throw new Error("ProjectedContext: this cross-attention layer is not one the context was projected for");
    return kv;
  }

  dispose(): void {
    for (const { k, v } of this.projections.values()) {
      k.dispose();
      v.dispose();
    }
    this.projections.clear();
  }
}

export interface BasicTransformerBlockConfig {
  dim: number;
  heads: number;
  dimHead: number;
  contextDim: number;
}

export class BasicTransformerBlock {
  readonly attn1: CrossAttention;
  readonly ff: FeedForward;
  readonly attn2: CrossAttention;
  readonly norm1: LayerNorm;
  readonly norm2: LayerNorm;
  readonly norm3: LayerNorm;

  constructor(vb: VarBuilder, cfg: BasicTransformerBlockConfig) {
    const { dim, heads, dimHead, contextDim } = cfg;
    this.attn1 = new CrossAttention(vb.pp("attn1"), { queryDim: dim, heads, dimHead });
    this.ff = new FeedForward(vb.pp("ff"), { dim });
    this.attn2 = new CrossAttention(vb.pp("attn2"), { queryDim: dim, contextDim, heads, dimHead });
    this.norm1 = new LayerNorm(vb.pp("norm1"), { dim });
    this.norm2 = new LayerNorm(vb.pp("norm2"), { dim });
    this.norm3 = new LayerNorm(vb.pp("norm3"), { dim });
  }

  /** x [B, N, dim], context [B, L, contextDim]; each residual add is fused into the sub-layer's last GEMM. */
  forward(x: Tensor, context: ProjectedContext): Tensor {
    return x.device.tidy(() => {
      let h = this.attn1.forward(this.norm1.forward(x), { residual: x });
      h = this.attn2.forward(this.norm2.forward(h), { kv: context.of(this.attn2), residual: h });
      return this.ff.forward(this.norm3.forward(h), { residual: h });
    });
  }
}

export interface SpatialTransformerConfig {
  inChannels: number;
  heads: number;
  dimHead: number;
  depth: number;
  contextDim: number;
  /** SD2's use_linear_in_transformer: proj_in/proj_out are linears on tokens instead of 1×1 convolutions. */
  useLinear: boolean;
}

export class SpatialTransformer {
  readonly norm: GroupNorm;
  readonly proj_in: Conv2d | Linear;
  readonly transformer_blocks: BasicTransformerBlock[] = [];
  readonly proj_out: Conv2d | Linear;

  constructor(
    vb: VarBuilder,
    readonly cfg: SpatialTransformerConfig,
  ) {
    const { inChannels, heads, dimHead } = cfg;
    const inner = heads * dimHead;
    if (inner !== inChannels) {
      // The original's linear proj_out is declared Linear(in_channels, inner_dim) and only works when they agree.
      throw new Error(`SpatialTransformer ${vb.prefix}: ${heads} heads × ${dimHead} ≠ ${inChannels} channels`);
    }
    // Normalize() of attention.py: 32 groups, eps 1e-6 (the ResBlocks around it use 1e-5).
    this.norm = new GroupNorm(vb.pp("norm"), { groups: 32, channels: inChannels, eps: 1e-6 });
    if (cfg.useLinear) {
      this.proj_in = new Linear(vb.pp("proj_in"), { inFeatures: inChannels, outFeatures: inner });
      this.proj_out = new Linear(vb.pp("proj_out"), { inFeatures: inner, outFeatures: inChannels });
    } else {
      this.proj_in = conv1x1(vb.pp("proj_in"), inChannels, inner);
      this.proj_out = conv1x1(vb.pp("proj_out"), inner, inChannels);
    }
    for (let d = 0; d < cfg.depth; d++) {
      this.transformer_blocks.push(
        new BasicTransformerBlock(vb.pp("transformer_blocks").pp(d), {
          dim: inner,
          heads,
          dimHead,
          contextDim: cfg.contextDim,
        }),
      );
    }
  }

  /**
   * x [B, C, H, W], context [B, L, contextDim] → [B, C, H, W]. The convolutional proj_in / proj_out read and write
   * tokens directly (Conv2d.forwardToTokens / forwardFromTokens): the original's rearranges, without the copies.
   */
  forward(x: Tensor, context: ProjectedContext): Tensor {
    return x.device.tidy(() => {
      const [b, c, h, w] = x.shape;
      let tokens: Tensor;
      if (this.proj_in instanceof Conv2d) tokens = this.proj_in.forwardToTokens(this.norm.forward(x));
      else tokens = this.proj_in.forward(permute(this.norm.forward(x).reshape([b, c, h * w]), [0, 2, 1]));
      for (const block of this.transformer_blocks) {
        const next = block.forward(tokens, context);
        tokens.dispose();
        tokens = next;
      }
      if (this.proj_out instanceof Conv2d) return this.proj_out.forwardFromTokens(tokens, [h, w], { residual: x });
      return add(permute(this.proj_out.forward(tokens), [0, 2, 1]).reshape([b, c, h, w]), x);
    });
  }
}
