import { parse as parseYaml } from "yaml";

/**
 * Model configuration, with fields named after the original YAML configs (CompVis `v1-inference.yaml`,
 * Stability `v2-inference-v.yaml`: `model.params`, `unet_config.params`, `first_stage_config.params`) and,
 * for the text encoder, after Hugging Face's `CLIPTextConfig`.
 */

export type Family = "sd1" | "sd2";
export type Parameterization = "eps" | "v";

/** `ldm.modules.diffusionmodules.openaimodel.UNetModel` with a SpatialTransformer (the only kind SD uses). */
export interface UNetConfig {
  in_channels: number;
  out_channels: number;
  model_channels: number;
  num_res_blocks: number;
  /** Downsampling factors (1, 2, 4, …) at which blocks carry a transformer, ascending. */
  attention_resolutions: number[];
  channel_mult: number[];
  /** Heads per transformer, or -1 when `num_head_channels` fixes the head width instead (as in the YAML). */
  num_heads: number;
  num_head_channels: number;
  transformer_depth: number;
  context_dim: number;
  use_linear_in_transformer: boolean;
}

/** `ddconfig` of `ldm.models.autoencoder.AutoencoderKL` (its Encoder and Decoder). */
export interface DDConfig {
  double_z: boolean;
  z_channels: number;
  resolution: number;
  in_channels: number;
  out_ch: number;
  ch: number;
  ch_mult: number[];
  num_res_blocks: number;
  attn_resolutions: number[];
}

export interface VaeConfig {
  embed_dim: number;
  ddconfig: DDConfig;
}

/** A CLIP text transformer, in Hugging Face `CLIPTextConfig` terms. */
export interface ClipTextConfig {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  /** Encoder layers stored in the checkpoint. */
  num_hidden_layers: number;
  num_attention_heads: number;
  max_position_embeddings: number;
  hidden_act: "quick_gelu" | "gelu";
  layer_norm_eps: number;
  /**
   * Which layer's output conditions the UNet (then `final_layer_norm`): "last", or "penultimate" (SD 2.x's
   * FrozenOpenCLIPEmbedder, which skips the last stored layer; diffusers drops that layer from its files).
   */
  layer: "last" | "penultimate";
  /** Token that fills prompts up to max_position_embeddings: `<|endoftext|>` (49407) for SD 1.x, 0 for SD 2.x. */
  pad_token_id: number;
}

export interface ModelConfig {
  family: Family;
  /** A UNet that takes the masked image and mask too (9 input channels). */
  inpainting: boolean;
  parameterization: Parameterization;
  scale_factor: number;
  linear_start: number;
  linear_end: number;
  timesteps: number;
  /**
   * The latent side the model was trained at (model.params.image_size: 64 for SD 1.x, 96 for SD 2.x 768-v);
   * pipelines default to it times the VAE's factor. Absent when neither a config nor the files say.
   */
  image_size?: number;
  unet: UNetConfig;
  vae: VaeConfig;
  text: ClipTextConfig;
}

/** openai/clip-vit-large-patch14's text tower, SD 1.x's FrozenCLIPEmbedder (HF config.json of that model). */
export const CLIP_VIT_L_TEXT: Readonly<ClipTextConfig> = Object.freeze({
  vocab_size: 49408,
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  max_position_embeddings: 77,
  hidden_act: "quick_gelu",
  layer_norm_eps: 1e-5,
  layer: "last",
  pad_token_id: 49407,
});

/** OpenCLIP ViT-H-14's text tower (open_clip model config ViT-H-14.json), SD 2.x's FrozenOpenCLIPEmbedder. */
export const OPEN_CLIP_VIT_H_TEXT: Readonly<ClipTextConfig> = Object.freeze({
  vocab_size: 49408,
  hidden_size: 1024,
  intermediate_size: 4096,
  num_hidden_layers: 24,
  num_attention_heads: 16,
  max_position_embeddings: 77,
  hidden_act: "gelu",
  layer_norm_eps: 1e-5,
  layer: "penultimate",
  pad_token_id: 0,
});

