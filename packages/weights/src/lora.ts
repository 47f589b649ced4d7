import { formatShape } from "@ldm/tensor";
import { modelParamShapes, TEXT_PREFIX, UNET_PREFIX } from "./architecture.ts";
import type { LdmConfig } from "./config.ts";
import { decodeFloats, isFloatStoredDType } from "./dtype.ts";
import { diffusersUnetKey, type UnetNumbering } from "./layouts.ts";
import type { TensorFile } from "./tensor-file.ts";

/**
 * LoRA files as AUTOMATIC1111 reads them: kohya's names (`lora_unet_…`, `lora_te_…`/`lora_te1_…`, the diffusers
 * module path with dots as underscores, `.lora_down.weight`, `.lora_up.weight`, `.alpha`), diffusers/PEFT names
 * (`unet.…`/`text_encoder.…`, `.lora_A.weight`, `.lora_B.weight`), and LoCon convolutions (down [r, in, k, k],
 * up [out, r, 1, 1]). Each module is resolved to the canonical key of the weight it changes; the delta is
 * (alpha / rank) · up · down, with alpha = rank when the file has none.
 */

export class LoraError extends Error {}

export interface LoraTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/** A LoRA file read into memory (LoRA files are small next to the model they change). */
export interface LoraTensors {
  /** Shown in errors: a path or a name. */
  readonly origin: string;
  readonly tensors: ReadonlyMap<string, LoraTensor>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Reads every tensor of a LoRA file as float32. */
export async function readLoraTensors(file: TensorFile): Promise<LoraTensors> {
  const tensors = new Map<string, LoraTensor>();
  for (const [name, entry] of file.tensors) {
    if (!isFloatStoredDType(entry.dtype)) {
      throw new LoraError(`${file.name}: tensor ${name} is ${entry.dtype}; a LoRA's tensors are floating point`);
    }
    const values = decodeFloats(entry.dtype, await file.readBytes(name), entry.size);
    tensors.set(name, { shape: entry.shape, data: Float32Array.from(values) });
  }
  return { origin: file.name, tensors, metadata: file.metadata };
}

/** One module of a LoRA, resolved: the weight it changes and its two factors as matrices. */
export interface LoraLayer {
  /** The module's name in the file. */
  module: string;
  /** The canonical key of the weight it changes. */
  key: string;
  /** Which strength applies: A1111's unet multiplier or its text-encoder multiplier. */
  component: "unet" | "text";
  /** up as [out, rank]. */
  up: Float32Array;
  /** down as [rank, in·kh·kw]. */
  down: Float32Array;
  rank: number;
  /** alpha / rank. */
  scale: number;
  /**
   * The target weight's shape. An inpainting UNet's 9-channel conv_in takes an SD LoRA's 4-channel delta as its
   * first 4 input channels (A1111 pads the delta with zeros for the mask and masked-image channels).
   */
  shape: readonly number[];
}

/** The UNet's input convolution, whose 9 inpainting channels an ordinary LoRA's 4 are the first of. */
const CONV_IN = `${UNET_PREFIX}input_blocks.0.0.weight`;

/** Which factor of a module a key holds, by its suffix. */
const PARTS: readonly [string, "down" | "up" | "alpha"][] = [
  [".lora_down.weight", "down"],
  [".lora_up.weight", "up"],
  [".lora_A.weight", "down"],
  [".lora_B.weight", "up"],
  [".alpha", "alpha"],
];

/** Network kinds A1111 also reads, which we do not: named in the error instead of "matches no layer". */
const UNSUPPORTED: readonly [RegExp, string][] = [
  [/\.lora_mid\.weight$/, "LoCon's Tucker decomposition (lora_mid) is not supported"],
  [/\.hada_(w|t)[12]_?[ab]?$/, "LyCORIS LoHa (hada_*) is not supported"],
  [/\.lokr_/, "LyCORIS LoKr (lokr_*) is not supported"],
  [/\.dora_scale$/, "DoRA (dora_scale) is not supported"],
  [/\.(diff|diff_b|on_input)$/, "full-weight and IA³ networks are not supported"],
];

/** Keys and metadata only SDXL LoRAs have (its second text encoder, its sgm-named UNet, its added embeddings). */
const SDXL_KEYS = [
  /^lora_te2_/,
  /^text_encoder_2\./,
  /^conditioner\./,
  /^lora_unet_label_emb_/,
  /^(unet\.)?add_embedding\./,
];

/**
 * The module names of the diffusers UNet and Hugging Face's CLIPTextModel that hold an underscore: kohya's
 * names join every path segment with underscores, so these are read as one segment and every other underscore
 * as a dot.
 */
const COMPOUND_SEGMENTS = [
  "down_blocks",
  "up_blocks",
  "mid_block",
  "transformer_blocks",
  "proj_in",
  "proj_out",
  "to_q",
  "to_k",
  "to_v",
  "to_out",
  "conv_shortcut",
  "time_emb_proj",
  "time_embedding",
  "linear_1",
  "linear_2",
  "conv_in",
  "conv_out",
  "conv_norm_out",
  "text_model",
  "self_attn",
  "q_proj",
  "k_proj",
  "v_proj",
  "out_proj",
  "final_layer_norm",
  "layer_norm1",
  "layer_norm2",
  "token_embedding",
  "position_embedding",
];
const SEGMENT = new RegExp(
  `^(?:(${[...COMPOUND_SEGMENTS].sort((a, b) => b.length - a.length).join("|")})(?=_|$)|([^_]+))_?`,
);

/** `down_blocks_0_attentions_0_proj_in` → `down_blocks.0.attentions.0.proj_in`. */
export function dottedModulePath(kohya: string): string {
  const segments: string[] = [];
  for (let rest = kohya; rest; ) {
    const m = SEGMENT.exec(rest);
    if (!m) return kohya;
    segments.push(m[1] ?? m[2]);
    rest = rest.slice(m[0].length);
  }
  return segments.join(".");
}

/** Where a module of the file is in the model: a canonical weight key, or undefined. */
type Resolver = (module: string) => { key: string; component: "unet" | "text" } | undefined;

function resolverFor(config: LdmConfig, shapes: ReadonlyMap<string, readonly number[]>): Resolver {
  const { unet } = config;
  const levels = unet.channel_mult.length;
  const numbering: UnetNumbering = {
    numRes: unet.num_res_blocks,
    upHasAttention: (block) => unet.attention_resolutions.includes(2 ** (levels - 1 - block)),
  };
  // A1111's network_layer_mapping: the model's own module paths with dots as underscores (LoRAs in the
  // original layout's names).
  const original = new Map<string, string>();
  for (const key of shapes.keys()) {
    if (key.startsWith(UNET_PREFIX) && key.endsWith(".weight")) {
      original.set(key.slice(UNET_PREFIX.length, -".weight".length).replaceAll(".", "_"), key);
    }
  }
  const unetKey = (diffusersModule: string) => {
    const name = diffusersUnetKey(`${diffusersModule}.weight`, numbering);
    return name === undefined ? undefined : { key: UNET_PREFIX + name, component: "unet" as const };
  };
  const textKey = (hfModule: string) =>
    hfModule.startsWith("text_model.")
      ? { key: `${TEXT_PREFIX}${hfModule.slice("text_model.".length)}.weight`, component: "text" as const }
      : undefined;
  return (module) => {
    let m = /^lora_unet_(.+)$/.exec(module);
    if (m) {
      const key = original.get(m[1]);
      return key ? { key, component: "unet" } : unetKey(dottedModulePath(m[1]));
    }
    if ((m = /^lora_te1?_(.+)$/.exec(module))) return textKey(dottedModulePath(m[1]));
    if ((m = /^unet\.(.+)$/.exec(module))) return unetKey(m[1]);
    if ((m = /^text_encoder\.(.+)$/.exec(module))) return textKey(m[1]);
    return textKey(module) ?? unetKey(module);
  };
}

/** The model a config describes, as errors name it. */
function familyName(config: LdmConfig): string {
  return config.family === "sd2" ? "SD 2.x" : config.family === "sd1" ? "SD 1.x" : "latent diffusion";
}

/**
 * Resolves every module of a LoRA against the model of `config`. Throws one LoraError naming every key that
 * matches no layer, a shape that does not fit (the key and both shapes), or an SDXL LoRA by its marker.
 */
export function resolveLora(lora: LoraTensors, config: LdmConfig): LoraLayer[] {
  const { origin } = lora;
  const family = familyName(config);
  const sdxlKey = [...lora.tensors.keys()].find((k) => SDXL_KEYS.some((p) => p.test(k)));
  const base = lora.metadata.ss_base_model_version ?? lora.metadata["modelspec.architecture"] ?? "";
  if (sdxlKey || /^(sdxl|stable-diffusion-xl)/.test(base)) {
    throw new LoraError(
      `${origin} is an SDXL LoRA (${sdxlKey ? `key ${sdxlKey}` : `metadata "${base}"`}); this model is ${family}`,
    );
  }
  const modules = new Map<string, Partial<Record<"down" | "up" | "alpha", LoraTensor>>>();
  const problems: string[] = [];
  for (const [key, tensor] of lora.tensors) {
    const part = PARTS.find(([suffix]) => key.endsWith(suffix));
    if (!part) {
      const reason = UNSUPPORTED.find(([p]) => p.test(key))?.[1] ?? "not a LoRA factor (.lora_down/.lora_up/.alpha)";
      problems.push(`  ${key}: ${reason}`);
      continue;
    }
    const module = key.slice(0, -part[0].length);
    modules.set(module, { ...modules.get(module), [part[1]]: tensor });
  }
  const shapes = modelParamShapes(config);
  const resolve = resolverFor(config, shapes);
  const layers: LoraLayer[] = [];
  for (const [module, { down, up, alpha }] of modules) {
    if (!down || !up) {
      problems.push(`  ${module}: has ${down ? "a down" : "an up"} factor but no ${down ? "up" : "down"} factor`);
      continue;
    }
    const target = resolve(module);
    const shape = target && shapes.get(target.key);
    if (!target || !shape) {
      problems.push(`  ${module}: matches no layer of this ${family} model`);
      continue;
    }
    const padded = target.key === CONV_IN && shape[1] === 9 && down.shape[1] === 4;
    const fit = fitFactors(up.shape, down.shape, padded ? [shape[0], 4, ...shape.slice(2)] : shape);
    if (fit) {
      problems.push(
        `  ${module}: up ${formatShape(up.shape)} · down ${formatShape(down.shape)} does not fit ${target.key} ${formatShape(shape)} (${fit})`,
      );
      continue;
    }
    const rank = down.shape[0];
    if (alpha && alpha.data.length !== 1) {
      problems.push(`  ${module}.alpha: shape ${formatShape(alpha.shape)}, not a scalar`);
      continue;
    }
    layers.push({
      module,
      key: target.key,
      component: target.component,
      up: up.data,
      down: down.data,
      rank,
      scale: (alpha ? alpha.data[0] : rank) / rank,
      shape,
    });
  }
  if (problems.length) {
    throw new LoraError(
      `${origin} does not fit this ${family} model (${problems.length} keys):\n${problems.join("\n")}`,
    );
  }
  return layers;
}

/**
 * Why up [out, r, 1, 1?] · down [r, in, kh?, kw?] cannot be a delta of a weight [out, in, kh?, kw?], or undefined
 * when it can (a linear factor fits a 1×1 convolution and the other way round, as kohya stores them either way).
 */
function fitFactors(up: readonly number[], down: readonly number[], weight: readonly number[]): string | undefined {
  const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
  if (up.length < 2 || down.length < 2) return "factors must have 2 or 4 dimensions";
  if (size(up.slice(2)) !== 1) return "up must be [out, rank] or [out, rank, 1, 1]";
  if (up[1] !== down[0]) return `up has rank ${up[1]}, down ${down[0]}`;
  if (up[0] !== weight[0]) return `${up[0]} outputs, the layer has ${weight[0]}`;
  if (down[1] !== weight[1]) return `${down[1]} inputs, the layer has ${weight[1]}`;
  if (size(down.slice(2)) !== size(weight.slice(2))) {
    return `kernel ${formatShape(down.slice(2))}, the layer's ${formatShape(weight.slice(2))}`;
  }
  return undefined;
}
