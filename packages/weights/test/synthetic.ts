import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Device, f32ToF16Bits } from "@ldm/tensor";
import { afterAll, beforeAll } from "vitest";
import {
  type ModelConfig,
  modelParamShapes,
  type StoredDType,
  standardConfig,
  TEXT_PREFIX,
  type TensorToWrite,
  UNET_PREFIX,
  VAE_PREFIX,
} from "../src/index.ts";
import { writeSafetensors } from "../src/node.ts";

export { type TorchCheckpointToWrite, writeTorchCheckpoint } from "./torch-writer.ts";

/**
 * Small synthetic checkpoints in every layout, with deterministic values per canonical key, so a test can load
 * them and check each canonical tensor against the values it was made from. The renamings here are written
 * from the upstream conversion scripts' tables (diffusers' convert_diffusers_to_original_stable_diffusion.py,
 * OpenCLIP's module names), independently of src/layouts.ts.
 */

/** A small model with SD 1.x structure: four levels, two residual blocks, attention on the top three. */
export function tinyConfig(overrides: Partial<ModelConfig> = {}): ModelConfig {
  const standard = standardConfig("sd1");
  return {
    ...standard,
    unet: { ...standard.unet, model_channels: 8, channel_mult: [1, 2, 2, 2], context_dim: 128 },
    vae: { ...standard.vae, ddconfig: { ...standard.vae.ddconfig, ch: 8, ch_mult: [1, 1, 2, 2] } },
    text: {
      ...standard.text,
      vocab_size: 50,
      hidden_size: 128,
      intermediate_size: 40,
      num_hidden_layers: 3,
      num_attention_heads: 2,
    },
    ...overrides,
  };
}

/**
 * For a test file that writes checkpoints and loads them: a temporary folder, removed after its tests, and a
 * Device, created before them (`device()` is valid inside tests only).
 */
export function checkpointTestEnvironment(prefix: string): { dir: string; device: () => Device } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  let device: Device | undefined;
  beforeAll(async () => {
    device = await Device.create();
  });
  afterAll(() => {
    device?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir,
    device: () => {
      if (!device) throw new Error("checkpointTestEnvironment: the Device exists only while tests run");
      return device;
    },
  };
}

/** xorshift32: a deterministic stream of 32-bit values from a seed, for reproducible test data. */
export function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>>= 0);
  };
}

