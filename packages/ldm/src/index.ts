export { main as runCli } from "./cli/main.ts";
export * from "./diffusion/index.ts";
export * from "./image/index.ts";
export * from "./models/index.ts";
export * from "./pipeline/index.ts";
export * from "./random/index.ts";
export * from "./tokenizer/index.ts";
export { type LoadedTokenizer, loadClipTokenizer, type TokenizerSource } from "./tokenizer/vocab-files.ts";
export * from "./validate/index.ts";
