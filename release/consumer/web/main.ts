// A user's page: the built-in model streamed from ./model/ (the emoji-ldm folder of @ldm/ldm, served beside the
// page), one image generated with the browser's WebGPU into the canvas; body[data-state] says when it is done.
// ?prompt=…&seed=…&steps=… choose what (DDIM, guidance 7.5, f32).
import { ClipTokenizer, loadModelFromStream, StableDiffusion } from "@ldm/ldm";
import { Device } from "@ldm/tensor";

const status = document.getElementById("status") as HTMLElement;

async function text(file: string): Promise<string> {
  const response = await fetch(`model/${file}`);
  if (!response.ok) throw new Error(`model/${file}: HTTP ${response.status}`);
  return response.text();
}

async function run(): Promise<void> {
  const query = new URLSearchParams(location.search);
  const device = await Device.create({ disableF16: true });
  const [vocab, merges, config] = await Promise.all([
    text("tokenizer/vocab.json"),
    text("tokenizer/merges.txt"),
    text("emoji-ldm.yaml"),
  ]);
  const response = await fetch("model/emoji-ldm.safetensors");
  if (!response.ok || !response.body) throw new Error(`model/emoji-ldm.safetensors: HTTP ${response.status}`);
  const model = await loadModelFromStream(response.body, {
    device,
    dtype: "f32",
    origin: "model/emoji-ldm.safetensors",
    config: { text: config, origin: "model/emoji-ldm.yaml" },
  });
  const { unet, vae, clip } = model;
  if (!unet || !vae || !clip) throw new Error("the checkpoint lacks a network");
  const tokenizer = ClipTokenizer.fromVocabAndMerges(vocab, merges);
  const pipe = StableDiffusion.fromNetworks({ config: model.config, unet, vae, clip }, tokenizer, "emoji-ldm");
  const { images } = await pipe.txt2img({
    prompt: query.get("prompt") ?? "red apple",
    seed: Number(query.get("seed") ?? 42),
    steps: Number(query.get("steps") ?? 20),
    sampler: "ddim",
    guidanceScale: 7.5,
  });
  const [image] = images;
  const canvas = document.getElementById("result") as HTMLCanvasElement;
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d") as CanvasRenderingContext2D;
  context.putImageData(new ImageData(new Uint8ClampedArray(image.data), image.width, image.height), 0, 0);
  model.dispose();
  device.destroy();
  status.textContent = "done";
  document.body.dataset.state = "done";
}

run().catch((e: unknown) => {
  status.textContent = `error: ${(e as Error).message}`;
  document.body.dataset.state = "error";
});
