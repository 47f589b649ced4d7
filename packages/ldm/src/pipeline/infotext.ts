/**
 * AUTOMATIC1111's "parameters" text (its infotext): the prompt, "Negative prompt: …", then one line of
 * "Key: value" pairs (processing.py create_infotext, read back by infotext_utils.parse_generation_parameters),
 * which A1111's PNG Info, its API's png-info and other tools read. Our sampler names map to A1111's through the
 * samplers table.
 */
import {
  SAMPLERS,
  type SamplerName,
  type SigmaScheduleName,
  samplerByName,
  sigmaScheduleOf,
} from "../diffusion/index.ts";
import { loraTags, loraTagText, untaggedLoras } from "../lora/prompt.ts";
import type { GenerationParameters } from "./parameters.ts";

/** The PNG text keyword A1111 reads. */
export const INFOTEXT_KEYWORD = "parameters";

const SCHEDULE_LABELS: Readonly<Record<SigmaScheduleName, string>> = {
  normal: "Uniform",
  karras: "Karras",
  exponential: "Exponential",
};

/** A value as A1111 quotes it: JSON when it holds a comma, a colon or a newline. */
function quote(value: string): string {
  return /[,:\n]/.test(value) ? JSON.stringify(value) : value;
}

/** The infotext of a generation, as A1111 writes it (keys in its order; ours for what it has no key for). */
export function formatInfotext(p: GenerationParameters): string {
  const sampler = samplerByName(p.sampler);
  const schedule = p.schedule ?? sampler.schedules[0];
  const pairs: [string, string | number | undefined][] = [
    ["Steps", p.steps],
    ["Sampler", sampler.a1111],
    ["Schedule type", schedule && schedule !== "normal" ? SCHEDULE_LABELS[schedule] : undefined],
    ["CFG scale", p.guidanceScale],
    ["Seed", p.seed],
    ["Size", `${p.width}x${p.height}`],
    ["Model", p.model.replace(/\.(safetensors|ckpt|pt)$/i, "")],
    ["Denoising strength", p.strength],
    ["Clip skip", p.clipSkip !== undefined && p.clipSkip > 1 ? p.clipSkip : undefined],
    [p.sampler === "ddim" ? "Eta DDIM" : "Eta", p.eta !== sampler.defaultEta ? p.eta : undefined],
    ["Batch size", p.batchSize > 1 ? p.batchSize : undefined],
    ["Batch pos", p.batchSize > 1 ? p.batchIndex : undefined],
    // extra_networks_lora: "alias: shorthash" of each LoRA, ":" and "," taken out of the alias.
    ["Lora hashes", formatHashes((p.loras ?? []).map((l) => [l.name, l.hash]))],
    ["TI hashes", formatHashes(Object.entries(p.embeddings ?? {}))],
  ];
  const line = pairs
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}: ${quote(String(v))}`)
    .join(", ");
  const negative = p.negativePrompt ? `\nNegative prompt: ${p.negativePrompt}` : "";
  // A1111 keeps a prompt's <lora:…> tags in its infotext; LoRAs given besides the prompt are written as tags too,
  // so that A1111 applies them.
  const extra = untaggedLoras(p.prompt, p.loras ?? []).map((l) => ` ${loraTagText(l)}`);
  return `${p.prompt}${extra.join("")}${negative}\n${line}`.trim();
}

/**
 * A1111's "Lora hashes" and "TI hashes" values: "name: hash" for each entry with a hash, ":" and "," taken out
 * of the names.
 */
function formatHashes(entries: readonly [name: string, hash: string | undefined][]): string | undefined {
  const pairs = entries.filter(([, hash]) => hash).map(([name, hash]) => `${name.replace(/[:,]/g, "")}: ${hash}`);
  return pairs.length ? pairs.join(", ") : undefined;
}

/** The names and hashes of a "Lora hashes" or "TI hashes" value. */
function parseHashes(value: string | undefined): Map<string, string> {
  return new Map(
    (value ?? "").split(",").flatMap((pair): [string, string][] => {
      const at = pair.lastIndexOf(":");
      return at > 0 ? [[pair.slice(0, at).trim(), pair.slice(at + 1).trim()]] : [];
    }),
  );
}

// infotext_utils.re_param_code: a key (word characters, spaces, -, /), a colon, a quoted or a plain value.
const PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;

export interface Infotext {
  prompt: string;
  negativePrompt: string;
  /** The last line's "Key: value" pairs, unquoted. */
  values: Record<string, string>;
}

/** Parses an infotext as A1111's parse_generation_parameters does (the last line holds ≥ 3 pairs, else none). */
export function parseInfotext(text: string): Infotext {
  const lines = text.trim().split("\n");
  let last = lines.at(-1) ?? "";
  if ([...last.matchAll(PARAM)].length < 3) last = "";
  else lines.pop();
  let prompt = "";
  let negativePrompt = "";
  let negative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith("Negative prompt:")) {
      negative = true;
      line = line.slice(16).trim();
    }
    if (negative) negativePrompt += (negativePrompt ? "\n" : "") + line;
    else prompt += (prompt ? "\n" : "") + line;
  }
  const values: Record<string, string> = {};
  for (const [, key, raw] of last.matchAll(PARAM)) {
    let value = raw;
    if (value.length > 1 && value.startsWith('"') && value.endsWith('"')) {
      try {
        value = JSON.parse(value);
      } catch {
        // A1111 keeps text it cannot unquote as it is.
      }
    }
    values[key] = value;
  }
  return { prompt, negativePrompt, values };
}

/** What an A1111 infotext restores: the parameters we can use, and the keys we cannot (named to the user). */
export interface RestoredInfotext {
  parameters: Partial<GenerationParameters> & { prompt: string; negativePrompt: string };
  unrestored: string[];
}

/** The sampler of an A1111 name and schedule type ("DPM++ 2M Karras" = "DPM++ 2M" with Karras, as A1111 reads it). */
function samplerOf(
  label: string,
  scheduleType?: string,
): { sampler: SamplerName; schedule?: SigmaScheduleName } | undefined {
  let name = label;
  let schedule: SigmaScheduleName | undefined;
  if (name.endsWith(" Karras")) {
    name = name.slice(0, -7);
    schedule = "karras";
  }
  if (scheduleType && scheduleType !== "Automatic") {
    const entry = Object.entries(SCHEDULE_LABELS).find(
      ([, l]) => l === scheduleType || (l === "Uniform" && scheduleType === "Normal"),
    );
    if (!entry) return undefined;
    schedule = entry[0] as SigmaScheduleName;
  }
  const candidates = SAMPLERS.filter((s) => s.a1111 === name);
  const exact = candidates.find((s) => s.schedules[0] === (schedule ?? s.schedules[0]));
  if (exact) return { sampler: exact.name };
  const taking = candidates.find((s) => schedule && s.schedules.includes(schedule));
  return taking && { sampler: taking.name, schedule: sigmaScheduleOf(taking, schedule) };
}

const KNOWN = new Set([
  "Steps",
  "Sampler",
  "Schedule type",
  "CFG scale",
  "Seed",
  "Size",
  "Model",
  "Model hash",
  "Denoising strength",
  "Clip skip",
  "Eta",
  "Eta DDIM",
  "Batch size",
  "Batch pos",
  "Lora hashes",
  "TI hashes",
]);

/** The generation parameters of an A1111 infotext; `origin` names the image in errors. */
export function parametersFromInfotext(text: string, origin: string): RestoredInfotext {
  const { prompt, negativePrompt, values } = parseInfotext(text);
  const parameters: RestoredInfotext["parameters"] = { prompt, negativePrompt };
  const unrestored = Object.keys(values).filter((k) => !KNOWN.has(k));
  const number = (key: string): number | undefined => {
    if (values[key] === undefined) return undefined;
    const value = Number(values[key]);
    if (!Number.isFinite(value)) throw new Error(`${origin}: A1111 parameter "${key}: ${values[key]}" is not a number`);
    return value;
  };
  parameters.steps = number("Steps");
  parameters.guidanceScale = number("CFG scale");
  parameters.strength = number("Denoising strength");
  parameters.clipSkip = number("Clip skip");
  parameters.eta = number("Eta") ?? number("Eta DDIM");
  if (values.Seed !== undefined) {
    if (!/^-?\d+$/.test(values.Seed))
      throw new Error(`${origin}: A1111 parameter "Seed: ${values.Seed}" is not an integer`);
    parameters.seed = values.Seed;
  }
  const size = /^(\d+)x(\d+)$/.exec(values.Size ?? "");
  if (size) [parameters.width, parameters.height] = [Number(size[1]), Number(size[2])];
  else if (values.Size !== undefined) unrestored.push("Size");
  if (values.Sampler !== undefined) {
    const found = samplerOf(values.Sampler, values["Schedule type"]);
    if (found) Object.assign(parameters, found);
    else unrestored.push(values["Schedule type"] ? "Sampler, Schedule type" : "Sampler");
  }
  if (values.Model !== undefined) parameters.model = values.Model;
  if (values["Model hash"] !== undefined) parameters.modelHash = values["Model hash"];
  const tags = loraTags(prompt);
  if (tags.length) {
    const hashes = parseHashes(values["Lora hashes"]);
    parameters.loras = tags.map(({ name, strength, unetStrength }) => {
      const hash = hashes.get(name.replace(/[:,]/g, ""));
      return { name, strength, ...(unetStrength === undefined ? {} : { unetStrength }), ...(hash ? { hash } : {}) };
    });
  }
  if (values["TI hashes"] !== undefined) parameters.embeddings = Object.fromEntries(parseHashes(values["TI hashes"]));
  for (const key of Object.keys(parameters) as (keyof typeof parameters)[]) {
    if (parameters[key] === undefined) delete parameters[key];
  }
  return { parameters, unrestored };
}
