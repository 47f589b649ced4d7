/**
 * What a LatentDiffusion is conditioned on, from its configuration alone: the inputs a caller asks a user for
 * (the browser page shows exactly these) and the guidance each model samples with by default.
 */
import type { LdmConfig } from "@ldm/weights";
import { SAMPLING_DEFAULTS } from "../diffusion/index.ts";

/** The paper's text-to-image models (BERTEmbedder): scripts/txt2img.py's default --scale. */
export const BERT_GUIDANCE_SCALE = 5.0;

/** What a cond stage reads from text: CLIP's or BERT's prompt tokens, or a layout's object tokens. */
export type Prompted = "clip" | "bert" | "layout" | undefined;

export interface ModelInputs {
  prompted: Prompted;
  /** ClassEmbedder models: the class count; the last class is guidance's "no class". */
  classes?: number;
  /** SpatialRescaler models (semantic synthesis): the classes of the segmentation map. */
  segmentationClasses?: number;
  /** Identity cond stage (super-resolution): the input is the low-resolution image. */
  upscale: boolean;
  /** The UNet takes a mask and the masked image (SD's 9 channels, the paper's big inpainting): both are needed. */
  inpainting: boolean;
  /**
   * Whether classifier-free guidance is possible: text, layout and class models have an unconditional input
   * (the empty prompt or layout, the "no class"); the others sample unguided.
   */
  guidable: boolean;
  /** Guidance by default: SD's 7.5 for CLIP prompts and classes, 5.0 for BERT prompts, else 1 (unguided). */
  guidanceScale: number;
}

const GUIDANCE: Record<Exclude<Prompted, undefined>, number> = {
  clip: SAMPLING_DEFAULTS.guidanceScale,
  bert: BERT_GUIDANCE_SCALE,
  layout: 1,
};

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
  return {
    prompted,
    classes,
    segmentationClasses: stage?.target === "SpatialRescaler" ? stage.in_channels : undefined,
    upscale: stage?.target === "Identity",
    inpainting: config.inpainting,
    guidable: prompted !== undefined || classes !== undefined,
    guidanceScale: prompted ? GUIDANCE[prompted] : classes !== undefined ? SAMPLING_DEFAULTS.guidanceScale : 1,
  };
}
