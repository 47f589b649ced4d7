import { VarBuilder } from "@ldm/nn";
import type { Device, ParamDType } from "@ldm/tensor";
import { openCheckpoint, readConfigFile } from "@ldm/weights/node";
import { type Component, type LoadedModel, loadNetworks } from "./load.ts";

export type { LoadedModel } from "./load.ts";

export interface LoadModelOptions {
  device: Device;
  /** Parameter and activation dtype (f16 needs the device's shader-f16). Default f32. */
  dtype?: ParamDType;
  /** An original-style YAML config; without it the configuration is detected from the weights. */
  config?: string;
  /** Which networks to build and load (default all three). */
  components?: readonly Component[];
}

/**
 * Opens a checkpoint (single .safetensors or PyTorch .ckpt/.pt file, or diffusers folder), builds the requested networks and loads
 * their weights. Every missing, unexpected or mis-shaped key is reported in one error before any data moves.
 */
export async function loadModel(path: string, options: LoadModelOptions): Promise<LoadedModel> {
  const { device, dtype = "f32", components = ["unet", "vae", "clip"] } = options;
  if (dtype === "f16" && !device.features.shaderF16) {
    throw new Error("f16 was asked for, but this device has no shader-f16 feature: use f32");
  }
  const yaml = options.config ? { text: readConfigFile(options.config), origin: options.config } : undefined;
  const checkpoint = await openCheckpoint(path);
  try {
    const { config, assumptions } = checkpoint.config(yaml);
    return await loadNetworks(VarBuilder.from(device, checkpoint.source, dtype), config, components, assumptions);
  } finally {
    await checkpoint.close();
  }
}
