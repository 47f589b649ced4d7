import { parse as parseYaml } from "yaml";

/**
 * Model configuration, with fields named after the original YAML configs (CompVis `v1-inference.yaml`,
 * Stability `v2-inference-v.yaml`: `model.params`, `unet_config.params`, `first_stage_config.params`) and,
 * for the text encoder, after Hugging Face's `CLIPTextConfig`.
 */

export type Family = "sd1" | "sd2";
export type Parameterization = "eps" | "v";
/**
 * How the cond stage's output enters the UNet (LatentDiffusion's `conditioning_key`, DiffusionWrapper):
 * `crossattn` as the transformers' context, `concat` joined to the latents along channels, `hybrid` both;
 * null: unconditional (`cond_stage_config: __is_unconditional__`).
 */
export type ConditioningKey = "crossattn" | "concat" | "hybrid";

/** `ldm.modules.diffusionmodules.openaimodel.UNetModel`. */
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
  /** The cross-attention context's width; absent for UNets without SpatialTransformers. */
  context_dim?: number;
  use_linear_in_transformer: boolean;
  /** SpatialTransformer blocks (SD, cin256) or openaimodel's AttentionBlock (the paper's unconditional models). */
  use_spatial_transformer: boolean;
  /** ResBlocks scale and shift their second GroupNorm's output by the timestep embedding instead of adding it. */
  use_scale_shift_norm: boolean;
  /** Down- and upsampling by ResBlocks (with a pooled / repeated skip) instead of strided / 3×3 convolutions. */
  resblock_updown: boolean;
  /** AttentionBlock's QKVAttention (q, k, v split before heads) instead of QKVAttentionLegacy. */
  use_new_attention_order: boolean;
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
  /** Encoder/Decoder attention blocks: "vanilla" (absent) or "none" (vq-f4-noattn: no mid attention). */
  attn_type?: "none";
}

/**
 * The first stage: `ldm.models.autoencoder.AutoencoderKL`, or with `n_embed` `VQModel` / `VQModelInterface`
 * (taming's VectorQuantizer2 with `n_embed` codes of width `embed_dim`).
 */
