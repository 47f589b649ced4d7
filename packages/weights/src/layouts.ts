import { COND_PREFIX, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX } from "./architecture.ts";
import type { Mapping, Transform } from "./source.ts";
import type { TensorFile } from "./tensor-file.ts";

/**
 * Key tables from stored layouts onto canonical keys (the original single-file names, with the text encoder
 * in Hugging Face CLIPTextModel naming under `cond_stage_model.transformer.text_model.`).
 */

export interface IgnoredKey {
  key: string;
  file: string;
  reason: string;
  /** A parameter of the original module that inference never reads (x-transformer's to_logits), not a buffer or a copy. */
  unusedParameter?: boolean;
}

export interface LayoutTable {
  table: Map<string, Mapping>;
  /** Stored tensors that are not model parameters (or not of a module we build), with why. */
  ignored: IgnoredKey[];
}

export class LayoutError extends Error {}

class TableBuilder {
  readonly table = new Map<string, Mapping>();
  readonly ignored: IgnoredKey[] = [];

  add(canonical: string, file: TensorFile, stored: string, transform: Transform = { kind: "none" }): void {
    const previous = this.table.get(canonical);
    if (previous) {
      throw new LayoutError(
        `${file.name}: "${stored}" and "${previous.stored}" (${previous.file.name}) both hold ${canonical}`,
      );
    }
    const entry = file.entry(stored);
    let shape = entry.shape;
    if (transform.kind === "rows") shape = [transform.end - transform.start, ...entry.shape.slice(1)];
    if (transform.kind === "reshape") shape = [...entry.shape, 1, 1];
    this.table.set(canonical, { file, stored, shape, transform });
  }

  ignore(file: TensorFile, key: string, reason: string, unusedParameter = false): void {
    this.ignored.push({ key, file: file.name, reason, ...(unusedParameter ? { unusedParameter } : {}) });
  }

  result(): LayoutTable {
    return { table: this.table, ignored: this.ignored };
  }
}

// ---- original single file ------------------------------------------------------------------------------

export type TextNaming = "hf" | "hf-legacy" | "openclip" | "none";

export interface SingleFileLayout extends LayoutTable {
  textNaming: TextNaming;
  /** Top-level buffers of LatentDiffusion (betas, alphas_cumprod, …). */
  scheduleKeys: string[];
  /** Whether the file carries an EMA copy of the UNet (`model_ema.*`, full training checkpoints). */
  hasEma: boolean;
}

export interface SingleFileOptions {
  /** Take the UNet from the EMA copy (`model_ema.*`) of a full checkpoint instead of `model.diffusion_model.*`. */
  ema?: boolean;
}

const OPEN_CLIP = "cond_stage_model.model.";
const HF_TEXT = "cond_stage_model.transformer.";
const EMA = "model_ema.";
/** A first stage saved alone (models/first_stage_models/*: VQModel, AutoencoderKL) stores its keys unprefixed. */
const FIRST_STAGE_ALONE = /^(encoder|decoder|quant_conv|post_quant_conv|quantize)\./;
/** The paper's BERTEmbedder stores its x-transformer under the same `cond_stage_model.transformer.` as SD1's CLIP. */
const X_TRANSFORMER = /^cond_stage_model\.transformer\.(token_emb|pos_emb|attn_layers|norm|to_logits)\./;

/** OpenCLIP resblock parameter → HF CLIP encoder-layer parameter (besides the fused in_proj). */
const OPEN_CLIP_LAYER: [RegExp, string][] = [
  [/^ln_1\.(weight|bias)$/, "layer_norm1.$1"],
  [/^ln_2\.(weight|bias)$/, "layer_norm2.$1"],
  [/^attn\.out_proj\.(weight|bias)$/, "self_attn.out_proj.$1"],
  [/^mlp\.c_fc\.(weight|bias)$/, "mlp.fc1.$1"],
  [/^mlp\.c_proj\.(weight|bias)$/, "mlp.fc2.$1"],
];

const OPEN_CLIP_TOP: Record<string, string> = {
  "token_embedding.weight": "embeddings.token_embedding.weight",
  positional_embedding: "embeddings.position_embedding.weight",
  "ln_final.weight": "final_layer_norm.weight",
  "ln_final.bias": "final_layer_norm.bias",
};

