import { formatShape } from "@ldm/tensor";
import { STORED_DTYPE_BYTES } from "./dtype.ts";
import {
  describeValue,
  index,
  PickleError,
  PyDict,
  PyGlobal,
  PyTuple,
  type PyValue,
  STORAGE_DTYPES,
  TorchStorage,
  TorchTensor,
  TruncatedPickleError,
  unpickle,
} from "./pickle.ts";
import type { ByteReader, TensorEntry } from "./safetensors.ts";
import type { TensorFile } from "./tensor-file.ts";
import { ZipArchive, type ZipEntry } from "./zip.ts";

/**
 * PyTorch checkpoints (`torch.save`) read as data: the zip format (`<name>/data.pkl` and one entry per storage
 * under `<name>/data/`) and the legacy format (pickles back to back, then the raw storages). The pickle goes
 * through our interpreter (pickle.ts), which only builds values; the chosen state dict's tensors are then
 * presented as a TensorFile whose reader lays every tensor out contiguously, row-major, in key order, and
 * reads each from its storage on demand — strided views gathered element by element, shared storages read
 * twice — so the layouts and the loader treat it exactly as a safetensors file.
 */

export class TorchCheckpointError extends Error {}

export interface TorchOpenOptions {
  /**
   * The top-level key whose dict holds the tensors to present, e.g. `string_to_param` for a textual-inversion
   * embedding; by default `state_dict`, else `model`, else the top level itself.
   */
  select?(root: PyDict): string | undefined;
}

/** data.pkl of a checkpoint is a few MiB at most (a state dict's names and shapes, optimizer bookkeeping). */
export const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
/** A deflated storage is inflated whole into memory when read (torch writes them stored); this bounds it. */
export const MAX_INFLATED_STORAGE_BYTES = 1024 * 1024 * 1024;
/** A strided tensor's elements are gathered from storage spans of at most this many bytes at a time. */
const MAX_GATHER_SPAN = 64 * 1024 * 1024;

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

/** The bytes of one storage, wherever they are. */
interface StorageBytes {
  readonly size: number;
  read(position: number, target: Uint8Array): Promise<void>;
}

interface Placed {
  entry: TensorEntry;
  tensor: TorchTensor;
  storage: StorageBytes;
  contiguous: boolean;
}

export class TorchCheckpoint implements TensorFile {
  readonly reader: ByteReader;

  private constructor(
    private readonly file: ByteReader,
    readonly tensors: ReadonlyMap<string, TensorEntry>,
    private readonly placed: readonly Placed[],
    readonly metadata: Readonly<Record<string, string>>,
    /** Where in the file the state dict was (`state_dict`, `model`, or the top level). */
    readonly stateDictKey: string | undefined,
  ) {
    this.reader = {
      name: file.name,
      size: placed.length ? placed[placed.length - 1].entry.end : 0,
      readInto: (position, target) => this.readVirtual(position, target),
      close: () => file.close(),
    };
  }

  /** Opens a checkpoint from any ByteReader (a file, a Blob); reads the pickle, not the tensors. */
  static async open(file: ByteReader, options: TorchOpenOptions = {}): Promise<TorchCheckpoint> {
    const first = new Uint8Array(Math.min(4, file.size));
    await file.readInto(0, first);
    if (first[0] === 0x50 && first[1] === 0x4b) return TorchCheckpoint.fromZip(file, options);
    if (first[0] === 0x80) return TorchCheckpoint.fromLegacy(file, options);
    throw new TorchCheckpointError(
      `${file.name}: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle; first bytes ${[...first].map((b) => b.toString(16).padStart(2, "0")).join(" ")})`,
    );
  }

  get name(): string {
    return this.file.name;
  }

  entry(name: string): TensorEntry {
    const e = this.tensors.get(name);
    if (!e) throw new TorchCheckpointError(`${this.name}: no tensor "${name}"`);
    return e;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const bytes = new Uint8Array(e.end - e.begin);
    await this.reader.readInto(e.begin, bytes);
    return bytes;
  }

  close(): Promise<void> {
    return this.file.close();
  }

