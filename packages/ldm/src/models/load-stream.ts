import { VarBuilder } from "@ldm/nn";
import type { Device, ParamDType } from "@ldm/tensor";
import { configFromYaml, detectConfig, openSafetensorsStream } from "@ldm/weights";
import { type Component, type LoadedModel, loadNetworks } from "./load.ts";

/**
 * Loading from a one-pass byte stream: a `fetch` Response's body or a File's `stream()` in a browser. Nothing
 * here touches the file system, so this module is safe to bundle for the web.
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
  /** Which networks to build and load (default all three). */
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
  const { device, origin, dtype = "f32", components = ["unet", "vae", "clip"] } = options;
  if (dtype === "f16" && !device.features.shaderF16) {
    await stream.cancel();
    throw new Error("f16 was asked for, but this device has no shader-f16 feature: use f32");
  }
  const opened = await openSafetensorsStream(stream, { origin, size: options.size });
  try {
    const { config, assumptions } = options.config
      ? { config: configFromYaml(options.config.text, options.config.origin), assumptions: [] }
      : detectConfig(opened.source, origin, { openClipText: opened.layout.textNaming === "openclip" });
    return await loadNetworks(VarBuilder.from(device, opened.source, dtype), config, components, assumptions);
  } finally {
    await opened.close();
  }
}
