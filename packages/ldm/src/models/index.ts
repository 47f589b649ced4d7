export { ProjectedContext } from "./attention.ts";
export { AutoencoderKL, DEFAULT_VAE_TILES, DiagonalGaussianDistribution, type VaeTiling } from "./autoencoder.ts";
export { CLIPTextModel, type ClipOutputs } from "./clip.ts";
export { buildModel, COMPONENT_PREFIX, type Component, type Networks } from "./load.ts";
export { type LoadedModel, type LoadModelOptions, loadModel } from "./load-node.ts";
export { ResBlock, TimestepEmbedSequential, type UNetInputs, UNetModel } from "./openaimodel.ts";
export type { TileOptions } from "./tiles.ts";
