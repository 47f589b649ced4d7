import type { VarBuilder } from "@ldm/nn";
import type { ModelConfig } from "@ldm/weights";
import { TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX } from "@ldm/weights";
import { AutoencoderKL } from "./autoencoder.ts";
import { CLIPTextModel } from "./clip.ts";
import { UNetModel } from "./openaimodel.ts";

export type Component = "unet" | "vae" | "clip";

export interface Networks {
  config: ModelConfig;
  unet?: UNetModel;
  vae?: AutoencoderKL;
  clip?: CLIPTextModel;
}

/** Where each network's parameters live among the canonical keys (the original single-file prefixes). */
export const COMPONENT_PREFIX: Readonly<Record<Component, string>> = {
  unet: UNET_PREFIX.slice(0, -1),
  vae: VAE_PREFIX.slice(0, -1),
  clip: TEXT_PREFIX.slice(0, -1),
};

/** The networks of `config`, their parameters requested from `vb` (which must still be loaded). */
export function buildModel(
  vb: VarBuilder,
  config: ModelConfig,
  components: readonly Component[] = ["unet", "vae", "clip"],
): Networks {
  const want = new Set(components);
  return {
    config,
    unet: want.has("unet") ? new UNetModel(vb.pp(COMPONENT_PREFIX.unet), config.unet) : undefined,
    vae: want.has("vae") ? new AutoencoderKL(vb.pp(COMPONENT_PREFIX.vae), config.vae) : undefined,
    clip: want.has("clip") ? new CLIPTextModel(vb.pp(COMPONENT_PREFIX.clip), config.text) : undefined,
  };
}

export interface LoadedModel extends Networks {
  /** Configuration values detection had to assume (empty when a YAML config was given). */
  assumptions: string[];
  /** Frees every parameter of the loaded networks (they must not be used afterwards). */
  dispose(): void;
}

/** The networks of `config` over `vb`, their weights loaded; the parameters are freed again if loading fails. */
export async function loadNetworks(
  vb: VarBuilder,
  config: ModelConfig,
  components: readonly Component[],
  assumptions: string[],
): Promise<LoadedModel> {
  const networks = buildModel(vb, config, components);
  try {
    await vb.load(components.map((c) => COMPONENT_PREFIX[c]));
  } catch (e) {
    vb.dispose();
    throw e;
  }
  return { ...networks, assumptions, dispose: () => vb.dispose() };
}
