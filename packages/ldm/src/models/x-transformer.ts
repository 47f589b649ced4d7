/**
 * CompVis/latent-diffusion's `ldm/modules/x_transformer.py` as its BERTEmbedder builds it:
 * `TransformerWrapper(num_tokens, max_seq_len, attn_layers=Encoder(dim, depth))` called with `return_embeddings=True`.
 * Token embedding + absolute positional embedding, then `depth` pairs of pre-norm residual layers (self-attention,
 * feed-forward), then the final `norm`. Names as stored below `cond_stage_model.transformer`; `to_logits` is in the
 * checkpoint but unused for embeddings. No attention mask: padding is attended, as upstream.
 */
import { add, slice } from "@ldm/kernels";
import { CrossAttention, Embedding, LayerNorm, Linear, type VarBuilder } from "@ldm/nn";
import type { Tensor } from "@ldm/tensor";
import { type CondStageConfig, X_TRANSFORMER_DEFAULTS } from "@ldm/weights";

export interface XTransformerConfig {
  /** Token embedding rows (BERTEmbedder's vocab_size: 30522 for bert-base-uncased). */
  num_tokens: number;
  /** Positional embedding rows (max_seq_len: 77). */
  max_seq_len: number;
  /** Model width (BERTEmbedder's n_embed). */
  dim: number;
  /** Attention + feed-forward pairs (n_layer). */
  depth: number;
  /** Attention heads (x_transformer's default 8). */
  heads: number;
  /** Width of each head (DEFAULT_DIM_HEAD 64): q, k, v are heads·dim_head wide whatever `dim` is. */
  dim_head: number;
  /** Feed-forward inner width = dim · ff_mult (FeedForward's mult 4). */
  ff_mult: number;
}

export type BertEmbedderConfig = Extract<CondStageConfig, { target: "BERTEmbedder" }>;

/** The encoder a BERTEmbedder builds: its sizes, x_transformer's defaults for the rest. */
export function bertEmbedderTransformer(cfg: BertEmbedderConfig): XTransformerConfig {
  return {
    num_tokens: cfg.vocab_size,
    max_seq_len: cfg.max_seq_len,
    dim: cfg.n_embed,
    depth: cfg.n_layer,
    ...X_TRANSFORMER_DEFAULTS,
  };
}

/** `FeedForward(dim, mult=4)`: net.0.0 Linear, exact GELU (nn.GELU), net.1 Dropout, net.2 Linear. */
class FeedForward {
  readonly project_in: Linear;
  readonly project_out: Linear;

  constructor(vb: VarBuilder, cfg: XTransformerConfig) {
    const inner = cfg.dim * cfg.ff_mult;
    this.project_in = new Linear(vb.pp("net").pp(0).pp(0), { inFeatures: cfg.dim, outFeatures: inner });
    this.project_out = new Linear(vb.pp("net").pp(2), { inFeatures: inner, outFeatures: cfg.dim });
  }

  forward(x: Tensor, { residual }: { residual?: Tensor } = {}): Tensor {
    return x.device.tidy(() =>
      this.project_out.forward(this.project_in.forward(x, { activation: "gelu" }), { residual }),
    );
  }
}

/** One entry of `AttentionLayers.layers`: [norm, block, Residual] (the residual has no weights). */
class PreNormResidual<Block extends CrossAttention | FeedForward> {
  readonly norm: LayerNorm;

  constructor(
    vb: VarBuilder,
    cfg: XTransformerConfig,
    readonly block: Block,
  ) {
    this.norm = new LayerNorm(vb.pp(0), { dim: cfg.dim });
  }

  forward(x: Tensor): Tensor {
    return x.device.tidy(() => this.block.forward(this.norm.forward(x), { residual: x }));
  }
}

/** `TransformerWrapper(…, attn_layers=Encoder(dim, depth))`; `vb` points at `cond_stage_model.transformer`. */
export class TransformerWrapper {
  readonly token_emb: Embedding;
  readonly pos_emb: Tensor;
  /** Layer types ('a', 'f') × depth, as AttentionLayers.layers. */
  readonly layers: PreNormResidual<CrossAttention | FeedForward>[] = [];
  readonly norm: LayerNorm;