/** The diffusion schedule and latent scale both v1-inference.yaml and v2-inference(-v).yaml use. */
export const SD_SCHEDULE = Object.freeze({
  scale_factor: 0.18215,
  linear_start: 0.00085,
  linear_end: 0.012,
  timesteps: 1000,
});

export class ConfigError extends Error {}

type Dict = Record<string, unknown>;

/** The YAML document of a config file, or a ConfigError naming the file (`origin`) and the first problem. */
export function parseConfigYaml(text: string, origin = "config"): unknown {
  try {
    return parseYaml(text);
  } catch (e) {
    throw new ConfigError(`${origin}: not valid YAML (${(e as Error).message.split("\n")[0]})`);
  }
}

/**
 * Reads an original-style YAML config. Omitted parameters take the original constructors' defaults; options
 * that change the architecture in ways this project does not implement are rejected by name.
 */
export function configFromYaml(text: string, origin = "config"): ModelConfig {
  const doc = parseConfigYaml(text, origin);
  const r = new YamlReader(origin);
  const model = r.dict(
    r.dict(r.dict(doc, "a top-level mapping", true).model, "model", true).params,
    "model.params",
    true,
  );
  const unetParams = r.dict(
    r.dict(model.unet_config, "model.params.unet_config", true).params,
    "unet_config.params",
    true,
  );
  const firstStage = r.dict(
    r.dict(model.first_stage_config, "model.params.first_stage_config", true).params,
    "first_stage_config.params",
    true,
  );
  const cond = r.dict(model.cond_stage_config, "model.params.cond_stage_config", true);

  const beta = r.optional(model, "beta_schedule", "model.params", "string") ?? "linear";
  if (beta !== "linear") throw new ConfigError(`${origin}: model.params.beta_schedule "${beta}" is not supported`);
  const parameterization = r.optional(model, "parameterization", "model.params", "string") ?? "eps";
  if (parameterization !== "eps" && parameterization !== "v") {
    throw new ConfigError(`${origin}: model.params.parameterization "${parameterization}" is not supported (eps, v)`);
  }
  const unet = unetFromYaml(r, unetParams);
  const textEncoder = textFromYaml(r, cond);
  return {
    family: textEncoder.family,
    inpainting: unet.in_channels === 9,
    parameterization,
    // DDPM's and LatentDiffusion's constructor defaults.
    scale_factor: r.optional(model, "scale_factor", "model.params", "number") ?? 1.0,
    linear_start: r.optional(model, "linear_start", "model.params", "number") ?? 1e-4,
    linear_end: r.optional(model, "linear_end", "model.params", "number") ?? 2e-2,
    timesteps: r.optional(model, "timesteps", "model.params", "integer") ?? 1000,
    image_size: r.optional(model, "image_size", "model.params", "integer"),
    unet,
    vae: vaeFromYaml(r, firstStage),
    text: textEncoder.config,
  };
}

function unetFromYaml(r: YamlReader, p: Dict): UNetConfig {
  const at = "unet_config.params";
  // Original constructor options this project does not implement, with the only value accepted (null: absent).
  const unsupported: [string, unknown][] = [
    ["use_scale_shift_norm", false],
    ["resblock_updown", false],
    ["num_classes", null],
    ["adm_in_channels", null],
    ["disable_self_attentions", null],
    ["num_attention_blocks", null],
    ["disable_middle_self_attn", false],
    ["n_embed", null],
    ["conv_resample", true],
    ["dims", 2],
  ];
  for (const [name, accepted] of unsupported) {
    const v = p[name];
    if (v !== undefined && v !== null && v !== accepted) {
      throw new ConfigError(`${r.origin}: ${at}.${name}: ${JSON.stringify(v)} is not supported`);
    }
  }
  if (p.use_spatial_transformer !== true) {
    throw new ConfigError(`${r.origin}: ${at}.use_spatial_transformer must be true (cross-attention UNets only)`);
  }
  const num_heads = r.optional(p, "num_heads", at, "integer") ?? -1;
  const num_head_channels = r.optional(p, "num_head_channels", at, "integer") ?? -1;
  if (num_heads === -1 && num_head_channels === -1) {
    throw new ConfigError(`${r.origin}: ${at} needs num_heads or num_head_channels`);
  }
  return {
    in_channels: r.required(p, "in_channels", at, "integer"),
    out_channels: r.required(p, "out_channels", at, "integer"),
    model_channels: r.required(p, "model_channels", at, "integer"),
    num_res_blocks: r.required(p, "num_res_blocks", at, "integer"),
    attention_resolutions: [...r.required(p, "attention_resolutions", at, "integers")].sort((a, b) => a - b),
    channel_mult: r.optional(p, "channel_mult", at, "integers") ?? [1, 2, 4, 8],
    num_heads,
    num_head_channels,
    transformer_depth: r.optional(p, "transformer_depth", at, "integer") ?? 1,
    context_dim: r.required(p, "context_dim", at, "integer"),
    use_linear_in_transformer: r.optional(p, "use_linear_in_transformer", at, "boolean") ?? false,
  };
}

