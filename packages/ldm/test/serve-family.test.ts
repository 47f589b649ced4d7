/**
 * `ldm serve` with the paper's models beside the built-in text model: an unconditional one (tiny-celebahq) from
 * txt2img without a prompt, the big inpainting model (tiny-inpainting) from img2img with a mask, and the
 * class-conditional ones (tiny-cin: cin256-v2's layout, its last class "no class"; tiny-cin-f8: cin-ldm-vq-f8's
 * 1000 real classes) with `class_label` and `uncond_class_label`, the library's defaults and errors, each bad
 * value a 422 naming its field. Every image is the library's for the same settings.
 */
import { join } from "node:path";
import { useDevice } from "@ldm/tensor/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodePng, encodePng, type RgbaImage } from "../src/image/png.ts";
import { LatentDiffusion, type LdmGenerateOptions } from "../src/pipeline/latent-diffusion.ts";
import { BUILTIN_MODEL } from "../src/pipeline/model-files.ts";
import { checkpointAt } from "../src/server/models.ts";
import { type LdmServer, serve } from "../src/server/server.ts";
import { DUMPS } from "./helpers/dump-pipelines.ts";

const device = await useDevice();
const model = (name: string) => join(DUMPS, `${name}.safetensors`);
let server: LdmServer;

beforeAll(async () => {
  server = await serve({
    checkpoints: [
      checkpointAt(model("tiny-celebahq")),
      checkpointAt(model("tiny-inpainting")),
      checkpointAt(model("tiny-cin")),
      checkpointAt(model("tiny-cin-f8")),
      checkpointAt(BUILTIN_MODEL, { title: "emoji-ldm" }),
    ],
    loader: (c) => LatentDiffusion.load(c.filename, { device, config: c.config ?? undefined }),
    port: 0,
  });
});
afterAll(() => server.close());

