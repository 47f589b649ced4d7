/**
 * What a LatentDiffusion is conditioned on, from its configuration alone: the inputs a caller asks a user for
 * (the browser page shows exactly these) and the guidance each model samples with by default.
 */
import type { LdmConfig } from "@ldm/weights";
import { SAMPLING_DEFAULTS } from "../diffusion/index.ts";

/** What a cond stage reads from text: CLIP's or BERT's prompt tokens, or a layout's object tokens. */
export type Prompted = "clip" | "bert" | "layout" | undefined;

/** Which guidance default a model takes: by what conditions it, and whether it has an unconditional input. */
export type GuidanceFamily = Exclude<Prompted, undefined> | "class" | "unguided";

/**
 * The guidance scale each family samples with by default, as upstream samples it: Stable Diffusion's 7.5
 * (its scripts and diffusers), the paper's BERT text-to-image 5.0 (scripts/txt2img.py --scale), the
 * class-conditional ImageNet model 3.0 against its "no class" (scripts/latent_imagenet_diffusion.ipynb), and 1
 * (one unguided pass) for layouts (scripts sample them unguided) and for models without an unconditional input
 * (unconditional, super-resolution, semantic synthesis, inpainting, a class table without "no class").
 */
export const DEFAULT_GUIDANCE: Readonly<Record<GuidanceFamily, number>> = {
  clip: SAMPLING_DEFAULTS.guidanceScale,
  bert: 5.0,
  layout: 1,
  class: 3.0,
  unguided: 1,
};

export interface ModelInputs {
  prompted: Prompted;
  /** ClassEmbedder models: the class count (cin256-v2's last class is guidance's "no class"). */
  classes?: number;
  /** SpatialRescaler models (semantic synthesis): the classes of the segmentation map. */
  segmentationClasses?: number;
  /** Identity cond stage (super-resolution): the input is the low-resolution image. */
  upscale: boolean;
  /** The UNet takes a mask and the masked image (SD's 9 channels, the paper's big inpainting): both are needed. */
  inpainting: boolean;
  /**
   * Whether classifier-free guidance is possible: text, layout and class models with a "no class" have an
   * unconditional input (the empty prompt or layout, the "no class"); the others sample unguided.
   */
  guidable: boolean;
  /** The row of DEFAULT_GUIDANCE the model samples with. */
  guidanceFamily: GuidanceFamily;
  /** Guidance by default: DEFAULT_GUIDANCE[guidanceFamily]. */
  guidanceScale: number;
}

export function modelInputs(config: LdmConfig): ModelInputs {
  const stage = config.cond_stage;
  const prompted: Prompted = config.text
    ? "clip"
    : stage?.target === "BERTEmbedder"
      ? stage.use_tokenizer
        ? "bert"
        : "layout"
      : undefined;
  const classes = stage?.target === "ClassEmbedder" ? stage.n_classes : undefined;
  const noClass = stage?.target === "ClassEmbedder" && stage.unconditional_class !== undefined;
  const guidanceFamily: GuidanceFamily = prompted ?? (noClass ? "class" : "unguided");
  return {
    prompted,
    classes,
    segmentationClasses: stage?.target === "SpatialRescaler" ? stage.in_channels : undefined,
    upscale: stage?.target === "Identity",
    inpainting: config.inpainting,
    guidable: prompted !== undefined || noClass,
    guidanceFamily,
    guidanceScale: DEFAULT_GUIDANCE[guidanceFamily],
  };
}
