export {
  type EncodeOptions,
  encodeTokenRows,
  type LatentRequest,
  NonFiniteError,
  sampleFromTokens,
  unetDenoiser,
} from "./denoiser.ts";
export { type GenerationParameters, PARAMETERS_KEYWORD, parametersText, parseParameters } from "./parameters.ts";
export {
  type GenerateOptions,
  type GenerationResult,
  type Img2ImgOptions,
  type InpaintOptions,
  type LoadOptions,
  type LossOptions,
  type LossResult,
  type PipelineNetworks,
  PipelineOptionError,
  type Progress,
  type PromptTokens,
  StableDiffusion,
} from "./stable-diffusion.ts";