  private static async fromZip(file: ByteReader, options: TorchOpenOptions): Promise<TorchCheckpoint> {
    const archive = await ZipArchive.open(file);
    const pickles = [...archive.entries.keys()].filter((n) => /^([^/]+\/)?data\.pkl$/.test(n));
    if (pickles.length !== 1) {
      throw new TorchCheckpointError(
        `${file.name}: a zip archive, but not a torch.save checkpoint: ${pickles.length ? `several data.pkl (${pickles.join(", ")})` : "no <name>/data.pkl"}`,
      );
    }
    const prefix = pickles[0].slice(0, -"data.pkl".length);
    const byteorder = archive.entries.get(`${prefix}byteorder`);
    if (byteorder) {
      const order = new TextDecoder().decode(await archive.read(byteorder, 16));
      if (order !== "little") throw new TorchCheckpointError(`${file.name}: byte order "${order}" is not supported`);
    }
    const pickle = await archive.read(archive.entry(pickles[0]), MAX_PICKLE_BYTES);
    const storages = new Map<string, ZipEntry>();
    const { value } = unpickle(pickle, 0, {
      origin: `${file.name} (${pickles[0]})`,
      persistentLoad: (pid) => {
        const storage = storageFromPid(pid, file.name, 5);
        const entry = archive.entries.get(`${prefix}data/${storage.key}`);
        if (!entry) {
          throw new TorchCheckpointError(
            `${file.name}: storage "${storage.key}" is not in the archive (no entry ${prefix}data/${storage.key})`,
          );
        }
        storages.set(storage.key, entry);
        return storage;
      },
    });
    const bytesOf = new Map<string, StorageBytes>();
    const inflated: InflatedSlot = {};
    for (const [key, entry] of storages) bytesOf.set(key, zipStorage(archive, entry, inflated));
    return TorchCheckpoint.build(file, value, bytesOf, "zip", options);
  }

  private static async fromLegacy(file: ByteReader, options: TorchOpenOptions): Promise<TorchCheckpoint> {
    // The pickles' total length is only known by running them: read a prefix, and a longer one if it ends early.
    for (let length = Math.min(file.size, 1 << 20); ; length = Math.min(file.size, length * 4)) {
      const head = new Uint8Array(length);
      await file.readInto(0, head);
      try {
        return await TorchCheckpoint.parseLegacy(file, head, options);
      } catch (e) {
        if (!(e instanceof TruncatedPickleError) || length === file.size || length >= MAX_PICKLE_BYTES) throw e;
      }
    }
  }

