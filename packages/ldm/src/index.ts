/**
 * Everything that runs in a browser as well as in Node. What needs the file system (loading checkpoints and
 * vocabularies by path, `validate`, the CLI) is in `@ldm/ldm/node` (./node.ts).
 */
export * from "./diffusion/index.ts";
export * from "./image/index.ts";
export { loraFromBlob } from "./lora/blob.ts";
export { type Lora, type LoraUse, MergedLoras, readLora } from "./lora/merge.ts";
export { type LoraTag, loraTags, withoutLoraTags } from "./lora/prompt.ts";
export { ProjectedContext } from "./models/attention.ts";
export {
  AutoencoderKL,
  DiagonalGaussianDistribution,
  firstStageModel,
  quantizeNearest,
  VQModel,
} from "./models/autoencoder.ts";
export { CLIPTextModel, type ClipOutputs } from "./models/clip.ts";
export { ClassEmbedder, type CondStageModel, condStageModel, SpatialRescaler } from "./models/cond-stage.ts";
export {
  buildModel,
  COMPONENT_PREFIX,
  type Component,
  componentsOf,
  type LoadedModel,
  loadNetworks,
  type Networks,
} from "./models/load.ts";
export {
  type BlobModelOptions,
  loadModelFromBlob,
  loadModelFromStream,
  type ModelDescription,
  readModelConfig,
  type StreamedModelOptions,
} from "./models/load-stream.ts";
export {
  AttentionBlock,
  ResBlock,
  TimestepEmbedSequential,
  type UNetInputs,
  UNetModel,
} from "./models/openaimodel.ts";
export type { TileOptions } from "./models/tiles.ts";
export { BERTEmbedder, TransformerWrapper, type XTransformerConfig } from "./models/x-transformer.ts";
export * from "./pipeline/index.ts";
export * from "./random/index.ts";
export * from "./tokenizer/index.ts";