function hash(text: string): number {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Deterministic values for a canonical key: multiples of 1/16 in [-8, 8), exact in f16 and bf16 alike. */
export function valuesFor(key: string, size: number): Float32Array {
  const next = xorshift(hash(key));
  return Float32Array.from({ length: size }, () => ((next() >>> 24) - 128) / 16);
}

export function encode(values: Float32Array, dtype: StoredDType): ArrayBufferView {
  if (dtype === "F32") return values;
  if (dtype === "F64") return Float64Array.from(values);
  if (dtype === "F16") return Uint16Array.from(values, (v) => f32ToF16Bits(v));
  if (dtype === "BF16") return Uint16Array.from(new Uint32Array(values.buffer), (bits) => bits >>> 16);
  throw new Error(`no encoding for ${dtype}`);
}

type Renamed = [storedKey: string, shape: number[], values: Float32Array];

function tensorsOf(items: Renamed[], dtype: StoredDType): Record<string, TensorToWrite> {
  return Object.fromEntries(items.map(([k, shape, v]) => [k, { dtype, shape, data: encode(v, dtype) }]));
}

export function canonicalTensors(config: ModelConfig): Renamed[] {
  return [...modelParamShapes(config)].map(([key, shape]) => [key, shape, valuesFor(key, size(shape))]);
}

function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** LatentDiffusion's linear schedule buffers: betas = linspace(√start, √end, T)², and ᾱ. */
export function scheduleBuffers(config: ModelConfig): Record<string, Float32Array> {
  const t = config.timesteps;
  const [a, b] = [Math.sqrt(config.linear_start), Math.sqrt(config.linear_end)];
  const betas = Float32Array.from({ length: t }, (_, i) => (a + ((b - a) * i) / (t - 1)) ** 2);
  let product = 1;
  const alphasCumprod = betas.map((beta) => (product *= 1 - beta));
  return { betas, alphas_cumprod: alphasCumprod };
}

export interface SingleFileOptions {
  dtype?: StoredDType;
  /** How to store the text encoder: HF with `text_model.` (default), HF without it, or OpenCLIP. */
  text?: "hf" | "hf-legacy" | "openclip";
  schedule?: boolean;
  /** Also store an EMA copy of the UNet whose values are the canonical ones plus 1. */
  ema?: boolean;
}

/** An original-style single file. */
export async function writeSingleFile(path: string, config: ModelConfig, options: SingleFileOptions = {}) {
  const dtype = options.dtype ?? "F16";
  const items: Renamed[] = [];
  const text: Renamed[] = [];
  for (const item of canonicalTensors(config)) (item[0].startsWith(TEXT_PREFIX) ? text : items).push(item);
  const tensors = tensorsOf(items, dtype);
  if (options.text === "openclip") Object.assign(tensors, tensorsOf(toOpenClip(text), dtype));
  else {
    const prefix = options.text === "hf-legacy" ? "cond_stage_model.transformer." : TEXT_PREFIX;
    Object.assign(
      tensors,
      tensorsOf(
        text.map(([k, s, v]) => [prefix + k.slice(TEXT_PREFIX.length), s, v]),
        dtype,
      ),
    );
    tensors[`${prefix}embeddings.position_ids`] = {
      dtype: "I64",
      shape: [1, config.text.max_position_embeddings],
      data: BigInt64Array.from({ length: config.text.max_position_embeddings }, (_, i) => BigInt(i)),
    };
  }
  if (options.schedule) {
    for (const [k, v] of Object.entries(scheduleBuffers(config)))
      tensors[k] = { dtype: "F32", shape: [v.length], data: v };
  }
  if (options.ema) {
    for (const [k, shape, v] of items.filter(([k]) => k.startsWith(UNET_PREFIX))) {
      // LitEma's buffer names: the parameter name under the model, dots removed.
      tensors[`model_ema.${k.slice("model.".length).replaceAll(".", "")}`] = {
        dtype,
        shape,
        data: encode(
          v.map((x) => x + 1),
          dtype,
        ),
      };
    }
    tensors["model_ema.decay"] = { dtype: "F32", shape: [], data: Float32Array.of(0.9999) };
    tensors["model_ema.num_updates"] = { dtype: "I32", shape: [], data: Int32Array.of(1000) };
  }
  await writeSafetensors(path, tensors, { format: "pt" });
}

/** HF CLIPTextModel → OpenCLIP text transformer (as stored under `cond_stage_model.model.` in SD 2.x files). */
function toOpenClip(text: Renamed[]): Renamed[] {
  const byKey = new Map(text.map((t) => [t[0].slice(TEXT_PREFIX.length), t]));
  const out: Renamed[] = [];
  const p = "cond_stage_model.model.";
  const direct: [RegExp, string][] = [
    [/^embeddings\.token_embedding\.weight$/, "token_embedding.weight"],
    [/^embeddings\.position_embedding\.weight$/, "positional_embedding"],
    [/^final_layer_norm\.(\w+)$/, "ln_final.$1"],
    [/^encoder\.layers\.(\d+)\.layer_norm1\.(\w+)$/, "transformer.resblocks.$1.ln_1.$2"],
    [/^encoder\.layers\.(\d+)\.layer_norm2\.(\w+)$/, "transformer.resblocks.$1.ln_2.$2"],
    [/^encoder\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)$/, "transformer.resblocks.$1.attn.out_proj.$2"],
    [/^encoder\.layers\.(\d+)\.mlp\.fc1\.(\w+)$/, "transformer.resblocks.$1.mlp.c_fc.$2"],
    [/^encoder\.layers\.(\d+)\.mlp\.fc2\.(\w+)$/, "transformer.resblocks.$1.mlp.c_proj.$2"],
  ];
  for (const [name, [, shape, values]] of byKey) {
    const rule = direct.find(([re]) => re.test(name));
    if (rule) out.push([p + name.replace(...rule), shape, values]);
    const fused = /^encoder\.layers\.(\d+)\.self_attn\.q_proj\.(\w+)$/.exec(name);
    if (fused) {
      // torch.cat([q, k, v]) along rows, as convert_text_enc_state_dict_v20 does.
      const parts = ["q_proj", "k_proj", "v_proj"].map((q) => byKey.get(name.replace("q_proj", q))![2]);
      const joined = new Float32Array(parts.reduce((n, x) => n + x.length, 0));
      for (const [i, x] of parts.entries()) joined.set(x, i * x.length);
      out.push([
        `${p}transformer.resblocks.${fused[1]}.attn.in_proj_${fused[2]}`,
        [3 * shape[0], ...shape.slice(1)],
        joined,
      ]);
    }
  }
  const width = byKey.get("final_layer_norm.weight")![1][0];
  out.push([`${p}text_projection`, [width, width], valuesFor("text_projection", width * width)]);
  out.push([`${p}logit_scale`, [], Float32Array.of(4.6052)]);
  return out;
}

