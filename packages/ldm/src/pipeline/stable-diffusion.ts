/**
 * Stable Diffusion: the LatentDiffusion configuration with a CLIP (or OpenCLIP) text encoder and cross-attention,
 * under the name and API diffusers' users know: txt2img, img2img and inpaint from a prompt.
 */
import { describeCondStage, isTextToImage, type LdmConfig, type ModelConfig } from "@ldm/weights";
import type { CLIPTextModel } from "../models/index.ts";
import type { ClipTokenizer } from "../tokenizer/index.ts";
import {
  type GenerateOptions,
  type GenerationResult,
  LatentDiffusion,
  type LdmNetworks,
  type LoadOptions,
} from "./latent-diffusion.ts";

// The option and result types, where the files that use them have always found them.
export {
  type GenerateOptions,
  type GenerationResult,
  MAX_GUIDANCE_SCALE,
  PipelineOptionError,
  type Progress,
} from "./latent-diffusion.ts";

export interface PipelineNetworks extends LdmNetworks {
  config: ModelConfig;
  clip: CLIPTextModel;
}

export class StableDiffusion extends LatentDiffusion {
  declare readonly networks: PipelineNetworks;
  declare readonly tokenizer: ClipTokenizer;

  /**
   * A checkpoint (single .safetensors file or diffusers folder) with its tokenizer, in Node. The file loaders
   * are imported here, so browsers can import this module and build a pipeline with fromNetworks().
   */
  static override async load(path: string, options: LoadOptions = {}): Promise<StableDiffusion> {
    return new StableDiffusion(...(await LatentDiffusion.loadParts(path, options, requireText)));
  }

  /** A pipeline over networks loaded elsewhere (a browser's loader); the caller keeps the device. */
  static override fromNetworks(
    networks: Omit<LdmNetworks, "clip"> & { clip?: CLIPTextModel },
    tokenizer: ClipTokenizer,
    name: string,
  ): StableDiffusion {
    requireText(networks.config);
    return new StableDiffusion(networks.unet.vb.device, networks, tokenizer, name, false);
  }

  override get config(): ModelConfig {
    return this.networks.config;
  }

  async txt2img(options: GenerateOptions): Promise<GenerationResult> {
    return this.generate(options);
  }
}

function requireText(config: LdmConfig): void {
  if (!isTextToImage(config)) {
    throw new Error(
      `this is a ${describeCondStage(config)} LatentDiffusion, not a text-to-image model: load it with LatentDiffusion.load`,
    );
  }
}
