import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type ParamDType, Tensor } from "@ldm/tensor";
import { describe, expect, it } from "vitest";
import {
  type MappedWeightSource,
  openSafetensorsStream,
  type StoredDType,
  type StreamOptions,
  TEXT_PREFIX,
} from "../src/index.ts";
import { openCheckpoint } from "../src/node.ts";
import { checkpointTestEnvironment, tinyConfig, writeSingleFile } from "./synthetic.ts";

const { dir, device } = checkpointTestEnvironment("ldm-stream-");

/** The bytes as a stream whose chunks cycle through `sizes` (odd sizes, to cut tensors and the header anywhere). */
function chunkedStream(bytes: Uint8Array, sizes: readonly number[]): ReadableStream<Uint8Array> {
  let offset = 0;
  let turn = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.byteLength) return controller.close();
      const size = sizes[turn++ % sizes.length];
      // A fresh copy per chunk, as a network stream hands out.
      controller.enqueue(bytes.slice(offset, offset + size));
      offset += size;
    },
  });
}

const ODD_CHUNKS = [1, 7, 4093];

async function loadInto(source: MappedWeightSource, keys: string[], dtype: ParamDType) {
  const tensors = keys.map((key) => ({ key, tensor: Tensor.empty(device(), source.describe(key)!.shape, dtype) }));
  await source.load(tensors);
  const out = new Map<string, unknown>();
  for (const { key, tensor } of tensors) {
    out.set(key, await tensor.read());
    tensor.dispose();
  }
  return out;
}

/** Loads `keys` from the file on disk (random access) and through a stream, both as `dtype`. */
async function fileAndStream(path: string, keys: string[], dtype: ParamDType, options: Partial<StreamOptions> = {}) {
  const checkpoint = await openCheckpoint(path);
  const fromFile = await loadInto(checkpoint.source, keys, dtype).finally(() => checkpoint.close());
  const opened = await openSafetensorsStream(chunkedStream(readFileSync(path), ODD_CHUNKS), {
    origin: path,
    ...options,
  });
  const fromStream = await loadInto(opened.source, keys, dtype).finally(() => opened.close());
  return { fromFile, fromStream, opened };
}

const config = tinyConfig();

describe("safetensors from a one-pass stream", () => {
  it.each([
    ["F32", "f32"],
    ["F32", "f16"],
    ["F16", "f32"],
    ["F16", "f16"],
    ["BF16", "f32"],
    ["BF16", "f16"],
  ] as [StoredDType, ParamDType][])(
    "%s → %s in 1/7/4093-byte stream chunks equals the file's load",
    async (stored, dtype) => {
      const path = join(dir, `sd1-${stored}.safetensors`);
      await writeSingleFile(path, config, { dtype: stored });
      const checkpoint = await openCheckpoint(path);
      const all = [...checkpoint.source.keys()].sort();
      await checkpoint.close();
      // Every third key, so the stream skips tensors; odd sizes (3-element biases) included.
      const keys = all.filter((_, i) => i % 3 === 0);
      // Loader chunks of 100 bytes re-cut stream chunks that straddle tensors and chunk boundaries alike.
      const { fromFile, fromStream, opened } = await fileAndStream(path, keys, dtype, { chunkBytes: 100 });
      expect([...opened.source.keys()].sort()).toEqual(all);
      expect(fromStream).toEqual(fromFile);
      expect(fromStream.size).toBe(keys.length);
    },
  );

  it("splits SD 2.x's fused OpenCLIP in_proj into q/k/v in one pass", async () => {
    const sd2 = tinyConfig({ text: { ...config.text, hidden_act: "gelu", layer: "penultimate", pad_token_id: 0 } });
    const path = join(dir, "sd2.safetensors");
    await writeSingleFile(path, sd2, { text: "openclip", dtype: "F16" });
    const checkpoint = await openCheckpoint(path);
    const keys = [...checkpoint.source.keys()].filter((k) => k.startsWith(TEXT_PREFIX)).sort();
    await checkpoint.close();
    expect(keys).toContain(`${TEXT_PREFIX}encoder.layers.1.self_attn.k_proj.bias`);
    const { fromFile, fromStream, opened } = await fileAndStream(path, keys, "f32");
    expect(opened.layout.textNaming).toBe("openclip");
    expect(opened.source.mapping(`${TEXT_PREFIX}encoder.layers.1.self_attn.v_proj.weight`)?.transform).toEqual({
      kind: "rows",
      start: 256,
      end: 384,
    });
    expect(fromStream).toEqual(fromFile);
  });

  it("rejects a truncated stream naming the source and the tensor being read", async () => {
    const path = join(dir, "truncated.safetensors");
    await writeSingleFile(path, config, { dtype: "F16" });
    const bytes = readFileSync(path);
    const opened = await openSafetensorsStream(chunkedStream(bytes, ODD_CHUNKS), { origin: "https://x/model" });
    const key = `${TEXT_PREFIX}final_layer_norm.weight`;
    const entry = opened.file.entry(opened.source.mapping(key)!.stored);
    await opened.close();

    const cut = bytes.subarray(0, entry.begin + 10);
    const truncated = await openSafetensorsStream(chunkedStream(cut, ODD_CHUNKS), { origin: "https://x/model" });
    const tensor = Tensor.empty(device(), truncated.source.describe(key)!.shape, "f32");
    await expect(truncated.source.load([{ key, tensor }])).rejects.toThrow(
      `reading ${key} from https://x/model: https://x/model: the stream ended at byte ${entry.begin + 10}, before byte ${entry.end}`,
    );
    tensor.dispose();

    // Inside the header, and with the length known up front, the header check itself names the cut.
    await expect(
      openSafetensorsStream(chunkedStream(bytes.subarray(0, 100), ODD_CHUNKS), { origin: "https://x/model" }),
    ).rejects.toThrow("https://x/model: the stream ended at byte 100");
    await expect(
      openSafetensorsStream(chunkedStream(cut, ODD_CHUNKS), { origin: "https://x/model", size: cut.byteLength }),
    ).rejects.toThrow(/https:\/\/x\/model: tensor ".*": data_offsets .* run past the end of the data/);
  });

  it("refuses a second load and bytes already passed, and reports a failing stream", async () => {
    const path = join(dir, "once.safetensors");
    await writeSingleFile(path, config, { dtype: "F32" });
    const opened = await openSafetensorsStream(new Response(readFileSync(path)).body!, { origin: "model.safetensors" });
    const key = `${TEXT_PREFIX}final_layer_norm.bias`;
    const tensor = Tensor.empty(device(), opened.source.describe(key)!.shape, "f32");
    await opened.source.load([{ key, tensor }]);
    await expect(opened.source.load([{ key, tensor }])).rejects.toThrow(
      "model.safetensors: this stream was already loaded (a stream is read once",
    );
    await expect(opened.file.readBytes(`${TEXT_PREFIX}embeddings.token_embedding.weight`)).rejects.toThrow(
      /model\.safetensors: bytes from \d+ were already consumed/,
    );
    await opened.close();
    tensor.dispose();

    let pulls = 0;
    const failing = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulls++) controller.error(new Error("connection reset"));
        else controller.enqueue(readFileSync(path).subarray(0, 5));
      },
    });
    await expect(openSafetensorsStream(failing, { origin: "model.safetensors" })).rejects.toThrow(
      "model.safetensors: the stream failed at byte 5: connection reset",
    );
  });
});
