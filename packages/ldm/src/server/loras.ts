/**
 * The server's LoRAs: `--lora-dir`, listed as A1111's `/sdapi/v1/loras` lists them, and the `<lora:name:…>` tags of
 * a request's prompt resolved to files there (read once each, again when the file changes).
 */
import { stat } from "node:fs/promises";
import { findLora, listLoras, loadLora } from "../lora/files.ts";
import type { Lora, LoraUse } from "../lora/merge.ts";
import { loraTags } from "../lora/prompt.ts";

/** An entry of A1111's `GET /sdapi/v1/loras` (create_lora_json). */
export interface A1111Lora {
  name: string;
  /** kohya's ss_output_name, else the name: prompts may use either. */
  alias: string;
  path: string;
  metadata: Readonly<Record<string, string>>;
}

/** A prompt's tag that names no file of the folder. */
export class LoraNotFoundError extends Error {}

export class LoraLibrary {
  private readonly read = new Map<string, { version: string; lora: Promise<Lora> }>();

  constructor(readonly dir?: string) {}

  async list(): Promise<A1111Lora[]> {
    if (!this.dir) return [];
    return (await listLoras(this.dir)).map((l) => ({
      name: l.name,
      alias: l.alias ?? l.name,
      path: l.path,
      metadata: l.metadata,
    }));
  }

  /** The LoRAs a prompt's tags name, at their multipliers, in the prompt's order. */
  async uses(prompt: string): Promise<LoraUse[]> {
    const uses: LoraUse[] = [];
    for (const { name, strength, unetStrength } of loraTags(prompt)) {
      if (!this.dir)
        throw new LoraNotFoundError(`LoRA not found: ${JSON.stringify(name)} (this server has no --lora-dir)`);
      const found = await findLora(this.dir, name).catch((e: Error) => {
        throw new LoraNotFoundError(e.message);
      });
      uses.push({
        lora: await this.load(found.path),
        strength,
        ...(unetStrength === undefined ? {} : { unetStrength }),
        name,
      });
    }
    return uses;
  }

  private async load(path: string): Promise<Lora> {
    const { mtimeMs, size } = await stat(path);
    const version = `${mtimeMs}:${size}`;
    const cached = this.read.get(path);
    if (cached?.version === version) return cached.lora;
    const lora = loadLora(path);
    this.read.set(path, { version, lora });
    lora.catch(() => this.read.delete(path));
    return lora;
  }
}
