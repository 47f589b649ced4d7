import { VarBuilder } from "@ldm/nn";
import type { Device, ParamDType } from "@ldm/tensor";
import { type FirstStageOnlyConfig, type LdmConfig, ldmConfigFromYaml } from "@ldm/weights";
import { type Checkpoint, openCheckpoint, readConfigFile } from "@ldm/weights/node";
import { type AutoencoderKL, firstStageModel } from "./autoencoder.ts";
import {
  COMPONENT_PREFIX,
  type Component,
  chooseEma,
  componentsOf,
  type LoadedModel,
  loadNetworks,
  storedScaleFactor,
} from "./load.ts";

export type { LoadedModel } from "./load.ts";

export interface LoadModelOptions {
  device: Device;
  /** Parameter and activation dtype (f16 needs the device's shader-f16). Default f32. */
  dtype?: ParamDType;
  /** An original-style YAML config; without it the configuration is detected from the weights. */
  config?: string;
  /** Which networks to build and load (default: all the config has). */
  components?: readonly Component[];
  /**
   * The UNet from the checkpoint's EMA copy (`model_ema.*`). Default: as the config's use_ema says (true for the
   * paper's models, as upstream samples with them) when the file has the copy.
   */
  ema?: boolean;
  /** Diffusers folders: read the `fp16` variant files. */
  variant?: "fp16";
  /** Called with the configuration before any weights are read (to refuse a model early). */
  check?: (config: LdmConfig) => void;
}

/**
 * Opens a checkpoint (single .safetensors or PyTorch .ckpt/.pt file, or diffusers folder), builds the requested networks and loads
 * their weights. Every missing, unexpected or mis-shaped key is reported in one error before any data moves.
 */
export async function loadModel(path: string, options: LoadModelOptions): Promise<LoadedModel> {
  const { device, dtype = "f32" } = options;
  if (dtype === "f16" && !device.features.shaderF16) {
    throw new Error("f16 was asked for, but this device has no shader-f16 feature: use f32");
  }
  const yaml = options.config ? ldmConfigFromYaml(readConfigFile(options.config), options.config) : undefined;
  const { variant } = options;
  let checkpoint: Checkpoint = await openCheckpoint(path, { variant });
  try {
    const { config, assumptions } = yaml ? { config: yaml, assumptions: [] } : checkpoint.config();
    options.check?.(config);
    const ema = chooseEma(config, checkpoint.hasEma === true, options.ema, path);
    if (ema) {
      await checkpoint.close();
      checkpoint = await openCheckpoint(path, { ema: true, variant });
    }
    const scaleFactor = config.scale_by_std ? await storedScaleFactor(checkpoint.files[0], path) : config.scale_factor;
    const components = options.components ?? componentsOf(config);
    const loaded = await loadNetworks(
      VarBuilder.from(device, checkpoint.source, dtype),
      config,
      components,
      assumptions,
    );
    return { ...loaded, scaleFactor, ema };
  } finally {
    await checkpoint.close();
  }
}

/** A first stage saved alone (models/first_stage_models/*), its weights loaded; dispose() frees them. */
export interface LoadedFirstStage {
  vae: AutoencoderKL;
  dispose(): void;
}

/**
 * Opens a first stage's own checkpoint (VQModel or AutoencoderKL keys without a prefix; its training loss's
 * tensors ignored) and loads it as its config says.
 */
export async function loadFirstStage(
  path: string,
  options: { device: Device; dtype?: ParamDType; config: FirstStageOnlyConfig },
): Promise<LoadedFirstStage> {
  const { device, dtype = "f32" } = options;
  if (dtype === "f16" && !device.features.shaderF16) {
    throw new Error("f16 was asked for, but this device has no shader-f16 feature: use f32");
  }
  const checkpoint = await openCheckpoint(path);
  try {
    const vb = VarBuilder.from(device, checkpoint.source, dtype);
    const vae = firstStageModel(vb.pp(COMPONENT_PREFIX.vae), options.config.vae);
    try {
      await vb.load([COMPONENT_PREFIX.vae]);
    } catch (e) {
      vb.dispose();
      throw e;
    }
    return { vae, dispose: () => vb.dispose() };
  } finally {
    await checkpoint.close();
  }
}
