/**
 * LoRA files on disk: reading one (with A1111's hash of it), and A1111's `--lora-dir` lookup: every
 * `.safetensors` / `.pt` / `.ckpt` under the folder, called by its file stem or its kohya `ss_output_name`.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir } from "node:fs/promises";
import { basename, extname, join } from "node:path";
import { SafetensorsFile } from "@ldm/weights";
import { openSafetensors, openTorchCheckpoint, TORCH_CHECKPOINT } from "@ldm/weights/node";
import { type Lora, readLora } from "./merge.ts";

const LORA_FILE = /\.(safetensors|pt|ckpt)$/i;

/** A file's name without its extension: what `<lora:…>` calls it. */
export function loraName(path: string): string {
  return basename(path, extname(path));
}

/** The sha256 of a file from byte `start` on, in hex. */
async function sha256(path: string, start: number): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { start })) hash.update(chunk);
  return hash.digest("hex");
}

/**
 * Reads a LoRA file. Its hash is A1111's: kohya's "addnet" hash (sha256 of the data after the safetensors
 * header) for .safetensors, unless the metadata carries one (`sshs_model_hash`); the whole file's sha256 else.
 */
export async function loadLora(path: string, name = loraName(path)): Promise<Lora> {
  const file = TORCH_CHECKPOINT.test(path) ? await openTorchCheckpoint(path) : await openSafetensors(path);
  try {
    const start = file instanceof SafetensorsFile ? file.header.dataStart : 0;
    const hash = file.metadata.sshs_model_hash || (await sha256(path, start));
    return await readLora(file, name, { hash, path });
  } finally {
    await file.close();
  }
}

export interface LoraOnDisk {
  name: string;
  path: string;
  /** kohya's `ss_output_name`, when it differs from the name. */
  alias?: string;
  metadata: Readonly<Record<string, string>>;
}

/** Every LoRA file under `dir` (recursively), sorted by name; a file whose header does not read is named. */
export async function listLoras(dir: string): Promise<LoraOnDisk[]> {
  let entries: string[];
  try {
    entries = (await readdir(dir, { recursive: true })).map(String);
  } catch (e) {
    throw new Error(`LoRA folder ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const found: LoraOnDisk[] = [];
  for (const entry of entries.filter((e) => LORA_FILE.test(e)).sort()) {
    const path = join(dir, entry);
    const metadata = TORCH_CHECKPOINT.test(path) ? {} : await safetensorsMetadata(path);
    const name = loraName(path);
    const alias = metadata.ss_output_name;
    found.push({ name, path, ...(alias && alias !== name ? { alias } : {}), metadata });
  }
  return found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

async function safetensorsMetadata(path: string): Promise<Readonly<Record<string, string>>> {
  const file = await openSafetensors(path);
  try {
    return file.metadata;
  } finally {
    await file.close();
  }
}

/** The LoRA `<lora:name:…>` names in `dir`: by file stem first, then by alias, as A1111 looks it up. */
export async function findLora(dir: string, name: string): Promise<LoraOnDisk> {
  const all = await listLoras(dir);
  const found = all.find((l) => l.name === name) ?? all.find((l) => l.alias === name);
  if (!found) {
    const known = all.map((l) => l.name).slice(0, 20);
    throw new Error(
      `no LoRA "${name}" in ${dir} (${known.length ? `it has ${known.join(", ")}${all.length > known.length ? ", …" : ""}` : "it has no .safetensors, .pt or .ckpt files"})`,
    );
  }
  return found;
}
