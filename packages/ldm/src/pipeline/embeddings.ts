/**
 * Textual-inversion embeddings as AUTOMATIC1111 reads them (modules/textual_inversion): a file's name is its
 * trigger word, and the file holds one tensor of n vectors the width of the text encoder's token embeddings.
 * A1111's `.pt` (`string_to_param: {"*": tensor}`, read as data by our torch checkpoint reader), diffusers'
 * `learned_embeds.bin` (`{"<token>": tensor}`), and `.safetensors` with a single tensor (`emb_params`, or
 * `string_to_param.*`). SD 1.x embeddings are 768 wide, SD 2.x (OpenCLIP ViT-H) 1024.
 */
import {
  blobReader,
  convertElements,
  isFloatStoredDType,
  SafetensorsFile,
  type TensorFile,
  TorchCheckpoint,
  TorchCheckpointError,
} from "@ldm/weights";
import type { ClipTokenizer } from "../tokenizer/clip-tokenizer.ts";
import { type Trigger, TriggerTable } from "../tokenizer/prompt-attention.ts";

export interface TextualInversion {
  /** The trigger word: the file's name without its extension. */
  name: string;
  /** [count, width], row-major. */
  vectors: Float32Array;
  count: number;
  width: number;
  /** SHA-256 of the file in hex: A1111 records its first 12 digits in the infotext's "TI hashes". */
  sha256?: string;
}

/** Embedding files by extension, as A1111's loader takes them (it also reads embeddings hidden in images). */
export const EMBEDDING_FILE = /\.(pt|bin|safetensors)$/i;

/** An embedding file is a few KiB (75 vectors of 1024 floats are 300 KiB); this bounds what is read whole. */
export const MAX_EMBEDDING_BYTES = 64 * 1024 * 1024;

/** The trigger word of an embedding file: its base name without the extension. */
export function embeddingName(fileName: string): string {
  const base = fileName.split(/[\\/]/).pop() ?? fileName;
  return base.replace(/\.[^.]*$/, "");
}

/** Reads an embedding from a file's bytes; `fileName` gives its format (extension) and trigger word. */
export async function parseEmbedding(bytes: Uint8Array<ArrayBuffer>, fileName: string): Promise<TextualInversion> {
  const format = EMBEDDING_FILE.exec(fileName)?.[1].toLowerCase();
  if (!format) throw new Error(`${fileName}: not an embedding file (.pt, .bin or .safetensors)`);
  if (bytes.byteLength > MAX_EMBEDDING_BYTES) {
    throw new Error(
      `${fileName}: ${bytes.byteLength} bytes is too large for an embedding (at most ${MAX_EMBEDDING_BYTES})`,
    );
  }
  const reader = blobReader(new Blob([bytes]), fileName);
  const file = format === "safetensors" ? await SafetensorsFile.open(reader) : await openTorchEmbedding(reader);
  try {
    const [key, ...others] = [...file.tensors.keys()];
    if (file.tensors.has("clip_g") || file.tensors.has("clip_l")) {
      throw new Error(`${fileName}: an SDXL embedding (clip_g, clip_l): SDXL models are not supported`);
    }
    if (key === undefined || others.length) {
      throw new Error(
        `${fileName}: an embedding holds one tensor; this file has ${file.tensors.size}${key === undefined ? "" : ` (${[...file.tensors.keys()].join(", ")})`}`,
      );
    }
    const vectors = await readVectors(file, key);
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    const sha256 = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    return { name: embeddingName(fileName), ...vectors, sha256 };
  } finally {
    await file.close();
  }
}

/** A1111's `string_to_param` dict when the file has one, else the top level (diffusers' `{"<token>": tensor}`). */
async function openTorchEmbedding(reader: ReturnType<typeof blobReader>): Promise<TensorFile> {
  let stringToParam = false;
  try {
    return await TorchCheckpoint.open(reader, {
      select: (root) => {
        stringToParam = root.map.has("string_to_param");
        return "string_to_param";
      },
    });
  } catch (e) {
    if (stringToParam || !(e instanceof TorchCheckpointError)) throw e;
  }
  return TorchCheckpoint.open(reader);
}

async function readVectors(file: TensorFile, key: string): Promise<Omit<TextualInversion, "name" | "sha256">> {
  const entry = file.entry(key);
  const { shape, dtype } = entry;
  if (!isFloatStoredDType(dtype) || (shape.length !== 1 && shape.length !== 2)) {
    throw new Error(
      `${file.name}: tensor "${key}" is ${dtype} [${shape.join(", ")}]; an embedding is floats [vectors, width] (or one [width] vector)`,
    );
  }
  const [count, width] = shape.length === 1 ? [1, shape[0]] : shape;
  if (count < 1 || width < 1) throw new Error(`${file.name}: tensor "${key}" [${shape.join(", ")}] holds no vector`);
  const vectors = new Float32Array(count * width);
  convertElements(dtype, "f32", await file.readBytes(key), new Uint8Array(vectors.buffer), vectors.length);
  return { vectors, count, width };
}