export function singleFileLayout(file: TensorFile, options: SingleFileOptions = {}): SingleFileLayout {
  const b = new TableBuilder();
  const scheduleKeys: string[] = [];
  const emaKeys: string[] = [];
  let textNaming: TextNaming = "none";
  for (const key of file.tensors.keys()) {
    if (key.startsWith(UNET_PREFIX) || key.startsWith(VAE_PREFIX)) b.add(key, file, key);
    else if (X_TRANSFORMER.test(key)) {
      if (key.startsWith(`${HF_TEXT}to_logits.`))
        b.ignore(file, key, "the x-transformer's token logits, unused for embeddings", true);
      else b.add(key, file, key);
    } else if (key.startsWith(HF_TEXT)) {
      const rest = key.slice(HF_TEXT.length);
      const legacy = !rest.startsWith("text_model.");
      textNaming = legacy ? "hf-legacy" : "hf";
      if (rest.endsWith("embeddings.position_ids")) b.ignore(file, key, "position ids buffer (always 0..76)");
      else b.add(TEXT_PREFIX + (legacy ? rest : rest.slice("text_model.".length)), file, key);
    } else if (key.startsWith(OPEN_CLIP)) {
      textNaming = "openclip";
      addOpenClip(b, file, key);
    } else if (key.startsWith(COND_PREFIX)) b.add(key, file, key);
    else if (key.startsWith(EMA)) emaKeys.push(key);
    else if (FIRST_STAGE_ALONE.test(key)) b.add(VAE_PREFIX + key, file, key);
    else if (key.startsWith("loss.")) b.ignore(file, key, "the first stage's training loss (LPIPS, discriminator)");
    else if (!key.includes(".")) scheduleKeys.push(key);
    else b.ignore(file, key, "not part of the UNet, VAE or text encoder");
  }
  if (options.ema) useEma(b, file, emaKeys);
  else for (const key of emaKeys) b.ignore(file, key, "EMA copy of the UNet (load with ema: true to use it)");
  return {
    ...b.result(),
    textNaming,
    scheduleKeys,
    hasEma: emaKeys.some((k) => k.startsWith(`${EMA}diffusion_model`)),
  };
}

function addOpenClip(b: TableBuilder, file: TensorFile, key: string): void {
  const target = openClipTarget(key.slice(OPEN_CLIP.length), file.entry(key).shape[0]);
  if (typeof target === "string") b.ignore(file, key, target);
  else for (const [canonical, transform] of target) b.add(TEXT_PREFIX + canonical, file, key, transform);
}

/** Where an OpenCLIP text parameter goes (canonical names under the text prefix), or why it is ignored. */
function openClipTarget(rest: string, rows: number): [string, Transform][] | string {
  if (Object.hasOwn(OPEN_CLIP_TOP, rest)) return [[OPEN_CLIP_TOP[rest], { kind: "none" }]];
  if (rest === "text_projection" || rest === "logit_scale") return "CLIP's contrastive head, not used for conditioning";
  const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(rest);
  if (!m) return "not part of OpenCLIP's text transformer";
  const layer = `encoder.layers.${m[1]}.`;
  const fused = /^attn\.in_proj_(weight|bias)$/.exec(m[2]);
  if (fused) {
    // nn.MultiheadAttention stacks the q, k and v projections along the rows of one matrix.
    if (rows % 3) throw new LayoutError(`cond_stage_model.model.${rest} has ${rows} rows, not three equal q/k/v parts`);
    const d = rows / 3;
    return ["q_proj", "k_proj", "v_proj"].map((proj, i) => [
      `${layer}self_attn.${proj}.${fused[1]}`,
      { kind: "rows", start: i * d, end: (i + 1) * d },
    ]);
  }
  const rule = OPEN_CLIP_LAYER.find(([pattern]) => pattern.test(m[2]));
  return rule ? [[layer + m[2].replace(...rule), { kind: "none" }]] : "not part of OpenCLIP's text transformer";
}

/** LitEma stores `model.diffusion_model.a.b` as buffer `model_ema.diffusion_modelab` (dots removed). */
export function emaName(unetKey: string): string {
  return EMA + unetKey.slice("model.".length).replaceAll(".", "");
}

function useEma(b: TableBuilder, file: TensorFile, emaKeys: string[]): void {
  const unetKeys = [...b.table.keys()].filter((k) => k.startsWith(UNET_PREFIX));
  const available = new Set(emaKeys);
  const absent = unetKeys.filter((k) => !available.has(emaName(k)));
  if (absent.length) {
    throw new LayoutError(
      `${file.name}: no EMA weights for ${absent.length} of ${unetKeys.length} UNet parameters (first: ${emaName(absent[0])})`,
    );
  }
  const used = new Set<string>();
  for (const key of unetKeys) {
    b.table.delete(key);
    b.add(key, file, emaName(key));
    used.add(emaName(key));
  }
  for (const key of emaKeys) if (!used.has(key)) b.ignore(file, key, "EMA bookkeeping");
}

