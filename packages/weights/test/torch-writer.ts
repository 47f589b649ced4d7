import { open } from "node:fs/promises";
import { crc32 } from "node:zlib";
import { STORAGE_DTYPES, type StoredDType, type TensorToWrite } from "../src/index.ts";

/**
 * A minimal torch.save writer for tests and benchmarks that need PyTorch checkpoints larger or other than the
 * committed fixtures: a protocol-2 pickle as PyTorch 1.13 writes it (contiguous tensors, one storage each) in a
 * zip64 archive of stored entries. Checked against PyTorch: `npx tsx benchmarks/ckpt-load.ts --small` writes
 * one that `torch.load` reads equal to its safetensors twin.
 */

const STORAGE_CLASS = Object.fromEntries(Object.entries(STORAGE_DTYPES).map(([cls, dtype]) => [dtype, cls])) as Record<
  StoredDType,
  string | undefined
>;

class PickleWriter {
  private readonly parts: number[] = [0x80, 2];
  op(...bytes: number[]) {
    for (const b of bytes) this.parts.push(b);
    return this;
  }
  text(s: string) {
    const b = new TextEncoder().encode(s);
    return this.op(0x58, ...u32(b.length), ...b);
  }
  global(module: string, name: string) {
    return this.op(0x63, ...new TextEncoder().encode(`${module}\n${name}\n`));
  }
  int(n: number) {
    return n < 2 ** 31 ? this.op(0x4a, ...u32(n)) : this.op(0x8a, 8, ...u64(n));
  }
  tuple(values: readonly number[]) {
    this.op(0x28);
    for (const v of values) this.int(v);
    return this.op(0x74);
  }
  /** _rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict()). */
  tensor(key: string, t: TensorToWrite) {
    const cls = STORAGE_CLASS[t.dtype];
    if (!cls) throw new Error(`torch-writer: no storage class for ${t.dtype}`);
    const size = t.shape.reduce((a, b) => a * b, 1);
    const strides = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    this.global("torch._utils", "_rebuild_tensor_v2").op(0x28);
    this.op(0x28).text("storage").global("torch", cls).text(key).text("cpu").int(size).op(0x74, 0x51);
    this.int(0).tuple(t.shape).tuple(strides).op(0x89);
    return this.global("collections", "OrderedDict").op(0x29, 0x52, 0x74, 0x52);
  }
  bytes(): Uint8Array {
    return Uint8Array.from([...this.parts, 0x2e]);
  }
}

function u16(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff];
}
function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}
function u64(n: number): number[] {
  return [...u32(n % 2 ** 32), ...u32(Math.floor(n / 2 ** 32))];
}

type Produce = () => ArrayBufferView | Promise<ArrayBufferView>;

/** Writes entries, each produced when its turn comes, as a zip64 archive of stored entries. */
async function writeZip64(path: string, entries: readonly [string, Produce][]): Promise<void> {
  const handle = await open(path, "w");
  let offset = 0;
  const write = async (bytes: Uint8Array) => {
    for (let done = 0; done < bytes.length; ) done += (await handle.write(bytes, done)).bytesWritten;
    offset += bytes.length;
  };
  const central: number[][] = [];
  try {
    for (const [name, produce] of entries) {
      const view = await produce();
      const data = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
      const nameBytes = [...new TextEncoder().encode(name)];
      const at = offset;
      const fixed = [...u16(45), ...u16(0), ...u16(0), ...u16(0), ...u16(0x21), ...u32(crc32(data))];
      const local = [...u32(0x04034b50), ...fixed, ...u32(data.length), ...u32(data.length)];
      await write(Uint8Array.from([...local, ...u16(nameBytes.length), 0, 0, ...nameBytes]));
      await write(data);
      // Both sizes and the offset in the zip64 field: PyTorch's miniz reads a zip64 field only with two or more.
      const extra = [...u16(1), ...u16(24), ...u64(data.length), ...u64(data.length), ...u64(at)];
      const sizes = [...u32(0xffffffff), ...u32(0xffffffff)];
      const lengths = [...u16(nameBytes.length), ...u16(extra.length), ...new Array(10).fill(0)];
      central.push([...u32(0x02014b50), ...u16(45), ...fixed, ...sizes, ...lengths, ...u32(0xffffffff)]);
      central[central.length - 1].push(...nameBytes, ...extra);
    }
    const start = offset;
    for (const c of central) await write(Uint8Array.from(c));
    const size = offset - start;
    const record = offset;
    const counts = [...u64(central.length), ...u64(central.length)];
    await write(Uint8Array.from([...u32(0x06064b50), ...u64(44), ...u16(45), ...u16(45), ...u64(0), ...counts]));
    await write(Uint8Array.from([...u64(size), ...u64(start)]));
    await write(Uint8Array.from([...u32(0x07064b50), ...u32(0), ...u64(record), ...u32(1)]));
    const saturated = [0xff, 0xff, 0xff, 0xff, ...u32(0xffffffff), ...u32(0xffffffff)];
    await write(Uint8Array.from([...u32(0x06054b50), 0, 0, 0, 0, ...saturated, 0, 0]));
  } finally {
    await handle.close();
  }
}

export interface TorchCheckpointToWrite {
  /** The state dict (an OrderedDict, in this order). */
  tensors: Readonly<Record<string, TensorToWrite>>;
  /** Put it under this top-level key (Lightning's "state_dict"); default: the file is the state dict. */
  wrap?: string;
  /** Integer top-level values beside it (epoch, global_step). */
  scalars?: Readonly<Record<string, number>>;
  /** A tensor in `{"optimizer_states": [{"exp_avg": …}]}`, which a state-dict reader must never read. */
  optimizer?: TensorToWrite;
}

/** Writes a PyTorch zip checkpoint (zip64 records always, as PyTorch writes past 4 GiB), one tensor at a time. */
export async function writeTorchCheckpoint(path: string, content: TorchCheckpointToWrite): Promise<void> {
  const pickle = new PickleWriter();
  const storages: [string, Produce][] = [];
  const storage = (t: TensorToWrite) => {
    storages.push([String(storages.length), typeof t.data === "function" ? t.data : () => t.data as ArrayBufferView]);
    return String(storages.length - 1);
  };
  // The optimizer's storage first in the archive, so the state dict's lie past it (past 4 GiB in a large file).
  const optimizer = content.optimizer && ([storage(content.optimizer), content.optimizer] as const);
  if (content.wrap) {
    pickle.op(0x7d, 0x28);
    for (const [k, v] of Object.entries(content.scalars ?? {})) pickle.text(k).int(v);
    pickle.text(content.wrap);
  }
  pickle.global("collections", "OrderedDict").op(0x29, 0x52, 0x28);
  for (const [key, t] of Object.entries(content.tensors)) pickle.text(key).tensor(storage(t), t);
  pickle.op(0x75);
  if (content.wrap) {
    if (optimizer)
      pickle
        .text("optimizer_states")
        .op(0x5d, 0x7d)
        .text("exp_avg")
        .tensor(...optimizer)
        .op(0x73, 0x61);
    pickle.op(0x75);
  }
  const prefix = "archive/";
  await writeZip64(path, [
    [`${prefix}data.pkl`, () => pickle.bytes()],
    ...storages.map(([key, produce]): [string, Produce] => [`${prefix}data/${key}`, produce]),
    [`${prefix}version`, () => new TextEncoder().encode("3\n")],
  ]);
}
