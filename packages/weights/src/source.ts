import {
  type Device,
  formatShape,
  type ParamDType,
  type StoredTensorInfo,
  shapeSize,
  type WeightRequest,
  type WeightSource,
} from "@ldm/tensor";
import {
  convertElements,
  type FloatStoredDType,
  isFloatStoredDType,
  PARAM_DTYPE_BYTES,
  STORED_DTYPE_BYTES,
} from "./dtype.ts";
import type { TensorEntry } from "./safetensors.ts";
import type { TensorFile } from "./tensor-file.ts";

/**
 * How a canonical key is read from a stored tensor: as is; as the row range [start, end) of its first
 * dimension (OpenCLIP's fused q/k/v projections); or as is under another shape of the same size
 * (diffusers' linear VAE attention weights, which the original stores as 1×1 convolutions).
 */
export type Transform = { kind: "none" } | { kind: "rows"; start: number; end: number } | { kind: "reshape" };

export interface Mapping {
  file: TensorFile;
  /** The key inside `file`. */
  stored: string;
  /** The canonical shape, as the model asks for it. */
  shape: readonly number[];
  transform: Transform;
}

export interface LoadOptions {
  /** Bytes read from the file per step (default 16 MiB); the loader holds three buffers of this size. */
  chunkBytes?: number;
  /** Uploaded bytes after which to wait for the GPU queue, so upload staging cannot pile up (default 64 MiB). */
  syncBytes?: number;
}

const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;
const DEFAULT_SYNC_BYTES = 64 * 1024 * 1024;

/** A canonical key's data: a byte range of one file and how to turn it into the requested tensor. */
interface Job {
  key: string;
  request: WeightRequest;
  file: TensorFile;
  entry: TensorEntry;
  begin: number;
  end: number;
}

/**
 * A WeightSource over safetensors files through a table from canonical keys to stored tensors. Describing
 * reads only the table; `load` checks every request first, then streams each tensor's bytes in bounded
 * chunks, converting dtype chunk by chunk, straight into its GPU buffer.
 */
export class MappedWeightSource implements WeightSource {
  constructor(
    readonly origin: string,
    private readonly table: ReadonlyMap<string, Mapping>,
    private readonly options: LoadOptions = {},
  ) {
    for (const [key, m] of table) checkMapping(key, m);
  }

  describe(key: string): StoredTensorInfo | undefined {
    const m = this.table.get(key);
    return m && { shape: m.shape, dtype: m.file.entry(m.stored).dtype };
  }

  keys(): IterableIterator<string> {
    return this.table.keys();
  }

  mapping(key: string): Mapping | undefined {
    return this.table.get(key);
  }

  get size(): number {
    return this.table.size;
  }

  /** The files the table reads from. */
  files(): TensorFile[] {
    return [...new Set([...this.table.values()].map((m) => m.file))];
  }

