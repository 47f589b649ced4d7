export { type ContextKeysValues, CrossAttention, type CrossAttentionConfig } from "./attention.ts";
export { Conv2d, type Conv2dConfig, type ConvPrelude } from "./conv2d.ts";
export { Embedding, type EmbeddingConfig } from "./embedding.ts";
export { FeedForward, type FeedForwardConfig, GEGLU } from "./feed-forward.ts";
export { type Epilogue, Linear, type LinearConfig } from "./linear.ts";
export { GroupNorm, type GroupNormConfig, LayerNorm, type LayerNormConfig } from "./norm.ts";
export { VarBuilder } from "./var-builder.ts";
