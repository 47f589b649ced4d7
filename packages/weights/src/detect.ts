import { formatShape } from "@ldm/tensor";
import { TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX } from "./architecture.ts";
import {
  CLIP_VIT_L_TEXT,
  type ClipTextConfig,
  type DDConfig,
  type Family,
  type ModelConfig,
  OPEN_CLIP_VIT_H_TEXT,
  type Parameterization,
  SD_SCHEDULE,
  SD1_UNET,
  SD2_UNET,
  sdVae,
  type UNetConfig,
  type VaeConfig,
} from "./config.ts";

/** What detection reads: canonical keys and their shapes (a WeightSource has both). */
export interface KeyShapes {
  describe(key: string): { shape: readonly number[] } | undefined;
  keys(): Iterable<string>;
}

/** Facts a layout knows beyond shapes (a diffusers folder's config files; a single file's text naming). */
export interface DetectionHints {
  /** The text encoder was stored in OpenCLIP's naming (SD 2.x single files). */
  openClipText?: boolean;
  parameterization?: Parameterization;
  scale_factor?: number;
  linear_start?: number;
  linear_end?: number;
  timesteps?: number;
  unet?: Partial<Pick<UNetConfig, "num_heads" | "num_head_channels">>;
  vaeResolution?: number;
  /** The UNet's sample_size (a diffusers folder's unet/config.json): the latent side it was trained at. */
  sampleSize?: number;
  text?: Partial<ClipTextConfig>;
}

export interface Detection {
  config: ModelConfig;
  /** Values that are not in the weights and were taken from family defaults or hints, for the user to see. */
  assumptions: string[];
}

export class DetectionError extends Error {}

/** Reads shapes by canonical key; errors name the key. */
class Shapes {
  constructor(
    private readonly source: KeyShapes,
    readonly origin: string,
  ) {}

  has(key: string): boolean {
    return this.source.describe(key) !== undefined;
  }

  get(key: string, rank?: number): readonly number[] {
    const info = this.source.describe(key);
    if (!info) throw new DetectionError(`${this.origin}: cannot detect the model: ${key} is missing`);
    if (rank !== undefined && info.shape.length !== rank) {
      throw new DetectionError(
        `${this.origin}: ${key} has shape ${formatShape(info.shape)}, expected ${rank} dimensions`,
      );
    }
    return info.shape;
  }

  /** How many of `key(0)`, `key(1)`, … exist, counting from 0. */
  count(key: (i: number) => string): number {
    let n = 0;
    while (this.has(key(n))) n++;
    return n;
  }
}

/**
 * Detects the model family and every size from the keys and shapes. Heads, the VAE's nominal resolution,
 * the text activation, parameterization and the schedule are not in the weights: they come from `hints`,
 * else from the family's standard values, and are listed in `assumptions`.
 */