function vaeFromYaml(r: YamlReader, p: Dict): VaeConfig {
  const at = "first_stage_config.params.ddconfig";
  const dd = r.dict(p.ddconfig, at, true);
  return {
    embed_dim: r.required(p, "embed_dim", "first_stage_config.params", "integer"),
    ddconfig: {
      double_z: r.optional(dd, "double_z", at, "boolean") ?? true,
      z_channels: r.required(dd, "z_channels", at, "integer"),
      resolution: r.required(dd, "resolution", at, "integer"),
      in_channels: r.required(dd, "in_channels", at, "integer"),
      out_ch: r.required(dd, "out_ch", at, "integer"),
      ch: r.required(dd, "ch", at, "integer"),
      ch_mult: r.optional(dd, "ch_mult", at, "integers") ?? [1, 2, 4, 8],
      num_res_blocks: r.required(dd, "num_res_blocks", at, "integer"),
      attn_resolutions: r.required(dd, "attn_resolutions", at, "integers"),
    },
  };
}

const TEXT_CONFIG_KEYS = [
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "max_position_embeddings",
] as const;

function textFromYaml(r: YamlReader, cond: Dict): { family: Family; config: ClipTextConfig } {
  const at = "cond_stage_config";
  const target = r.required(cond, "target", at, "string");
  const family: Family | undefined = target.endsWith(".FrozenOpenCLIPEmbedder")
    ? "sd2"
    : target.endsWith(".FrozenCLIPEmbedder")
      ? "sd1"
      : undefined;
  if (!family) {
    throw new ConfigError(
      `${r.origin}: ${at}.target "${target}" is not supported (FrozenCLIPEmbedder or FrozenOpenCLIPEmbedder)`,
    );
  }
  const config: ClipTextConfig = { ...(family === "sd2" ? OPEN_CLIP_VIT_H_TEXT : CLIP_VIT_L_TEXT) };
  const params = r.dict(cond.params, `${at}.params`) ?? {};
  const layer = r.optional(params, "layer", `${at}.params`, "string");
  if (layer !== undefined) {
    if (layer !== "last" && layer !== "penultimate") {
      throw new ConfigError(`${r.origin}: ${at}.params.layer "${layer}" is not supported (last, penultimate)`);
    }
    config.layer = layer;
  }
  const tc = r.dict(params.text_config, `${at}.params.text_config`);
  if (tc) {
    const where = `${at}.params.text_config`;
    for (const key of TEXT_CONFIG_KEYS) config[key] = r.optional(tc, key, where, "integer") ?? config[key];
    const act = r.optional(tc, "hidden_act", where, "string");
    if (act !== undefined) {
      if (act !== "gelu" && act !== "quick_gelu") {
        throw new ConfigError(`${r.origin}: ${where}.hidden_act "${act}" is not supported (gelu, quick_gelu)`);
      }
      config.hidden_act = act;
    }
    config.layer_norm_eps = r.optional(tc, "layer_norm_eps", where, "number") ?? config.layer_norm_eps;
    config.pad_token_id = r.optional(tc, "pad_token_id", where, "integer") ?? config.pad_token_id;
  }
  return { family, config };
}

