import type { ClipTextConfig, CondStageConfig, LdmConfig, UNetConfig, VaeConfig } from "./config.ts";

/**
 * Every parameter key and shape of the original modules for a config, in canonical names: the keys a
 * single-file checkpoint of that model holds. Follows the constructors of `openaimodel.UNetModel`,
 * `diffusionmodules.model.Encoder/Decoder` + `AutoencoderKL` / `VQModel`, Hugging Face's `CLIPTextModel` and
 * the cond stages of `encoders/modules.py`. Used to generate synthetic checkpoints, to check layouts and to
 * count parameters without building the networks (`ldm info`).
 */

export const UNET_PREFIX = "model.diffusion_model.";
export const VAE_PREFIX = "first_stage_model.";
export const TEXT_PREFIX = "cond_stage_model.transformer.text_model.";
export const COND_PREFIX = "cond_stage_model.";

export type ParamShapes = Map<string, number[]>;

export function modelParamShapes(config: LdmConfig): ParamShapes {
  const cond = config.text ? clipTextParamShapes(config.text) : condStageParamShapes(config.cond_stage);
  return new Map([...unetParamShapes(config.unet), ...vaeParamShapes(config.vae), ...cond]);
}

/** x_transformer's defaults, which BERTEmbedder keeps: heads of 64 (DEFAULT_DIM_HEAD), 8 heads, FeedForward mult 4. */
export const X_TRANSFORMER_DEFAULTS = Object.freeze({ heads: 8, dim_head: 64, ff_mult: 4 });

/**
 * The cond stages without a CLIP text encoder: ClassEmbedder's embedding, SpatialRescaler's channel mapper,
 * BERTEmbedder's x-transformer (to_logits included: it is stored, though embeddings never use it).
 */
export function condStageParamShapes(cfg: CondStageConfig | undefined): ParamShapes {
  const s = new ShapeList(COND_PREFIX);
  if (cfg?.target === "BERTEmbedder") {
    const { heads, dim_head, ff_mult } = X_TRANSFORMER_DEFAULTS;
    const dim = cfg.n_embed;
    s.add("transformer.token_emb.weight", [cfg.vocab_size, dim]);
    s.add("transformer.pos_emb.emb.weight", [cfg.max_seq_len, dim]);
    for (let i = 0; i < cfg.n_layer; i++) {
      const attention = `transformer.attn_layers.layers.${2 * i}`;
      const feedForward = `transformer.attn_layers.layers.${2 * i + 1}`;
      s.norm(`${attention}.0`, dim);
      for (const p of ["to_q", "to_k", "to_v"]) s.linear(`${attention}.1.${p}`, dim, heads * dim_head, false);
      s.linear(`${attention}.1.to_out`, heads * dim_head, dim);
      s.norm(`${feedForward}.0`, dim);
      s.linear(`${feedForward}.1.net.0.0`, dim, dim * ff_mult);
      s.linear(`${feedForward}.1.net.2`, dim * ff_mult, dim);
    }
    s.norm("transformer.norm", dim);
    s.linear("transformer.to_logits", dim, cfg.vocab_size);
  }
  if (cfg?.target === "ClassEmbedder") s.add("embedding.weight", [cfg.n_classes, cfg.embed_dim]);
  if (cfg?.target === "SpatialRescaler" && cfg.out_channels !== undefined) {
    s.add("channel_mapper.weight", [cfg.out_channels, cfg.in_channels, 1, 1]);
    if (cfg.bias) s.add("channel_mapper.bias", [cfg.out_channels]);
  }
  return s.shapes;
}

/** Heads and head width of a UNet transformer over `channels` channels (UNetModel's rule). */
export function unetHeads(cfg: UNetConfig, channels: number): { heads: number; dimHead: number } {
  if (cfg.num_head_channels === -1) return { heads: cfg.num_heads, dimHead: Math.floor(channels / cfg.num_heads) };
  return { heads: Math.floor(channels / cfg.num_head_channels), dimHead: cfg.num_head_channels };
}

class ShapeList {
  readonly shapes: ParamShapes = new Map();
  constructor(private readonly prefix: string) {}

  add(name: string, shape: number[]): void {
    this.shapes.set(this.prefix + name, shape);
  }
  linear(name: string, inF: number, outF: number, bias = true): void {
    this.add(`${name}.weight`, [outF, inF]);
    if (bias) this.add(`${name}.bias`, [outF]);
  }
  conv(name: string, inC: number, outC: number, kernel: number): void {
    this.add(`${name}.weight`, [outC, inC, kernel, kernel]);
    this.add(`${name}.bias`, [outC]);
  }
  /** GroupNorm or LayerNorm: an affine weight and bias per channel. */
  norm(name: string, channels: number): void {
    this.add(`${name}.weight`, [channels]);
    this.add(`${name}.bias`, [channels]);
  }
}