/** The triggers of embeddings whose vectors are the ids from `firstId` on, in the order given. */
export function embeddingTriggers(
  tokenizer: ClipTokenizer,
  embeddings: readonly TextualInversion[],
  firstId: number,
): Trigger[] {
  let id = firstId;
  return embeddings.map((e) => {
    const ids = Array.from({ length: e.count }, (_, i) => id + i);
    id += e.count;
    return { name: e.name, tokens: tokenizer.encode(e.name), ids };
  });
}

/** How an embedding entered a set: given by itself (a wrong width is an error) or found in a folder. */
export type EmbeddingOrigin = "file" | "folder";

/**
 * The embeddings a CLIP model's prompts can use: their triggers for the chunker, their vectors as the token ids
 * after the vocabulary. A folder's embeddings of another width (SD 1.x files beside SD 2.x ones) are kept
 * aside as A1111 keeps them, but a prompt that uses one is refused instead of being read as plain words.
 */
export class EmbeddingSet {
  private readonly usable = new Map<string, TextualInversion>();
  private readonly otherWidth = new Map<string, TextualInversion>();
  private table?: TriggerTable;

  constructor(
    private readonly tokenizer: ClipTokenizer,
    /** The text encoder's vocabulary: the first vector's id. */
    readonly vocabulary: number,
    /** The text encoder's token embedding width (768 for SD 1.x, 1024 for SD 2.x). */
    readonly width: number,
    /** A chunk's prompt tokens (75): an embedding's vectors must fit in one. */
    readonly maxVectors: number,
  ) {}

  /** The embeddings prompts can use, in the order of their vector ids. */
  get list(): TextualInversion[] {
    return [...this.usable.values()];
  }

  /** A folder's embeddings of another width, which prompts may not use (A1111's "skipped"). */
  get skipped(): TextualInversion[] {
    return [...this.otherWidth.values()];
  }

  /** Vectors of all usable embeddings. */
  get vectorCount(): number {
    return this.list.reduce((n, e) => n + e.count, 0);
  }

  /** The triggers for chunkPrompt, undefined when the set is empty. */
  get triggers(): TriggerTable | undefined {
    if (this.table || (!this.usable.size && !this.otherWidth.size)) return this.table;
    const triggers = embeddingTriggers(this.tokenizer, this.list, this.vocabulary);
    for (const e of this.otherWidth.values()) {
      triggers.push({ name: e.name, tokens: this.tokenizer.encode(e.name), ids: [], refused: this.widthError(e) });
    }
    this.table = new TriggerTable(triggers);
    return this.table;
  }

  /** Adds (or, by name, replaces) an embedding; one of another width is refused, or set aside from a folder. */
  add(embedding: TextualInversion, origin: EmbeddingOrigin = "file"): void {
    if (!this.tokenizer.encode(embedding.name).length) {
      throw new Error(`embedding "${embedding.name}": its name (the trigger word) has no tokens`);
    }
    if (embedding.count > this.maxVectors) {
      throw new Error(
        `embedding "${embedding.name}" has ${embedding.count} vectors: more than the ${this.maxVectors} tokens of a prompt chunk`,
      );
    }
    this.usable.delete(embedding.name);
    this.otherWidth.delete(embedding.name);
    this.table = undefined;
    if (embedding.width === this.width) {
      this.usable.set(embedding.name, embedding);
      return;
    }
    if (origin === "file") throw new Error(this.widthError(embedding));
    this.otherWidth.set(embedding.name, embedding);
  }

  /** Removes the named embeddings, or all. */
  remove(names?: readonly string[]): void {
    for (const name of names ?? [...this.usable.keys(), ...this.otherWidth.keys()]) {
      this.usable.delete(name);
      this.otherWidth.delete(name);
    }
    this.table = undefined;
  }

  /** All usable vectors [vectorCount, width], in id order. */
  vectors(): Float32Array {
    const out = new Float32Array(this.vectorCount * this.width);
    let at = 0;
    for (const e of this.list) {
      out.set(e.vectors, at);
      at += e.vectors.length;
    }
    return out;
  }

  /**
   * A1111's "TI hashes" of the named embeddings: name → the first 12 hex digits of the file's SHA-256 ("" for
   * an embedding given without its file).
   */
  hashes(names: readonly string[]): Record<string, string> {
    return Object.fromEntries(names.map((name) => [name, this.usable.get(name)?.sha256?.slice(0, 12) ?? ""]));
  }

  private widthError(e: TextualInversion): string {
    return `embedding "${e.name}" has vectors of width ${e.width}; this text encoder's token embeddings are ${this.width} wide (SD 1.x: 768, SD 2.x: 1024)`;
  }
}
