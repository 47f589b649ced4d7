/** What the server says about the model it serves under MODEL_URL (see model-plugin.ts). */
export interface ModelManifest {
  /** Shown in the page and recorded in the images' parameters, e.g. "emoji-ldm". */
  name: string;
  /** File names relative to MODEL_URL. */
  weights: string;
  config?: string;
  vocab: string;
  merges: string;
}

/** Where the page finds the built-in model: MODEL_URL + "manifest.json" and the files it names. */
export const MODEL_URL = "model/";