export function unetParamShapes(cfg: UNetConfig): ParamShapes {
  const s = new ShapeList(UNET_PREFIX);
  const mc = cfg.model_channels;
  const emb = mc * 4;
  const resBlock = (name: string, inC: number, outC: number) => {
    s.norm(`${name}.in_layers.0`, inC);
    s.conv(`${name}.in_layers.2`, inC, outC, 3);
    s.linear(`${name}.emb_layers.1`, emb, cfg.use_scale_shift_norm ? 2 * outC : outC);
    s.norm(`${name}.out_layers.0`, outC);
    s.conv(`${name}.out_layers.3`, outC, outC, 3);
    if (inC !== outC) s.conv(`${name}.skip_connection`, inC, outC, 1);
  };
  const transformer = (name: string, channels: number) => {
    if (!cfg.use_spatial_transformer) {
      // AttentionBlock: 1-D 1×1 convolutions.
      s.norm(`${name}.norm`, channels);
      s.add(`${name}.qkv.weight`, [3 * channels, channels, 1]);
      s.add(`${name}.qkv.bias`, [3 * channels]);
      s.add(`${name}.proj_out.weight`, [channels, channels, 1]);
      s.add(`${name}.proj_out.bias`, [channels]);
      return;
    }
    const crossDim = cfg.context_dim ?? 0;
    const { heads, dimHead } = unetHeads(cfg, channels);
    const inner = heads * dimHead;
    s.norm(`${name}.norm`, channels);
    const project = (p: string, inC: number, outC: number) =>
      cfg.use_linear_in_transformer ? s.linear(p, inC, outC) : s.conv(p, inC, outC, 1);
    project(`${name}.proj_in`, channels, inner);
    for (let d = 0; d < cfg.transformer_depth; d++) {
      const b = `${name}.transformer_blocks.${d}`;
      for (const [attn, contextDim] of [
        ["attn1", inner],
        ["attn2", crossDim],
      ] as const) {
        s.linear(`${b}.${attn}.to_q`, inner, inner, false);
        s.linear(`${b}.${attn}.to_k`, contextDim, inner, false);
        s.linear(`${b}.${attn}.to_v`, contextDim, inner, false);
        s.linear(`${b}.${attn}.to_out.0`, inner, inner);
      }
      s.linear(`${b}.ff.net.0.proj`, inner, inner * 8); // GEGLU: value and gate of the 4× hidden layer
      s.linear(`${b}.ff.net.2`, inner * 4, inner);
      for (const n of ["norm1", "norm2", "norm3"]) s.norm(`${b}.${n}`, inner);
    }
    project(`${name}.proj_out`, inner, channels);
  };

  s.linear("time_embed.0", mc, emb);
  s.linear("time_embed.2", emb, emb);
  s.conv("input_blocks.0.0", cfg.in_channels, mc, 3);
  const skipChannels = [mc];
  let ch = mc;
  let ds = 1;
  let index = 1;
  const levels = cfg.channel_mult.length;
  cfg.channel_mult.forEach((mult, level) => {
    for (let r = 0; r < cfg.num_res_blocks; r++, index++) {
      resBlock(`input_blocks.${index}.0`, ch, mult * mc);
      ch = mult * mc;
      if (cfg.attention_resolutions.includes(ds)) transformer(`input_blocks.${index}.1`, ch);
      skipChannels.push(ch);
    }
    if (level !== levels - 1) {
      if (cfg.resblock_updown) resBlock(`input_blocks.${index++}.0`, ch, ch);
      else s.conv(`input_blocks.${index++}.0.op`, ch, ch, 3);
      skipChannels.push(ch);
      ds *= 2;
    }
  });
  resBlock("middle_block.0", ch, ch);
  transformer("middle_block.1", ch);
  resBlock("middle_block.2", ch, ch);
  index = 0;
  for (let level = levels - 1; level >= 0; level--) {
    const mult = cfg.channel_mult[level];
    for (let r = 0; r <= cfg.num_res_blocks; r++, index++) {
      resBlock(`output_blocks.${index}.0`, ch + skipChannels.pop()!, mc * mult);
      ch = mc * mult;
      let layer = 1;
      if (cfg.attention_resolutions.includes(ds)) transformer(`output_blocks.${index}.${layer++}`, ch);
      if (level > 0 && r === cfg.num_res_blocks) {
        if (cfg.resblock_updown) resBlock(`output_blocks.${index}.${layer}`, ch, ch);
        else s.conv(`output_blocks.${index}.${layer}.conv`, ch, ch, 3);
        ds /= 2;
      }
    }
  }
  s.norm("out.0", ch);
  s.conv("out.2", mc, cfg.out_channels, 3);
  return s.shapes;
}

