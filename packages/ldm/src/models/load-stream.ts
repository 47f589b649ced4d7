import { VarBuilder } from "@ldm/nn";
import type { Device, ParamDType } from "@ldm/tensor";
import {
  type ByteReader,
  blobReader,
  detectConfig,
  type LdmConfig,
  ldmConfigFromYaml,
  MappedWeightSource,
  openSafetensorsStream,
  SafetensorsFile,
  type SingleFileLayout,
  singleFileLayout,
  type TensorFile,
  TorchCheckpoint,
} from "@ldm/weights";
import { type Component, chooseEma, componentsOf, type LoadedModel, loadNetworks, storedScaleFactor } from "./load.ts";

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
  /**
   * The UNet from the checkpoint's EMA copy (`model_ema.*`). Default: as the config's use_ema says (true for the
   * paper's models) when the file has the copy, as loadModel does in Node.
   */
  ema?: boolean;
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
    return await loadFromFile(opened.file, { layout: opened.layout, source: opened.source, oneStream: true }, options);
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
  const file = await openBlob(blob, options.origin, options.onBytes);
  try {
    const layout = singleFileLayout(file);
    const source = new MappedWeightSource(options.origin, layout.table);
    return await loadFromFile(file, { layout, source, oneStream: false }, options);
  } finally {
    await file.close();
  }
}

/**
 * A checkpoint's configuration from its YAML config, or detected from its tensors' names and shapes, reading
 * only the Blob's header (a safetensors header, a PyTorch checkpoint's pickle): what a page needs to show a
 * model's inputs before its weights are loaded.
 */
export async function readModelConfig(
  blob: Blob,
  options: Pick<StreamedModelOptions, "origin" | "config">,
): Promise<ModelDescription> {
  const file = await openBlob(blob, options.origin);
  try {
    return configOf(singleFileLayout(file), options);
  } finally {
    await file.close();
  }
}

/** A Blob as a tensor container: a PyTorch checkpoint by `origin`'s extension (.ckpt/.pt/.pth), else safetensors. */
export function openBlob(blob: Blob, origin: string, onBytes?: BlobModelOptions["onBytes"]): Promise<TensorFile> {
  const reader = counting(blobReader(blob, origin), onBytes);
  return TORCH_CHECKPOINT.test(origin) ? TorchCheckpoint.open(reader) : SafetensorsFile.open(reader);
}

/** A checkpoint's configuration, and the values detection had to assume (none with a YAML config). */
export interface ModelDescription {
  config: LdmConfig;
  assumptions: string[];
}

function configOf(
  layout: SingleFileLayout,
  options: Pick<StreamedModelOptions, "origin" | "config">,
): ModelDescription {
  if (options.config) {
    return { config: ldmConfigFromYaml(options.config.text, options.config.origin), assumptions: [] };
  }
  const source = new MappedWeightSource(options.origin, layout.table);
  return detectConfig(source, options.origin, { openClipText: layout.textNaming === "openclip" });
}

/**
 * As loadModel in Node: the config, the EMA or the plain UNet, the stored scale of scale_by_std, then the
 * weights. `plain` maps the file without its EMA copy; `oneStream`: the file can be read once, in order.
 */
async function loadFromFile(
  file: TensorFile,
  plain: { layout: SingleFileLayout; source: MappedWeightSource; oneStream: boolean },
  options: StreamedModelOptions,
): Promise<LoadedModel> {
  const { device, origin, dtype = "f32" } = options;
  const { config, assumptions } = configOf(plain.layout, options);
  const ema = chooseEma(config, plain.layout.hasEma, options.ema, origin);
  // A stream is read once in file order, and the scale buffer may lie anywhere in it.
  if (config.scale_by_std && plain.oneStream) {
    throw new Error(
      `${origin}: scale_by_std models take their scale from the file's buffer: load them from a File or Blob (loadModelFromBlob)`,
    );
  }
  const scaleFactor = config.scale_by_std ? await storedScaleFactor(file, origin) : config.scale_factor;
  const source = ema ? new MappedWeightSource(origin, singleFileLayout(file, { ema }).table) : plain.source;
  const components = options.components ?? componentsOf(config);
  const loaded = await loadNetworks(VarBuilder.from(device, source, dtype), config, components, assumptions);
  return { ...loaded, scaleFactor, ema };
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