/**
 * (original, diffusers) name prefixes for a UNet with four levels and two residual blocks, attention on the
 * top three levels: the tables of diffusers' convert_diffusers_to_original_stable_diffusion.py.
 */
function unetPrefixTable(): [string, string][] {
  const table: [string, string][] = [];
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 2; j++) {
      table.push([`input_blocks.${3 * i + j + 1}.0.`, `down_blocks.${i}.resnets.${j}.`]);
      if (i < 3) table.push([`input_blocks.${3 * i + j + 1}.1.`, `down_blocks.${i}.attentions.${j}.`]);
    }
    for (let j = 0; j < 3; j++) {
      table.push([`output_blocks.${3 * i + j}.0.`, `up_blocks.${i}.resnets.${j}.`]);
      if (i > 0) table.push([`output_blocks.${3 * i + j}.1.`, `up_blocks.${i}.attentions.${j}.`]);
    }
    if (i < 3) {
      table.push([`input_blocks.${3 * (i + 1)}.0.op.`, `down_blocks.${i}.downsamplers.0.conv.`]);
      table.push([`output_blocks.${3 * i + 2}.${i === 0 ? 1 : 2}.`, `up_blocks.${i}.upsamplers.0.`]);
    }
  }
  table.push(["middle_block.1.", "mid_block.attentions.0."]);
  for (let j = 0; j < 2; j++) table.push([`middle_block.${2 * j}.`, `mid_block.resnets.${j}.`]);
  return table;
}

const UNET_WHOLE: Record<string, string> = {
  "time_embed.0": "time_embedding.linear_1",
  "time_embed.2": "time_embedding.linear_2",
  "input_blocks.0.0": "conv_in",
  "out.0": "conv_norm_out",
  "out.2": "conv_out",
};
const UNET_RESNET_PARTS: [string, string][] = [
  ["in_layers.0", "norm1"],
  ["in_layers.2", "conv1"],
  ["out_layers.0", "norm2"],
  ["out_layers.3", "conv2"],
  ["emb_layers.1", "time_emb_proj"],
  ["skip_connection", "conv_shortcut"],
];

function vaePrefixTable(): [string, string][] {
  const table: [string, string][] = [
    ["nin_shortcut", "conv_shortcut"],
    ["norm_out", "conv_norm_out"],
    ["mid.attn_1.", "mid_block.attentions.0."],
  ];
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 2; j++) table.push([`encoder.down.${i}.block.${j}.`, `encoder.down_blocks.${i}.resnets.${j}.`]);
    if (i < 3) {
      table.push([`down.${i}.downsample.`, `down_blocks.${i}.downsamplers.0.`]);
      table.push([`up.${3 - i}.upsample.`, `up_blocks.${i}.upsamplers.0.`]);
    }
    for (let j = 0; j < 3; j++) table.push([`decoder.up.${3 - i}.block.${j}.`, `decoder.up_blocks.${i}.resnets.${j}.`]);
  }
  for (let i = 0; i < 2; i++) table.push([`mid.block_${i + 1}.`, `mid_block.resnets.${i}.`]);
  return table;
}

const VAE_ATTENTION_PARTS: Record<string, string> = {
  norm: "group_norm",
  q: "query",
  k: "key",
  v: "value",
  proj_out: "proj_attn",
};

function replaceAll(name: string, table: [string, string][]): string {
  for (const [original, diffusers] of table) name = name.replace(original, diffusers);
  return name;
}

export interface DiffusersOptions {
  variant?: "fp16";
  dtype?: StoredDType;
  /** Use the newer attention names of the VAE (to_q, …, to_out.0) instead of query, …, proj_attn. */
  newVaeAttentionNames?: boolean;
  prediction?: "epsilon" | "v_prediction";
}

