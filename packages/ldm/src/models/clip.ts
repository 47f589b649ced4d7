/**
 * The CLIP text encoder with Hugging Face `CLIPTextModel` semantics (transformers' modeling_clip.py), names
 * as below `cond_stage_model.transformer.text_model` in SD1 checkpoints; SD2's OpenCLIP tower is loaded under
 * the same names (@ldm/weights splits its fused in_proj). Token + position embeddings, pre-LN encoder layers
 * with causal self-attention, final_layer_norm.
 */
import { add, attention, concat, embedding, gelu, quickGelu, slice } from "@ldm/kernels";
import { Embedding, LayerNorm, Linear, type VarBuilder } from "@ldm/nn";
import type { Tensor } from "@ldm/tensor";
import type { ClipTextConfig } from "@ldm/weights";
import { asDType } from "./dtype.ts";

class CLIPAttention {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly out_proj: Linear;

  constructor(
    vb: VarBuilder,
    readonly cfg: ClipTextConfig,
  ) {
    const d = cfg.hidden_size;
    if (d % cfg.num_attention_heads) {
      throw new Error(`CLIP: hidden_size ${d} is not divisible by num_attention_heads ${cfg.num_attention_heads}`);
    }
    const proj = (name: string) => new Linear(vb.pp(name), { inFeatures: d, outFeatures: d });
    this.q_proj = proj("q_proj");
    this.k_proj = proj("k_proj");
    this.v_proj = proj("v_proj");
    this.out_proj = proj("out_proj");
  }

  /** Causal self-attention; HF scales q by head_dim^-½ before q·kᵀ, which is the kernel's default scale. */
  forward(x: Tensor, residual: Tensor): Tensor {
    return x.device.tidy(() => {
      const q = this.q_proj.forward(x);
      const k = this.k_proj.forward(x);
      const v = this.v_proj.forward(x);
      const heads = attention(q, k, v, { heads: this.cfg.num_attention_heads, causal: true });
      return this.out_proj.forward(heads, { residual });
    });
  }
}

class CLIPMLP {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(
    vb: VarBuilder,
    readonly cfg: ClipTextConfig,
  ) {
    this.fc1 = new Linear(vb.pp("fc1"), { inFeatures: cfg.hidden_size, outFeatures: cfg.intermediate_size });
    this.fc2 = new Linear(vb.pp("fc2"), { inFeatures: cfg.intermediate_size, outFeatures: cfg.hidden_size });
  }

  forward(x: Tensor, residual: Tensor): Tensor {
    return x.device.tidy(() => {
      const hidden = this.fc1.forward(x);
      // quick_gelu (OpenAI CLIP, SD1) or exact erf GELU (OpenCLIP ViT-H, SD2).
      const activated = this.cfg.hidden_act === "quick_gelu" ? quickGelu(hidden) : gelu(hidden);
      return this.fc2.forward(activated, { residual });
    });
  }
}

class CLIPEncoderLayer {
  readonly self_attn: CLIPAttention;
  readonly layer_norm1: LayerNorm;
  readonly mlp: CLIPMLP;
  readonly layer_norm2: LayerNorm;

  constructor(vb: VarBuilder, cfg: ClipTextConfig) {
    const norm = { dim: cfg.hidden_size, eps: cfg.layer_norm_eps };
    this.self_attn = new CLIPAttention(vb.pp("self_attn"), cfg);
    this.layer_norm1 = new LayerNorm(vb.pp("layer_norm1"), norm);
    this.mlp = new CLIPMLP(vb.pp("mlp"), cfg);
    this.layer_norm2 = new LayerNorm(vb.pp("layer_norm2"), norm);
  }

  forward(x: Tensor): Tensor {
    return x.device.tidy(() => {
      const h = this.self_attn.forward(this.layer_norm1.forward(x), x);
      return this.mlp.forward(this.layer_norm2.forward(h), h);
    });
  }
}

export interface ClipOutputs {
  /** All layers, then final_layer_norm [B, L, hidden] (SD1's conditioning). */
  lastHiddenState?: Tensor;
  /** All layers but the last, then final_layer_norm (SD2's FrozenOpenCLIPEmbedder layer="penultimate", clip skip 2). */
  penultimateHiddenState?: Tensor;
}

export class CLIPTextModel {
  readonly token_embedding: Embedding;
  /** Positions 0..L−1 always: the checkpoint's position_ids buffer is arange(max_position_embeddings). */
  readonly position_embedding: Tensor;
  readonly layers: CLIPEncoderLayer[] = [];
  readonly final_layer_norm: LayerNorm;
  /** The token table with textual-inversion vectors appended as rows vocab_size…, while any are set. */
  private tokenTable?: Tensor;

