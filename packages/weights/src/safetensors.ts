import { formatShape } from "@ldm/tensor";
import { isStoredDType, STORED_DTYPE_BYTES, type StoredDType } from "./dtype.ts";

/**
 * The safetensors container, independent of where the bytes live: an 8-byte little-endian header length, a
 * JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`, then
 * the data, with offsets relative to the end of the header.
 */

/** The largest header accepted: real checkpoints have headers of a few hundred KiB. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Random access to the bytes of a file, a Blob or anything else that can serve byte ranges. */
export interface ByteReader {
  /** Shown in errors: a path or a name. */
  readonly name: string;
  readonly size: number;
  /** Fills all of `target` with the bytes starting at `position`, or throws. */
  readInto(position: number, target: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export class SafetensorsError extends Error {}

export interface TensorEntry {
  readonly name: string;
  readonly dtype: StoredDType;
  readonly shape: readonly number[];
  /** Element count. */
  readonly size: number;
  /** Absolute byte range in the file. */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  readonly metadata: Readonly<Record<string, string>>;
  /** Absolute offset of the data section. */
  readonly dataStart: number;
}

/** Reads the header length from the first 8 bytes and checks it against the limit and the file size. */
export function headerLength(first8: Uint8Array, fileSize: number, origin: string): number {
  if (fileSize < 8) {
    throw new SafetensorsError(
      `${origin}: not a safetensors file: ${fileSize} bytes, too short for the 8-byte header length`,
    );
  }
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const low = view.getUint32(0, true);
  const high = view.getUint32(4, true);
  const length = high * 2 ** 32 + low;
  if (length > MAX_HEADER_BYTES) {
    throw new SafetensorsError(
      `${origin}: not a safetensors file, or a corrupt one: header length ${length} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  if (length > fileSize - 8) {
    throw new SafetensorsError(
      `${origin}: truncated or not a safetensors file: header length ${length} bytes runs past the end of the file (${fileSize} bytes)`,
    );
  }
  if (length < 2) throw new SafetensorsError(`${origin}: header length ${length} is too short for a JSON object`);
  return length;
}

/** Parses and validates the JSON header; `fileSize` bounds every tensor's byte range. */
export function parseHeader(json: Uint8Array, fileSize: number, origin: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(json);
  } catch {
    throw new SafetensorsError(`${origin}: the header is not valid UTF-8`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(`${origin}: the header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(parsed)) throw new SafetensorsError(`${origin}: the header is not a JSON object`);
  const duplicate = firstDuplicateKey(text);
  if (duplicate) {
    throw new SafetensorsError(
      `${origin}: the header names "${duplicate.key}" twice (again at header byte ${duplicate.at}): which one is meant is ambiguous`,
    );
  }

  const dataStart = 8 + json.byteLength;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorEntry>();
  for (const [name, value] of Object.entries(parsed)) {
    if (name === "__metadata__") {
      metadata = parseMetadata(value, origin);
      continue;
    }
    const entry = parseEntry(name, value, dataSize, origin);
    tensors.set(name, { ...entry, begin: entry.begin + dataStart, end: entry.end + dataStart });
  }
  assertContiguous([...tensors.values()], dataStart, fileSize, origin);
  return { tensors, metadata, dataStart };
}

/**
 * The first key that appears twice in one object of a JSON text (JSON.parse silently keeps the last), with its
 * UTF-8 byte offset in the header. Assumes `text` is valid JSON.
 */
function firstDuplicateKey(text: string): { key: string; at: number } | undefined {
  const objects: Set<string>[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") objects.push(new Set());
    else if (c === "}") objects.pop();
    else if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === "\\") i++;
      let j = i + 1;
      while (/\s/.test(text[j] ?? "")) j++;
      if (text[j] !== ":") continue;
      const key = JSON.parse(text.slice(start, i + 1)) as string;
      const keys = objects[objects.length - 1];
      if (keys.has(key)) return { key, at: new TextEncoder().encode(text.slice(0, start)).byteLength };
      keys.add(key);
    }
  }
  return undefined;
}

function parseMetadata(value: unknown, origin: string): Record<string, string> {
  if (!isPlainObject(value)) throw new SafetensorsError(`${origin}: "__metadata__" must be an object of strings`);
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== "string") {
      throw new SafetensorsError(`${origin}: "__metadata__" entry "${k}" is a ${typeof v}, not a string`);
    }
  }
  return value as Record<string, string>;
}

function parseEntry(name: string, value: unknown, dataSize: number, origin: string): TensorEntry {
  const where = `${origin}: tensor "${name}"`;
  if (!isPlainObject(value)) throw new SafetensorsError(`${where}: entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== "string" || !isStoredDType(dtype)) {
    throw new SafetensorsError(
      `${where}: unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(STORED_DTYPE_BYTES).join(", ")})`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isIndex)) {
    throw new SafetensorsError(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
    throw new SafetensorsError(`${where}: data_offsets ${JSON.stringify(offsets)} is not a pair of byte offsets`);
  }
  const [begin, end] = offsets as number[];
  if (begin > end) throw new SafetensorsError(`${where}: data_offsets [${begin}, ${end}] run backwards`);
  if (end > dataSize) {
    throw new SafetensorsError(
      `${where}: data_offsets [${begin}, ${end}] run past the end of the data (${dataSize} bytes): the file is truncated or corrupt`,
    );
  }
  let size = 1;
  for (const d of shape as number[]) size *= d;
  const expected = size * STORED_DTYPE_BYTES[dtype];
  if (!Number.isSafeInteger(expected) || expected !== end - begin) {
    throw new SafetensorsError(
      `${where}: ${dtype} ${formatShape(shape as number[])} needs ${expected} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return { name, dtype, shape: Object.freeze([...(shape as number[])]), size, begin, end };
}

