/**
 * What StableDiffusion.load reads files with, imported as "#node-files" (package.json "imports"): browser
 * builds resolve that to ./node-files.browser.ts instead, so no file-system code lands in a page's bundle.
 */

export { totalmem as systemMemory } from "node:os";
export { loadModel } from "../models/load-node.ts";
export { loadBertTokenizer, loadClipTokenizer } from "../tokenizer/vocab-files.ts";
export { embeddingFilesIn, readEmbeddingFile } from "./embedding-files.ts";
export { companionFiles } from "./model-files.ts";
