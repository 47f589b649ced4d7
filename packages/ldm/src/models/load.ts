import type { VarBuilder } from "@ldm/nn";
import type { LdmConfig, TensorFile } from "@ldm/weights";
import { COND_PREFIX, decodeFloats, isFloatStoredDType, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX } from "@ldm/weights";
import { type AutoencoderKL, firstStageModel } from "./autoencoder.ts";
import { CLIPTextModel } from "./clip.ts";
import { type CondStageModel, condStageModel } from "./cond-stage.ts";
import { UNetModel } from "./openaimodel.ts";

/** unet, the first stage (vae), the CLIP text encoder (clip), or another cond stage with parameters (cond). */
export type Component = "unet" | "vae" | "clip" | "cond";

export interface Networks {
  config: LdmConfig;
  unet?: UNetModel;
  /** The first stage: AutoencoderKL, or its VQModel subclass. */
  vae?: AutoencoderKL;
  clip?: CLIPTextModel;
  cond?: CondStageModel;
}

/** Where each network's parameters live among the canonical keys (the original single-file prefixes). */
export const COMPONENT_PREFIX: Readonly<Record<Component, string>> = {
  unet: UNET_PREFIX.slice(0, -1),
  vae: VAE_PREFIX.slice(0, -1),
  clip: TEXT_PREFIX.slice(0, -1),
  cond: COND_PREFIX.slice(0, -1),
};

/** The components a config has: the UNet, the first stage, and its cond stage's network if it has parameters. */
export function componentsOf(config: LdmConfig): Component[] {
  const stage = config.cond_stage;
  const cond =
    stage?.target === "ClassEmbedder" ||
    stage?.target === "BERTEmbedder" ||
    (stage?.target === "SpatialRescaler" && stage.out_channels);
  return ["unet", "vae", ...(config.text ? ["clip" as const] : cond ? ["cond" as const] : [])];
}

/** The networks of `config`, their parameters requested from `vb` (which must still be loaded). */
export function buildModel(
  vb: VarBuilder,
  config: LdmConfig,
  components: readonly Component[] = componentsOf(config),
): Networks {
  // Asking for the text encoder or the cond stage of a model whose cond stage is another one (or none) gets none.
  const want = new Set(components);
  return {
    config,
    unet: want.has("unet") ? new UNetModel(vb.pp(COMPONENT_PREFIX.unet), config.unet) : undefined,
    vae: want.has("vae") ? firstStageModel(vb.pp(COMPONENT_PREFIX.vae), config.vae) : undefined,
    clip: want.has("clip") && config.text ? new CLIPTextModel(vb.pp(COMPONENT_PREFIX.clip), config.text) : undefined,
    cond:
      want.has("cond") && config.cond_stage
        ? condStageModel(vb.pp(COMPONENT_PREFIX.cond), config.cond_stage)
        : undefined,
  };
}

export interface LoadedModel extends Networks {
  /** Configuration values detection had to assume (empty when a YAML config was given). */
  assumptions: string[];
  /** The latent scale: the config's scale_factor, or with scale_by_std the checkpoint's buffer. */
  scaleFactor: number;
  /** Whether the UNet's weights are the EMA copy (`model_ema.*`). */
  ema: boolean;
  /** Frees every parameter of the loaded networks (they must not be used afterwards). */
  dispose(): void;
}

/** The networks of `config` over `vb`, their weights loaded; the parameters are freed again if loading fails. */
export async function loadNetworks(
  vb: VarBuilder,
  config: LdmConfig,
  components: readonly Component[],
  assumptions: string[],
): Promise<LoadedModel> {
  const networks = buildModel(vb, config, components);
  try {
    const present = new Set(componentsOf(config));
    await vb.load(components.filter((c) => present.has(c)).map((c) => COMPONENT_PREFIX[c]));
  } catch (e) {
    vb.dispose();
    throw e;
  }
  return { ...networks, assumptions, scaleFactor: config.scale_factor, ema: false, dispose: () => vb.dispose() };
}

/**
 * Whether to sample with the UNet's EMA copy (`model_ema.*`): as asked, else as the config's use_ema says (true
 * for the paper's models, as upstream samples with them) when the file has the copy.
 */
export function chooseEma(config: LdmConfig, hasEma: boolean, asked: boolean | undefined, origin: string): boolean {
  const ema = asked ?? (config.use_ema === true && hasEma);
  if (ema && !hasEma) throw new Error(`${origin}: EMA weights were asked for, but the file has no model_ema.*`);
  return ema;
}

/** scale_by_std: LatentDiffusion's `scale_factor` buffer, set from the first batch's latent std in training. */
export async function storedScaleFactor(file: TensorFile, origin: string): Promise<number> {
  const entry = file.tensors.get("scale_factor");
  if (entry?.size !== 1 || !isFloatStoredDType(entry.dtype)) {
    throw new Error(
      `${origin}: the config has scale_by_std: true, but the file has no scale_factor buffer (a float scalar)`,
    );
  }
  return decodeFloats(entry.dtype, await file.readBytes("scale_factor"), 1)[0];
}
