import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  blobReader,
  convertElements,
  encodeHeader,
  type FloatStoredDType,
  findNonFinite,
  MAX_HEADER_BYTES,
  SafetensorsError,
  SafetensorsFile,
} from "../src/index.ts";
import { openSafetensors, writeSafetensors } from "../src/node.ts";
import { xorshift } from "./synthetic.ts";

const dir = mkdtempSync(join(tmpdir(), "ldm-safetensors-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const FIXTURE = join(import.meta.dirname, "fixtures", "conversions.safetensors");

function open(bytes: Uint8Array, name = "mem.safetensors"): Promise<SafetensorsFile> {
  return SafetensorsFile.open(blobReader(new Blob([bytes as Uint8Array<ArrayBuffer>]), name));
}

/** A header (as JSON) followed by `dataBytes` zero bytes. */
function fileWith(header: unknown, dataBytes = 0): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

async function errorOf(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error");
}

describe("reading", () => {
  it("reads a file written by hand from Python: header, metadata, shapes, bytes", async () => {
    const file = await openSafetensors(FIXTURE);
    expect(file.metadata).toEqual({ format: "pt", writer: "conversions.py" });
    expect(file.entry("odd.f16")).toMatchObject({ dtype: "F16", shape: [3, 5, 7], size: 105 });
    expect(file.entry("ids.i64")).toMatchObject({ dtype: "I64", shape: [1, 77] });
    const ids = new BigInt64Array((await file.readBytes("ids.i64")).buffer);
    expect(Array.from(ids, Number)).toEqual(Array.from({ length: 77 }, (_, i) => i));
    await file.close();
  });

  it("converts every stored float type exactly as PyTorch's .float() and .half() do", async () => {
    const file = await openSafetensors(FIXTURE);
    for (const from of ["F64", "F32", "F16", "BF16"] as FloatStoredDType[]) {
      const name = from.toLowerCase();
      const stored = await file.readBytes(`${name}.stored`);
      const n = file.entry(`${name}.stored`).size;
      const asF32 = new Uint8Array(n * 4);
      convertElements(from, "f32", stored, asF32, n);
      expect(new Uint32Array(asF32.buffer), `${from} → f32`).toEqual(
        new Uint32Array((await file.readBytes(`${name}.as_f32`)).buffer),
      );
      const asF16 = new Uint8Array(n * 2);
      convertElements(from, "f16", stored, asF16, n);
      expect(new Uint16Array(asF16.buffer), `${from} → f16`).toEqual(
        new Uint16Array((await file.readBytes(`${name}.as_f16`)).buffer),
      );
    }
    await file.close();
  });

  it("round-trips through the writer, with metadata and tensors produced lazily", async () => {
    const path = join(dir, "roundtrip.safetensors");
    const a = Float32Array.from([1, -2, 3.5]);
    const b = Uint16Array.from([0x3c00, 0xc000, 0x7c00, 0x0001, 0x8000]);
    await writeSafetensors(
      path,
      {
        "a.weight": { dtype: "F32", shape: [3], data: a },
        "b.weight": { dtype: "F16", shape: [5, 1], data: () => b },
        empty: { dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
      },
      { note: "hi" },
    );
    const file = await openSafetensors(path);
    expect(file.metadata).toEqual({ note: "hi" });
    expect(file.header.dataStart % 8).toBe(0);
    expect(new Float32Array((await file.readBytes("a.weight")).buffer)).toEqual(a);
    expect(new Uint16Array((await file.readBytes("b.weight")).buffer)).toEqual(b);
    expect(file.entry("empty").size).toBe(0);
    await file.close();
  });

  it("the writer refuses data that does not fill the shape, naming the tensor", async () => {
    const path = join(dir, "bad.safetensors");
    await expect(
      writeSafetensors(path, { w: { dtype: "F32", shape: [2, 2], data: new Float32Array(3) } }),
    ).rejects.toThrow(/tensor "w": F32 \[2, 2\] needs 16 bytes, the data has 12/);
    await expect(
      writeSafetensors(path, { w: { dtype: "F16", shape: [4], data: () => new Uint16Array(5) } }),
    ).rejects.toThrow(/tensor "w": F16 \[4\] needs 8 bytes, the data has 10/);
  });
});

describe("validation: every malformed file gets an error naming the file (and the tensor)", () => {
  const good = { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] };
  const cases: [string, unknown, number, RegExp][] = [
    ["unknown dtype", { w: { ...good, dtype: "F7" } }, 16, /mem\.safetensors: tensor "w": unknown dtype "F7"/],
    [
      "dtype size mismatch",
      { w: { ...good, dtype: "F16" } },
      16,
      /tensor "w": F16 \[2, 2\] needs 8 bytes but data_offsets \[0, 16\] hold 16/,
    ],
    [
      "offsets past the end",
      { w: { ...good, data_offsets: [8, 24] } },
      16,
      /tensor "w": data_offsets \[8, 24\] run past the end of the data \(16 bytes\)/,
    ],
    [
      "backwards offsets",
      { w: { ...good, data_offsets: [16, 0] } },
      16,
      /tensor "w": data_offsets \[16, 0\] run backwards/,
    ],
    [
      "negative dimension",
      { w: { ...good, shape: [-2, -2] } },
      16,
      /tensor "w": shape \[-2,-2\] is not a list of non-negative integers/,
    ],
    ["fractional dimension", { w: { ...good, shape: [2.5, 2] } }, 16, /tensor "w": shape/],
    ["missing offsets", { w: { dtype: "F32", shape: [4] } }, 16, /tensor "w": data_offsets undefined is not a pair/],
    ["entry not an object", { w: [1, 2] }, 16, /tensor "w": entry is not an object/],
    ["metadata not strings", { __metadata__: { n: 1 }, w: good }, 16, /"__metadata__" entry "n" is a number/],
    ["header an array", [good], 16, /the header is not a JSON object/],
    ["header null", null, 16, /the header is not a JSON object/],
    [
      "overlapping tensors",
      { a: good, b: { ...good, data_offsets: [8, 24] } },
      24,
      /tensors "a" and "b" overlap \(data bytes 0–16 and 8–24\)/,
    ],
    ["size overflow", { w: { dtype: "F64", shape: [2 ** 40, 2 ** 40], data_offsets: [0, 16] } }, 16, /tensor "w": F64/],
  ];
  for (const [what, header, dataBytes, message] of cases) {
    it(what, async () => {
      const e = await errorOf(open(fileWith(header, dataBytes)));
      expect(e).toBeInstanceOf(SafetensorsError);
      expect(e.message).toMatch(message);
    });
  }

  // As the reference implementation (safetensors' Metadata::validate): the tensors tile the data exactly.
  const u8 = (begin: number, end: number) => ({ dtype: "U8", shape: [end - begin], data_offsets: [begin, end] });
  const strict: [string, unknown, number, RegExp][] = [
    [
      "a hole at the start",
      { a: u8(4, 8) },
      8,
      /a hole of 4 bytes at the start of the data \(data bytes 0–4, before tensor "a"\)/,
    ],
    [
      "a hole between tensors",
      { a: u8(0, 4), b: u8(8, 12) },
      12,
      /a hole of 4 bytes after tensor "a" \(data bytes 4–8, before tensor "b"\)/,
    ],
    ["trailing bytes", { a: u8(0, 4) }, 7, /3 trailing bytes after the last tensor "a", from file offset \d+/],
    ["trailing bytes and no tensors", {}, 5, /5 trailing bytes after the header \(the file has no tensors\)/],
    ["an empty tensor inside another", { a: u8(0, 8), e: u8(4, 4) }, 8, /tensors "a" and "e" overlap/],
  ];
  for (const [what, header, dataBytes, message] of strict) {
    it(`refuses ${what}`, async () => {
      expect((await errorOf(open(fileWith(header, dataBytes)))).message).toMatch(message);
    });
  }

  it("refuses a key named twice (JSON.parse would keep the last), at the top level and in __metadata__", async () => {
    const text = (json: string) => {
      const header = new TextEncoder().encode(json);
      const out = new Uint8Array(8 + header.byteLength + 4);
      new DataView(out.buffer).setBigUint64(0, BigInt(header.byteLength), true);
      out.set(header, 8);
      return out;
    };
    const a = '"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}';
    expect((await errorOf(open(text(`{${a}, ${a}}`)))).message).toContain(
      `mem.safetensors: the header names "a" twice (again at header byte ${1 + a.length + 2})`,
    );
    expect((await errorOf(open(text(`{"__metadata__": {"k": "1", "k": "2"}, ${a}}`)))).message).toMatch(
      /the header names "k" twice/,
    );
    // The same key in different objects, and key-like text inside strings, are fine.
    const file = await open(text(`{"__metadata__": {"a": "\\"a\\": x"}, ${a}}`));
    expect(file.metadata.a).toBe('"a": x');
  });

  it("accepts empty tensors where the data tiles, at either end and between", async () => {
    const file = await open(fileWith({ e0: u8(0, 0), a: u8(0, 4), e1: u8(4, 4), b: u8(4, 8), e2: u8(8, 8) }, 8));
    expect(file.entry("b").begin).toBe(file.header.dataStart + 4);
  });

  it("names files that are too short, not JSON, or not UTF-8", async () => {
    expect((await errorOf(open(new Uint8Array(5)))).message).toMatch(
      /mem\.safetensors: not a safetensors file: 5 bytes/,
    );
    const notJson = fileWith({});
    notJson.set(new TextEncoder().encode("{x"), 8);
    expect((await errorOf(open(notJson))).message).toMatch(/the header is not valid JSON/);
    const notUtf8 = fileWith({ w: 1 });
    notUtf8[10] = 0xff;
    expect((await errorOf(open(notUtf8))).message).toMatch(/not valid UTF-8/);
  });

  it("rejects huge header lengths without allocating them", async () => {
    for (const length of [2n ** 64n - 1n, 2n ** 53n, BigInt(MAX_HEADER_BYTES + 1)]) {
      const bytes = new Uint8Array(64);
      new DataView(bytes.buffer).setBigUint64(0, length, true);
      const before = process.memoryUsage().arrayBuffers;
      const e = await errorOf(open(bytes));
      expect(e.message).toMatch(/header length \d+ bytes exceeds the 104857600-byte limit/);
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(1 << 20);
    }
    const bytes = new Uint8Array(64);
    new DataView(bytes.buffer).setBigUint64(0, 1000n, true);
    expect((await errorOf(open(bytes))).message).toMatch(
      /header length 1000 bytes runs past the end of the file \(64 bytes\)/,
    );
  });

  it("a file on disk: names a missing path, a folder, and a truncated file", async () => {
    expect((await errorOf(openSafetensors(join(dir, "nope.safetensors")))).message).toMatch(
      /nope\.safetensors: cannot read: ENOENT/,
    );
    expect((await errorOf(openSafetensors(dir))).message).toMatch(/is a directory/);
    const truncated = join(dir, "truncated.safetensors");
    writeFileSync(truncated, readFileSync(FIXTURE).subarray(0, 3000));
    expect((await errorOf(openSafetensors(truncated))).message).toMatch(
      /truncated\.safetensors: tensor ".+": data_offsets .* run past the end/,
    );
  });
});

/** Uniform [0, 1) from a seed: deterministic fuzz inputs, so a failure reproduces. */
function rng(seed: number): () => number {
  const next = xorshift(seed);
  return () => next() / 2 ** 32;
}

/** Parses, and when the parse succeeds checks what the reader promises: every range inside the file, no overlaps. */
async function parseOrExplain(bytes: Uint8Array): Promise<"ok" | "error"> {
  let file: SafetensorsFile;
  try {
    file = await open(bytes);
  } catch (e) {
    if (!(e instanceof SafetensorsError)) throw new Error(`not a SafetensorsError: ${(e as Error).stack}`);
    expect(e.message.startsWith("mem.safetensors: ")).toBe(true);
    return "error";
  }
  const ranges = [...file.tensors.values()].sort((a, b) => a.begin - b.begin);
  for (const [i, t] of ranges.entries()) {
    expect(t.begin).toBeGreaterThanOrEqual(file.header.dataStart);
    expect(t.end).toBeLessThanOrEqual(bytes.byteLength);
    if (i > 0 && t.end > t.begin) expect(t.begin).toBeGreaterThanOrEqual(ranges[i - 1].end);
  }
  return "ok";
}

describe("fuzzing: a clear error or a sound parse, every time, quickly", () => {
  const valid = new Uint8Array(readFileSync(FIXTURE));

  it("every truncation of a valid file", async () => {
    const started = performance.now();
    for (let cut = 0; cut < valid.byteLength; cut += 7) {
      expect(await parseOrExplain(valid.subarray(0, cut))).toBe("error");
    }
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  it("random bytes, with and without a plausible header length", async () => {
    const random = rng(1);
    for (let i = 0; i < 400; i++) {
      const bytes = Uint8Array.from({ length: Math.floor(random() * 600) }, () => Math.floor(random() * 256));
      if (i % 2 && bytes.byteLength >= 8)
        new DataView(bytes.buffer).setBigUint64(0, BigInt(Math.floor(random() * (bytes.byteLength - 8))), true);
      expect(await parseOrExplain(bytes)).toBe("error");
    }
  });

  it("random byte flips inside a valid header", async () => {
    const random = rng(7);
    const headerEnd = 8 + Number(new DataView(valid.buffer).getBigUint64(0, true));
    const outcomes = { ok: 0, error: 0 };
    for (let i = 0; i < 600; i++) {
      const bytes = valid.slice();
      for (let flips = 1 + Math.floor(random() * 3); flips > 0; flips--) {
        bytes[8 + Math.floor(random() * (headerEnd - 8))] = Math.floor(random() * 256);
      }
      outcomes[await parseOrExplain(bytes)]++;
    }
    expect(outcomes.error).toBeGreaterThan(0);
  });

  it("random headers built from plausible pieces: offsets, dtypes and shapes at random", async () => {
    const random = rng(11);
    const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)];
    const outcomes = { ok: 0, error: 0 };
    for (let i = 0; i < 600; i++) {
      const header: Record<string, unknown> = {};
      let offset = 0;
      for (let t = Math.floor(random() * 3); t >= 0; t--) {
        // Mostly consistent entries laid end to end (with gaps), each field corrupted now and then.
        const dtype = random() < 0.9 ? pick(["F32", "F16", "BF16", "I64", "U8", "BOOL"]) : pick(["F33", 3, null]);
        const shape =
          random() < 0.8 ? pick([[], [2], [4, 2], [0, 3]]) : pick([[3, -1], [1e308], [2 ** 31, 2 ** 31, 2 ** 31], "4"]);
        const size = Array.isArray(shape) ? shape.reduce((a: number, b: number) => a * b, 1) : 1;
        const bytes = size * ({ F32: 4, F16: 2, BF16: 2, I64: 8 } as Record<string, number>)[String(dtype)] || size;
        const begin = offset + (random() < 0.7 ? 0 : Math.floor(random() * 16) - 8);
        const end = random() < 0.8 ? begin + bytes : begin + Math.floor(random() * 40) - 4;
        header[`t${t}`] = { dtype, shape, data_offsets: random() < 0.95 ? [begin, end] : [begin] };
        if (Number.isFinite(end) && end < 4096) offset = Math.max(offset, end);
      }
      outcomes[await parseOrExplain(fileWith(header, Math.max(0, offset + Math.floor(random() * 16) - 4)))]++;
    }
    // Both outcomes occur, so the generator reaches valid files and the validator sees real variety.
    expect(outcomes.ok).toBeGreaterThan(10);
    expect(outcomes.error).toBeGreaterThan(10);
  });
});

describe("encodeHeader", () => {
  it("pads the header to 8 bytes and lays data out in name order", () => {
    const { header, order } = encodeHeader({
      b: { dtype: "U8", shape: [3], data: new Uint8Array(3) },
      a: { dtype: "F32", shape: [1], data: new Float32Array(1) },
    });
    expect(order).toEqual(["a", "b"]);
    expect(header.byteLength % 8).toBe(0);
    const length = Number(new DataView(header.buffer).getBigUint64(0, true));
    const json = JSON.parse(new TextDecoder().decode(header.subarray(8, 8 + length)));
    expect(json.a.data_offsets).toEqual([0, 4]);
    expect(json.b.data_offsets).toEqual([4, 7]);
  });
});

describe("findNonFinite (ldm info --check)", () => {
  it("counts NaN and ±Inf from the bits of every float dtype, in chunks, and names the tensors", async () => {
    const f64 = Float64Array.from([1, Number.NaN, -Infinity, 2]);
    const f32 = Float32Array.from([0, Infinity, 3.4e38, -0]);
    const half = Uint16Array.from([0x3c00, 0x7c00, 0xfe00, 0x7bff]); // 1, +Inf, NaN, 65504
    const bf16 = Uint16Array.from([0x3f80, 0x7f80, 0x7fc1, 0x7f7f]); // 1, +Inf, NaN, max
    const e5m2 = Uint8Array.from([0x3c, 0x7c, 0xff, 0x7b]); // 1, +Inf, NaN, max
    const e4m3 = Uint8Array.from([0x38, 0x7f, 0x7e, 0xff]); // 1, NaN, 448, NaN
    const path = join(dir, "nonfinite.safetensors");
    await writeSafetensors(path, {
      a64: { dtype: "F64", shape: [4], data: f64 },
      b32: { dtype: "F32", shape: [4], data: f32 },
      c16: { dtype: "F16", shape: [2, 2], data: half },
      dbf: { dtype: "BF16", shape: [4], data: bf16 },
      e52: { dtype: "F8_E5M2", shape: [4], data: e5m2 },
      f43: { dtype: "F8_E4M3", shape: [4], data: e4m3 },
      ints: { dtype: "I32", shape: [2], data: Int32Array.from([-1, 0x7fffffff]) },
      ok: { dtype: "F32", shape: [3], data: Float32Array.from([1, 2, 3]) },
    });
    const file = await openSafetensors(path);
    // 3-byte chunks: one element per read for every dtype wider than a byte.
    for (const chunkBytes of [3, 1 << 20]) {
      const check = await findNonFinite([file], chunkBytes);
      expect(check.tensors).toBe(8);
      expect(check.values).toBe(29);
      expect(check.found.map((t) => [t.name, t.count, t.size])).toEqual([
        ["a64", 2, 4],
        ["b32", 1, 4],
        ["c16", 2, 4],
        ["dbf", 2, 4],
        ["e52", 2, 4],
        ["f43", 2, 4],
      ]);
    }
    await file.close();
  });
});