// ---- diffusers folder -------------------------------------------------------------------------------------

/** `prefix.rest`, or undefined when the inner part did not map. */
function under(prefix: string, rest: string | undefined): string | undefined {
  return rest === undefined ? undefined : `${prefix}.${rest}`;
}

/** A parameter key split at its last dot: module path and parameter name. */
function splitParam(key: string): [string, string] {
  const dot = key.lastIndexOf(".");
  return [key.slice(0, dot), key.slice(dot + 1)];
}

/** A diffusers component's weights: one file, or the shards of a `*.safetensors.index.json`. */
export interface ComponentFiles {
  files: TensorFile[];
}

export interface DiffusersComponents {
  unet?: ComponentFiles;
  vae?: ComponentFiles;
  text_encoder?: ComponentFiles;
}

export function diffusersLayout(components: DiffusersComponents): LayoutTable {
  const b = new TableBuilder();
  if (components.unet) addDiffusersUnet(b, keysOf(components.unet));
  if (components.vae) addDiffusersVae(b, keysOf(components.vae));
  if (components.text_encoder) {
    for (const [key, file] of keysOf(components.text_encoder)) {
      if (key.endsWith("embeddings.position_ids")) b.ignore(file, key, "position ids buffer (always 0..76)");
      else if (key.startsWith("text_model.")) b.add(TEXT_PREFIX + key.slice("text_model.".length), file, key);
      else b.ignore(file, key, "not part of CLIPTextModel");
    }
  }
  return b.result();
}

function keysOf(c: ComponentFiles): [string, TensorFile][] {
  return c.files.flatMap((f) => [...f.tensors.keys()].map((k): [string, TensorFile] => [k, f]));
}

const UNET_RESNET: Record<string, string> = {
  norm1: "in_layers.0",
  conv1: "in_layers.2",
  norm2: "out_layers.0",
  conv2: "out_layers.3",
  time_emb_proj: "emb_layers.1",
  conv_shortcut: "skip_connection",
};

const UNET_TOP: Record<string, string> = {
  "time_embedding.linear_1": "time_embed.0",
  "time_embedding.linear_2": "time_embed.2",
  conv_in: "input_blocks.0.0",
  conv_norm_out: "out.0",
  conv_out: "out.2",
};

/** How a UNet's blocks are numbered in the original layout: what the diffusers names do not say. */
export interface UnetNumbering {
  /** Residual blocks per level (num_res_blocks). */
  numRes: number;
  /** Whether diffusers' up block `block` (numbered from the bottom level) has attentions. */
  upHasAttention: (block: number) => boolean;
}

/**
 * diffusers UNet2DConditionModel → UNetModel, for one parameter key (or a module path with a dummy parameter
 * name). With R residual blocks per level, down block i's resnet/attention j is input block (R+1)·i + j + 1
 * (slots .0/.1), its downsampler input block (R+1)·(i+1); up block i's j-th is output block (R+1)·i + j, its
 * upsampler the last of those, after the attention if the level has one. Undefined: not a UNet key.
 */
export function diffusersUnetKey(key: string, { numRes, upHasAttention }: UnetNumbering): string | undefined {
  const resnet = (rest: string) => {
    const [module, param] = splitParam(rest);
    return Object.hasOwn(UNET_RESNET, module) ? `${UNET_RESNET[module]}.${param}` : undefined;
  };
  const [module, param] = splitParam(key);
  if (Object.hasOwn(UNET_TOP, module)) return `${UNET_TOP[module]}.${param}`;
  let m = /^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(key);
  if (m) {
    const block = `input_blocks.${(numRes + 1) * +m[1] + +m[3] + 1}`;
    return m[2] === "resnets" ? under(`${block}.0`, resnet(m[4])) : `${block}.1.${m[4]}`;
  }
  if ((m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/.exec(key))) {
    return `input_blocks.${(numRes + 1) * (+m[1] + 1)}.0.op.${m[2]}`;
  }
  if ((m = /^mid_block\.resnets\.(\d+)\.(.+)$/.exec(key))) return under(`middle_block.${2 * +m[1]}`, resnet(m[2]));
  if ((m = /^mid_block\.attentions\.0\.(.+)$/.exec(key))) return `middle_block.1.${m[1]}`;
  if ((m = /^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(key))) {
    const block = `output_blocks.${(numRes + 1) * +m[1] + +m[3]}`;
    return m[2] === "resnets" ? under(`${block}.0`, resnet(m[4])) : `${block}.1.${m[4]}`;
  }
  if ((m = /^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$/.exec(key))) {
    const slot = upHasAttention(+m[1]) ? 2 : 1;
    return `output_blocks.${(numRes + 1) * +m[1] + numRes}.${slot}.conv.${m[2]}`;
  }
  return undefined;
}

