/**
 * What `generate --params-from` restores besides the sampling parameters: the model (by its recorded path, a hub
 * name, a file of that name in the current folder, or a file of that name or hash under --models-dir) and its
 * config, f16, the init image, mask and segmentation map (by their recorded names, in the current folder or beside
 * the image), and which of the recorded embeddings are available. What it cannot restore is named in one warning line.
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { open } from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import { embeddingFilesIn, filesUnder } from "../../pipeline/embedding-files.ts";
import { embeddingName } from "../../pipeline/embeddings.ts";
import { isHubName } from "../../pipeline/hub-model.ts";
import { BUILTIN_MODEL } from "../../pipeline/model-files.ts";
import type { GenerationParameters } from "../../pipeline/parameters.ts";
import { UserError } from "../errors.ts";

export interface RestoreFlags {
  model?: string;
  config?: string;
  modelsDir?: string;
  f16?: boolean;
  initImage?: string;
  mask?: string;
  segmentation?: string;
  embedding?: string[];
  embeddingsDir?: string;
}

/** Checkpoint files by extension, as A1111's checkpoint list takes them. */
const CHECKPOINT = /\.(safetensors|ckpt|pt|pth)$/i;

/**
 * Fills the flags the stored run implies and the user left unset; `unrestored` (A1111 settings we lack) is
 * printed with what else could not be restored, on one line.
 */
export async function restoreRun(
  flags: RestoreFlags,
  stored: Partial<GenerationParameters>,
  origin: string,
  unrestored: readonly string[] = [],
): Promise<void> {
  const missing = [...unrestored];
  if (flags.f16 === undefined && stored.dtype !== undefined) flags.f16 = stored.dtype === "f16";
  if (flags.model === undefined && stored.model !== undefined) {
    const found = await findModel(stored, flags.modelsDir);
    if (found) {
      if (found !== BUILTIN_MODEL) flags.model = found;
      console.error(`${origin}: model ${stored.model} → ${found === BUILTIN_MODEL ? "the built-in model" : found}`);
    } else {
      const hash = stored.modelHash ? ` (hash ${stored.modelHash})` : "";
      missing.push(`model "${stored.model}"${hash}: pass --model${flags.modelsDir ? "" : " or --models-dir"}`);
    }
  } else if (flags.model !== undefined && stored.model !== undefined && !sameModel(flags.model, stored.model)) {
    missing.push(`model "${stored.model}" (this run uses ${basename(flags.model)})`);
  }
  for (const [key, flag] of [
    ["config", "--config"],
    ["initImage", "--init-image"],
    ["mask", "--mask"],
    ["segmentation", "--segmentation"],
  ] as const) {
    const name = stored[key];
    if (!name || flags[key] !== undefined) continue;
    // The config only with the recorded model: another model's config is not this one's.
    if (key === "config" && !(flags.model && stored.model && sameModel(flags.model, stored.model))) continue;
    const found = [name, join(dirname(origin), basename(name))].find((p) => existsSync(p));
    if (found) flags[key] = found;
    else missing.push(`${flag} ${name}`);
  }
  const available = await embeddingNames(flags);
  const absent = Object.keys(stored.embeddings ?? {}).filter((name) => !available.has(name));
  if (absent.length) missing.push(`embeddings ${absent.join(", ")}: pass --embedding or --embeddings-dir`);
  if (missing.length) console.error(`ldm: warning: ${origin}: not restored: ${missing.join("; ")}`);
}

/** Whether a --model names the recorded model (its file or folder name, with or without the extension). */
function sameModel(model: string, recorded: string): boolean {
  const stem = (name: string) => name.replace(CHECKPOINT, "");
  return model === recorded || stem(basename(model)) === stem(basename(recorded));
}

/** The recorded model's path: as recorded, a hub name, the built-in model, in the current folder, or under `dir`. */
async function findModel(stored: Partial<GenerationParameters>, dir: string | undefined): Promise<string | undefined> {
  const name = stored.model as string;
  if (stored.modelPath && existsSync(stored.modelPath)) return stored.modelPath;
  if (sameModel(BUILTIN_MODEL, name)) return BUILTIN_MODEL;
  if (isHubName(name)) return name;
  if (existsSync(name)) return name;
  if (dir === undefined) return undefined;
  let files: string[];
  try {
    files = await filesUnder(dir, CHECKPOINT, "--models-dir");
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  const byName = files.find((f) => sameModel(f, name) || relative(dir, f).replace(CHECKPOINT, "") === name);
  if (byName || !stored.modelHash) return byName;
  for (const file of files) {
    if (await hasHash(file, stored.modelHash)) return file;
  }
  return undefined;
}

/**
 * Whether a file has A1111's model hash: 10 hex digits are the start of the file's SHA-256 (A1111 since 1.0),
 * 8 are its older hash, the SHA-256 of the 64 KiB at 1 MiB.
 */
async function hasHash(path: string, hash: string): Promise<boolean> {
  const wanted = hash.toLowerCase();
  const digest = createHash("sha256");
  if (wanted.length === 8) {
    const handle = await open(path, "r");
    try {
      const bytes = new Uint8Array(0x10000);
      const { bytesRead } = await handle.read(bytes, 0, bytes.length, 0x100000);
      digest.update(bytes.subarray(0, bytesRead));
    } finally {
      await handle.close();
    }
  } else {
    for await (const chunk of createReadStream(path)) digest.update(chunk as Buffer);
  }
  return digest.digest("hex").startsWith(wanted);
}

/** The trigger words --embedding and --embeddings-dir make available (file names; the files are read later). */
async function embeddingNames(flags: RestoreFlags): Promise<Set<string>> {
  const folder = flags.embeddingsDir === undefined ? [] : await embeddingFilesIn(flags.embeddingsDir).catch(() => []);
  return new Set([...(flags.embedding ?? []), ...folder].map(embeddingName));
}
