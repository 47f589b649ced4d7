import { VarBuilder } from "@ldm/nn";
import type { Device, ParamDType } from "@ldm/tensor";
import {
  type ByteReader,
  blobReader,
  detectConfig,
  ldmConfigFromYaml,
  MappedWeightSource,
  openSafetensorsStream,
  SafetensorsFile,
  type SingleFileLayout,
  singleFileLayout,
  TorchCheckpoint,
} from "@ldm/weights";
import { type Component, componentsOf, type LoadedModel, loadNetworks } from "./load.ts";

/**
 * Loading from a one-pass byte stream (a `fetch` Response's body, a File's `stream()`) or from a Blob (a File
 * from a file picker) in a browser. Nothing here touches the file system, so this module is safe to bundle for
 * the web.
 */

export interface StreamedModelOptions {
  device: Device;
  /** Shown in errors: the URL or file name. */
  origin: string;
  /** The stream's length in bytes when known (a File's size, a Content-Length). */
  size?: number;
  /** Parameter and activation dtype (f16 needs the device's shader-f16). Default f32. */
  dtype?: ParamDType;
  /** The text of an original-style YAML config; without it the configuration is detected from the weights. */
  config?: { text: string; origin: string };
  /** Which networks to build and load (default: all the config has). */
  components?: readonly Component[];
}

/**
 * Builds the networks of a single-file checkpoint read from `stream` and loads their weights in one pass over
 * it, in file order: each tensor goes from the stream's chunks to its GPU buffer, so the file is never held
 * whole in memory. Every missing, unexpected or mis-shaped key is reported before the data is read.
 */
export async function loadModelFromStream(
  stream: ReadableStream<Uint8Array>,
  options: StreamedModelOptions,
): Promise<LoadedModel> {
  if (options.dtype === "f16" && !options.device.features.shaderF16) {
    await stream.cancel();
    throw noF16();
  }
  const opened = await openSafetensorsStream(stream, { origin: options.origin, size: options.size });
  try {
    return await loadFromLayout(opened.source, opened.layout, options);
  } finally {
    await opened.close();
  }
}

export interface BlobModelOptions extends Omit<StreamedModelOptions, "size"> {
  /** Bytes read from the Blob so far (each tensor is read when the loader gets to it). */
  onBytes?: (read: number) => void;
}

/** PyTorch checkpoint names: read through the pickle interpreter of @ldm/weights, never executed. */
const TORCH_CHECKPOINT = /\.(ckpt|pt|pth)$/i;

/**
 * Builds the networks of a single-file checkpoint in a Blob (a browser File): a `.safetensors`, or a PyTorch
 * `.ckpt`/`.pt`/`.pth` (by `origin`'s extension). Each tensor is sliced out of the Blob when it is loaded, so the
 * file is never held whole in memory; a zip checkpoint needs the random access a stream cannot give.
 */
export async function loadModelFromBlob(blob: Blob, options: BlobModelOptions): Promise<LoadedModel> {
  if (options.dtype === "f16" && !options.device.features.shaderF16) throw noF16();
  const reader = counting(blobReader(blob, options.origin), options.onBytes);
  const file = TORCH_CHECKPOINT.test(options.origin)
    ? await TorchCheckpoint.open(reader)
    : await SafetensorsFile.open(reader);
  try {
    const layout = singleFileLayout(file);
    return await loadFromLayout(new MappedWeightSource(options.origin, layout.table), layout, options);
  } finally {
    await file.close();
  }
}

async function loadFromLayout(
  source: MappedWeightSource,
  layout: SingleFileLayout,
  options: StreamedModelOptions,
): Promise<LoadedModel> {
  const { device, origin, dtype = "f32" } = options;
  const { config, assumptions } = options.config
    ? { config: ldmConfigFromYaml(options.config.text, options.config.origin), assumptions: [] }
    : detectConfig(source, origin, { openClipText: layout.textNaming === "openclip" });
  if (config.scale_by_std) {
    throw new Error(`${origin}: scale_by_std models take their scale from the file's buffer: load them from a file`);
  }
  const components = options.components ?? componentsOf(config);
  return loadNetworks(VarBuilder.from(device, source, dtype), config, components, assumptions);
}

function noF16(): Error {
  return new Error("f16 was asked for, but this device has no shader-f16 feature: use f32");
}

function counting(reader: ByteReader, onBytes: BlobModelOptions["onBytes"]): ByteReader {
  if (!onBytes) return reader;
  let read = 0;
  return {
    ...reader,
    async readInto(position, target) {
      await reader.readInto(position, target);
      onBytes((read += target.byteLength));
    },
  };
}