export function detectConfig(source: KeyShapes, origin: string, hints: DetectionHints = {}): Detection {
  const s = new Shapes(source, origin);
  const missing = [
    ["UNet", `${UNET_PREFIX}input_blocks.0.0.weight`],
    ["VAE", `${VAE_PREFIX}encoder.conv_in.weight`],
    ["text encoder", `${TEXT_PREFIX}embeddings.token_embedding.weight`],
  ].filter(([, key]) => !s.has(key));
  if (missing.length) {
    throw new DetectionError(
      `${origin}: not a complete Stable Diffusion checkpoint: no ${missing.map(([what, key]) => `${what} (${key})`).join(", no ")}`,
    );
  }
  const assumptions: string[] = [];
  const unet = detectUNetShapes(s);
  const contextDim = unet.context_dim;
  const family = familyOf(s, contextDim, hints);
  const heads = hints.unet ?? (family === "sd1" ? SD1_UNET : SD2_UNET);
  if (!hints.unet) {
    assumptions.push(family === "sd1" ? "UNet num_heads 8 (SD 1.x)" : "UNet num_head_channels 64 (SD 2.x)");
  }
  const text = detectClipText(s, family, hints, assumptions);
  if (text.hidden_size !== contextDim) {
    throw new DetectionError(
      `${origin}: the text encoder is ${text.hidden_size} wide but the UNet's cross-attention expects ${unet.context_dim}`,
    );
  }
  const vaeResolution = hints.vaeResolution ?? sdVae(family).ddconfig.resolution;
  const schedule = {
    scale_factor: hints.scale_factor ?? SD_SCHEDULE.scale_factor,
    linear_start: hints.linear_start ?? SD_SCHEDULE.linear_start,
    linear_end: hints.linear_end ?? SD_SCHEDULE.linear_end,
    timesteps: hints.timesteps ?? (s.has("betas") ? s.get("betas", 1)[0] : SD_SCHEDULE.timesteps),
  };
  if (hints.scale_factor === undefined) assumptions.push(`scale_factor ${schedule.scale_factor}`);
  if (hints.linear_start === undefined || hints.linear_end === undefined) {
    assumptions.push(`linear_start ${schedule.linear_start}, linear_end ${schedule.linear_end}`);
  }
  if (!hints.parameterization) {
    assumptions.push('parameterization "eps" (v-prediction models, e.g. SD 2.x 768-v, need a config)');
  }
  return {
    config: {
      family,
      inpainting: unet.in_channels === 9,
      parameterization: hints.parameterization ?? "eps",
      ...schedule,
      image_size: hints.sampleSize,
      unet: { ...unet, num_heads: heads.num_heads ?? -1, num_head_channels: heads.num_head_channels ?? -1 },
      vae: detectVaeShapes(s, vaeResolution),
      text,
    },
    assumptions,
  };
}

function familyOf(s: Shapes, contextDim: number, hints: DetectionHints): Family {
  if (hints.openClipText) return "sd2";
  return contextDim === SD2_UNET.context_dim && s.get(`${TEXT_PREFIX}embeddings.token_embedding.weight`)[1] === 1024
    ? "sd2"
    : "sd1";
}

/** Everything but the heads, which shapes do not determine (left at -1 for the caller to fill). */
function detectUNetShapes(s: Shapes): ModelConfig["unet"] {
  const p = (k: string) => `${UNET_PREFIX}${k}`;
  const [mc, inChannels] = s.get(p("input_blocks.0.0.weight"), 4);
  // Input blocks: conv_in, then per level num_res_blocks blocks and (except the last level) a downsampler.
  const firstOp = s.count((i) => p(`input_blocks.${i + 1}.0.in_layers.2.weight`));
  if (firstOp === 0) throw new DetectionError(`${s.origin}: ${p("input_blocks.1.0")} is not a residual block`);
  const numRes = firstOp;
  const levels = 1 + s.count((l) => p(`input_blocks.${(l + 1) * (numRes + 1)}.0.op.weight`));
  const firstBlock = (level: number) => p(`input_blocks.${1 + level * (numRes + 1)}`);
  const channelMult: number[] = [];
  const attention: number[] = [];
  for (let level = 0; level < levels; level++) {
    const out = s.get(`${firstBlock(level)}.0.in_layers.2.weight`, 4)[0];
    if (out % mc)
      throw new DetectionError(`${s.origin}: ${firstBlock(level)} has ${out} channels, not a multiple of ${mc}`);
    channelMult.push(out / mc);
    if (s.has(`${firstBlock(level)}.1.norm.weight`)) attention.push(2 ** level);
  }
  const mid = p("middle_block.1");
  const projIn = s.get(`${mid}.proj_in.weight`);
  return {
    in_channels: inChannels,
    out_channels: s.get(p("out.2.weight"), 4)[0],
    model_channels: mc,
    num_res_blocks: numRes,
    attention_resolutions: attention,
    channel_mult: channelMult,
    num_heads: -1,
    num_head_channels: -1,
    transformer_depth: s.count((d) => `${mid}.transformer_blocks.${d}.norm1.weight`),
    context_dim: s.get(`${mid}.transformer_blocks.0.attn2.to_k.weight`, 2)[1],
    use_linear_in_transformer: projIn.length === 2,
    // Detection covers Stable Diffusion's UNets; the paper's other UNets need their config.
    use_spatial_transformer: true,
    use_scale_shift_norm: false,
    resblock_updown: false,
    use_new_attention_order: false,
  };
}

