/** `ldm serve --lora-dir` on tiny-sd1: /sdapi/v1/loras and `<lora:…>` in prompts, through a real HTTP client. */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng } from "../src/image/png.ts";
import { StableDiffusion } from "../src/pipeline/stable-diffusion.ts";
import { checkpointAt } from "../src/server/models.ts";
import { type LdmServer, serve } from "../src/server/server.ts";
import { writeTinyVocab } from "./helpers/tiny-vocab.ts";

const device = await useDevice();
const DUMPS = fileURLToPath(new URL("./fixtures/dumps/", import.meta.url));
const LORAS = fileURLToPath(new URL("./fixtures/lora/", import.meta.url));

let dir: string;
let loraDir: string;
let server: LdmServer;
let bare: LdmServer;

async function start(loraDirectory?: string): Promise<LdmServer> {
  const vocab = writeTinyVocab(join(dir, "tokenizer"), 1000);
  return serve({
    checkpoints: [checkpointAt(join(DUMPS, "tiny-sd1.safetensors"), { config: join(DUMPS, "tiny-sd1.yaml") })],
    loader: (c) => StableDiffusion.load(c.filename, { device, config: c.config ?? undefined, vocab }),
    port: 0,
    loraDir: loraDirectory,
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "ldm-serve-lora-"));
  loraDir = join(dir, "Lora");
  mkdirSync(join(loraDir, "styles"), { recursive: true });
  copyFileSync(join(LORAS, "tiny-sd1.kohya.safetensors"), join(loraDir, "tiny-sd1.kohya.safetensors"));
  copyFileSync(join(LORAS, "tiny-sd1.peft.safetensors"), join(loraDir, "styles", "style.safetensors"));
  server = await start(loraDir);
  bare = await start();
});
afterAll(async () => {
  await server?.close();
  await bare?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function txt2img(on: LdmServer, prompt: string) {
  const response = await fetch(`${on.url}/sdapi/v1/txt2img`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, steps: 2, seed: 7, sampler_name: "Euler", width: 32, height: 32 }),
  });
  const json = await response.json();
  return {
    status: response.status,
    json,
    pixels: () => decodePng(Buffer.from(json.images[0], "base64"), "answer").data,
  };
}

describe("ldm serve --lora-dir", () => {
  it("lists the folder's LoRAs as A1111's /sdapi/v1/loras does (name, alias, path, metadata)", async () => {
    const response = await fetch(`${server.url}/sdapi/v1/loras`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual([
      { name: "style", alias: "style", path: join(loraDir, "styles", "style.safetensors"), metadata: {} },
      {
        name: "tiny-sd1.kohya",
        alias: "tiny-sd1-kohya",
        path: join(loraDir, "tiny-sd1.kohya.safetensors"),
        metadata: { ss_output_name: "tiny-sd1-kohya" },
      },
    ]);
    expect(await (await fetch(`${bare.url}/sdapi/v1/loras`)).json()).toEqual([]);
    expect((await fetch(`${server.url}/sdapi/v1/refresh-loras`, { method: "POST" })).status).toBe(200);
  });

  it("merges the prompt's <lora:…> tags (by name or alias) for that request only, and records them", async () => {
    const plain = await txt2img(server, "a photo of a cat");
    expect(plain.status, JSON.stringify(plain.json)).toBe(200);
    const prompt = "a photo <lora:style:0.5:-0.7> of a cat <lora:tiny-sd1-kohya:0.8>";
    const styled = await txt2img(server, prompt);
    expect(styled.status, JSON.stringify(styled.json)).toBe(200);
    expect(styled.pixels()).not.toEqual(plain.pixels());
    const info = JSON.parse(styled.json.info);
    expect(info.prompt).toBe(prompt);
    expect(info.infotexts[0]).toMatch(/^a photo <lora:style:0\.5:-0\.7> of a cat <lora:tiny-sd1-kohya:0\.8>\n/);
    expect(info.infotexts[0]).toMatch(/Lora hashes: "style: [0-9a-f]{12}, tiny-sd1-kohya: [0-9a-f]{12}"/);
    // Again (the merged weights kept), then without tags: the weights restored bit for bit, the same images.
    expect((await txt2img(server, prompt)).pixels()).toEqual(styled.pixels());
    expect((await txt2img(server, "a photo of a cat")).pixels()).toEqual(plain.pixels());
  });

  it("answers an unknown LoRA with 404 and a malformed tag with 422 naming the prompt", async () => {
    const unknown = await txt2img(server, "a cat <lora:nope:1>");
    expect(unknown.status).toBe(404);
    expect(JSON.stringify(unknown.json)).toMatch(/no LoRA \\"nope\\" in .*Lora \(it has style, tiny-sd1\.kohya\)/);
    const noDir = await txt2img(bare, "a cat <lora:style:1>");
    expect(noDir.status).toBe(404);
    expect(JSON.stringify(noDir.json)).toMatch(/LoRA not found: \\"style\\" \(this server has no --lora-dir\)/);
    const malformed = await txt2img(server, "a cat <lora:style:strong>");
    expect(malformed.status).toBe(422);
    expect(JSON.stringify(malformed.json)).toMatch(/prompt.*the text encoder multiplier \\"strong\\" is not a number/);
  });
});
