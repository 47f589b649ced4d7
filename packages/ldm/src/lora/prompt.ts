/**
 * AUTOMATIC1111's LoRA syntax in prompts: `<lora:name>`, `<lora:name:te>` and `<lora:name:te:unet>` (te: the text
 * encoder's multiplier, default 1; unet: the UNet's, default te), or named as `te=…`, `unet=…`. A1111 takes the
 * tags out of the prompt before it is encoded (extra_networks.parse_prompt) and keeps them in the infotext.
 */
import { PipelineOptionError } from "../pipeline/errors.ts";

/** extra_networks.re_extra_net, for the `lora` kind. */
const LORA_TAG = /<lora:([^>]+)>/g;

export interface LoraTag {
  /** The file stem (or kohya alias) the tag names. */
  name: string;
  strength: number;
  unetStrength?: number;
  /** The tag as written. */
  text: string;
}

/** The `<lora:…>` tags of a prompt, in order. */
export function loraTags(prompt: string): LoraTag[] {
  return [...prompt.matchAll(LORA_TAG)].map(([text, args]) => {
    const items = args.split(":");
    const named = new Map<string, string>();
    const positional: string[] = [];
    for (const item of items) {
      const m = /^(te|unet)=(.*)$/.exec(item);
      if (m) named.set(m[1], m[2]);
      else positional.push(item);
    }
    const number = (value: string | undefined, what: string): number | undefined => {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (value.trim() === "" || !Number.isFinite(n)) {
        throw new PipelineOptionError(`${text}: the ${what} "${value}" is not a number`);
      }
      return n;
    };
    const name = positional[0]?.trim();
    if (!name) throw new PipelineOptionError(`${text}: no LoRA name`);
    const strength = number(named.get("te") ?? positional[1], "text encoder multiplier") ?? 1;
    const unetStrength = number(named.get("unet") ?? positional[2], "UNet multiplier");
    return { name, strength, ...(unetStrength === undefined ? {} : { unetStrength }), text };
  });
}

/** The prompt without its `<lora:…>` tags: what the text encoder reads. */
export function withoutLoraTags(prompt: string): string {
  return prompt.replace(LORA_TAG, "");
}

/** A LoRA at its multipliers, as a prompt tag: `<lora:name:te>`, or `<lora:name:te:unet>` when they differ. */
export function loraTagText(lora: { name: string; strength: number; unetStrength?: number }): string {
  const unet = lora.unetStrength === undefined || lora.unetStrength === lora.strength ? "" : `:${lora.unetStrength}`;
  return `<lora:${lora.name}:${lora.strength}${unet}>`;
}

/** The LoRAs of a run that no tag of its prompt names at their multipliers (those given besides the prompt). */
export function untaggedLoras<L extends { name: string; strength: number; unetStrength?: number }>(
  prompt: string,
  loras: readonly L[],
): L[] {
  const tags = loraTags(prompt);
  return loras.filter(
    (l) =>
      !tags.some(
        (t) =>
          t.name === l.name &&
          t.strength === l.strength &&
          (t.unetStrength ?? t.strength) === (l.unetStrength ?? l.strength),
      ),
  );
}