function addDiffusersUnet(b: TableBuilder, keys: [string, TensorFile][]): void {
  const names = keys.map(([k]) => k);
  const numbering: UnetNumbering = {
    numRes: new Set(names.map((k) => /^down_blocks\.0\.resnets\.(\d+)\./.exec(k)?.[1]).filter(Boolean)).size,
    upHasAttention: (i) => names.some((k) => k.startsWith(`up_blocks.${i}.attentions.`)),
  };
  for (const [key, file] of keys) {
    const name = diffusersUnetKey(key, numbering);
    if (name) b.add(UNET_PREFIX + name, file, key);
    else b.ignore(file, key, "not a UNet2DConditionModel parameter this layout knows");
  }
}

const VAE_ATTENTION: Record<string, string> = {
  group_norm: "norm",
  query: "q",
  key: "k",
  value: "v",
  proj_attn: "proj_out",
  to_q: "q",
  to_k: "k",
  to_v: "v",
  "to_out.0": "proj_out",
};

/**
 * diffusers AutoencoderKL → the original Encoder/Decoder. Decoder up blocks are numbered from the bottom in
 * diffusers and from the top in the original. Attention projections are linear in diffusers ([C, C]) and
 * 1×1 convolutions in the original ([C, C, 1, 1]): same bytes, reshaped.
 */
function addDiffusersVae(b: TableBuilder, keys: [string, TensorFile][]): void {
  const names = keys.map(([k]) => k);
  const levels = new Set(names.map((k) => /^decoder\.up_blocks\.(\d+)\./.exec(k)?.[1]).filter(Boolean)).size;
  const resnet = (rest: string) => rest.replace(/^conv_shortcut\./, "nin_shortcut.");
  const attention = (rest: string) => {
    const [module, param] = splitParam(rest);
    return Object.hasOwn(VAE_ATTENTION, module) ? `${VAE_ATTENTION[module]}.${param}` : undefined;
  };
  const rename = (key: string): string | undefined => {
    let m = /^(encoder|decoder)\.conv_norm_out\.(.+)$/.exec(key);
    if (m) return `${m[1]}.norm_out.${m[2]}`;
    if (/^(encoder|decoder)\.conv_(in|out)\.|^(post_)?quant_conv\./.test(key)) return key;
    if ((m = /^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$/.exec(key))) {
      return `${m[1]}.mid.block_${+m[2] + 1}.${resnet(m[3])}`;
    }
    if ((m = /^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$/.exec(key))) {
      return under(`${m[1]}.mid.attn_1`, attention(m[2]));
    }
    if ((m = /^encoder\.down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(key))) {
      const inner = m[2] === "resnets" ? `block.${m[3]}.${resnet(m[4])}` : under(`attn.${m[3]}`, attention(m[4]));
      return under(`encoder.down.${m[1]}`, inner);
    }
    if ((m = /^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$/.exec(key))) {
      return `encoder.down.${m[1]}.downsample.conv.${m[2]}`;
    }
    if ((m = /^decoder\.up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(key))) {
      const inner = m[2] === "resnets" ? `block.${m[3]}.${resnet(m[4])}` : under(`attn.${m[3]}`, attention(m[4]));
      return under(`decoder.up.${levels - 1 - +m[1]}`, inner);
    }
    if ((m = /^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$/.exec(key))) {
      return `decoder.up.${levels - 1 - +m[1]}.upsample.conv.${m[2]}`;
    }
    return undefined;
  };
  for (const [key, file] of keys) {
    const name = rename(key);
    if (!name) {
      b.ignore(file, key, "not an AutoencoderKL parameter this layout knows");
      continue;
    }
    const isLinearAttention =
      /\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$/.test(name) && file.entry(key).shape.length === 2;
    b.add(VAE_PREFIX + name, file, key, isLinearAttention ? { kind: "reshape" } : { kind: "none" });
  }
}
