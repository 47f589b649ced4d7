import type { ByteReader } from "./safetensors.ts";

/**
 * A zip reader for PyTorch checkpoints: the central directory (zip64 too, for files past 4 GiB), stored and
 * deflated entries. Entries are read on demand: a stored entry is a byte range of the file, read in place; a
 * deflated one is inflated only up to the size its directory entry declares.
 */

export class ZipError extends Error {}

export interface ZipEntry {
  readonly name: string;
  /** 0: stored, 8: deflated. */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  /** Offset of the local file header. */
  readonly headerOffset: number;
}

/** Bytes of the end of central directory record, without its comment. */
const EOCD_BYTES = 22;
const MAX_COMMENT = 0xffff;
/** A checkpoint's directory lists a few thousand storages; beyond this it is not a checkpoint. */
const MAX_DIRECTORY_BYTES = 64 * 1024 * 1024;

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;

export class ZipArchive {
  private readonly dataStarts = new Map<string, number>();

  private constructor(
    readonly reader: ByteReader,
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  static async open(reader: ByteReader): Promise<ZipArchive> {
    const name = reader.name;
    const tailBytes = Math.min(reader.size, EOCD_BYTES + MAX_COMMENT);
    const tail = new Uint8Array(tailBytes);
    await reader.readInto(reader.size - tailBytes, tail);
    const view = new DataView(tail.buffer);
    let at = -1;
    for (let i = tailBytes - EOCD_BYTES; i >= 0; i--) {
      if (view.getUint32(i, true) === SIG_EOCD) {
        at = i;
        break;
      }
    }
    if (at < 0) throw new ZipError(`${name}: not a zip archive (no end of central directory record)`);
    const eocdOffset = reader.size - tailBytes + at;
    let count = view.getUint16(at + 10, true);
    let dirSize = view.getUint32(at + 12, true);
    let dirOffset = view.getUint32(at + 16, true);
    if (count === 0xffff || dirSize === 0xffffffff || dirOffset === 0xffffffff) {
      ({ count, dirSize, dirOffset } = await readZip64End(reader, eocdOffset));
    }
    if (dirSize > MAX_DIRECTORY_BYTES) {
      throw new ZipError(
        `${name}: central directory of ${dirSize} bytes exceeds the ${MAX_DIRECTORY_BYTES}-byte limit`,
      );
    }
    if (dirOffset + dirSize > reader.size) {
      throw new ZipError(
        `${name}: central directory (bytes ${dirOffset}–${dirOffset + dirSize}) runs past the end of the file (${reader.size} bytes): truncated?`,
      );
    }
    const dir = new Uint8Array(dirSize);
    await reader.readInto(dirOffset, dir);
    return new ZipArchive(reader, parseDirectory(dir, count, reader.size, name));
  }

  get name(): string {
    return this.reader.name;
  }

  /** The entry called `name`, or an error naming it. */
  entry(name: string): ZipEntry {
    const e = this.entries.get(name);
    if (!e) throw new ZipError(`${this.name}: no entry "${name}" in the archive`);
    return e;
  }

  /** Absolute offset of an entry's data (after its local header, whose name and extra field may differ). */
  async dataStart(entry: ZipEntry): Promise<number> {
    const known = this.dataStarts.get(entry.name);
    if (known !== undefined) return known;
    const header = new Uint8Array(30);
    if (entry.headerOffset + 30 > this.reader.size) {
      throw new ZipError(`${this.name}: entry "${entry.name}" starts past the end of the file`);
    }
    await this.reader.readInto(entry.headerOffset, header);
    const view = new DataView(header.buffer);
    if (view.getUint32(0, true) !== SIG_LOCAL) {
      throw new ZipError(`${this.name}: entry "${entry.name}" has no local header at byte ${entry.headerOffset}`);
    }
    const start = entry.headerOffset + 30 + view.getUint16(26, true) + view.getUint16(28, true);
    if (start + entry.compressedSize > this.reader.size) {
      throw new ZipError(
        `${this.name}: entry "${entry.name}" (bytes ${start}–${start + entry.compressedSize}) runs past the end of the file (${this.reader.size} bytes): truncated?`,
      );
    }
    this.dataStarts.set(entry.name, start);
    return start;
  }

  /**
   * The whole (uncompressed) content of an entry, which must be at most `limit` bytes; a deflated entry that
   * inflates past its declared size is refused as it happens, before it can fill memory.
   */
  async read(entry: ZipEntry, limit: number): Promise<Uint8Array> {
    if (entry.size > limit) {
      throw new ZipError(
        `${this.name}: entry "${entry.name}" declares ${entry.size} bytes, over the ${limit}-byte limit`,
      );
    }
    const start = await this.dataStart(entry);
    const raw = new Uint8Array(entry.compressedSize);
    await this.reader.readInto(start, raw);
    return entry.method === 0 ? raw : inflate(raw, entry.size, `${this.name}: entry "${entry.name}"`);
  }
}

async function readZip64End(
  reader: ByteReader,
  eocdOffset: number,
): Promise<{ count: number; dirSize: number; dirOffset: number }> {
  const name = reader.name;
  if (eocdOffset < 20) throw new ZipError(`${name}: zip64 sizes announced, but no zip64 locator`);
  const locator = new Uint8Array(20);
  await reader.readInto(eocdOffset - 20, locator);
  const lv = new DataView(locator.buffer);
  if (lv.getUint32(0, true) !== SIG_ZIP64_LOCATOR)
    throw new ZipError(`${name}: zip64 sizes announced, but no zip64 locator`);
  const recordOffset = uint64(lv, 8, name);
  if (recordOffset + 56 > reader.size) throw new ZipError(`${name}: zip64 end record past the end of the file`);
  const record = new Uint8Array(56);
  await reader.readInto(recordOffset, record);
  const rv = new DataView(record.buffer);
  if (rv.getUint32(0, true) !== SIG_ZIP64_EOCD)
    throw new ZipError(`${name}: no zip64 end record at byte ${recordOffset}`);
  return { count: uint64(rv, 32, name), dirSize: uint64(rv, 40, name), dirOffset: uint64(rv, 48, name) };
}

function uint64(view: DataView, at: number, name: string): number {
  const value = view.getUint32(at, true) + view.getUint32(at + 4, true) * 2 ** 32;
  if (!Number.isSafeInteger(value)) throw new ZipError(`${name}: a 64-bit size or offset (${value}) is out of range`);
  return value;
}

function parseDirectory(dir: Uint8Array, count: number, fileSize: number, name: string): Map<string, ZipEntry> {
  const view = new DataView(dir.buffer, dir.byteOffset, dir.byteLength);
  const decoder = new TextDecoder();
  const entries = new Map<string, ZipEntry>();
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 46 > dir.byteLength || view.getUint32(at, true) !== SIG_CENTRAL) {
      throw new ZipError(`${name}: central directory entry ${i} of ${count} is missing or corrupt`);
    }
    const flags = view.getUint16(at + 8, true);
    const method = view.getUint16(at + 10, true);
    let compressedSize = view.getUint32(at + 20, true);
    let size = view.getUint32(at + 24, true);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    let headerOffset = view.getUint32(at + 42, true);
    const end = at + 46 + nameLength + extraLength + commentLength;
    if (end > dir.byteLength) throw new ZipError(`${name}: central directory entry ${i} runs past the directory`);
    const entryName = decoder.decode(dir.subarray(at + 46, at + 46 + nameLength));
    const where = `${name}: entry "${entryName}"`;
    // zip64 extra field: the 64-bit values of exactly the fields saturated above, in this order.
    let extra = at + 46 + nameLength;
    const extraEnd = extra + extraLength;
    while (extra + 4 <= extraEnd) {
      const id = view.getUint16(extra, true);
      const length = view.getUint16(extra + 2, true);
      if (extra + 4 + length > extraEnd) throw new ZipError(`${where}: extra field runs past its entry`);
      if (id === 0x0001) {
        let field = extra + 4;
        const next = () => {
          if (field + 8 > extra + 4 + length) throw new ZipError(`${where}: zip64 extra field too short`);
          const value = uint64(view, field, name);
          field += 8;
          return value;
        };
        if (size === 0xffffffff) size = next();
        if (compressedSize === 0xffffffff) compressedSize = next();
        if (headerOffset === 0xffffffff) headerOffset = next();
      }
      extra += 4 + length;
    }
    if (flags & 1) throw new ZipError(`${where}: encrypted entries are not supported`);
    if (method !== 0 && method !== 8) {
      throw new ZipError(`${where}: compression method ${method} is not supported (only stored and deflated)`);
    }
    if (method === 0 && compressedSize !== size) {
      throw new ZipError(`${where}: stored entry with ${compressedSize} bytes on disk but ${size} declared`);
    }
    if (headerOffset + compressedSize > fileSize) {
      throw new ZipError(`${where}: runs past the end of the file (${fileSize} bytes): truncated?`);
    }
    if (entries.has(entryName)) throw new ZipError(`${where}: listed twice in the central directory`);
    entries.set(entryName, { name: entryName, method, compressedSize, size, headerOffset });
    at = end;
  }
  return entries;
}

/**
 * Raw deflate → exactly `size` bytes. Output past `size` stops the inflation there (a zip bomb announces a small
 * size and inflates to gigabytes); output short of it, or a corrupt stream, is an error too.
 */
export async function inflate(compressed: Uint8Array, size: number, where: string): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  let filled = 0;
  const stream = new Blob([compressed as Uint8Array<ArrayBuffer>])
    .stream()
    .pipeThrough(new DecompressionStream("deflate-raw"));
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (filled + value.byteLength > size) {
        throw new ZipError(`${where}: inflates to more than its declared ${size} bytes (a zip bomb?)`);
      }
      out.set(value, filled);
      filled += value.byteLength;
    }
  } catch (e) {
    if (e instanceof ZipError) throw e;
    throw new ZipError(`${where}: corrupt deflate data (${(e as Error).message})`);
  } finally {
    reader.cancel().catch(() => {});
  }
  if (filled !== size) throw new ZipError(`${where}: inflates to ${filled} bytes, not the declared ${size}`);
  return out;
}
