/**
 * The PyTorch checkpoint reader at full size: writes a synthetic zip64 `.ckpt` (SD 1.5's keys and shapes in
 * float32 as Lightning's `{"state_dict": …}`, plus a 128 MiB optimizer tensor the loader must never read: 4.4 GB,
 * past zip's 4 GiB limit) and, as its peer, the same state dict as `.safetensors`; then loads each through
 * benchmarks/weights-load.ts (a fresh process per load; peak RSS growth beyond the GPU buffers, which on lavapipe
 * live in the process).
 *
 *   npx tsx benchmarks/ckpt-load.ts [--dir /tmp] [--dtype f16|f32|both] [--small]
 *
 * --small writes a 4 MiB-per-tensor-capped version (to check the writer: `torch.load` it with PyTorch).
 * The files stay in --dir (4.4 + 4.3 GB; never committed) and are reused.
 */
import { execFileSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { modelParamShapes, standardConfig, type TensorToWrite } from "@ldm/weights";
import { writeSafetensors } from "@ldm/weights/node";
import { xorshift } from "@ldm/weights/testing";

const MiB = 2 ** 20;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** 16 MiB of random normal float32 values in ±[2^-6, 2^2), repeated to fill any tensor (contents do not matter here). */
const PATTERN = (() => {
  const next = xorshift(7);
  const bits = new Uint32Array(4 * MiB);
  for (let i = 0; i < bits.length; i++) {
    const r = next();
    bits[i] = (r & 0x807fffff) | ((121 + ((r >>> 23) & 7)) << 23);
  }
  return new Uint8Array(bits.buffer);
})();

function tensorBytes(size: number): Uint8Array {
  const out = new Uint8Array(size * 4);
  for (let at = 0; at < out.length; at += PATTERN.length) out.set(PATTERN.subarray(0, out.length - at), at);
  return out;
}

// ---- a minimal torch.save writer (protocol 2 pickle, zip64 archive), as PyTorch 1.13 lays them out ----------

class PickleWriter {
  private readonly parts: number[] = [0x80, 2];
  op(...bytes: number[]) {
    this.parts.push(...bytes);
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
    return n < 2 ** 31
      ? this.op(0x4a, ...u32(n))
      : this.op(0x8a, 8, ...u32(n % 2 ** 32), ...u32(Math.floor(n / 2 ** 32)));
  }
  tuple(values: readonly number[]) {
    this.op(0x28);
    for (const v of values) this.int(v);
    return this.op(0x74);
  }
  /** _rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict()) of a FloatStorage. */
  tensor(key: string, shape: readonly number[]) {
    const size = shape.reduce((a, b) => a * b, 1);
    const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
    this.global("torch._utils", "_rebuild_tensor_v2").op(0x28);
    this.op(0x28).text("storage").global("torch", "FloatStorage").text(key).text("cpu").int(size).op(0x74, 0x51);
    this.int(0).tuple(shape).tuple(strides).op(0x89);
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

/** Writes entries (produced one at a time) as a zip64 archive of stored entries. */
async function writeZip64(path: string, entries: Iterable<[string, () => Uint8Array]>): Promise<void> {
  const handle = await open(path, "w");
  let offset = 0;
  const write = async (bytes: Uint8Array) => {
    for (let done = 0; done < bytes.length; ) done += (await handle.write(bytes, done)).bytesWritten;
    offset += bytes.length;
  };
  const central: number[][] = [];
  try {
    for (const [name, produce] of entries) {
      const data = produce();
      const nameBytes = [...new TextEncoder().encode(name)];
      const crc = crc32(data);
      const at = offset;
      const fixed = [...u16(45), ...u16(0), ...u16(0), ...u16(0), ...u16(0x21), ...u32(crc), ...u32(data.length)];
      await write(
        Uint8Array.from([
          ...u32(0x04034b50),
          ...fixed,
          ...u32(data.length),
          ...u16(nameBytes.length),
          0,
          0,
          ...nameBytes,
        ]),
      );
      await write(data);
      // Every size and the offset in the zip64 field: PyTorch's miniz reads a zip64 field only with at least two values.
      const extra = [...u16(1), ...u16(24), ...u64(data.length), ...u64(data.length), ...u64(at)];
      central.push([
        ...u32(0x02014b50),
        ...u16(45),
        ...fixed.slice(0, -4),
        ...u32(0xffffffff),
        ...u32(0xffffffff),
        ...u16(nameBytes.length),
        ...u16(extra.length),
        ...[0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ...u32(0xffffffff),
        ...nameBytes,
        ...extra,
      ]);
    }
    const start = offset;
    for (const c of central) await write(Uint8Array.from(c));
    const size = offset - start;
    const record = offset;
    await write(
      Uint8Array.from([
        ...u32(0x06064b50),
        ...u64(44),
        ...u16(45),
        ...u16(45),
        ...u32(0),
        ...u32(0),
        ...u64(central.length),
        ...u64(central.length),
        ...u64(size),
        ...u64(start),
      ]),
    );
    await write(Uint8Array.from([...u32(0x07064b50), ...u32(0), ...u64(record), ...u32(1)]));
    await write(
      Uint8Array.from([
        ...u32(0x06054b50),
        0,
        0,
        0,
        0,
        0xff,
        0xff,
        0xff,
        0xff,
        ...u32(0xffffffff),
        ...u32(0xffffffff),
        0,
        0,
      ]),
    );
  } finally {
    await handle.close();
  }
}

async function generate(ckpt: string, safetensors: string, small: boolean): Promise<void> {
  const shapes = [...modelParamShapes(standardConfig("sd1"))].map(([key, shape]): [string, number[]] => [
    key,
    small ? shape.map((d, i) => (i === 0 ? Math.min(d, 8) : d)) : [...shape],
  ]);
  const optimizer: [string, number[]] = ["exp_avg", [small ? 1024 : 32 * MiB]];
  const pickle = new PickleWriter();
  // {"epoch": 0, "global_step": 470000, "state_dict": OrderedDict(…), "optimizer_states": [{…: tensor}]}
  pickle.op(0x7d, 0x28).text("epoch").int(0).text("global_step").int(470000).text("state_dict");
  pickle.global("collections", "OrderedDict").op(0x29, 0x52, 0x28);
  for (const [i, [key, shape]] of shapes.entries()) pickle.text(key).tensor(String(i + 1), shape);
  pickle.op(0x75).text("optimizer_states").op(0x5d, 0x7d).text(optimizer[0]).tensor("0", optimizer[1]);
  pickle.op(0x73, 0x61, 0x75);
  const prefix = "archive/";
  const storages: [string, () => Uint8Array][] = [
    ["0", () => tensorBytes(optimizer[1][0])],
    ...shapes.map(([, shape], i): [string, () => Uint8Array] => [
      String(i + 1),
      () => tensorBytes(shape.reduce((a, b) => a * b, 1)),
    ]),
  ];
  await writeZip64(ckpt, [
    [`${prefix}data.pkl`, () => pickle.bytes()],
    ...storages.map(([key, produce]): [string, () => Uint8Array] => [`${prefix}data/${key}`, produce]),
    [`${prefix}version`, () => new TextEncoder().encode("3\n")],
  ]);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [key, shape] of shapes) {
    tensors[key] = { dtype: "F32", shape, data: () => tensorBytes(shape.reduce((a, b) => a * b, 1)) };
  }
  await writeSafetensors(safetensors, tensors, { format: "pt" });
}

async function main(): Promise<void> {
  const small = process.argv.includes("--small");
  const dir = arg("dir", tmpdir());
  const base = join(dir, small ? "ldm-bench-ckpt-small" : "ldm-bench-sd15-f32-zip64");
  const [ckpt, safetensors] = [`${base}.ckpt`, `${base}.safetensors`];
  if (!existsSync(ckpt) || !existsSync(safetensors)) {
    const started = performance.now();
    await generate(ckpt, safetensors, small);
    console.log(
      `wrote ${ckpt} (${(statSync(ckpt).size / 1e9).toFixed(2)} GB) and ${safetensors} (${(statSync(safetensors).size / 1e9).toFixed(2)} GB) in ${((performance.now() - started) / 1000).toFixed(0)} s`,
    );
  }
  if (small) return;
  const here = new URL(".", import.meta.url).pathname;
  for (const path of [ckpt, safetensors]) {
    console.log(`\n${path}:`);
    execFileSync(
      process.execPath,
      [...process.execArgv, join(here, "weights-load.ts"), "--checkpoint", path, "--dtype", arg("dtype", "f16")],
      { stdio: "inherit" },
    );
  }
}

await main();
