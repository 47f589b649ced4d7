/**
 * Generation parameters as written into a PNG's tEXt chunk, so an image can be regenerated from itself
 * (`ldm generate --params-from image.png`).
 */
import { type SamplerName, type SigmaScheduleName, samplerByName, sigmaScheduleOf } from "../diffusion/index.ts";
import type { LoraUse } from "../lora/merge.ts";
import { type LayoutObject, parseLayout } from "../tokenizer/layout.ts";

/** The tEXt keyword our parameters are stored under. */
export const PARAMETERS_KEYWORD = "ldm-parameters";

export interface GenerationParameters {
  prompt: string;
  negativePrompt: string;
  /** The run's torch seed, in decimal (seeds reach 2⁶⁴). */
  seed: string;
  sampler: SamplerName;
  /** The σ spacing of a k-sampler when not its default. */
  schedule?: SigmaScheduleName;
  steps: number;
  guidanceScale: number;
  eta: number;
  /** A1111's CLIP skip, when not the model's own. */
  clipSkip?: number;
  width: number;
  height: number;
  /** Images generated together from the seed, and this image's place among them (noise is drawn per batch). */
  batchSize: number;
  batchIndex: number;
  /** What the model was conditioned on besides a prompt: a class-conditional model's class, a layout model's objects. */
  classLabel?: number;
  /** A class-conditional model's class for guidance's unconditional half, when not the config's "no class". */
  uncondClassLabel?: number;
  layout?: LayoutObject[];
  /** Semantic synthesis: the segmentation map's file name; super-resolution: the low-resolution image's. */
  segmentation?: string;
  lowResImage?: string;
  /** The checkpoint's file or folder name. */
  model: string;
  /** Where the checkpoint was (the CLI records the path it was given), to find it again. */
  modelPath?: string;
  /** The original YAML config given with the checkpoint (the CLI records its path). */
  config?: string;
  /** A1111's "Model hash" of the checkpoint, when read from its infotext: 10 (or, older, 8) hex digits. */
  modelHash?: string;
  dtype: "f32" | "f16";
  /** img2img / inpaint: the strength and the file names of the init image and mask (not their pixels). */
  strength?: number;
  initImage?: string;
  mask?: string;
  /** The LoRAs merged while generating: those the prompt's `<lora:…>` tags name and any given besides. */
  loras?: LoraParameters[];
  /** The textual-inversion embeddings the prompts used: trigger word → A1111's short hash of the file. */
  embeddings?: Record<string, string>;
}

/** A merged LoRA as the parameters record it: enough to find it again (by path, else by name) and check it. */
export interface LoraParameters {
  name: string;
  strength: number;
  unetStrength?: number;
  /** A1111's short hash (12 hex digits of its sha256 "addnet" hash). */
  hash?: string;
  path?: string;
}

export function loraParameters({ lora, strength, unetStrength, name }: LoraUse): LoraParameters {
  return {
    name: name ?? lora.name,
    strength,
    ...(unetStrength === undefined ? {} : { unetStrength }),
    ...(lora.hash ? { hash: lora.hash.slice(0, 12) } : {}),
    ...(lora.path ? { path: lora.path } : {}),
  };
}

/** JSON with every character outside ASCII escaped as \uXXXX: tEXt chunks hold Latin-1 only. */
export function parametersText(parameters: GenerationParameters): string {
  return JSON.stringify(parameters).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** Parses and checks parameters read back from a PNG; `origin` names the image in errors. */
export function parseParameters(text: string, origin: string): GenerationParameters {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${origin}: the ${PARAMETERS_KEYWORD} text is not JSON (${(e as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`${origin}: the ${PARAMETERS_KEYWORD} text is not a JSON object`);
  }
  const record = value as Record<string, unknown>;
  const field = <T>(key: string, type: "string" | "number", optional = false): T => {
    const v = record[key];
    if (v === undefined && optional) return undefined as T;
    if (typeof v !== type) throw new Error(`${origin}: parameter "${key}" is ${JSON.stringify(v)}, not a ${type}`);
    return v as T;
  };
  const sampler = field<string>("sampler", "string");
  const schedule = field<string | undefined>("schedule", "string", true);
  try {
    sigmaScheduleOf(samplerByName(sampler), schedule);
  } catch (e) {
    throw new Error(`${origin}: ${(e as Error).message}`);
  }
  const dtype = field<string>("dtype", "string");
  if (dtype !== "f32" && dtype !== "f16") throw new Error(`${origin}: dtype "${dtype}" is neither f32 nor f16`);
  return {
    prompt: field("prompt", "string"),
    negativePrompt: field("negativePrompt", "string"),
    seed: field("seed", "string"),
    sampler: sampler as SamplerName,
    ...(schedule === undefined ? {} : { schedule: schedule as SigmaScheduleName }),
    steps: field("steps", "number"),
    guidanceScale: field("guidanceScale", "number"),
    eta: field("eta", "number"),
    clipSkip: field("clipSkip", "number", true),
    width: field("width", "number"),
    height: field("height", "number"),
    batchSize: field("batchSize", "number"),
    batchIndex: field("batchIndex", "number"),
    classLabel: field("classLabel", "number", true),
    uncondClassLabel: field("uncondClassLabel", "number", true),
    ...(record.layout === undefined
      ? {}
      : { layout: parseLayout(JSON.stringify(record.layout), `${origin}: parameter "layout"`) }),
    segmentation: field("segmentation", "string", true),
    lowResImage: field("lowResImage", "string", true),
    model: field("model", "string"),
    modelPath: field("modelPath", "string", true),
    config: field("config", "string", true),
    dtype,
    strength: field("strength", "number", true),
    initImage: field("initImage", "string", true),
    mask: field("mask", "string", true),
    ...(record.loras === undefined ? {} : { loras: parseLoras(record.loras, origin) }),
    ...(record.embeddings === undefined ? {} : { embeddings: stringRecord(record.embeddings, "embeddings", origin) }),
  };
}

function parseLoras(value: unknown, origin: string): LoraParameters[] {
  const fail = (what: string) => new Error(`${origin}: parameter "loras" ${what}`);
  if (!Array.isArray(value)) throw fail("is not a list");
  return value.map((item, i) => {
    if (typeof item !== "object" || item === null) throw fail(`[${i}] is not an object`);
    const { name, strength, unetStrength, hash, path } = item as Record<string, unknown>;
    if (typeof name !== "string" || !name) throw fail(`[${i}] has no name`);
    if (typeof strength !== "number") throw fail(`[${i}] (${name}) has no numeric strength`);
    for (const [key, v, type] of [
      ["unetStrength", unetStrength, "number"],
      ["hash", hash, "string"],
      ["path", path, "string"],
    ] as const) {
      if (v !== undefined && typeof v !== type) throw fail(`[${i}] (${name}): ${key} is not a ${type}`);
    }
    return {
      name,
      strength,
      ...(unetStrength === undefined ? {} : { unetStrength: unetStrength as number }),
      ...(hash === undefined ? {} : { hash: hash as string }),
      ...(path === undefined ? {} : { path: path as string }),
    };
  });
}

/** A JSON object of strings, as a record; `origin` and `key` name it in errors. */
function stringRecord(value: unknown, key: string, origin: string): Record<string, string> {
  if (
    typeof value !== "object" ||
    value === null ||
    Array.isArray(value) ||
    Object.values(value).some((v) => typeof v !== "string")
  ) {
    throw new Error(`${origin}: parameter "${key}" is ${JSON.stringify(value)}, not an object of strings`);
  }
  return value as Record<string, string>;
}
