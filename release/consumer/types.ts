// A user's TypeScript against the published declarations (tsc --noEmit, skipLibCheck off).

import { conv2d } from "@ldm/kernels";
import { ClipTokenizer, type GenerateOptions, loadModelFromStream, type RgbaImage, StableDiffusion } from "@ldm/ldm";
import { BUILTIN_MODEL, encodePng, SHIPPED_CLIP_VOCAB } from "@ldm/ldm/node";
import { Linear } from "@ldm/nn";
import type { Device, Tensor } from "@ldm/tensor";
import { parseHeader } from "@ldm/weights";
import { openSafetensors } from "@ldm/weights/node";

const options: GenerateOptions = { prompt: "red apple", steps: 20, seed: 42, sampler: "euler" };
// @ts-expect-error: the types are real, not any (steps is a number)
const wrong: GenerateOptions = { prompt: "red apple", steps: "20" };

export async function fromFile(): Promise<Uint8Array> {
  const pipe: StableDiffusion = await StableDiffusion.load(BUILTIN_MODEL, { vocab: SHIPPED_CLIP_VOCAB });
  const image: RgbaImage = (await pipe.txt2img(options)).images[0];
  pipe.dispose();
  return encodePng(image);
}

export async function fromStream(stream: ReadableStream<Uint8Array>, device: Device, vocab: string, merges: string) {
  const model = await loadModelFromStream(stream, { device, dtype: "f32", origin: "model.safetensors" });
  const tokenizer = ClipTokenizer.fromVocabAndMerges(vocab, merges);
  if (!model.unet || !model.vae || !model.clip) throw new Error("incomplete model");
  const { config, unet, vae, clip } = model;
  return StableDiffusion.fromNetworks({ config, unet, vae, clip }, tokenizer, "model");
}

export const used = [wrong, conv2d, Linear, parseHeader, openSafetensors] as const;
export type Used = Tensor;
