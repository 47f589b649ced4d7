import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { convertElements, emaName, isFloatStoredDType, UNET_PREFIX } from "../src/index.ts";
import { convertCheckpoint, openSafetensors, openTorchCheckpoint } from "../src/node.ts";
import { tinyConfig, writeSingleFile } from "./synthetic.ts";

const dir = mkdtempSync(join(tmpdir(), "ldm-convert-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const FIXTURES = join(import.meta.dirname, "fixtures", "torch");

/** What --half makes of a stored float tensor: PyTorch's .half() rounding, as the loader's f16 path does. */
function half(dtype: "F64" | "F32" | "F16" | "BF16", bytes: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(count * 2);
  convertElements(dtype, "f16", bytes, out, count);
  return out;
}

describe("convertCheckpoint", () => {
  it("--half --ema: the EMA UNet under model.diffusion_model.*, floats as f16, schedule buffers kept", async () => {
    const input = join(dir, "full.safetensors");
    await writeSingleFile(input, tinyConfig(), { dtype: "F32", schedule: true, ema: true });
    const output = join(dir, "ema-half.safetensors");
    const progress: number[] = [];
    const result = await convertCheckpoint(input, output, {
      half: true,
      ema: true,
      onProgress: (done, total) => progress.push(done / total),
    });
    const [source, converted] = [await openSafetensors(input), await openSafetensors(output)];
    try {
      const expectedKeys = [...source.tensors.keys()].filter((k) => !k.startsWith("model_ema."));
      expect([...converted.tensors.keys()].sort()).toEqual(expectedKeys.sort());
      expect(result.tensors).toBe(expectedKeys.length);
      expect(progress.at(-1)).toBe(1);
      for (const key of expectedKeys) {
        const from = key.startsWith(UNET_PREFIX) ? emaName(key) : key;
        const entry = source.entry(from);
        const bytes = await source.readBytes(from);
        const got = converted.entry(key);
        const schedule = !key.includes(".");
        expect(got.dtype, key).toBe(schedule || !isFloatStoredDType(entry.dtype) ? entry.dtype : "F16");
        const want = got.dtype === entry.dtype ? bytes : half(entry.dtype as "F32", bytes, entry.size);
        expect(Buffer.from(await converted.readBytes(key)).equals(want), key).toBe(true);
      }
    } finally {
      await source.close();
      await converted.close();
    }
  });

  it("--half on a PyTorch checkpoint: f32/bf16/f64 → f16, integers and top-level names untouched", async () => {
    const output = join(dir, "zip-half.safetensors");
    await convertCheckpoint(join(FIXTURES, "zip.pt"), output, { half: true });
    const [source, converted] = [await openTorchCheckpoint(join(FIXTURES, "zip.pt")), await openSafetensors(output)];
    try {
      expect(converted.entry("param.weight").dtype).toBe("F16");
      expect(converted.entry("shared.column").dtype).toBe("F16");
      expect(converted.entry("f32").dtype).toBe("F32"); // no dot: kept, as schedule buffers are
      expect(converted.entry("i64").dtype).toBe("I64");
      const column = source.entry("shared.column");
      expect(await converted.readBytes("shared.column")).toEqual(
        half("F32", await source.readBytes("shared.column"), column.size),
      );
      expect(converted.metadata).toEqual({ format: "pt" });
    } finally {
      await source.close();
      await converted.close();
    }
  });

  it("refuses --ema without EMA weights and an output that is the input; leaves no partial file", async () => {
    const input = join(dir, "plain.safetensors");
    await writeSingleFile(input, tinyConfig());
    const output = join(dir, "never.safetensors");
    await expect(convertCheckpoint(input, output, { ema: true })).rejects.toThrow(
      /plain\.safetensors: --ema: no EMA weights for \d+ of \d+ UNet parameters \(first: model_ema\.diffusion_model/,
    );
    await expect(convertCheckpoint(input, input)).rejects.toThrow(/the output would overwrite the input/);
    const hostile = join(FIXTURES, "hostile", "offset-past-end.pt");
    await expect(convertCheckpoint(hostile, output)).rejects.toThrow(/reaches element 12 of storage "0"/);
    expect(existsSync(output) || existsSync(`${output}.partial`)).toBe(false);
  });
});
