/** "#node-files" in browser builds (package.json "imports"): a page has no files to load a checkpoint from. */
import type * as NodeFiles from "./node-files.ts";

function unavailable(): never {
  throw new Error(
    "StableDiffusion.load reads checkpoint files, which needs Node (@ldm/ldm/node); in a browser, stream the weights with loadModelFromStream and build the pipeline with StableDiffusion.fromNetworks",
  );
}

export const loadModel: typeof NodeFiles.loadModel = unavailable;
export const loadClipTokenizer: typeof NodeFiles.loadClipTokenizer = unavailable;
export const loadBertTokenizer: typeof NodeFiles.loadBertTokenizer = unavailable;
export const companionFiles: typeof NodeFiles.companionFiles = unavailable;
export const systemMemory: typeof NodeFiles.systemMemory = unavailable;
export const readEmbeddingFile: typeof NodeFiles.readEmbeddingFile = unavailable;
export const embeddingFilesIn: typeof NodeFiles.embeddingFilesIn = unavailable;