interface ValueKinds {
  string: string;
  number: number;
  integer: number;
  boolean: boolean;
  integers: number[];
}

/** Typed access to YAML values; errors name the file and the dotted path. */
class YamlReader {
  constructor(readonly origin: string) {}

  dict(v: unknown, at: string, required: true): Dict;
  dict(v: unknown, at: string, required?: false): Dict | undefined;
  dict(v: unknown, at: string, required = false): Dict | undefined {
    if (v === undefined || v === null) {
      if (required) throw new ConfigError(`${this.origin}: missing ${at}`);
      return undefined;
    }
    if (typeof v !== "object" || Array.isArray(v)) throw new ConfigError(`${this.origin}: ${at} must be a mapping`);
    return v as Dict;
  }

  required<K extends keyof ValueKinds>(p: Dict, name: string, at: string, kind: K): ValueKinds[K] {
    const v = this.optional(p, name, at, kind);
    if (v === undefined) throw new ConfigError(`${this.origin}: missing ${at}.${name}`);
    return v;
  }

  optional<K extends keyof ValueKinds>(p: Dict, name: string, at: string, kind: K): ValueKinds[K] | undefined {
    const v = p[name];
    if (v === undefined || v === null) return undefined;
    const ok =
      kind === "integer"
        ? Number.isInteger(v)
        : kind === "integers"
          ? Array.isArray(v) && v.every((x) => Number.isInteger(x))
          : typeof v === kind;
    if (!ok) throw new ConfigError(`${this.origin}: ${at}.${name} must be ${kindName[kind]}, not ${JSON.stringify(v)}`);
    return v as ValueKinds[K];
  }
}

const kindName: Record<keyof ValueKinds, string> = {
  string: "a string",
  number: "a number",
  integer: "an integer",
  boolean: "true or false",
  integers: "a list of integers",
};

/** v1-inference.yaml's unet_config (SD 1.x). */
export const SD1_UNET: Readonly<UNetConfig> = Object.freeze({
  in_channels: 4,
  out_channels: 4,
  model_channels: 320,
  num_res_blocks: 2,
  attention_resolutions: [1, 2, 4],
  channel_mult: [1, 2, 4, 4],
  num_heads: 8,
  num_head_channels: -1,
  transformer_depth: 1,
  context_dim: 768,
  use_linear_in_transformer: false,
});

/** v2-inference(-v).yaml's unet_config (SD 2.x). */
export const SD2_UNET: Readonly<UNetConfig> = Object.freeze({
  ...SD1_UNET,
  num_heads: -1,
  num_head_channels: 64,
  context_dim: 1024,
  use_linear_in_transformer: true,
});

/** first_stage_config of the same files; only `resolution` differs (512 in v1, 256 in v2), and it matters
 * only to place attn_resolutions, which SD leaves empty. */
export function sdVae(family: Family): VaeConfig {
  return {
    embed_dim: 4,
    ddconfig: {
      double_z: true,
      z_channels: 4,
      resolution: family === "sd1" ? 512 : 256,
      in_channels: 3,
      out_ch: 3,
      ch: 128,
      ch_mult: [1, 2, 4, 4],
      num_res_blocks: 2,
      attn_resolutions: [],
    },
  };
}

/** The standard SD 1.x / 2.x configuration (SD 2.x 768-v checkpoints need parameterization "v"). */
export function standardConfig(
  family: Family,
  options: { inpainting?: boolean; parameterization?: Parameterization } = {},
): ModelConfig {
  const unet = { ...(family === "sd1" ? SD1_UNET : SD2_UNET) };
  if (options.inpainting) unet.in_channels = 9;
  return {
    family,
    inpainting: options.inpainting ?? false,
    parameterization: options.parameterization ?? "eps",
    ...SD_SCHEDULE,
    unet: structuredClone(unet),
    vae: sdVae(family),
    text: { ...(family === "sd1" ? CLIP_VIT_L_TEXT : OPEN_CLIP_VIT_H_TEXT) },
  };
}
