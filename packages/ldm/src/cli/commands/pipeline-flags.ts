/** Flags and helpers shared by the commands that run a whole model (generate, loss, bench). */
import { existsSync } from "node:fs";
import { basename, resolve } from "node:path";
import { type Command, Option } from "commander";
import { readLabelPngFile, readPngFile } from "../../image/node.ts";
import type { DecodedImage, LabelMap } from "../../image/png.ts";
import { NonFiniteError } from "../../pipeline/denoiser.ts";
import { isHubName, resolveHubModel } from "../../pipeline/hub-model.ts";
import { LatentDiffusion, type LoadOptions } from "../../pipeline/latent-diffusion.ts";
import { MAX_SIDE } from "../../pipeline/memory.ts";
import { BUILTIN_MODEL } from "../../pipeline/model-files.ts";
import { StableDiffusion } from "../../pipeline/stable-diffusion.ts";
import type { Seed } from "../../random/index.ts";
import { UserError } from "../errors.ts";

export interface ModelFlags {
  model?: string;
  config?: string;
  vocab?: string;
  f16?: boolean;
  ema?: boolean;
  variant?: string;
  cpuLanes?: string;
}

/** --cpu-lanes: DeviceOptions.cpuLanes for the commands that create a device. */
export function cpuLanesOption(): Option {
  return new Option(
    "--cpu-lanes <n>",
    "lavapipe only: SIMD lanes per subgroup (its default is 8); 16 ran SD 1.5's UNet step 1.07× as fast on AVX2 cores, but kernels not yet in Mesa's shader cache compile 2–3× as long",
  ).choices(["4", "8", "16"]);
}

/** The number --cpu-lanes gave, if any. */
export function cpuLanesOf(flags: { cpuLanes?: string }): number | undefined {
  return flags.cpuLanes === undefined ? undefined : Number(flags.cpuLanes);
}

export function addModelOptions(command: Command): Command {
  return command
    .option(
      "--model <path>",
      "checkpoint: a .safetensors or PyTorch .ckpt/.pt file (original layout), a diffusers folder, or a Hugging Face repository org/name[/file.safetensors] (fetched into the hub cache; HF_HUB_OFFLINE=1: the cache only) (default: the built-in emoji model)",
    )
    .option("--config <yaml>", "an original-style YAML config (default: <model>.yaml beside it, else detected)")
    .option(
      "--vocab <path>",
      "CLIP vocabulary: bpe_simple_vocab_16e6.txt(.gz) or a tokenizer folder (default: the config's tokenizer, the model folder's tokenizer/, else the shipped CLIP vocabulary)",
    )
    .option("--f16", "run in half precision (needs shader-f16; the default on GPUs that have it)")
    .option("--no-f16", "run in single precision (the default on CPU adapters such as lavapipe)")
    .option("--ema", "sample with the UNet's EMA copy in a full training checkpoint (default: the config's use_ema)")
    .option("--no-ema", "sample with model.diffusion_model.* even where the config's use_ema picks the EMA copy")
    .option("--variant <fp16>", "diffusers folders: read the fp16 variant files")
    .addOption(cpuLanesOption());
}

export interface EmbeddingFlags {
  embedding?: string[];
  embeddingsDir?: string;
}

export function addEmbeddingOptions(command: Command): Command {
  return command
    .option(
      "--embedding <file>",
      "a textual-inversion embedding (.pt, .bin or .safetensors): its file name without the extension is the trigger word in prompts (repeatable)",
      (value: string, previous?: string[]) => [...(previous ?? []), value],
    )
    .option(
      "--embeddings-dir <dir>",
      "a folder of embeddings, as A1111's: every embedding file under it is available by its name (another model family's are refused when a prompt uses them)",
    );
}

/** The embeddings of --embedding and --embeddings-dir, added to a pipeline; warnings go to stderr. */
export async function loadEmbeddingFlags(pipe: LatentDiffusion, flags: EmbeddingFlags): Promise<void> {
  if (!flags.embedding?.length && flags.embeddingsDir === undefined) return;
  try {
    const read = await pipe.loadEmbeddings({ files: flags.embedding, dir: flags.embeddingsDir }, (message) =>
      console.error(`ldm: warning: ${message}`),
    );
    const usable = new Set(pipe.embeddings.map((e) => e.name));
    const list = read.filter((e) => usable.has(e.name)).map((e) => `${e.name} (${e.count})`);
    console.error(`embeddings: ${list.length ? list.join(", ") : "none usable by this model"}`);
  } catch (e) {
    throw new UserError((e as Error).message);
  }
}

/** Loads a text-to-image pipeline; every failure (missing file, wrong vocab, keys that do not fit) is the user's to fix. */
export function loadPipeline(flags: ModelFlags): Promise<StableDiffusion> {
  return loadWith(flags, (model, options) => StableDiffusion.load(model, options));
}

/** Loads any LatentDiffusion (text, class, unconditional, …), for the commands that run them all. */
export function loadLatentDiffusion(flags: ModelFlags): Promise<LatentDiffusion> {
  return loadWith(flags, (model, options) => LatentDiffusion.load(model, options));
}

