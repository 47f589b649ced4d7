/** The Node-only part of @ldm/ldm: loading by path from the file system, `validate`, the CLI. */

export { main as runCli } from "./cli/main.ts";
export { readLabelPngFile, readPngFile, writePngFile } from "./image/node.ts";
export * from "./index.ts";
export { findLora, type LoraOnDisk, listLoras, loadLora, loraName } from "./lora/files.ts";
export { type LoadModelOptions, loadModel } from "./models/load-node.ts";
export { embeddingFilesIn, readEmbeddingFile } from "./pipeline/embedding-files.ts";
export {
  FirstStage,
  type FirstStageEncodeOptions,
  type FirstStageLatent,
  type FirstStageLoadOptions,
} from "./pipeline/first-stage.ts";
export { isHubName, resolveHubModel } from "./pipeline/hub-model.ts";
export { BUILTIN_MODEL } from "./pipeline/model-files.ts";
export {
  type LoadedTokenizer,
  loadClipTokenizer,
  SHIPPED_CLIP_VOCAB,
  type TokenizerSource,
} from "./tokenizer/vocab-files.ts";
export * from "./validate/index.ts";
