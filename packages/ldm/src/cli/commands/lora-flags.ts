/** `--lora file[:strength]`, `--lora-dir` and the prompt's `<lora:name:…>` tags, resolved to files and merged. */
import { existsSync } from "node:fs";
import type { Command } from "commander";
import { findLora, loadLora } from "../../lora/files.ts";
import type { Lora, LoraUse } from "../../lora/merge.ts";
import { loraTags, untaggedLoras } from "../../lora/prompt.ts";
import type { LatentDiffusion } from "../../pipeline/latent-diffusion.ts";
import type { LoraParameters } from "../../pipeline/parameters.ts";
import { UserError } from "../errors.ts";
import { numberFlag, userErrorOf } from "./pipeline-flags.ts";

export interface LoraFlags {
  lora?: string[];
  loraDir?: string;
}

export function addLoraOptions(command: Command): Command {
  return command
    .option(
      "--lora <file[:strength]>",
      "merge a LoRA (kohya/A1111 or diffusers/PEFT .safetensors, LoCon included) at this strength (default 1); repeatable",
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option("--lora-dir <folder>", "where the prompt's <lora:name:strength> tags are looked up (name = file stem)");
}

/** `file[:strength]`: a trailing `:number` is the strength (a path may hold colons of its own). */
export function parseLoraFlag(text: string): { path: string; strength: number } {
  const m = /^(.+):([^:\\/]+)$/.exec(text);
  if (m && !existsSync(text)) return { path: m[1], strength: numberFlag(`--lora ${text}: the strength`, m[2]) };
  return { path: text, strength: 1 };
}

/**
 * The LoRAs of each prompt: the --lora flags (or, without any, those --params-from's run was given besides its
 * prompt, from their recorded paths) and the prompt's tags, from --lora-dir (or a recorded path of that name).
 * Each file is read once.
 */
export class LoraResolver {
  private readonly files = new Map<string, Promise<Lora>>();
  private readonly warned = new Set<string>();

  constructor(
    private readonly flags: LoraFlags,
    private readonly stored?: { prompt?: string; loras?: LoraParameters[]; origin: string },
  ) {}

  /** The prompt's tags first, then the LoRAs given besides it: the order A1111 merges its infotext's tags in. */
  async uses(prompt: string | undefined): Promise<LoraUse[]> {
    const uses: LoraUse[] = [];
    for (const tag of loraTags(prompt ?? "")) {
      const recorded = this.stored?.loras?.find((l) => l.name === tag.name);
      const path = await this.tagPath(tag.name, tag.text, recorded?.path);
      uses.push({ ...use(await this.read(path, tag.text, recorded?.hash), tag), name: tag.name });
    }
    const given: { path: string; name: string; strength: number; unetStrength?: number; hash?: string }[] = this.flags
      .lora?.length
      ? this.flags.lora.map((text) => ({ ...parseLoraFlag(text), name: text }))
      : this.storedUntagged();
    for (const g of given) uses.push(use(await this.read(g.path, g.name, g.hash), g));
    return uses;
  }

  /** Merges the LoRAs of `prompt` into the pipeline's weights; a LoRA that does not fit is the user's error. */
  async apply(pipe: LatentDiffusion, prompt: string | undefined): Promise<void> {
    const uses = await this.uses(prompt);
    try {
      await pipe.setLoras(uses);
    } catch (e) {
      throw userErrorOf(e);
    }
    for (const { lora, strength, unetStrength } of uses) {
      console.error(
        `LoRA ${lora.name} merged at ${strength}${unetStrength === undefined ? "" : ` (UNet ${unetStrength})`}`,
      );
    }
  }

  private storedUntagged(): (LoraParameters & { path: string })[] {
    const { prompt = "", loras = [], origin = "" } = this.stored ?? {};
    return untaggedLoras(prompt, loras).map((l) => {
      if (!l.path || !existsSync(l.path)) {
        throw new UserError(
          `${origin}: made with LoRA ${l.name}${l.path ? ` (${l.path}, not found)` : ""} at ${l.strength}: pass it with --lora <file>:${l.strength}`,
        );
      }
      return { ...l, path: l.path };
    });
  }

  private async tagPath(name: string, tag: string, recorded: string | undefined): Promise<string> {
    if (this.flags.loraDir) {
      try {
        return (await findLora(this.flags.loraDir, name)).path;
      } catch (e) {
        throw new UserError(`${tag} in the prompt: ${(e as Error).message}`);
      }
    }
    if (recorded && existsSync(recorded)) return recorded;
    throw new UserError(`${tag} in the prompt: pass --lora-dir <folder> to find the LoRA file "${name}"`);
  }

  private read(path: string, what: string, expectedHash?: string): Promise<Lora> {
    let lora = this.files.get(path);
    if (!lora) {
      lora = loadLora(path).catch((e: Error) => {
        const message = e.message.split("\n")[0];
        // The readers' messages start with the path, which `what` already names.
        throw new UserError(`${what}: ${message.startsWith(`${path}: `) ? message.slice(path.length + 2) : message}`);
      });
      this.files.set(path, lora);
    }
    return lora.then((l) => {
      if (expectedHash && l.hash && !l.hash.startsWith(expectedHash) && !this.warned.has(path)) {
        this.warned.add(path);
        console.error(`ldm: warning: ${path} has hash ${l.hash.slice(0, 12)}; the image was made with ${expectedHash}`);
      }
      return l;
    });
  }
}

function use(lora: Lora, { strength, unetStrength }: { strength: number; unetStrength?: number }): LoraUse {
  return { lora, strength, ...(unetStrength === undefined ? {} : { unetStrength }) };
}
