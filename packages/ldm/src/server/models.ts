/**
 * The checkpoints a server offers (`/sdapi/v1/sd-models`) and the one it has loaded: one model on the GPU at a
 * time, switched by `sd_model_checkpoint` (in /options or a request's override_settings) between jobs.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import type { LatentDiffusion } from "../pipeline/latent-diffusion.ts";

export interface Checkpoint {
  /** A1111's title: the file (or folder, or hub repository) name, what sd_model_checkpoint holds. */
  title: string;
  model_name: string;
  hash: string | null;
  sha256: string | null;
  /** The checkpoint file or diffusers folder. */
  filename: string;
  /** An original-style YAML config beside it, or given with --config. */
  config: string | null;
}

/** Loads a checkpoint onto a fresh device; the server disposes the previous pipeline first. */
export type PipelineLoader = (checkpoint: Checkpoint) => Promise<LatentDiffusion>;

/** A checkpoint entry for a file or folder; `title` defaults to its name. */
export function checkpointAt(path: string, options: { title?: string; config?: string } = {}): Checkpoint {
  const filename = resolve(path);
  const title = options.title ?? basename(filename);
  const yaml = filename.replace(/\.safetensors$/i, ".yaml");
  const config = options.config ?? (yaml !== filename && existsSync(yaml) ? yaml : null);
  return {
    title,
    model_name: title.replace(/\.safetensors$/i, ""),
    hash: null,
    sha256: null,
    filename,
    config: config ? resolve(config) : null,
  };
}

/**
 * A models folder as A1111 scans models/Stable-diffusion: single-file .safetensors checkpoints (in subfolders
 * too, titled by their relative path) and diffusers folders (those with a model_index.json).
 */
export function scanModelsFolder(folder: string): Checkpoint[] {
  const found: Checkpoint[] = [];
  const walk = (dir: string, prefix: string, depth: number) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      const title = prefix ? `${prefix}/${name}` : name;
      const stats = statSync(path, { throwIfNoEntry: false });
      if (!stats) continue;
      if (stats.isFile() && name.toLowerCase().endsWith(".safetensors")) found.push(checkpointAt(path, { title }));
      else if (stats.isDirectory()) {
        if (existsSync(join(path, "model_index.json"))) found.push(checkpointAt(path, { title }));
        else if (depth < 3) walk(path, title, depth + 1);
      }
    }
  };
  walk(folder, "", 0);
  return found;
}

/**
 * The model a name picks, as A1111's checkpoint aliases: the title, the model name (without extension), the
 * file name, or the title with a trailing " [hash]".
 */
export function findCheckpoint(checkpoints: readonly Checkpoint[], name: string): Checkpoint | undefined {
  const bare = name.replace(/\s*\[[0-9a-f]+\]$/i, "");
  return checkpoints.find(
    (c) => c.title === bare || c.model_name === bare || c.filename === bare || basename(c.filename) === bare,
  );
}

/** The loaded pipeline and the checkpoint it came from; loads happen only inside queued jobs. */
export class ModelHost {
  private current?: { checkpoint: Checkpoint; pipe: LatentDiffusion };

  constructor(private readonly loader: PipelineLoader) {}

  get checkpoint(): Checkpoint | undefined {
    return this.current?.checkpoint;
  }

  /** The loaded pipeline, if any. */
  get pipe(): LatentDiffusion | undefined {
    return this.current?.pipe;
  }

  /** The pipeline of `checkpoint`, loading it (after freeing the loaded one) when another is loaded. */
  async use(checkpoint: Checkpoint): Promise<LatentDiffusion> {
    if (this.current?.checkpoint.filename === checkpoint.filename) return this.current.pipe;
    this.dispose();
    const pipe = await this.loader(checkpoint);
    this.current = { checkpoint, pipe };
    return pipe;
  }

  dispose(): void {
    this.current?.pipe.dispose();
    this.current = undefined;
  }
}