/** A diffusers folder for a model shaped like `tinyConfig()` (four levels, two residual blocks). */
export async function writeDiffusers(folder: string, config: ModelConfig, options: DiffusersOptions = {}) {
  const dtype = options.dtype ?? (options.variant === "fp16" ? "F16" : "F32");
  const suffix = options.variant ? `.${options.variant}` : "";
  const [unet, vae, text]: Renamed[][] = [[], [], []];
  const unetTable = unetPrefixTable();
  const vaeTable = vaePrefixTable();
  for (const [key, shape, values] of canonicalTensors(config)) {
    if (key.startsWith(UNET_PREFIX)) {
      const name = key.slice(UNET_PREFIX.length);
      const [module, param] = [name.slice(0, name.lastIndexOf(".")), name.slice(name.lastIndexOf(".") + 1)];
      let renamed = module in UNET_WHOLE ? `${UNET_WHOLE[module]}.${param}` : replaceAll(name, unetTable);
      if (renamed.includes("resnets")) renamed = replaceAll(renamed, UNET_RESNET_PARTS);
      unet.push([renamed, shape, values]);
    } else if (key.startsWith(VAE_PREFIX)) {
      let renamed = replaceAll(key.slice(VAE_PREFIX.length), vaeTable);
      let stored = shape;
      if (renamed.includes("attentions")) {
        const dot = renamed.lastIndexOf(".");
        const module = renamed.slice(0, dot).split(".");
        const leaf = module.pop()!;
        const newer: Record<string, string> = { q: "to_q", k: "to_k", v: "to_v", proj_out: "to_out.0" };
        const mapped = options.newVaeAttentionNames && leaf in newer ? newer[leaf] : VAE_ATTENTION_PARTS[leaf];
        renamed = `${[...module, mapped].join(".")}${renamed.slice(dot)}`;
        if (leaf !== "norm" && renamed.endsWith(".weight")) stored = shape.slice(0, 2); // linear, not 1×1 conv
      }
      vae.push([renamed, stored, values]);
    } else text.push([`text_model.${key.slice(TEXT_PREFIX.length)}`, shape, values]);
  }
  const write = async (
    component: string,
    file: string,
    items: Renamed[],
    extra: Record<string, TensorToWrite> = {},
  ) => {
    mkdirSync(join(folder, component), { recursive: true });
    await writeSafetensors(join(folder, component, `${file}${suffix}.safetensors`), {
      ...tensorsOf(items, dtype),
      ...extra,
    });
  };
  const positions = config.text.max_position_embeddings;
  await write("unet", "diffusion_pytorch_model", unet);
  await write("vae", "diffusion_pytorch_model", vae);
  await write("text_encoder", "model", text, {
    "text_model.embeddings.position_ids": {
      dtype: "I64",
      shape: [1, positions],
      data: BigInt64Array.from({ length: positions }, (_, i) => BigInt(i)),
    },
  });
  const json = (path: string, value: unknown) => writeFileSync(join(folder, path), JSON.stringify(value, null, 2));
  json("model_index.json", { _class_name: "StableDiffusionPipeline", unet: ["diffusers", "UNet2DConditionModel"] });
  mkdirSync(join(folder, "scheduler"), { recursive: true });
  json("scheduler/scheduler_config.json", {
    _class_name: "PNDMScheduler",
    beta_start: config.linear_start,
    beta_end: config.linear_end,
    beta_schedule: "scaled_linear",
    num_train_timesteps: config.timesteps,
    prediction_type: options.prediction ?? "epsilon",
  });
  const u = config.unet;
  json("unet/config.json", {
    attention_head_dim: u.num_heads,
    block_out_channels: u.channel_mult.map((m) => m * u.model_channels),
    cross_attention_dim: u.context_dim,
    sample_size: config.image_size,
  });
  json("vae/config.json", { scaling_factor: config.scale_factor, sample_size: config.vae.ddconfig.resolution });
  json("text_encoder/config.json", {
    hidden_act: config.text.hidden_act,
    num_attention_heads: config.text.num_attention_heads,
    layer_norm_eps: config.text.layer_norm_eps,
  });
  mkdirSync(join(folder, "tokenizer"), { recursive: true });
  json("tokenizer/vocab.json", { "!": 0, "<|endoftext|>": 49 });
  writeFileSync(join(folder, "tokenizer", "merges.txt"), "#version: 0.2\n");
  json("tokenizer/special_tokens_map.json", { pad_token: "<|endoftext|>" });
}