  async load(requests: readonly WeightRequest[]): Promise<void> {
    const jobs = this.plan(requests);
    const chunkBytes = Math.max(64, this.options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    const syncBytes = this.options.syncBytes ?? DEFAULT_SYNC_BYTES;
    const chunks = jobs.flatMap((job) => chunksOf(job, chunkBytes));
    if (!chunks.length) return;
    const device = chunks[0].job.request.tensor.device;
    // Three buffers for the whole load: the next chunk is read into one while the current one, read into
    // the other, is converted into the third and uploaded.
    const raw = [new Uint8Array(chunkBytes), new Uint8Array(chunkBytes)];
    const converted = new Uint8Array(chunkBytes);
    let next = readChunk(chunks[0], raw[0]);
    let sinceSync = 0;
    for (let i = 0; i < chunks.length; i++) {
      const input = await next;
      if (i + 1 < chunks.length) {
        next = readChunk(chunks[i + 1], raw[(i + 1) % 2]);
        next.catch(() => {}); // observed when awaited; an upload error must not leave it unhandled
      }
      sinceSync += upload(device, chunks[i], input, converted);
      if (sinceSync >= syncBytes) {
        await device.sync();
        sinceSync = 0;
      }
    }
    await device.sync();
  }

  /** Checks every request against the table (all problems in one error), then orders reads by file offset. */
  private plan(requests: readonly WeightRequest[]): Job[] {
    const problems: string[] = [];
    const jobs: Job[] = [];
    for (const request of requests) {
      const { key, tensor } = request;
      const m = this.table.get(key);
      if (!m) {
        problems.push(`  ${key}: not in the checkpoint`);
        continue;
      }
      const entry = m.file.entry(m.stored);
      const where = m.stored === key ? `${key}` : `${key} (stored as ${m.stored} in ${m.file.name})`;
      if (tensor.size !== shapeSize(m.shape)) {
        problems.push(
          `  ${where}: the tensor is ${formatShape(tensor.shape)}, the checkpoint holds ${formatShape(m.shape)}`,
        );
      } else if (tensor.dtype !== "f32" && tensor.dtype !== "f16") {
        problems.push(`  ${where}: cannot load into a ${tensor.dtype} tensor (only f32 and f16 parameters)`);
      } else if (!isFloatStoredDType(entry.dtype)) {
        problems.push(`  ${where}: stored as ${entry.dtype}, not a floating-point type (F64, F32, F16, BF16)`);
      } else {
        const [begin, end] = byteRange(entry, m.transform);
        jobs.push({ key, request, file: m.file, entry, begin, end });
      }
    }
    if (problems.length) {
      throw new Error(`cannot load ${problems.length} tensor(s) from ${this.origin}:\n${problems.join("\n")}`);
    }
    const fileOrder = new Map(this.files().map((f, i) => [f, i]));
    return jobs.sort((a, b) => fileOrder.get(a.file)! - fileOrder.get(b.file)! || a.begin - b.begin);
  }

  close(): Promise<void> {
    return Promise.all(this.files().map((f) => f.close())).then(() => {});
  }
}

function checkMapping(key: string, m: Mapping): void {
  const entry = m.file.entry(m.stored);
  const where = `${m.file.name}: ${key} (stored as "${m.stored}" ${formatShape(entry.shape)})`;
  const t = m.transform;
  if (t.kind === "rows") {
    const rows = entry.shape[0] ?? 0;
    if (!(t.start >= 0 && t.start <= t.end && t.end <= rows)) {
      throw new Error(`${where}: rows [${t.start}, ${t.end}) are outside its ${rows} rows`);
    }
    const rowSize = shapeSize(entry.shape.slice(1));
    if (shapeSize(m.shape) !== (t.end - t.start) * rowSize) {
      throw new Error(`${where}: rows [${t.start}, ${t.end}) do not make ${formatShape(m.shape)}`);
    }
  } else if (shapeSize(m.shape) !== entry.size) {
    throw new Error(`${where}: cannot be read as ${formatShape(m.shape)}`);
  }
}

function byteRange(entry: TensorEntry, t: Transform): [number, number] {
  if (t.kind !== "rows") return [entry.begin, entry.end];
  const rowBytes = shapeSize(entry.shape.slice(1)) * STORED_DTYPE_BYTES[entry.dtype];
  return [entry.begin + t.start * rowBytes, entry.begin + t.end * rowBytes];
}

/** A run of one tensor's elements, small enough for the chunk buffers. */
interface Chunk {
  job: Job;
  from: FloatStoredDType;
  to: ParamDType;
  /** First element and element count. */
  first: number;
  count: number;
}

function chunksOf(job: Job, chunkBytes: number): Chunk[] {
  const from = job.entry.dtype as FloatStoredDType;
  const to = job.request.tensor.dtype as ParamDType;
  const inBytes = STORED_DTYPE_BYTES[from];
  // A multiple of 4 elements keeps every upload offset a multiple of 4 bytes (writeBuffer's rule).
  const perChunk = Math.floor(chunkBytes / Math.max(inBytes, PARAM_DTYPE_BYTES[to]) / 4) * 4;
  const total = (job.end - job.begin) / inBytes;
  const chunks: Chunk[] = [];
  for (let first = 0; first < total; first += perChunk) {
    chunks.push({ job, from, to, first, count: Math.min(perChunk, total - first) });
  }
  return chunks;
}

async function readChunk(chunk: Chunk, raw: Uint8Array): Promise<Uint8Array> {
  const inBytes = STORED_DTYPE_BYTES[chunk.from];
  const input = raw.subarray(0, chunk.count * inBytes);
  try {
    await chunk.job.file.reader.readInto(chunk.job.begin + chunk.first * inBytes, input);
  } catch (e) {
    throw new Error(`reading ${chunk.job.key} from ${chunk.job.file.name}: ${(e as Error).message}`);
  }
  return input;
}

/** Converts a chunk (unless it is already in the tensor's dtype) and writes it at its offset; returns its bytes. */
function upload(device: Device, chunk: Chunk, input: Uint8Array, converted: Uint8Array): number {
  const { from, to } = chunk;
  const passthrough = (from === "F32" && to === "f32") || (from === "F16" && to === "f16");
  const output = passthrough ? input : converted.subarray(0, convertElements(from, to, input, converted, chunk.count));
  device.write(chunk.job.request.tensor.buffer, chunk.first * PARAM_DTYPE_BYTES[to], output);
  return output.byteLength;
}
