import type { ByteReader, TensorEntry } from "./safetensors.ts";

/**
 * A container of named tensors whose bytes are read on demand: a safetensors file, or a PyTorch checkpoint
 * presented the same way (each tensor a contiguous byte range of a virtual reader). Layouts and the loader
 * only need this.
 */
export interface TensorFile {
  /** Shown in errors: a path or a name. */
  readonly name: string;
  /** Each entry's bytes are `[begin, end)` of this reader, row-major, in the entry's dtype. */
  readonly reader: ByteReader;
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  readonly metadata: Readonly<Record<string, string>>;
  /** The entry for `name`, or an error naming the file and the tensor. */
  entry(name: string): TensorEntry;
  /** The raw bytes of a (small) tensor, in a fresh buffer aligned for any typed-array view. */
  readBytes(name: string): Promise<Uint8Array>;
  close(): Promise<void>;
}
