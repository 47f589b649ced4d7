/**
 * The cond stages of CompVis `ldm/modules/encoders/modules.py` that are not text encoders, with the original
 * parameter names under `cond_stage_model`: ClassEmbedder (class-conditional ImageNet) and SpatialRescaler
 * (semantic synthesis); BERTEmbedder (x-transformer.ts) for the paper's text and layout models. The CLIP text
 * encoders are CLIPTextModel (clip.ts).
 */
import { conv2d } from "@ldm/kernels";
import { Embedding, type VarBuilder } from "@ldm/nn";
import { formatShape, type Tensor } from "@ldm/tensor";
import type { CondStageConfig } from "@ldm/weights";
import { asDType } from "./dtype.ts";
import { avgPool2x2 } from "./openaimodel.ts";
import { BERTEmbedder } from "./x-transformer.ts";

type ClassEmbedderConfig = Extract<CondStageConfig, { target: "ClassEmbedder" }>;
type SpatialRescalerConfig = Extract<CondStageConfig, { target: "SpatialRescaler" }>;

/** `ClassEmbedder`: an nn.Embedding of the class labels, as a one-token context for cross-attention. */
export class ClassEmbedder {
  readonly embedding: Embedding;

  constructor(
    readonly vb: VarBuilder,
    readonly cfg: ClassEmbedderConfig,
  ) {
    this.embedding = new Embedding(vb.pp("embedding"), { count: cfg.n_classes, dim: cfg.embed_dim });
  }

  /** labels [B] (i32) → c [B, 1, embed_dim] (`batch[key][:, None]` embedded). */
  forward(labels: Tensor): Tensor {
    if (labels.shape.length !== 1) throw new Error(`ClassEmbedder: labels ${formatShape(labels.shape)} must be [B]`);
    return labels.device.tidy(() => this.embedding.forward(labels.reshape([labels.shape[0], 1])));
  }
}

/**
 * `SpatialRescaler`: n_stages bilinear resizes by 0.5 (without align_corners: the mean of each 2×2 block), then
 * a 1×1 `channel_mapper` without bias (unless `bias`) when out_channels is set.
 */
export class SpatialRescaler {
  readonly weight?: Tensor;
  readonly bias?: Tensor;

  constructor(
    readonly vb: VarBuilder,
    readonly cfg: SpatialRescalerConfig,
  ) {
    if (cfg.out_channels !== undefined) {
      const mapper = vb.pp("channel_mapper");
      this.weight = mapper.get("weight", [cfg.out_channels, cfg.in_channels, 1, 1]);
      if (cfg.bias) this.bias = mapper.get("bias", [cfg.out_channels]);
    }
  }

  /** x [B, in_channels, H, W] → [B, out_channels, H / 2^n_stages, W / 2^n_stages]. */
  forward(x: Tensor): Tensor {
    const { in_channels, n_stages } = this.cfg;
    if (x.shape.length !== 4 || x.shape[1] !== in_channels) {
      throw new Error(`SpatialRescaler: input ${formatShape(x.shape)} must be [B, ${in_channels}, H, W]`);
    }
    return x.device.tidy(() => {
      let h = asDType(x, this.vb.dtype);
      for (let stage = 0; stage < n_stages; stage++) h = avgPool2x2(h);
      return this.weight ? conv2d(h, this.weight, { bias: this.bias }) : h.reshape(h.shape);
    });
  }
}

/** A cond stage network with parameters (the CLIP text encoders are built from `LdmConfig.text`). */
export type CondStageModel = ClassEmbedder | SpatialRescaler | BERTEmbedder;

/** The network of a cond stage config, or undefined for those without parameters (Identity, the first stage). */
export function condStageModel(vb: VarBuilder, cfg: CondStageConfig): CondStageModel | undefined {
  if (cfg.target === "ClassEmbedder") return new ClassEmbedder(vb, cfg);
  if (cfg.target === "SpatialRescaler") return new SpatialRescaler(vb, cfg);
  if (cfg.target === "BERTEmbedder") return new BERTEmbedder(vb, cfg);
  return undefined;
}
