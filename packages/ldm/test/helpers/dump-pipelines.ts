import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Device } from "@ldm/tensor";
import { StableDiffusion } from "../../src/pipeline/index.ts";

/** The committed tiny checkpoints, configs and dumps of reference/make_dumps.py. */
export const DUMPS = fileURLToPath(new URL("../fixtures/dumps/", import.meta.url));

/** Pipelines over the tiny dump checkpoints by name, each loaded once on `device` with `vocab`. */
export function dumpPipelines(device: () => Device, vocab: () => string): (name: string) => Promise<StableDiffusion> {
  const pipes = new Map<string, Promise<StableDiffusion>>();
  return (name) => {
    let pipe = pipes.get(name);
    if (!pipe) {
      pipe = StableDiffusion.load(join(DUMPS, `${name}.safetensors`), {
        device: device(),
        config: join(DUMPS, `${name}.yaml`),
        vocab: vocab(),
      });
      pipes.set(name, pipe);
    }
    return pipe;
  };
}

/** [rows·length] token ids → one Int32Array per row. */
export function tokenRows(ids: Int32Array, length: number): Int32Array[] {
  return Array.from({ length: ids.length / length }, (_, i) => ids.subarray(i * length, (i + 1) * length));
}