function detectVaeShapes(s: Shapes, resolution: number): VaeConfig {
  const p = (k: string) => `${VAE_PREFIX}${k}`;
  const [ch, inChannels] = s.get(p("encoder.conv_in.weight"), 4);
  const levels = s.count((l) => p(`encoder.down.${l}.block.0.conv1.weight`));
  const numRes = s.count((b) => p(`encoder.down.0.block.${b}.conv1.weight`));
  const zChannels = s.get(p("decoder.conv_in.weight"), 4)[1];
  const ddconfig: DDConfig = {
    double_z: s.get(p("encoder.conv_out.weight"), 4)[0] === 2 * zChannels,
    z_channels: zChannels,
    resolution,
    in_channels: inChannels,
    out_ch: s.get(p("decoder.conv_out.weight"), 4)[0],
    ch,
    ch_mult: Array.from({ length: levels }, (_, l) => s.get(p(`encoder.down.${l}.block.0.conv1.weight`), 4)[0] / ch),
    num_res_blocks: numRes,
    attn_resolutions: Array.from({ length: levels }, (_, l) => l)
      .filter((l) => s.has(p(`encoder.down.${l}.attn.0.norm.weight`)))
      .map((l) => Math.floor(resolution / 2 ** l)),
  };
  return { embed_dim: s.get(p("post_quant_conv.weight"), 4)[1], ddconfig };
}

function detectClipText(s: Shapes, family: Family, hints: DetectionHints, assumptions: string[]): ClipTextConfig {
  const p = (k: string) => `${TEXT_PREFIX}${k}`;
  const [vocab, hidden] = s.get(p("embeddings.token_embedding.weight"), 2);
  const standard = family === "sd2" ? OPEN_CLIP_VIT_H_TEXT : CLIP_VIT_L_TEXT;
  const layers = s.count((n) => p(`encoder.layers.${n}.layer_norm1.weight`));
  const headWidth = standard.hidden_size / standard.num_attention_heads;
  const detected: ClipTextConfig = {
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: layers ? s.get(p("encoder.layers.0.mlp.fc1.weight"), 2)[0] : 4 * hidden,
    num_hidden_layers: layers,
    num_attention_heads: hidden % headWidth === 0 ? hidden / headWidth : 1,
    max_position_embeddings: s.get(p("embeddings.position_embedding.weight"), 2)[0],
    hidden_act: standard.hidden_act,
    layer_norm_eps: standard.layer_norm_eps,
    // SD 2.x single files keep all 24 OpenCLIP layers and use the 23rd; diffusers folders store only 23.
    layer: hints.openClipText ? "penultimate" : "last",
    pad_token_id: standard.pad_token_id,
  };
  const text = { ...detected, ...hints.text };
  if (hints.text?.num_attention_heads === undefined) {
    assumptions.push(`text encoder: ${text.num_attention_heads} heads of ${hidden / text.num_attention_heads}`);
  }
  if (hints.text?.hidden_act === undefined) assumptions.push(`text encoder: ${text.hidden_act} activation`);
  for (const key of [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "max_position_embeddings",
  ] as const) {
    if (text[key] !== detected[key]) {
      throw new DetectionError(
        `${s.origin}: the text encoder's config says ${key} ${text[key]}, the weights have ${detected[key]}`,
      );
    }
  }
  return text;
}
