import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  blobReader,
  decodeFloats,
  isFloatStoredDType,
  type StoredDType,
  type TensorEntry,
  TorchCheckpoint,
} from "../src/index.ts";
import { openTorchCheckpoint } from "../src/node.ts";

/** Written by reference/make_torch_fixtures.py with Debian's PyTorch. */
const FIXTURES = join(import.meta.dirname, "fixtures", "torch");
const expected = JSON.parse(readFileSync(join(FIXTURES, "expected.json"), "utf8")) as {
  tensors: Record<string, { dtype: string; shape: number[]; values: number[] }>;
};

const TORCH_DTYPES: Record<string, StoredDType> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  float64: "F64",
  int64: "I64",
  int32: "I32",
  int16: "I16",
  int8: "I8",
  uint8: "U8",
  bool: "BOOL",
};

/** A tensor's stored bytes as numbers (exact: every value in the fixtures is a double or a safe integer). */
function decode(entry: TensorEntry, bytes: Uint8Array): number[] {
  const { dtype, size } = entry;
  if (isFloatStoredDType(dtype)) return [...decodeFloats(dtype, bytes, size)];
  const b = bytes.buffer;
  switch (dtype) {
    case "I64":
      return [...new BigInt64Array(b, 0, size)].map(Number);
    case "I32":
      return [...new Int32Array(b, 0, size)];
    case "I16":
      return [...new Int16Array(b, 0, size)];
    case "I8":
      return [...new Int8Array(b, 0, size)];
    default:
      return [...new Uint8Array(b, 0, size)];
  }
}

async function expectAsSaved(file: TorchCheckpoint, names: string[]) {
  expect([...file.tensors.keys()]).toEqual(names);
  for (const name of names) {
    const want = expected.tensors[name];
    const entry = file.entry(name);
    expect({ name, dtype: entry.dtype, shape: entry.shape }).toEqual({
      name,
      dtype: TORCH_DTYPES[want.dtype],
      shape: want.shape,
    });
    expect(decode(entry, await file.readBytes(name)), name).toEqual(want.values);
  }
}

const ALL = Object.keys(expected.tensors).filter((name) => name !== "*");
const SMALL = ["f32", "shared.rows", "shared.column", "param.weight"];

describe("PyTorch checkpoints read as data", () => {
  it.each(["zip.pt", "legacy.pt", "deflated.pt", "zip64.pt"])(
    "%s: every dtype, views of a shared storage, strided views, equal to what PyTorch saved",
    async (name) => {
      const file = await openTorchCheckpoint(join(FIXTURES, name));
      try {
        await expectAsSaved(file, ALL);
        expect(file.metadata.format).toBe(name === "legacy.pt" ? "pytorch-legacy" : "pytorch-zip");
        expect(file.stateDictKey).toBeUndefined();
      } finally {
        await file.close();
      }
    },
  );

  it("takes a Lightning checkpoint's state_dict and keeps its plain top-level values as metadata", async () => {
    const file = await openTorchCheckpoint(join(FIXTURES, "lightning.ckpt"));
    await expectAsSaved(file, SMALL);
    expect(file.stateDictKey).toBe("state_dict");
    expect(file.metadata).toEqual({
      format: "pytorch-zip",
      state_dict: "state_dict",
      epoch: "3",
      global_step: "1234",
      "pytorch-lightning_version": "1.4.2",
    });
    await file.close();
  });

  it("presents the dict a caller selects (an A1111 embedding's string_to_param), naming the keys when absent", async () => {
    const path = join(FIXTURES, "embedding.pt");
    const file = await TorchCheckpoint.open(blobReader(new Blob([readFileSync(path)]), "embedding.pt"), {
      select: () => "string_to_param",
    });
    await expectAsSaved(file, ["*"]);
    expect(file.metadata).toMatchObject({ name: "toy", step: "100" });
    await expect(
      TorchCheckpoint.open(blobReader(new Blob([readFileSync(path)]), "embedding.pt"), { select: () => undefined }),
    ).rejects.toThrow(/embedding\.pt: no dict of tensors where expected \(top-level keys: "string_to_token", /);
  });

  it('takes {"model": …} (legacy format)', async () => {
    const file = await openTorchCheckpoint(join(FIXTURES, "model-legacy.pt"));
    await expectAsSaved(file, SMALL);
    expect(file.stateDictKey).toBe("model");
    await file.close();
  });

  it("reads any byte range of its tensors' layout, across tensors and inside strided ones, from a Blob", async () => {
    const bytes = readFileSync(join(FIXTURES, "zip.pt"));
    const file = await TorchCheckpoint.open(blobReader(new Blob([bytes]), "zip.pt"));
    const whole = new Uint8Array(file.reader.size);
    for (const entry of file.tensors.values()) whole.set(await file.readBytes(entry.name), entry.begin);
    const transposed = file.entry("transposed");
    for (const [from, to] of [
      [0, whole.length],
      [3, 61],
      [transposed.begin + 1, transposed.end - 3],
      [file.entry("shared.rows").begin + 2, file.entry("sliced").end - 1],
    ]) {
      const part = new Uint8Array(to - from);
      await file.reader.readInto(from, part);
      expect(part).toEqual(whole.subarray(from, to));
    }
    await expect(file.reader.readInto(whole.length - 2, new Uint8Array(4))).rejects.toThrow(/past the end/);
  });
});