export interface VaeConfig {
  embed_dim: number;
  ddconfig: DDConfig;
  n_embed?: number;
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

/**
 * Cond stages other than the CLIP text encoders (whose configuration is `LdmConfig.text`), by their class in
 * `ldm.modules.encoders.modules` (or torch's `Identity`, and `__is_first_stage__`: the first stage's encoder).
 */
export type CondStageConfig =
  | {
      target: "ClassEmbedder";
      embed_dim: number;
      n_classes: number;
      key: string;
      /**
       * The class guidance's unconditional half uses: the last, where the YAML sets n_classes (cin256-v2's 1001,
       * 1000 = "no class"); absent with the constructor's 1000 ImageNet classes (cin-ldm-vq-f8), all of them real.
       */
      unconditional_class?: number;
    }
  | {
      target: "SpatialRescaler";
      n_stages: number;
      method: string;
      multiplier: number;
      in_channels: number;
      out_channels?: number;
      bias: boolean;
    }
  | {
      /**
       * The paper's text and layout encoder: x_transformer's TransformerWrapper(num_tokens = vocab_size,
       * max_seq_len, Encoder(dim = n_embed, depth = n_layer)) on bert-base-uncased ids (use_tokenizer) or on
       * ids given as they are (layout2img's object tokens).
       */
      target: "BERTEmbedder";
      n_embed: number;
      n_layer: number;
      vocab_size: number;
      max_seq_len: number;
      use_tokenizer: boolean;
    }
  | { target: "Identity" }
  | { target: "__is_first_stage__" };

/**
 * `ldm.models.diffusion.ddpm.LatentDiffusion`: a first stage (`vae`), a cond stage (`text` for the CLIP
 * embedders, else `cond_stage`; neither: unconditional), a conditioning key and a UNet. Stable Diffusion is the
 * configuration with a CLIP text encoder and cross-attention (ModelConfig).
 */
export interface LdmConfig {
  /** sd1 / sd2: the CLIP text encoder's family; ldm: any other cond stage (the paper's models). */
  family: Family | "ldm";
  /** A UNet that takes the masked image and mask too (SD's 9 input channels; LDM's big inpainting model). */
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
  /** Absent: SD's (crossattn, or hybrid for 9-channel inpainting UNets); null: unconditional. */
  conditioning_key?: ConditioningKey | null;
  /** The checkpoint's `scale_factor` buffer is the scale (scale_by_std: true), not the YAML's value. */
  scale_by_std?: boolean;
  /** The config's use_ema (DDPM's default true): sampling uses the `model_ema.*` UNet weights. */
  use_ema?: boolean;
  /** DDPM's loss_type for L_simple: absent = "l2" (the default); "l1" where the config says (inpainting_big). */
  loss_type?: "l1" | "l2";
  unet: UNetConfig;
  vae: VaeConfig;
  text?: ClipTextConfig;
  cond_stage?: CondStageConfig;
}

/** Stable Diffusion: a LatentDiffusion conditioned on a CLIP text encoder. */
export interface ModelConfig extends LdmConfig {
  family: Family;
  text: ClipTextConfig;
  unet: UNetConfig & { context_dim: number };
}

/** The conditioning key a configuration runs with (SD configurations leave it implicit). */
export function conditioningKey(config: LdmConfig): ConditioningKey | null {
  if (config.conditioning_key !== undefined) return config.conditioning_key;
  return config.inpainting ? "hybrid" : "crossattn";
}

/** Whether a configuration is Stable Diffusion's (a CLIP text encoder): what StableDiffusion and detection take. */
export function isTextToImage(config: LdmConfig): config is ModelConfig {
  return config.text !== undefined && config.family !== "ldm" && config.unet.context_dim !== undefined;
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
 * Reads the original-style YAML config of a Stable Diffusion model (a CLIP text encoder): ldmConfigFromYaml,
 * refusing the paper's other LatentDiffusion configurations (load those with LatentDiffusion).
 */
export function configFromYaml(text: string, origin = "config"): ModelConfig {
  const config = ldmConfigFromYaml(text, origin);
  if (!isTextToImage(config)) {
    throw new ConfigError(
      `${origin}: a ${describeCondStage(config)} LatentDiffusion, not a CLIP text-to-image (Stable Diffusion) model: load it with LatentDiffusion`,
    );
  }
  return config;
}

/** "unconditional", "ClassEmbedder-conditioned", … for messages. */
export function describeCondStage(config: LdmConfig): string {
  if (config.text) return `${config.family === "sd2" ? "FrozenOpenCLIPEmbedder" : "FrozenCLIPEmbedder"}-conditioned`;
  return config.cond_stage ? `${config.cond_stage.target}-conditioned` : "unconditional";
}

/** The LatentDiffusion classes (model.target) this project runs; the others train or sample differently. */
const MODEL_TARGETS = ["LatentDiffusion", "LatentInpaintDiffusion"];
/** first_stage_config.target → whether it quantizes (VQModelInterface is VQModel with the latent unquantized). */
const FIRST_STAGE_TARGETS: Record<string, "kl" | "vq"> = { AutoencoderKL: "kl", VQModelInterface: "vq", VQModel: "vq" };

/** What a cond stage contributes to the configuration. */
interface CondStageParts {
  family?: Family;
  text?: ClipTextConfig;
  cond_stage?: CondStageConfig;
}

/**
 * The cond stages, by the class name of cond_stage_config.target: each reads its params. A new cond stage is a
 * row here (and its module in @ldm/ldm's cond-stage table).
 */
const COND_STAGES: Record<string, (r: YamlReader, params: Dict, at: string) => CondStageParts> = {
  FrozenCLIPEmbedder: (r, params, at) => ({ family: "sd1", text: textFromYaml(r, params, at, "sd1") }),
  FrozenOpenCLIPEmbedder: (r, params, at) => ({ family: "sd2", text: textFromYaml(r, params, at, "sd2") }),
  ClassEmbedder: (r, params, at) => {
    const n_classes = r.optional(params, "n_classes", at, "integer");
    return {
      cond_stage: {
        target: "ClassEmbedder",
        embed_dim: r.required(params, "embed_dim", at, "integer"),
        n_classes: n_classes ?? 1000,
        key: r.optional(params, "key", at, "string") ?? "class",
        ...(n_classes === undefined ? {} : { unconditional_class: n_classes - 1 }),
      },
    };
  },
  SpatialRescaler: (r, params, at) => {
    const method = r.optional(params, "method", at, "string") ?? "bilinear";
    const multiplier = r.optional(params, "multiplier", at, "number") ?? 0.5;
    // Bilinear ×0.5 without align_corners averages 2×2 blocks: what the released configs use.
    if (method !== "bilinear" || multiplier !== 0.5) {
      throw new ConfigError(
        `${r.origin}: ${at}.method ${method} with multiplier ${multiplier} is not supported (bilinear, 0.5)`,
      );
    }
    return {
      cond_stage: {
        target: "SpatialRescaler",
        n_stages: r.optional(params, "n_stages", at, "integer") ?? 1,
        method,
        multiplier,
        in_channels: r.optional(params, "in_channels", at, "integer") ?? 3,
        out_channels: r.optional(params, "out_channels", at, "integer"),
        bias: r.optional(params, "bias", at, "boolean") ?? false,
      },
    };
  },
  BERTEmbedder: (r, params, at) => ({
    cond_stage: {
      target: "BERTEmbedder",
      n_embed: r.required(params, "n_embed", at, "integer"),
      n_layer: r.required(params, "n_layer", at, "integer"),
      vocab_size: r.optional(params, "vocab_size", at, "integer") ?? 30522,
      max_seq_len: r.optional(params, "max_seq_len", at, "integer") ?? 77,
      use_tokenizer: r.optional(params, "use_tokenizer", at, "boolean") ?? true,
    },
  }),
  Identity: () => ({ cond_stage: { target: "Identity" } }),
};

/** The class name of a `target:` (absent: `fallback`), refused by name when it is not one of `known`. */
function targetClass(r: YamlReader, dict: Dict, at: string, known: readonly string[], fallback: string): string {
  const target = r.optional(dict, "target", at, "string");
  if (target === undefined) return fallback;
  const name = target.split(".").pop() ?? target;
  if (!known.includes(name)) {
    throw new ConfigError(`${r.origin}: ${at}.target "${target}" is not supported (${known.join(", ")})`);
  }
  return name;
}

/**
 * Reads an original-style YAML config of any LatentDiffusion (CompVis/latent-diffusion, stable-diffusion,
 * Stability's SD 2). Every `target:` is checked; omitted parameters take the original constructors' defaults;
 * options that change the architecture in ways this project does not implement are rejected by name.
 */
export function ldmConfigFromYaml(text: string, origin = "config"): LdmConfig {
  const doc = parseConfigYaml(text, origin);
  const r = new YamlReader(origin);
  const top = r.dict(r.dict(doc, "a top-level mapping", true).model, "model", true);
  const alone = firstStageTarget(r, top);
  if (alone) {
    throw new ConfigError(
      `${origin}: model.target ${alone} is a first stage alone, not a LatentDiffusion: ldm info and ldm validate (vae.encode, vae.decode) read it, but it does not sample`,
    );
  }
  const model = r.dict(top.params, "model.params", true);
  targetClass(r, top, "model", MODEL_TARGETS, "LatentDiffusion");
  const unetConfig = r.dict(model.unet_config, "model.params.unet_config", true);
  targetClass(r, unetConfig, "model.params.unet_config", ["UNetModel"], "UNetModel");
  const unetParams = r.dict(unetConfig.params, "unet_config.params", true);
  const firstStageConfig = r.dict(model.first_stage_config, "model.params.first_stage_config", true);
  const firstStage = targetClass(
    r,
    firstStageConfig,
    "model.params.first_stage_config",
    Object.keys(FIRST_STAGE_TARGETS),
    "AutoencoderKL",
  );
  const firstStageParams = r.dict(firstStageConfig.params, "first_stage_config.params", true);

  const beta = r.optional(model, "beta_schedule", "model.params", "string") ?? "linear";
  if (beta !== "linear") throw new ConfigError(`${origin}: model.params.beta_schedule "${beta}" is not supported`);
  const parameterization = r.optional(model, "parameterization", "model.params", "string") ?? "eps";
  if (parameterization !== "eps" && parameterization !== "v") {
    throw new ConfigError(`${origin}: model.params.parameterization "${parameterization}" is not supported (eps, v)`);
  }
  const cond = condStageFromYaml(r, model.cond_stage_config);
  // LatentDiffusion.__init__: conditioning_key defaults by concat_mode (default true); unconditional wins. A
  // text encoder's context can only be attended to, so it defaults to crossattn.
  const concatMode =
    r.optional(model, "concat_mode", "model.params", "boolean") ?? (cond !== "unconditional" && !cond.text);
  const key = r.optional(model, "conditioning_key", "model.params", "string") ?? (concatMode ? "concat" : "crossattn");
  if (key !== "crossattn" && key !== "concat" && key !== "hybrid") {
    throw new ConfigError(
      `${origin}: model.params.conditioning_key "${key}" is not supported (crossattn, concat, hybrid)`,
    );
  }
  const conditioning_key = cond === "unconditional" ? null : key;
  const parts = cond === "unconditional" ? {} : cond;
  const unet = unetFromYaml(r, unetParams);
  const vae = vaeFromYaml(r, firstStageParams, FIRST_STAGE_TARGETS[firstStage] === "vq");
  const condStageKey = r.optional(model, "cond_stage_key", "model.params", "string");
  const inpainting = parts.text
    ? unet.in_channels === 9
    : parts.cond_stage?.target === "__is_first_stage__" && condStageKey === "masked_image";
  const scaleByStd = r.optional(model, "scale_by_std", "model.params", "boolean") ?? false;
  const lossType = r.optional(model, "loss_type", "model.params", "string") ?? "l2";
  if (lossType !== "l1" && lossType !== "l2") {
    throw new ConfigError(`${origin}: model.params.loss_type "${lossType}" is not supported (l1, l2)`);
  }
  const config: LdmConfig = {
    family: parts.family ?? "ldm",
    inpainting,
    parameterization,
    // DDPM's and LatentDiffusion's constructor defaults.
    scale_factor: r.optional(model, "scale_factor", "model.params", "number") ?? 1.0,
    linear_start: r.optional(model, "linear_start", "model.params", "number") ?? 1e-4,
    linear_end: r.optional(model, "linear_end", "model.params", "number") ?? 2e-2,
    timesteps: r.optional(model, "timesteps", "model.params", "integer") ?? 1000,
    unet,
    vae,
    ...(parts.text ? { text: parts.text } : {}),
    ...(parts.cond_stage ? { cond_stage: parts.cond_stage } : {}),
  };
  // Stable Diffusion's files keep their implicit key; SD checkpoints are pruned to the weights they sample with,
  // so their use_ema (false in every SD config) is not read.
  const imageSize = r.optional(model, "image_size", "model.params", "integer");
  if (imageSize !== undefined) config.image_size = imageSize;
  if (conditioning_key !== conditioningKey(config)) config.conditioning_key = conditioning_key;
  if (scaleByStd) config.scale_by_std = true;
  if (lossType === "l1") config.loss_type = "l1";
  if (!parts.text) config.use_ema = r.optional(model, "use_ema", "model.params", "boolean") ?? true;
  return config;
}

/**
 * A first stage saved alone (CompVis `models/first_stage_models/<name>/config.yaml`): `model.target` names
 * `ldm.models.autoencoder.VQModel` or `AutoencoderKL` (or `VQModelInterface`, the same weights), whose
 * checkpoint holds its keys without a prefix.
 */
export interface FirstStageOnlyConfig {
  /** The class name of model.target. */
  target: string;
  vae: VaeConfig;
}

/** The class name of a model.target that is a first stage, else undefined. */
function firstStageTarget(r: YamlReader, top: Dict): string | undefined {
  const name = r.optional(top, "target", "model", "string")?.split(".").pop();
  return name !== undefined && Object.hasOwn(FIRST_STAGE_TARGETS, name) ? name : undefined;
}

/** Reads a first stage's own YAML; undefined when its model.target is not a first stage (a LatentDiffusion's config). */
export function firstStageConfigFromYaml(text: string, origin = "config"): FirstStageOnlyConfig | undefined {
  const doc = parseConfigYaml(text, origin);
  const r = new YamlReader(origin);
  const top = r.dict(r.dict(doc, "a top-level mapping", true).model, "model", true);
  const target = firstStageTarget(r, top);
  if (!target) return undefined;
  const params = r.dict(top.params, "model.params", true);
  return { target, vae: vaeFromYaml(r, params, FIRST_STAGE_TARGETS[target] === "vq") };
}

function condStageFromYaml(r: YamlReader, value: unknown): CondStageParts | "unconditional" {
  const at = "model.params.cond_stage_config";
  if (value === "__is_unconditional__") return "unconditional";
  if (value === "__is_first_stage__") return { cond_stage: { target: "__is_first_stage__" } };
  if (typeof value === "string") {
    throw new ConfigError(`${r.origin}: ${at} "${value}" is not supported (__is_unconditional__, __is_first_stage__)`);
  }
  const cond = r.dict(value, at, true);
  r.required(cond, "target", at, "string");
  const name = targetClass(r, cond, at, Object.keys(COND_STAGES), "");
  return COND_STAGES[name](r, r.dict(cond.params, `${at}.params`) ?? {}, `${at}.params`);
}

function unetFromYaml(r: YamlReader, p: Dict): UNetConfig {
  const at = "unet_config.params";
  // Original constructor options this project does not implement, with the only value accepted (null: absent).
  const unsupported: [string, unknown][] = [
    ["num_classes", null],
    ["adm_in_channels", null],
    ["disable_self_attentions", null],
    ["num_attention_blocks", null],
    ["disable_middle_self_attn", false],
    ["n_embed", null],
    ["conv_resample", true],
    ["dims", 2],
    ["num_heads_upsample", -1],
  ];
  for (const [name, accepted] of unsupported) {
    const v = p[name];
    if (v !== undefined && v !== null && v !== accepted) {
      throw new ConfigError(`${r.origin}: ${at}.${name}: ${JSON.stringify(v)} is not supported`);
    }
  }
  const num_heads = r.optional(p, "num_heads", at, "integer") ?? -1;
  const num_head_channels = r.optional(p, "num_head_channels", at, "integer") ?? -1;
  if (num_heads === -1 && num_head_channels === -1) {
    throw new ConfigError(`${r.origin}: ${at} needs num_heads or num_head_channels`);
  }
  const use_spatial_transformer = r.optional(p, "use_spatial_transformer", at, "boolean") ?? false;
  const context_dim = r.optional(p, "context_dim", at, "integer");
  // UNetModel asserts both ways: a transformer needs a context width, and a context width needs transformers.
  if (use_spatial_transformer !== (context_dim !== undefined)) {
    throw new ConfigError(
      `${r.origin}: ${at}: ${use_spatial_transformer ? "use_spatial_transformer needs context_dim" : "context_dim needs use_spatial_transformer: true"}`,
    );
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
    ...(context_dim === undefined ? {} : { context_dim }),
    use_linear_in_transformer: r.optional(p, "use_linear_in_transformer", at, "boolean") ?? false,
    use_spatial_transformer,
    use_scale_shift_norm: r.optional(p, "use_scale_shift_norm", at, "boolean") ?? false,
    resblock_updown: r.optional(p, "resblock_updown", at, "boolean") ?? false,
    use_new_attention_order: r.optional(p, "use_new_attention_order", at, "boolean") ?? false,
  };
}

function vaeFromYaml(r: YamlReader, p: Dict, quantized: boolean): VaeConfig {
  const at = "first_stage_config.params.ddconfig";
  const dd = r.dict(p.ddconfig, at, true);
  const attnType = r.optional(dd, "attn_type", at, "string") ?? "vanilla";
  if (attnType !== "vanilla" && attnType !== "none") {
    throw new ConfigError(`${r.origin}: ${at}.attn_type "${attnType}" is not supported (vanilla, none)`);
  }
  for (const name of ["remap", "use_ema"]) {
    if (p[name] !== undefined && p[name] !== null && p[name] !== false) {
      throw new ConfigError(`${r.origin}: first_stage_config.params.${name} is not supported`);
    }
  }
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
      ...(attnType === "none" ? { attn_type: "none" as const } : {}),
    },
    ...(quantized ? { n_embed: r.required(p, "n_embed", "first_stage_config.params", "integer") } : {}),
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

function textFromYaml(r: YamlReader, params: Dict, at: string, family: Family): ClipTextConfig {
  const config: ClipTextConfig = { ...(family === "sd2" ? OPEN_CLIP_VIT_H_TEXT : CLIP_VIT_L_TEXT) };
  const layer = r.optional(params, "layer", at, "string");
  if (layer !== undefined) {
    if (layer !== "last" && layer !== "penultimate") {
      throw new ConfigError(`${r.origin}: ${at}.layer "${layer}" is not supported (last, penultimate)`);
    }
    config.layer = layer;
  }
  const tc = r.dict(params.text_config, `${at}.text_config`);
  if (tc) {
    const where = `${at}.text_config`;
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
  return config;
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
export const SD1_UNET: Readonly<ModelConfig["unet"]> = Object.freeze({
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
  use_spatial_transformer: true,
  use_scale_shift_norm: false,
  resblock_updown: false,
  use_new_attention_order: false,
});

/** v2-inference(-v).yaml's unet_config (SD 2.x). */
export const SD2_UNET: Readonly<ModelConfig["unet"]> = Object.freeze({
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