async function loadWith<P extends LatentDiffusion>(
  flags: ModelFlags,
  load: (model: string, options: LoadOptions) => Promise<P>,
): Promise<P> {
  if (!flags.model && !existsSync(BUILTIN_MODEL)) {
    throw new UserError(`the built-in model is missing (${BUILTIN_MODEL}): pass --model <checkpoint.safetensors>`);
  }
  if (flags.variant !== undefined && flags.variant !== "fp16") {
    throw new UserError(`--variant must be "fp16", got "${flags.variant}"`);
  }
  const model = await modelPath(flags.model);
  // Neither flag: the adapter decides (defaultDtype: f16 on GPUs with shader-f16).
  const dtype = flags.f16 === undefined ? "auto" : flags.f16 ? "f16" : "f32";
  // Progress before any step: loading a full checkpoint takes seconds, the first step compiles the kernels.
  console.error(`loading ${basename(model)}${dtype === "auto" ? "" : ` (${dtype})`}…`);
  const started = performance.now();
  try {
    const pipe = await load(model, {
      config: flags.config,
      vocab: flags.vocab,
      dtype,
      ema: flags.ema,
      variant: flags.variant as "fp16" | undefined,
      cpuLanes: cpuLanesOf(flags),
      name: flags.model && model !== flags.model && isHubName(flags.model) ? flags.model : undefined,
    });
    const { info } = pipe.device;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.error(
      `loaded in ${seconds} s on ${info.description || info.device || info.vendor || "the WebGPU adapter"} (${pipe.dtype})`,
    );
    if (pipe.networks.ema)
      console.error("UNet weights: the EMA copy (model_ema.*; --no-ema for model.diffusion_model.*)");
    return pipe;
  } catch (e) {
    throw userErrorOf(e);
  }
}

/** Where the model and its config were, as the PNG's parameters record them for --params-from. */
export function recordedModelFiles(flags: ModelFlags): { modelPath?: string; config?: string } {
  return {
    ...(flags.model && !isHubName(flags.model) ? { modelPath: resolve(flags.model) } : {}),
    ...(flags.config ? { config: resolve(flags.config) } : {}),
  };
}

/** One line on the error path; an error listing keys (that do not fit) prints them below its first line. */
export function userErrorOf(e: unknown): UserError {
  const [first, ...details] = (e as Error).message.split("\n");
  return new UserError(first, details.length ? details.join("\n") : undefined);
}

/** --model as a local path: the built-in model when absent, a hub repository (org/name) fetched into the hub cache. */
export async function modelPath(model: string | undefined): Promise<string> {
  if (model === undefined) return BUILTIN_MODEL;
  if (!isHubName(model)) return model;
  try {
    return await resolveHubModel(model);
  } catch (e) {
    throw new UserError(`--model ${model}: ${(e as Error).message.split("\n")[0]}`);
  }
}

/** An integer flag ≥ min (and ≤ max). */
export function integerFlag(flag: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const value = Number(text);
  if (!/^-?\d+$/.test(text.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
    const range = max < Number.MAX_SAFE_INTEGER ? `in [${min}, ${max}]` : `≥ ${min}`;
    throw new UserError(`${flag} must be an integer ${range}, got "${text}"`);
  }
  return value;
}

/** A finite number flag within [min, max]. */
export function numberFlag(flag: string, text: string, min = -Infinity, max = Infinity): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < min || value > max) {
    const range =
      Number.isFinite(min) && Number.isFinite(max) ? ` in [${min}, ${max}]` : min > -Infinity ? ` ≥ ${min}` : "";
    throw new UserError(`${flag} must be a number${range}, got "${text}"`);
  }
  return value;
}

/** A torch seed: an integer in [−2⁶³, 2⁶⁴), a bigint beyond the safe range. */
export function seedFlag(text: string): Seed {
  if (!/^-?\d+$/.test(text.trim())) throw new UserError(`--seed must be an integer, got "${text}"`);
  const big = BigInt(text.trim());
  if (big < -(2n ** 63n) || big >= 2n ** 64n) throw new UserError(`--seed ${text} is outside [-2^63, 2^64)`);
  return Number.isSafeInteger(Number(big)) ? Number(big) : big;
}

/** A pixel size flag: a positive multiple of 8 (the model may need a larger multiple; it says so). */
export function sizeFlag(flag: string, text: string): number {
  const value = integerFlag(flag, text, 1, MAX_SIDE);
  if (value % 8) throw new UserError(`${flag} ${value} is not a multiple of 8`);
  return value;
}

/** Runs `fn` with an AbortSignal that Ctrl-C fires. */
export async function withInterrupt<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onInterrupt = () => controller.abort(new UserError("interrupted"));
  process.once("SIGINT", onInterrupt);
  try {
    return await fn(controller.signal);
  } finally {
    process.off("SIGINT", onInterrupt);
  }
}

/**
 * Pipeline option errors (bad size for this model, strength too small) and values gone NaN (with their likely
 * cause) become one-line user errors.
 */
export async function asUserError<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof RangeError || e instanceof NonFiniteError) throw new UserError(e.message);
    throw e;
  }
}

/** A PNG named by a flag; unreadable or not a PNG is the user's error. */
export function readImageFlag(path: string, what: string): Promise<DecodedImage> {
  return flagFile(() => readPngFile(path, what));
}

/** The PNGs readLabelsFlag reads, for the --segmentation flags' help. */
export const SEGMENTATION_PNG =
  "an index PNG (greyscale, pixel value = class id) or a palette PNG (palette index = class id, colours ignored)";

/** A segmentation map named by a flag: an index or palette PNG (decodeLabelPng), else the user's error. */
export function readLabelsFlag(path: string, what: string): Promise<LabelMap> {
  return flagFile(() => readLabelPngFile(path, what));
}

async function flagFile<T>(read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (e) {
    throw new UserError((e as Error).message);
  }
}