async function post(endpoint: "txt2img" | "img2img", checkpoint: string, body: Record<string, unknown>) {
  const response = await fetch(`${server.url}/sdapi/v1/${endpoint}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, override_settings: { sd_model_checkpoint: checkpoint } }),
  });
  return { status: response.status, json: await response.json() };
}

const txt2img = (checkpoint: string, body: Record<string, unknown>) => post("txt2img", checkpoint, body);
const pixels = (image: string) => decodePng(Buffer.from(image, "base64"), "image").data;

/** The library's image for the same settings (the server's sampler by default is A1111's Euler). */
async function library(
  name: string,
  options: LdmGenerateOptions,
  run = (pipe: LatentDiffusion, options: LdmGenerateOptions) => pipe.generate(options),
) {
  const pipe = await LatentDiffusion.load(model(name), { device, config: join(DUMPS, `${name}.yaml`) });
  try {
    return (await run(pipe, { sampler: "euler", steps: 2, seed: 1, ...options })).images[0].data;
  } finally {
    pipe.dispose();
  }
}

const QUICK = { steps: 2, seed: 1, sampler_name: "Euler" };

describe("ldm serve: unconditional and big inpainting models", () => {
  it("an unconditional model runs from txt2img without a prompt, unguided by default; a prompt is a 422", async () => {
    const faces = await txt2img("tiny-celebahq", QUICK);
    expect(faces.status, JSON.stringify(faces.json)).toBe(200);
    expect(faces.json.parameters.cfg_scale).toBe(1);
    expect(pixels(faces.json.images[0])).toEqual(await library("tiny-celebahq", {}));
    const prompted = await txt2img("tiny-celebahq", { ...QUICK, prompt: "a face" });
    expect([prompted.status, prompted.json.detail?.[0]?.loc]).toEqual([422, ["body", "prompt"]]);
    expect(prompted.json.detail[0].msg).toMatch(/unconditional: it takes no prompt/);
  });

  it("the big inpainting model runs from img2img with a mask", async () => {
    const side = 32;
    const picture: RgbaImage = {
      width: side,
      height: side,
      data: new Uint8ClampedArray(side * side * 4).map((_, i) => (i % 4 === 3 ? 255 : (i * 7) % 256)),
    };
    // White (repainted) on the right half, opaque: the server's binary mask is this image.
    const mask: RgbaImage = {
      width: side,
      height: side,
      data: new Uint8ClampedArray(side * side * 4).map((_, i) =>
        i % 4 === 3 || (i >> 2) % side >= side / 2 ? 255 : 0,
      ),
    };
    const png = (image: RgbaImage) => Buffer.from(encodePng(image)).toString("base64");
    const filled = await post("img2img", "tiny-inpainting", {
      ...QUICK,
      init_images: [png(picture)],
      mask: png(mask),
      denoising_strength: 1,
    });
    expect(filled.status, JSON.stringify(filled.json)).toBe(200);
    expect(pixels(filled.json.images[0])).toEqual(
      await library("tiny-inpainting", {}, (pipe, options) =>
        pipe.inpaint({ ...options, initImage: picture, mask, strength: 1 }),
      ),
    );
  });
});

describe("ldm serve: class-conditional models", () => {
  it("cin256-v2's layout: guided against its 'no class' by default, at the model's own scale; uncond_class_label picks another", async () => {
    const byDefault = await txt2img("tiny-cin", { ...QUICK, class_label: 5 });
    expect(byDefault.status, JSON.stringify(byDefault.json)).toBe(200);
    // No cfg_scale: the model's 3.0 (the notebook's), not A1111's 7.0, as ldm generate; the echo says which.
    expect(byDefault.json.parameters).toMatchObject({ class_label: 5, uncond_class_label: null, cfg_scale: 3 });
    expect(JSON.parse(byDefault.json.info)).toMatchObject({ cfg_scale: 3 });
    expect(pixels(byDefault.json.images[0])).toEqual(await library("tiny-cin", { classLabel: 5, guidanceScale: 3 }));

    const noClass = await txt2img("tiny-cin", { ...QUICK, class_label: 5, uncond_class_label: 10 });
    expect(pixels(noClass.json.images[0])).toEqual(pixels(byDefault.json.images[0]));
    const other = await txt2img("tiny-cin", { ...QUICK, class_label: 5, uncond_class_label: 2, cfg_scale: 4 });
    expect(other.status).toBe(200);
    expect(pixels(other.json.images[0])).toEqual(
      await library("tiny-cin", { classLabel: 5, uncondClassLabel: 2, guidanceScale: 4 }),
    );
    expect(pixels(other.json.images[0])).not.toEqual(pixels(byDefault.json.images[0]));
  });

  it("cin-ldm-vq-f8's layout: unguided by default; guided only against a named class", async () => {
    const unguided = await txt2img("tiny-cin-f8", { ...QUICK, class_label: 5 });
    expect(unguided.status, JSON.stringify(unguided.json)).toBe(200);
    expect(unguided.json.parameters.cfg_scale).toBe(1);
    const guided = await txt2img("tiny-cin-f8", { ...QUICK, class_label: 5, uncond_class_label: 7, cfg_scale: 3 });
    expect(guided.status, JSON.stringify(guided.json)).toBe(200);
    expect(pixels(guided.json.images[0])).toEqual(
      await library("tiny-cin-f8", { classLabel: 5, uncondClassLabel: 7, guidanceScale: 3 }),
    );
  });

  it("each bad class field is one 422 naming the field", async () => {
    const cases: [string, Record<string, unknown>, string, RegExp][] = [
      ["tiny-cin-f8", { class_label: 5, cfg_scale: 3 }, "uncond_class_label", /1000 classes and no "no class"/],
      ["tiny-cin-f8", { class_label: 5, uncond_class_label: 7 }, "uncond_class_label", /guidance scale 1 runs no/],
      [
        "tiny-cin-f8",
        { class_label: 5, uncond_class_label: 1000, cfg_scale: 3 },
        "uncond_class_label",
        /unconditional class 1000 is out of range: this model has classes 0 to 999/,
      ],
      ["tiny-cin", { class_label: 5, uncond_class_label: -1 }, "uncond_class_label", /greater than or equal to 0/],
      ["tiny-cin", { class_label: 5, uncond_class_label: "none" }, "uncond_class_label", /not a valid integer/],
      ["tiny-cin", { class_label: 11 }, "class_label", /class 11 is out of range/],
      ["tiny-cin", {}, "class_label", /give a class \(0 to 10\)/],
      ["tiny-cin", { class_label: 5, prompt: "a dog" }, "prompt", /ClassEmbedder-conditioned: it takes no prompt/],
      ["emoji-ldm", { prompt: "apple", uncond_class_label: 3 }, "uncond_class_label", /takes no unconditional class/],
      ["emoji-ldm", { prompt: "apple", class_label: 3 }, "class_label", /takes no class label/],
    ];
    for (const [checkpoint, body, field, message] of cases) {
      const { status, json } = await txt2img(checkpoint, { ...QUICK, ...body });
      const what = `${checkpoint} ${JSON.stringify(body)}`;
      expect(status, what).toBe(422);
      expect(json.detail, what).toHaveLength(1);
      expect(json.detail[0].loc, what).toEqual(["body", field]);
      expect(json.detail[0].msg, what).toMatch(message);
      expect(json.detail[0].msg, what).not.toContain("\n");
    }
  });
});
