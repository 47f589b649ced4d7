import { readFileSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { ConfigError, configFromYaml } from "../config.ts";
import { type Detection, type DetectionHints, detectConfig } from "../detect.ts";
import { decodeFloats, isFloatStoredDType } from "../dtype.ts";
import {
  type ComponentFiles,
  type DiffusersComponents,
  diffusersLayout,
  type IgnoredKey,
  LayoutError,
  type SingleFileOptions,
  singleFileLayout,
  type TextNaming,
} from "../layouts.ts";
import { type LoadOptions, MappedWeightSource } from "../source.ts";
import type { TensorFile } from "../tensor-file.ts";
import { openSafetensors, openTorchCheckpoint, TORCH_CHECKPOINT } from "./file.ts";

export interface CheckpointOptions extends LoadOptions, SingleFileOptions {
  /** diffusers folders: "fp16" takes the `*.fp16.safetensors` files; by default the plain ones (or fp16 if alone). */
  variant?: "fp16";
}

export interface TokenizerFiles {
  vocab: string;
  merges: string;
}

interface CheckpointParts {
  layout: "single-file" | "diffusers";
  path: string;
  files: TensorFile[];
  source: MappedWeightSource;
  ignored: IgnoredKey[];
  hints: DetectionHints;
  textNaming?: TextNaming;
  hasEma?: boolean;
  scheduleKeys?: string[];
  modelIndex?: Record<string, unknown>;
  schedulerConfig?: Record<string, unknown>;
  tokenizer?: TokenizerFiles;
}

/** An opened checkpoint: its weights under canonical keys, plus what its layout says about the model. */
export class Checkpoint {
  readonly layout: "single-file" | "diffusers";
  readonly path: string;
  /** The weights under canonical keys, for VarBuilder. */
  readonly source: MappedWeightSource;
  /** Every file opened (a single file, or each diffusers component's files). */
  readonly files: readonly TensorFile[];
  /** Stored tensors that map to no canonical key, with the reason. */
  readonly ignored: readonly IgnoredKey[];
  /** How a single file stored its text encoder. */
  readonly textNaming?: TextNaming;
  /** Whether a single file carries an EMA copy of the UNet. */
  readonly hasEma?: boolean;
  /** The schedule buffers a single file carries (betas, alphas_cumprod, …). */
  readonly scheduleKeys: readonly string[];
  /** diffusers folders: model_index.json, scheduler/scheduler_config.json, the tokenizer files. */
  readonly modelIndex?: Record<string, unknown>;
  readonly schedulerConfig?: Record<string, unknown>;
  readonly tokenizer?: TokenizerFiles;
  /** What the layout's config files say about the model (diffusers), or how it stored the text encoder. */
  readonly hints: DetectionHints;

  constructor(parts: CheckpointParts) {
    this.layout = parts.layout;
    this.path = parts.path;
    this.source = parts.source;
    this.files = parts.files;
    this.ignored = parts.ignored;
    this.textNaming = parts.textNaming;
    this.hasEma = parts.hasEma;
    this.scheduleKeys = parts.scheduleKeys ?? [];
    this.modelIndex = parts.modelIndex;
    this.schedulerConfig = parts.schedulerConfig;
    this.tokenizer = parts.tokenizer;
    this.hints = parts.hints;
  }

  /** The model configuration: from an original-style YAML config when given, else detected from the weights. */
  config(yaml?: { text: string; origin: string }): Detection {
    if (yaml) return { config: configFromYaml(yaml.text, yaml.origin), assumptions: [] };
    return detectConfig(this.source, this.path, this.hints);
  }

  /** A single file's schedule buffers (betas, alphas_cumprod, …) as float64 on the host. */
  async readSchedule(): Promise<Record<string, Float64Array>> {
    const out: Record<string, Float64Array> = {};
    const [file] = this.files;
    for (const key of this.scheduleKeys) {
      const entry = file.entry(key);
      if (!isFloatStoredDType(entry.dtype)) continue;
      if (entry.size > MAX_SCHEDULE_LENGTH) {
        throw new LayoutError(`${file.name}: buffer "${key}" has ${entry.size} elements, too many for a schedule`);
      }
      out[key] = decodeFloats(entry.dtype, await file.readBytes(key), entry.size);
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

const MAX_SCHEDULE_LENGTH = 1 << 20;

export class CheckpointError extends Error {}

/**
 * The text of an original-style YAML config file. Synchronous, since finding a checkpoint's tokenizer reads it
 * too; an unreadable file is named as the config, as several files are involved in loading a model.
 */
export function readConfigFile(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason = code === "ENOENT" ? "no such file" : `cannot be read (${code ?? (e as Error).message})`;
    throw new ConfigError(`config ${path}: ${reason}`);
  }
}

/**
 * Opens a single-file checkpoint (`.safetensors`, or a PyTorch `.ckpt`/`.pt`/`.pth` read as data) or a diffusers
 * folder; reads headers, pickles and configs only.
 */
export async function openCheckpoint(path: string, options: CheckpointOptions = {}): Promise<Checkpoint> {
  let isFolder: boolean;
  try {
    isFolder = (await stat(path)).isDirectory();
  } catch {
    throw new CheckpointError(`${path}: no such file or folder`);
  }
  return isFolder ? openDiffusers(path, options) : openSingleFile(path, options);
}

async function openSingleFile(path: string, options: CheckpointOptions): Promise<Checkpoint> {
  const file = TORCH_CHECKPOINT.test(path) ? await openTorchCheckpoint(path) : await openSafetensors(path);
  try {
    const layout = singleFileLayout(file, options);
    return new Checkpoint({
      layout: "single-file",
      path,
      files: [file],
      source: new MappedWeightSource(path, layout.table, options),
      ignored: layout.ignored,
      textNaming: layout.textNaming,
      hasEma: layout.hasEma,
      scheduleKeys: layout.scheduleKeys,
      hints: { openClipText: layout.textNaming === "openclip" },
    });
  } catch (e) {
    await file.close();
    throw e;
  }
}

const COMPONENT_FILES = { unet: "diffusion_pytorch_model", vae: "diffusion_pytorch_model", text_encoder: "model" };

async function openDiffusers(folder: string, options: CheckpointOptions): Promise<Checkpoint> {
  const modelIndex = await readJson(join(folder, "model_index.json"), false);
  const opened: TensorFile[] = [];
  try {
    const components: DiffusersComponents = {};
    for (const [name, base] of Object.entries(COMPONENT_FILES) as [keyof DiffusersComponents, string][]) {
      const files = await componentFiles(join(folder, name), base, options.variant);
      if (!files) continue;
      const component: ComponentFiles = { files: [] };
      for (const f of files) {
        const file = f.endsWith(".bin") ? await openTorchCheckpoint(f) : await openSafetensors(f);
        opened.push(file);
        component.files.push(file);
      }
      components[name] = component;
    }
    if (!opened.length) {
      throw new CheckpointError(
        `${folder}: no weights found (expected unet/, vae/ and text_encoder/ with .safetensors or .bin files, or a single checkpoint file)`,
      );
    }
    const layout = diffusersLayout(components);
    const schedulerConfig = await readJson(join(folder, "scheduler", "scheduler_config.json"), true);
    const tokenizer = {
      vocab: join(folder, "tokenizer", "vocab.json"),
      merges: join(folder, "tokenizer", "merges.txt"),
    };
    const hasTokenizer = (await exists(tokenizer.vocab)) && (await exists(tokenizer.merges));
    return new Checkpoint({
      layout: "diffusers",
      path: folder,
      files: opened,
      source: new MappedWeightSource(folder, layout.table, options),
      ignored: layout.ignored,
      modelIndex,
      schedulerConfig,
      tokenizer: hasTokenizer ? tokenizer : undefined,
      hints: await diffusersHints(folder, schedulerConfig, hasTokenizer ? tokenizer : undefined),
    });
  } catch (e) {
    await Promise.all(opened.map((f) => f.close()));
    throw e;
  }
}

/**
 * The files holding one component (its safetensors, else its PyTorch .bin read as data, single or sharded through
 * an index), or undefined when the folder has no such component.
 */
async function componentFiles(dir: string, base: string, variant?: "fp16"): Promise<string[] | undefined> {
  if (!(await exists(dir))) return undefined;
  const tries = variant ? [variant] : [undefined, "fp16"];
  // diffusers names a text encoder's .bin after transformers' pytorch_model, its safetensors model.
  for (const [stem, ext] of [
    [base, "safetensors"],
    [base === "model" ? "pytorch_model" : base, "bin"],
  ]) {
    for (const v of tries) {
      const single = join(dir, v ? `${stem}.${v}.${ext}` : `${stem}.${ext}`);
      if (await exists(single)) return [single];
      const index = join(dir, v ? `${stem}.${ext}.index.${v}.json` : `${stem}.${ext}.index.json`);
      if (await exists(index)) {
        const weightMap = (await readJson(index, true))?.weight_map;
        if (typeof weightMap !== "object" || weightMap === null) {
          throw new CheckpointError(`${index}: no "weight_map" object`);
        }
        return [...new Set(Object.values(weightMap as Record<string, string>))].map((f) => join(dir, f));
      }
    }
  }
  const wanted = join(dir, variant ? `${base}.${variant}.safetensors` : `${base}.safetensors`);
  throw new CheckpointError(`${dir}: no ${wanted}${variant ? "" : " (nor an fp16 variant)"}, nor a PyTorch .bin`);
}

/** What a diffusers folder's config files say that the weights cannot. */
async function diffusersHints(
  folder: string,
  scheduler: Record<string, unknown> | undefined,
  tokenizer: TokenizerFiles | undefined,
): Promise<DetectionHints> {
  const hints: DetectionHints = {};
  const num = (v: unknown) => (typeof v === "number" ? v : undefined);
  if (scheduler) {
    const prediction = scheduler.prediction_type;
    if (prediction === "v_prediction") hints.parameterization = "v";
    else if (prediction === "epsilon") hints.parameterization = "eps";
    hints.linear_start = num(scheduler.beta_start);
    hints.linear_end = num(scheduler.beta_end);
    hints.timesteps = num(scheduler.num_train_timesteps);
  }
  const vae = await readJson(join(folder, "vae", "config.json"), true);
  hints.scale_factor = num(vae?.scaling_factor);
  hints.vaeResolution = num(vae?.sample_size);
  const unet = await readJson(join(folder, "unet", "config.json"), true);
  if (unet) {
    hints.unet = diffusersHeadConfig(unet);
    hints.sampleSize = num(unet.sample_size);
  }
  const text = await readJson(join(folder, "text_encoder", "config.json"), true);
  if (text) {
    hints.text = {};
    if (text.hidden_act === "gelu" || text.hidden_act === "quick_gelu") hints.text.hidden_act = text.hidden_act;
    for (const key of ["num_attention_heads", "layer_norm_eps"] as const) {
      if (typeof text[key] === "number") hints.text[key] = text[key];
    }
  }
  const pad = tokenizer && (await padTokenId(folder, tokenizer));
  if (pad !== undefined) hints.text = { ...hints.text, pad_token_id: pad };
  return hints;
}

/**
 * diffusers' `attention_head_dim` is the number of heads (a historical misnomer): one number for every block
 * (SD 1.x: 8), or one per down block (SD 2.x: [5, 10, 20, 20], i.e. 64 channels per head throughout).
 */
function diffusersHeadConfig(unet: Record<string, unknown>): DetectionHints["unet"] {
  const heads = unet.num_attention_heads ?? unet.attention_head_dim;
  if (typeof heads === "number") return { num_heads: heads, num_head_channels: -1 };
  const channels = unet.block_out_channels;
  if (Array.isArray(heads) && Array.isArray(channels) && heads.length === channels.length) {
    const widths = new Set(channels.map((c, i) => c / heads[i]));
    if (widths.size === 1) return { num_heads: -1, num_head_channels: [...widths][0] };
  }
  return undefined;
}

async function padTokenId(folder: string, tokenizer: TokenizerFiles): Promise<number | undefined> {
  const special = await readJson(join(folder, "tokenizer", "special_tokens_map.json"), true);
  const pad = special?.pad_token;
  const token = typeof pad === "string" ? pad : (pad as { content?: unknown } | undefined)?.content;
  if (typeof token !== "string") return undefined;
  const vocab = await readJson(tokenizer.vocab, true);
  const id = vocab?.[token];
  return typeof id === "number" ? id : undefined;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function readJson(path: string, optional: true): Promise<Record<string, unknown> | undefined>;
async function readJson(path: string, optional: false): Promise<Record<string, unknown>>;
async function readJson(path: string, optional: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    if (optional) return undefined;
    throw new CheckpointError(`${path}: missing (a diffusers folder has a model_index.json)`);
  }
  try {
    const value = JSON.parse(text);
    if (typeof value === "object" && value !== null && !Array.isArray(value)) return value;
  } catch {}
  throw new CheckpointError(`${path}: not a JSON object`);
}