  /** `vb` points at `text_model` (canonical prefix `cond_stage_model.transformer.text_model`). */
  constructor(
    readonly vb: VarBuilder,
    readonly cfg: ClipTextConfig,
  ) {
    const embeddings = vb.pp("embeddings");
    this.token_embedding = new Embedding(embeddings.pp("token_embedding"), {
      count: cfg.vocab_size,
      dim: cfg.hidden_size,
    });
    this.position_embedding = embeddings
      .pp("position_embedding")
      .get("weight", [cfg.max_position_embeddings, cfg.hidden_size]);
    for (let i = 0; i < cfg.num_hidden_layers; i++) {
      this.layers.push(new CLIPEncoderLayer(vb.pp("encoder").pp("layers").pp(i), cfg));
    }
    this.final_layer_norm = new LayerNorm(vb.pp("final_layer_norm"), {
      dim: cfg.hidden_size,
      eps: cfg.layer_norm_eps,
    });
  }

  /**
   * ids: i32 [B, L] with L ≤ max_position_embeddings. Computes the requested outputs (by default the one
   * the config's `layer` conditions on); the penultimate alone skips the last layer's work.
   */
  forward(ids: Tensor, want: { last?: boolean; penultimate?: boolean } = this.defaultOutputs()): ClipOutputs {
    const { num_hidden_layers: depth, max_position_embeddings: maxLength } = this.cfg;
    if (ids.shape.length !== 2 || ids.shape[1] > maxLength || ids.dtype !== "i32") {
      throw new Error(`CLIP: input_ids ${ids} must be i32 [B, L] with L ≤ ${maxLength}`);
    }
    if (want.penultimate && depth < 2) throw new Error(`CLIP: a ${depth}-layer encoder has no penultimate layer`);
    const length = ids.shape[1];
    return ids.device.tidy(() => {
      let h = add(this.embedTokens(ids), this.positions(length));
      const advance = (layer: CLIPEncoderLayer) => {
        const next = layer.forward(h);
        h.dispose();
        h = next;
      };
      for (const layer of this.layers.slice(0, -1)) advance(layer);
      const out: ClipOutputs = {};
      if (want.penultimate) out.penultimateHiddenState = this.final_layer_norm.forward(h);
      if (want.last) {
        advance(this.layers[depth - 1]);
        out.lastHiddenState = this.final_layer_norm.forward(h);
      }
      return out;
    });
  }

  /**
   * Textual-inversion vectors [n, hidden] as the token ids vocab_size … vocab_size + n − 1; undefined removes
   * them. A1111 writes an embedding's vectors over the token embeddings at its trigger's positions, before the
   * position embedding is added: the ids read those rows of the token table instead, the same values.
   */
  setAddedTokens(vectors: Tensor | undefined): void {
    const { hidden_size: width } = this.cfg;
    if (vectors && (vectors.shape.length !== 2 || vectors.shape[1] !== width)) {
      throw new Error(`CLIP: added token vectors ${vectors} must be [n, ${width}]`);
    }
    this.tokenTable?.dispose();
    const weight = this.token_embedding.weight;
    this.tokenTable = vectors?.device.tidy(() => concat([weight, asDType(vectors, this.vb.dtype)], 0));
  }

  /** Ids per encode call: the position embeddings (TokenEncoder). */
  get contextLength(): number {
    return this.cfg.max_position_embeddings;
  }

  /**
   * The conditioning the UNet takes: the layer the config says, or with `clipSkip` A1111's "CLIP skip" (1 = the
   * last layer, 2 = the penultimate, n = the n-th from the end), then the final LayerNorm.
   */
  encode(ids: Tensor, clipSkip = this.defaultClipSkip): Tensor {
    const depth = this.cfg.num_hidden_layers;
    if (!Number.isInteger(clipSkip) || clipSkip < 1 || clipSkip > depth) {
      throw new RangeError(
        `CLIP skip ${clipSkip}: must be an integer in [1, ${depth}] (the encoder has ${depth} layers)`,
      );
    }
    if (clipSkip <= 2) {
      const out = this.forward(ids, clipSkip === 1 ? { last: true } : { penultimate: true });
      return (clipSkip === 1 ? out.lastHiddenState : out.penultimateHiddenState) as Tensor;
    }
    return ids.device.tidy(() => {
      let h = add(this.embedTokens(ids), this.positions(ids.shape[1]));
      for (const layer of this.layers.slice(0, depth - clipSkip + 1)) {
        const next = layer.forward(h);
        h.dispose();
        h = next;
      }
      return this.final_layer_norm.forward(h);
    });
  }

  /** The CLIP skip of the config's layer: 1 for "last", 2 for "penultimate". */
  get defaultClipSkip(): number {
    return this.cfg.layer === "last" ? 1 : 2;
  }

  private embedTokens(ids: Tensor): Tensor {
    return this.tokenTable ? embedding(this.tokenTable, ids) : this.token_embedding.forward(ids);
  }

  private positions(length: number): Tensor {
    return length === this.cfg.max_position_embeddings
      ? this.position_embedding
      : slice(this.position_embedding, 0, 0, length);
  }

  private defaultOutputs(): { last?: boolean; penultimate?: boolean } {
    return this.cfg.layer === "last" ? { last: true } : { penultimate: true };
  }
}