  constructor(
    readonly vb: VarBuilder,
    readonly cfg: XTransformerConfig,
  ) {
    for (const key of ["num_tokens", "max_seq_len", "dim", "depth", "heads", "dim_head", "ff_mult"] as const) {
      if (!Number.isInteger(cfg[key]) || cfg[key] < 1) {
        throw new Error(`x-transformer: ${key} ${cfg[key]} must be a positive integer`);
      }
    }
    this.token_emb = new Embedding(vb.pp("token_emb"), { count: cfg.num_tokens, dim: cfg.dim });
    this.pos_emb = vb.pp("pos_emb").pp("emb").get("weight", [cfg.max_seq_len, cfg.dim]);
    const layers = vb.pp("attn_layers").pp("layers");
    for (let i = 0; i < cfg.depth; i++) {
      const a = layers.pp(2 * i);
      const f = layers.pp(2 * i + 1);
      // x-transformers' Attention: CompVis's self-attention with its output projection stored as to_out.
      const attention = new CrossAttention(a.pp(1), {
        queryDim: cfg.dim,
        heads: cfg.heads,
        dimHead: cfg.dim_head,
        outputName: "to_out",
      });
      this.layers.push(new PreNormResidual(a, cfg, attention));
      this.layers.push(new PreNormResidual(f, cfg, new FeedForward(f.pp(1), cfg)));
    }
    this.norm = new LayerNorm(vb.pp("norm"), { dim: cfg.dim });
  }

  /** ids: i32 [B, L], L ≤ max_seq_len, each < num_tokens → embeddings [B, L, dim] (return_embeddings=True). */
  forward(ids: Tensor): Tensor {
    const { max_seq_len: maxLength } = this.cfg;
    if (ids.shape.length !== 2 || ids.shape[1] > maxLength || ids.dtype !== "i32") {
      throw new Error(`x-transformer: input_ids ${ids} must be i32 [B, L] with L ≤ ${maxLength}`);
    }
    const length = ids.shape[1];
    return ids.device.tidy(() => {
      const positions = length === maxLength ? this.pos_emb : slice(this.pos_emb, 0, 0, length);
      let h = add(this.token_emb.forward(ids), positions);
      for (const layer of this.layers) {
        const next = layer.forward(h);
        h.dispose();
        h = next;
      }
      return this.norm.forward(h);
    });
  }
}

/**
 * `BERTEmbedder` (ldm/modules/encoders/modules.py), `vb` at `cond_stage_model`: its `transformer` on token ids —
 * bert-base-uncased WordPiece ids of a prompt (use_tokenizer) or ids given as they are (layout2img's objects).
 */
export class BERTEmbedder {
  readonly transformer: TransformerWrapper;

  constructor(
    readonly vb: VarBuilder,
    readonly cfg: BertEmbedderConfig,
  ) {
    this.transformer = new TransformerWrapper(vb.pp("transformer"), bertEmbedderTransformer(cfg));
  }

  /** Refuses host ids the embedding table has no row for (the GPU gather would read garbage). */
  checkIds(ids: ArrayLike<number>, what: string): void {
    const { vocab_size } = this.cfg;
    for (let i = 0; i < ids.length; i++) {
      if (!Number.isInteger(ids[i]) || ids[i] < 0 || ids[i] >= vocab_size) {
        throw new RangeError(
          `${what}: token id ${ids[i]} at ${i} is outside the BERTEmbedder's vocabulary of ${vocab_size}`,
        );
      }
    }
  }

  /** ids i32 [B, L ≤ max_seq_len] → c [B, L, n_embed] (`BERTEmbedder.encode` on tokens). */
  forward(ids: Tensor): Tensor {
    return this.transformer.forward(ids);
  }

  /** Ids per encode call (TokenEncoder): upstream pads and truncates to max_seq_len. */
  get contextLength(): number {
    return this.cfg.max_seq_len;
  }

  /** The conditioning, as the text encoders name it (TokenEncoder); CLIP skip has no meaning here. */
  encode(ids: Tensor, clipSkip?: number): Tensor {
    if (clipSkip !== undefined)
      throw new RangeError(`CLIP skip ${clipSkip}: this model's text encoder is a BERTEmbedder, not CLIP`);
    return this.forward(ids);
  }
}
