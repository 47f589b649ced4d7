/** Textual-inversion embedding files on disk: one file, or A1111's embeddings folder (every file under it). */
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { EMBEDDING_FILE, MAX_EMBEDDING_BYTES, parseEmbedding, type TextualInversion } from "./embeddings.ts";

/** Reads one embedding file; its name without the extension is the trigger word. */
export async function readEmbeddingFile(path: string): Promise<TextualInversion> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (e) {
    throw new Error(`embedding ${path}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (size > MAX_EMBEDDING_BYTES) {
    throw new Error(`embedding ${path}: ${size} bytes is too large for an embedding (at most ${MAX_EMBEDDING_BYTES})`);
  }
  return parseEmbedding(new Uint8Array(await readFile(path)), path);
}

/**
 * The embedding files under a folder and its subfolders, sorted (A1111 walks the folder the same way and skips
 * empty files); a later file of the same name replaces an earlier one when they are added in this order.
 */
export function embeddingFilesIn(dir: string): Promise<string[]> {
  return filesUnder(dir, EMBEDDING_FILE, "embeddings folder");
}

/** The non-empty files under a folder and its subfolders (links followed) whose names match, sorted. */
export async function filesUnder(dir: string, names: RegExp, what: string): Promise<string[]> {
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error("not a folder");
  } catch (e) {
    throw new Error(`${what} ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const found: string[] = [];
  const walk = async (folder: string) => {
    for (const entry of await readdir(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      const target = entry.isSymbolicLink() ? await stat(path).catch(() => undefined) : entry;
      if (target?.isDirectory()) await walk(path);
      else if (target?.isFile() && names.test(entry.name) && (await stat(path)).size > 0) found.push(path);
    }
  };
  await walk(dir);
  return found.sort();
}