  private static async parseLegacy(
    file: ByteReader,
    head: Uint8Array,
    options: TorchOpenOptions,
  ): Promise<TorchCheckpoint> {
    const origin = `${file.name} (legacy format)`;
    const plain = { origin, persistentLoad: () => refusePersistent(origin) };
    const magic = unpickle(head, 0, plain);
    if (magic.value !== LEGACY_MAGIC) {
      throw new TorchCheckpointError(`${file.name}: a pickle, but not a torch.save checkpoint (no magic number)`);
    }
    const protocol = unpickle(head, magic.end, plain);
    if (protocol.value !== LEGACY_PROTOCOL) {
      throw new TorchCheckpointError(
        `${file.name}: legacy protocol version ${describeValue(protocol.value)} is not 1001`,
      );
    }
    const sysInfo = unpickle(head, protocol.end, plain);
    if (sysInfo.value instanceof PyDict && sysInfo.value.map.get("little_endian") === false) {
      throw new TorchCheckpointError(`${file.name}: a big-endian checkpoint is not supported`);
    }
    // Root storages by key; a view (old torch) names its root and an element offset into it.
    const roots = new Map<string, TorchStorage>();
    const main = unpickle(head, sysInfo.end, {
      origin,
      persistentLoad: (pid) => {
        const storage = storageFromPid(pid, file.name, 6);
        const view = (pid as PyTuple).items[5];
        const root = roots.get(storage.key);
        if (root && root.dtype !== storage.dtype) {
          throw new TorchCheckpointError(`${file.name}: storage "${storage.key}" is named with two dtypes`);
        }
        if (!root || root.numel < storage.numel) roots.set(storage.key, storage);
        if (view === null) return storage;
        if (!(view instanceof PyTuple) || view.items.length !== 3) {
          throw new TorchCheckpointError(`${file.name}: storage view of "${storage.key}" is not (key, offset, size)`);
        }
        const offset = index(view.items[1], `${file.name}: view offset`);
        const size = index(view.items[2], `${file.name}: view size`);
        return new TorchStorage(storage.key, storage.dtype, size, offset);
      },
    });
    const keys = unpickle(head, main.end, plain);
    if (!Array.isArray(keys.value) || !keys.value.every((k) => typeof k === "string")) {
      throw new TorchCheckpointError(`${file.name}: the storage key list is ${describeValue(keys.value)}`);
    }
    // Each storage in that order: its element count (int64, little-endian), then its bytes.
    const bytesOf = new Map<string, StorageBytes>();
    let at = keys.end;
    const header = new Uint8Array(8);
    for (const key of keys.value as string[]) {
      const root = roots.get(key);
      if (!root) throw new TorchCheckpointError(`${file.name}: storage "${key}" is stored but never used`);
      if (at + 8 > file.size)
        throw new TorchCheckpointError(`${file.name}: storage "${key}" is past the end of the file`);
      await file.readInto(at, header);
      const view = new DataView(header.buffer);
      const numel = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
      const bytes = numel * STORED_DTYPE_BYTES[root.dtype];
      if (!Number.isSafeInteger(bytes) || at + 8 + bytes > file.size) {
        throw new TorchCheckpointError(
          `${file.name}: storage "${key}" (${numel} elements at byte ${at + 8}) runs past the end of the file (${file.size} bytes): truncated?`,
        );
      }
      bytesOf.set(key, fileRange(file, at + 8, bytes));
      at += 8 + bytes;
    }
    for (const key of roots.keys()) {
      if (!bytesOf.has(key)) throw new TorchCheckpointError(`${file.name}: storage "${key}" is used but not stored`);
    }
    return TorchCheckpoint.build(file, main.value, bytesOf, "legacy", options);
  }

  /** Picks the state dict out of the unpickled object and lays its tensors out. */
  private static build(
    file: ByteReader,
    root: PyValue,
    bytesOf: ReadonlyMap<string, StorageBytes>,
    format: string,
    options: TorchOpenOptions,
  ): TorchCheckpoint {
    if (!(root instanceof PyDict)) {
      throw new TorchCheckpointError(
        `${file.name}: the checkpoint holds ${describeValue(root)}, not a dict of tensors`,
      );
    }
    const { dict, key } = options.select ? selected(root, options.select, file.name) : findStateDict(root);
    const metadata: Record<string, string> = { format: `pytorch-${format}` };
    if (key) metadata.state_dict = key;
    for (const [k, v] of root.map) {
      if (typeof k === "string" && k !== key && isScalar(v)) metadata[k] = String(v);
    }
    const tensors = new Map<string, TensorEntry>();
    const placed: Placed[] = [];
    let offset = 0;
    for (const [name, value] of dict.map) {
      if (!(value instanceof TorchTensor) || typeof name !== "string") continue;
      const storage = bytesOf.get(value.storage.key)!;
      checkBounds(file.name, name, value, storage);
      const size = value.shape.reduce((a, b) => a * b, 1);
      const bytes = size * STORED_DTYPE_BYTES[value.storage.dtype];
      const entry: TensorEntry = {
        name,
        dtype: value.storage.dtype,
        shape: Object.freeze([...value.shape]),
        size,
        begin: offset,
        end: offset + bytes,
      };
      offset += bytes;
      tensors.set(name, entry);
      placed.push({ entry, tensor: value, storage, contiguous: isContiguous(value) });
    }
    return new TorchCheckpoint(file, tensors, placed, metadata, key);
  }

