export { type AttentionOptions, adapterTraits, attention } from "./attention/index.ts";
export { type AdapterTraits, type AttentionTiling, attentionTiling, fusedTiling } from "./attention/tiling.ts";
export { bf16ToFloat, cast, type FloatDType, packBf16 } from "./cast/index.ts";
export { foldGrid, LINEAR_WORKGROUP_ID } from "./common/grid.ts";
export { assertBindable, assertDType, wgslEnables, wgslType } from "./common/wgsl.ts";
export { type Conv2dOptions, type ConvInput, conv2d } from "./conv2d/index.ts";
export { conv1x1FromTokens, conv1x1ToTokens } from "./conv2d/tokens.ts";
export {
  setWinogradCacheBudget,
  WINOGRAD_CACHE_BYTES,
  windowedTileMajorTiles,
  winogradCacheStats,
} from "./conv2d/winograd.ts";
export {
  add,
  affine,
  broadcastShapes,
  broadcastStrides,
  geglu,
  gelu,
  geluTanh,
  mul,
  quickGelu,
  silu,
  sub,
} from "./elementwise/index.ts";
export { assertIdsInRange, embedding } from "./embedding/index.ts";
export {
  type GroupNormOptions,
  type GroupStrategy,
  groupNorm,
  groupNormCoefficients,
  groupNormInPlace,
  groupStrategy,
} from "./groupnorm/index.ts";
export { type LayerNormOptions, layerNorm } from "./layernorm/index.ts";
export { chunk, concat, permute, slice, upsampleNearest2x } from "./layout/index.ts";
export {
  Autotuner,
  autotuneFromEnv,
  autotunerOf,
  disableAutotune,
  enableAutotune,
  FileTuneStore,
  MemoryTuneStore,
  type TuneOutcome,
  type TuneStore,
  timeCall,
} from "./matmul/autotune.ts";
export {
  type Activation,
  deviceTiles,
  type GemmCall,
  gemm,
  type LinearOptions,
  linear,
  linearGeglu,
  type MatmulOptions,
  matmul,
} from "./matmul/index.ts";
export { packCacheStats, setPackCacheBudget } from "./matmul/pack.ts";
export type { GemmGeometry } from "./matmul/plan.ts";
export { isTileConfig, stagingVariants, type TileConfig, tileKey, type WorkgroupTiles } from "./matmul/tiles.ts";
export { nearestScale, resizeNearest } from "./resize/index.ts";
export { type RowStrategy, rowStrategy } from "./rowwise/kernel.ts";
export { type SoftmaxOptions, softmax } from "./softmax/index.ts";
export { type MapOperand, type MapSpec, stridedMap } from "./strided/map.ts";
export { deviceAttentionMatrixTiles } from "./subgroup-matrix/attention.ts";
export {
  type AttentionMatrixTiles,
  chooseAttentionMatrixTiles,
} from "./subgroup-matrix/attention-plan.ts";
export { deviceMatrixTiles } from "./subgroup-matrix/conv.ts";
export { chooseMatrixTiles, type MatrixInputs, type MatrixTiles } from "./subgroup-matrix/plan.ts";
export { type TimestepEmbeddingOptions, timestepEmbedding, timestepFrequencies } from "./timestep/index.ts";