export function vaeParamShapes(cfg: VaeConfig): ParamShapes {
  const s = new ShapeList(VAE_PREFIX);
  const dd = cfg.ddconfig;
  const levels = dd.ch_mult.length;
  const resBlock = (name: string, inC: number, outC: number) => {
    s.norm(`${name}.norm1`, inC);
    s.conv(`${name}.conv1`, inC, outC, 3);
    s.norm(`${name}.norm2`, outC);
    s.conv(`${name}.conv2`, outC, outC, 3);
    if (inC !== outC) s.conv(`${name}.nin_shortcut`, inC, outC, 1);
  };
  const attention = (name: string, channels: number) => {
    s.norm(`${name}.norm`, channels);
    for (const p of ["q", "k", "v", "proj_out"]) s.conv(`${name}.${p}`, channels, channels, 1);
  };
  const middle = (name: string, channels: number) => {
    resBlock(`${name}.mid.block_1`, channels, channels);
    if (dd.attn_type !== "none") attention(`${name}.mid.attn_1`, channels);
    resBlock(`${name}.mid.block_2`, channels, channels);
  };

  s.conv("encoder.conv_in", dd.in_channels, dd.ch, 3);
  let res = dd.resolution;
  let blockIn = dd.ch;
  for (let level = 0; level < levels; level++) {
    const blockOut = dd.ch * dd.ch_mult[level];
    for (let b = 0; b < dd.num_res_blocks; b++) {
      resBlock(`encoder.down.${level}.block.${b}`, blockIn, blockOut);
      blockIn = blockOut;
      if (dd.attn_resolutions.includes(res) && dd.attn_type !== "none")
        attention(`encoder.down.${level}.attn.${b}`, blockIn);
    }
    if (level !== levels - 1) {
      s.conv(`encoder.down.${level}.downsample.conv`, blockIn, blockIn, 3);
      res = Math.floor(res / 2);
    }
  }
  middle("encoder", blockIn);
  s.norm("encoder.norm_out", blockIn);
  s.conv("encoder.conv_out", blockIn, dd.double_z ? 2 * dd.z_channels : dd.z_channels, 3);

  blockIn = dd.ch * dd.ch_mult[levels - 1];
  res = Math.floor(dd.resolution / 2 ** (levels - 1));
  s.conv("decoder.conv_in", dd.z_channels, blockIn, 3);
  middle("decoder", blockIn);
  for (let level = levels - 1; level >= 0; level--) {
    const blockOut = dd.ch * dd.ch_mult[level];
    for (let b = 0; b <= dd.num_res_blocks; b++) {
      resBlock(`decoder.up.${level}.block.${b}`, blockIn, blockOut);
      blockIn = blockOut;
      if (dd.attn_resolutions.includes(res) && dd.attn_type !== "none")
        attention(`decoder.up.${level}.attn.${b}`, blockIn);
    }
    if (level !== 0) {
      s.conv(`decoder.up.${level}.upsample.conv`, blockIn, blockIn, 3);
      res *= 2;
    }
  }
  s.norm("decoder.norm_out", blockIn);
  s.conv("decoder.conv_out", blockIn, dd.out_ch, 3);
  // AutoencoderKL's quant_conv makes moments (2·embed_dim); VQModel's makes the latent, then the codebook.
  const moments = cfg.n_embed === undefined ? 2 : 1;
  s.conv("quant_conv", moments * dd.z_channels, moments * cfg.embed_dim, 1);
  s.conv("post_quant_conv", cfg.embed_dim, dd.z_channels, 1);
  if (cfg.n_embed !== undefined) s.add("quantize.embedding.weight", [cfg.n_embed, cfg.embed_dim]);
  return s.shapes;
}

export function clipTextParamShapes(cfg: ClipTextConfig): ParamShapes {
  const s = new ShapeList(TEXT_PREFIX);
  const h = cfg.hidden_size;
  s.add("embeddings.token_embedding.weight", [cfg.vocab_size, h]);
  s.add("embeddings.position_embedding.weight", [cfg.max_position_embeddings, h]);
  for (let n = 0; n < cfg.num_hidden_layers; n++) {
    const layer = `encoder.layers.${n}`;
    for (const p of ["q_proj", "k_proj", "v_proj", "out_proj"]) s.linear(`${layer}.self_attn.${p}`, h, h);
    s.norm(`${layer}.layer_norm1`, h);
    s.linear(`${layer}.mlp.fc1`, h, cfg.intermediate_size);
    s.linear(`${layer}.mlp.fc2`, cfg.intermediate_size, h);
    s.norm(`${layer}.layer_norm2`, h);
  }
  s.norm("final_layer_norm", h);
  return s.shapes;
}