  /** Fills `target` with bytes `[position, position + length)` of the virtual layout. */
  private async readVirtual(position: number, target: Uint8Array): Promise<void> {
    const end = position + target.byteLength;
    if (end > this.reader.size) {
      throw new TorchCheckpointError(`${this.name}: read of bytes ${position}–${end} past the end of its tensors`);
    }
    // The first tensor ending after `position` (entries are laid out in order, without gaps).
    let lo = 0;
    let hi = this.placed.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.placed[mid].entry.end <= position) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.placed.length && this.placed[i].entry.begin < end; i++) {
      const p = this.placed[i];
      const from = Math.max(position, p.entry.begin);
      const to = Math.min(end, p.entry.end);
      if (to <= from) continue;
      const out = target.subarray(from - position, to - position);
      try {
        await readTensorBytes(p, from - p.entry.begin, out);
      } catch (e) {
        throw new TorchCheckpointError(`${this.name}: tensor "${p.entry.name}": ${(e as Error).message}`);
      }
    }
  }
}

function selected(root: PyDict, select: NonNullable<TorchOpenOptions["select"]>, name: string) {
  const key = select(root);
  const dict = key === undefined ? undefined : root.map.get(key);
  if (key === undefined || !(dict instanceof PyDict)) {
    throw new TorchCheckpointError(
      `${name}: no dict of tensors where expected (top-level keys: ${[...root.map.keys()].map((k) => describeValue(k)).join(", ")})`,
    );
  }
  return { dict, key };
}

function isScalar(v: PyValue): v is number | string | boolean | bigint {
  return typeof v === "number" || typeof v === "string" || typeof v === "boolean" || typeof v === "bigint";
}

/** Lightning's `{"state_dict": …}`, `{"model": …}`, or the dict itself (a bare state dict). */
function findStateDict(root: PyDict): { dict: PyDict; key?: string } {
  for (const key of ["state_dict", "model"]) {
    const inner = root.map.get(key);
    if (inner instanceof PyDict && [...inner.map.values()].some((v) => v instanceof TorchTensor)) {
      return { dict: inner, key };
    }
  }
  return { dict: root };
}

/** `('storage', torch.XStorage, key, location, numel[, view])` → a storage (its data is found by the caller). */
function storageFromPid(pid: PyValue, name: string, arity: number): TorchStorage {
  if (!(pid instanceof PyTuple) || pid.items.length !== arity || pid.items[0] !== "storage") {
    throw new TorchCheckpointError(`${name}: persistent id ${describeValue(pid)} is not a torch storage`);
  }
  const [, cls, key, , numel] = pid.items;
  if (!(cls instanceof PyGlobal) || cls.module !== "torch" || !Object.hasOwn(STORAGE_DTYPES, cls.name)) {
    throw new TorchCheckpointError(`${name}: storage type ${describeValue(cls)} is not supported`);
  }
  if (typeof key !== "string" || !/^[\w.-]{1,64}$/.test(key)) {
    throw new TorchCheckpointError(`${name}: storage key ${describeValue(key)} is not a plain name`);
  }
  return new TorchStorage(key, STORAGE_DTYPES[cls.name], index(numel, `${name}: storage "${key}" size`));
}

function refusePersistent(origin: string): never {
  throw new PickleError(`${origin}: a persistent id where plain values were expected`);
}

function checkBounds(file: string, name: string, t: TorchTensor, storage: StorageBytes): void {
  const size = t.shape.reduce((a, b) => a * b, 1);
  const es = STORED_DTYPE_BYTES[t.storage.dtype];
  const where = `${file}: tensor "${name}" (${t.storage.dtype} ${formatShape(t.shape)}, stride ${formatShape(t.stride)}, offset ${t.offset})`;
  if (!Number.isSafeInteger(size * es)) throw new TorchCheckpointError(`${where}: too large`);
  if (size === 0) return;
  let last = t.storage.offset + t.offset;
  for (let d = 0; d < t.shape.length; d++) last += (t.shape[d] - 1) * t.stride[d];
  const declared = t.storage.offset + t.storage.numel;
  const held = Math.floor(storage.size / es);
  if (last >= declared || last >= held || !Number.isSafeInteger(last)) {
    throw new TorchCheckpointError(
      `${where}: reaches element ${last} of storage "${t.storage.key}", which holds ${Math.min(declared, held)} elements`,
    );
  }
}