/**
 * As the format's reference implementation: the tensors, in offset order, tile the data section exactly, from
 * its first byte to the end of the file: no overlap, no hole, nothing after the last tensor.
 */
function assertContiguous(entries: TensorEntry[], dataStart: number, fileSize: number, origin: string): void {
  const sorted = entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = dataStart;
  let previous: TensorEntry | undefined;
  for (const e of sorted) {
    const relative = (x: number) => x - dataStart;
    if (e.begin < at && previous) {
      throw new SafetensorsError(
        `${origin}: tensors "${previous.name}" and "${e.name}" overlap (data bytes ${relative(previous.begin)}–${relative(previous.end)} and ${relative(e.begin)}–${relative(e.end)})`,
      );
    }
    if (e.begin > at) {
      const after = previous ? `after tensor "${previous.name}"` : "at the start of the data";
      throw new SafetensorsError(
        `${origin}: a hole of ${e.begin - at} bytes ${after} (data bytes ${relative(at)}–${relative(e.begin)}, before tensor "${e.name}"): no tensor covers them`,
      );
    }
    at = e.end;
    previous = e;
  }
  // A stream of unknown length (fileSize Infinity) cannot be checked for trailing bytes up front.
  if (at < fileSize && Number.isFinite(fileSize)) {
    const after = previous ? `the last tensor "${previous.name}"` : "the header (the file has no tensors)";
    throw new SafetensorsError(
      `${origin}: ${fileSize - at} trailing bytes after ${after}, from file offset ${at}: the file is corrupt or not one safetensors file`,
    );
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isIndex(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** A safetensors container whose header has been read and validated; data is read on demand. */
export class SafetensorsFile {
  private constructor(
    readonly reader: ByteReader,
    readonly header: SafetensorsHeader,
  ) {}

  static async open(reader: ByteReader): Promise<SafetensorsFile> {
    const first8 = new Uint8Array(8);
    if (reader.size < 8) headerLength(first8, reader.size, reader.name);
    await reader.readInto(0, first8);
    const length = headerLength(first8, reader.size, reader.name);
    const json = new Uint8Array(length);
    await reader.readInto(8, json);
    return new SafetensorsFile(reader, parseHeader(json, reader.size, reader.name));
  }

  get name(): string {
    return this.reader.name;
  }

  get tensors(): ReadonlyMap<string, TensorEntry> {
    return this.header.tensors;
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  /** The entry for `name`, or an error naming the file and the tensor. */
  entry(name: string): TensorEntry {
    const e = this.header.tensors.get(name);
    if (!e) throw new SafetensorsError(`${this.name}: no tensor "${name}"`);
    return e;
  }

  /** The raw bytes of a (small) tensor, in a fresh buffer aligned for any typed-array view. */
  async readBytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const bytes = new Uint8Array(e.end - e.begin);
    await this.reader.readInto(e.begin, bytes);
    return bytes;
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}

export interface TensorToWrite {
  dtype: StoredDType;
  shape: readonly number[];
  /** The elements in row-major order, or a function producing them when the writer gets to this tensor. */
  data: ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);
}

export interface EncodedLayout {
  /** Length prefix and JSON header, padded with spaces to a multiple of 8 bytes. */
  header: Uint8Array;
  /** Tensor names in the order their data follows the header. */
  order: string[];
}

/** Builds the header for `tensors` (data follows in `order`); checks every shape against the data size. */
export function encodeHeader(
  tensors: Readonly<Record<string, TensorToWrite>>,
  metadata?: Readonly<Record<string, string>>,
): EncodedLayout {
  const json: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) json.__metadata__ = metadata;
  const order = Object.keys(tensors).sort();
  let offset = 0;
  for (const name of order) {
    const t = tensors[name];
    if (!isStoredDType(t.dtype)) throw new SafetensorsError(`tensor "${name}": unknown dtype ${t.dtype}`);
    let size = 1;
    for (const d of t.shape) size *= d;
    const bytes = size * STORED_DTYPE_BYTES[t.dtype];
    if (typeof t.data !== "function" && t.data.byteLength !== bytes) {
      throw new SafetensorsError(
        `tensor "${name}": ${t.dtype} ${formatShape(t.shape)} needs ${bytes} bytes, the data has ${t.data.byteLength}`,
      );
    }
    json[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const text = new TextEncoder().encode(JSON.stringify(json));
  const padded = Math.ceil(text.byteLength / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + text.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(text, 8);
  return { header, order };
}
