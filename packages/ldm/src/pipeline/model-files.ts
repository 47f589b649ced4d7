/**
 * Where a checkpoint's companion files are, in Node: the YAML config and the tokenizer a user of the original
 * scripts or of AUTOMATIC1111 keeps next to a single .safetensors or .ckpt file, and the built-in model's location.
 */
import { existsSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseConfigYaml } from "@ldm/weights";
import { readConfigFile } from "@ldm/weights/node";
import { packageFile } from "../package-files.ts";

/** The model `ldm generate` runs without --model: trained by this project (reference/default_model). */
export const BUILTIN_MODEL = packageFile("models", "emoji-ldm", "emoji-ldm.safetensors");

export interface ModelFiles {
  /** The original-style YAML config; undefined: detect from the weights. */
  config?: string;
  /** A tokenizer file or folder for loadClipTokenizer; undefined: the model folder's tokenizer/. */
  vocab?: string;
}

/**
 * The config: as given, else `<stem>.yaml` beside a single-file checkpoint when it exists. The vocabulary: as
 * given, else the folder the config names in `cond_stage_config.params.tokenizer` (relative to the config),
 * else a diffusers folder's own tokenizer/.
 */
export function companionFiles(model: string, given: ModelFiles = {}): ModelFiles {
  const isFile = existsSync(model) && statSync(model).isFile();
  const besideIt = model.replace(/\.(safetensors|ckpt|pt|pth)$/i, ".yaml");
  const config = given.config ?? (isFile && besideIt !== model && existsSync(besideIt) ? besideIt : undefined);
  return { config, vocab: given.vocab ?? (config ? declaredTokenizer(config) : undefined) };
}

/**
 * cond_stage_config.params.tokenizer of a YAML config, resolved against the config's folder. A config that
 * cannot be read is reported here: the tokenizer is loaded before the weights, and without this its problem
 * would show as a missing tokenizer.
 */
function declaredTokenizer(config: string): string | undefined {
  const doc = parseConfigYaml(readConfigFile(config), config);
  const folder = (doc as { model?: { params?: { cond_stage_config?: { params?: { tokenizer?: unknown } } } } })?.model
    ?.params?.cond_stage_config?.params?.tokenizer;
  return typeof folder === "string" ? resolve(dirname(config), folder) : undefined;
}