function isContiguous(t: TorchTensor): boolean {
  let expected = 1;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    if (t.shape[d] !== 1 && t.stride[d] !== expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

/** Bytes `[from, from + out.length)` of a tensor's row-major layout. */
async function readTensorBytes(p: Placed, from: number, out: Uint8Array): Promise<void> {
  const { tensor, storage } = p;
  const es = STORED_DTYPE_BYTES[tensor.storage.dtype];
  const base = (tensor.storage.offset + tensor.offset) * es;
  if (p.contiguous) return storage.read(base + from, out);
  const first = Math.floor(from / es);
  const last = Math.ceil((from + out.byteLength) / es);
  const elements = new Uint8Array((last - first) * es);
  await gather(tensor, storage, es, first, last, elements);
  out.set(elements.subarray(from - first * es, from - first * es + out.byteLength));
}

/** Storage element index of each row-major element in `[first, last)`, in order. */
function* storageIndices(t: TorchTensor, first: number, last: number): Generator<number> {
  const n = t.shape.length;
  const at = new Array<number>(n).fill(0);
  let rest = first;
  let index = t.storage.offset + t.offset;
  for (let d = n - 1; d >= 0; d--) {
    at[d] = rest % t.shape[d];
    rest = Math.floor(rest / t.shape[d]);
    index += at[d] * t.stride[d];
  }
  for (let e = first; e < last; e++) {
    yield index;
    for (let d = n - 1; d >= 0; d--) {
      if (++at[d] < t.shape[d]) {
        index += t.stride[d];
        break;
      }
      index -= (t.shape[d] - 1) * t.stride[d];
      at[d] = 0;
    }
  }
}

/** Gathers elements `[first, last)` of a strided view into `out`, reading storage spans of bounded size. */
async function gather(
  t: TorchTensor,
  storage: StorageBytes,
  es: number,
  first: number,
  last: number,
  out: Uint8Array,
): Promise<void> {
  let lo = Number.POSITIVE_INFINITY;
  let hi = -1;
  for (const i of storageIndices(t, first, last)) {
    if (i < lo) lo = i;
    if (i > hi) hi = i;
  }
  const span = (hi - lo + 1) * es;
  if (span > MAX_GATHER_SPAN && last - first > 1) {
    const mid = (first + last) >>> 1;
    await gather(t, storage, es, first, mid, out.subarray(0, (mid - first) * es));
    await gather(t, storage, es, mid, last, out.subarray((mid - first) * es));
    return;
  }
  const bytes = new Uint8Array(span);
  await storage.read(lo * es, bytes);
  let o = 0;
  for (const i of storageIndices(t, first, last)) {
    const s = (i - lo) * es;
    for (let b = 0; b < es; b++) out[o++] = bytes[s + b];
  }
}

function fileRange(file: ByteReader, start: number, size: number): StorageBytes {
  return { size, read: (position, target) => file.readInto(start + position, target) };
}

/** The one deflated storage kept inflated: reads go tensor by tensor, so it serves all of a tensor's chunks. */
interface InflatedSlot {
  entry?: ZipEntry;
  data?: Promise<Uint8Array>;
}

/** A storage entry: read in place when stored; inflated whole (bounded, one at a time) when deflated. */
function zipStorage(archive: ZipArchive, entry: ZipEntry, slot: InflatedSlot): StorageBytes {
  let start: Promise<number> | undefined;
  return {
    size: entry.size,
    async read(position, target) {
      if (entry.method === 0) {
        start ??= archive.dataStart(entry);
        return archive.reader.readInto((await start) + position, target);
      }
      if (slot.entry !== entry) {
        slot.entry = entry;
        slot.data = archive.read(entry, MAX_INFLATED_STORAGE_BYTES);
      }
      const data = await slot.data!;
      target.set(data.subarray(position, position + target.byteLength));
    },
  };
}
