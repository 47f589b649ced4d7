export {
  type ConditionedRequest,
  type ContextParts,
  type EncodeOptions,
  encodeTokenRows,
  type LatentRequest,
  NonFiniteError,
  projectContextParts,
  type ReplayingDenoiser,
  replayingUNetDenoiser,
  sampleConditioned,
  sampleFromTokens,
  type TokenEncoder,
  unetDenoiser,
} from "./denoiser.ts";
export {
  EMBEDDING_FILE,
  type EmbeddingOrigin,
  embeddingName,
  parseEmbedding,
  type TextualInversion,
} from "./embeddings.ts";
export {
  formatInfotext,
  INFOTEXT_KEYWORD,
  type Infotext,
  parametersFromInfotext,
  parseInfotext,
  type RestoredInfotext,
} from "./infotext.ts";
export {
  type ConditioningOptions,
  type GenerateOptions,
  type GenerationResult,
  type Img2ImgOptions,
  type InpaintOptions,
  LatentDiffusion,
  type LdmGenerateOptions,
  type LdmNetworks,
  type LoadOptions,
  type LossOptions,
  type LossResult,
  PipelineOptionError,
  type Progress,
  type PromptTokens,
  type SegmentationMap,
  UPSCALE_DEFAULTS,
  type UpscaleOptions,
} from "./latent-diffusion.ts";
export {
  DEFAULT_GUIDANCE,
  type GuidanceFamily,
  type ModelInputs,
  modelInputs,
  type Prompted,
} from "./model-inputs.ts";
export {
  type GenerationParameters,
  type LoraParameters,
  PARAMETERS_KEYWORD,
  parametersText,
  parseParameters,
} from "./parameters.ts";
export { NOTEBOOK_SPLIT_INPUT, type SplitInput } from "./split-input.ts";
export { type PipelineNetworks, StableDiffusion } from "./stable-diffusion.ts";
