import { describe, expect, it } from "vitest";
import { samplerByName } from "../src/diffusion/index.ts";
import { decodePng, encodePng } from "../src/image/png.ts";
import { formatInfotext, INFOTEXT_KEYWORD, parametersFromInfotext, parseInfotext } from "../src/pipeline/infotext.ts";
import type { GenerationParameters } from "../src/pipeline/parameters.ts";

const base: GenerationParameters = {
  prompt: "a (red:1.2) apple, studio light",
  negativePrompt: "blurry, lowres",
  seed: "42",
  sampler: "euler_ancestral",
  steps: 20,
  guidanceScale: 7,
  eta: 1,
  width: 512,
  height: 768,
  batchSize: 1,
  batchIndex: 0,
  model: "v1-5-pruned-emaonly.safetensors",
  dtype: "f16",
};

describe("A1111 infotext", () => {
  it("writes A1111's format: prompt, Negative prompt, one line of pairs with its sampler names", () => {
    expect(formatInfotext(base)).toBe(
      "a (red:1.2) apple, studio light\nNegative prompt: blurry, lowres\n" +
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model: v1-5-pruned-emaonly",
    );
    const karras = formatInfotext({ ...base, sampler: "dpmpp_2m_karras", eta: 0, negativePrompt: "", clipSkip: 2 });
    expect(karras).toBe(
      "a (red:1.2) apple, studio light\n" +
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model: v1-5-pruned-emaonly, Clip skip: 2",
    );
    const ddim = formatInfotext({ ...base, sampler: "ddim", eta: 0.5, strength: 0.75, model: "a, b: c.ckpt" });
    expect(ddim).toContain('Model: "a, b: c", Denoising strength: 0.75, Eta DDIM: 0.5');
  });

  it("reads back every parameter it wrote, for every sampler and schedule", () => {
    for (const sampler of ["ddim", "euler", "dpmpp_2m_karras", "dpmpp_sde", "lcm", "heun"] as const) {
      for (const schedule of [undefined, "exponential" as const]) {
        if (schedule && (sampler === "ddim" || sampler === "lcm")) continue;
        const eta = sampler === "ddim" ? 0.3 : samplerByName(sampler).defaultEta;
        const written = { ...base, sampler, schedule, eta, clipSkip: 2, strength: 0.5 };
        const { parameters, unrestored } = parametersFromInfotext(formatInfotext(written), "x.png");
        expect(unrestored).toEqual([]);
        // The same sampler and σ spacing, maybe by another name (dpmpp_2m_karras with exponential σ = dpmpp_2m's).
        const effective = (p: Partial<GenerationParameters>) => {
          const record = samplerByName(p.sampler as string);
          return [record.a1111, p.schedule ?? record.schedules[0]];
        };
        expect(effective(parameters)).toEqual(effective(written));
        expect({ ...parameters, sampler: undefined, schedule: undefined }).toEqual({
          prompt: written.prompt,
          negativePrompt: written.negativePrompt,
          steps: 20,
          guidanceScale: 7,
          strength: 0.5,
          clipSkip: 2,
          ...(sampler === "ddim" ? { eta: 0.3 } : {}),
          seed: "42",
          width: 512,
          height: 768,
          sampler: undefined,
          schedule: undefined,
          model: "v1-5-pruned-emaonly",
        });
      }
    }
  });

  it("reads A1111's own infotexts: old Karras names, quoted values, settings we lack named", () => {
    // As A1111 1.x writes it (create_infotext), with a hires fix we do not restore and LoRA hashes we check.
    const text =
      "masterpiece, (best quality:1.3), 1girl\nwith a second line\nNegative prompt: (worst quality:1.4), lowres\n" +
      'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3928107433, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "detail: 1a2b3c, style: 4d5e6f", Version: v1.6.0';
    const parsed = parseInfotext(text);
    expect(parsed.prompt).toBe("masterpiece, (best quality:1.3), 1girl\nwith a second line");
    expect(parsed.negativePrompt).toBe("(worst quality:1.4), lowres");
    expect(parsed.values["Lora hashes"]).toBe("detail: 1a2b3c, style: 4d5e6f");
    const { parameters, unrestored } = parametersFromInfotext(text, "a1111.png");
    expect(parameters).toMatchObject({ sampler: "dpmpp_2m_karras", steps: 28, guidanceScale: 6.5, seed: "3928107433" });
    expect(parameters).toMatchObject({ width: 512, height: 768, clipSkip: 2, strength: 0.5, model: "v1-5" });
    expect(parameters.modelHash).toBe("6ce0161689");
    expect(unrestored).toEqual(["Hires upscale", "Hires upscaler", "Version"]);
    // The prompt's <lora:…> tags are its LoRAs, each with its hash where "Lora hashes" has one.
    const tagged = parametersFromInfotext(
      'a <lora:detail:0.7> cat <lora:style:1:0.5>\nSteps: 2, Sampler: Euler, Seed: 1, Lora hashes: "detail: 1a2b3c"',
      "tagged.png",
    );
    expect(tagged.unrestored).toEqual([]);
    expect(tagged.parameters.loras).toEqual([
      { name: "detail", strength: 0.7, hash: "1a2b3c" },
      { name: "style", strength: 1, unetStrength: 0.5 },
    ]);
    const modern = parametersFromInfotext(
      "a cat\nSteps: 8, Sampler: Euler a, Schedule type: Exponential, CFG scale: 2",
      "b.png",
    );
    expect(modern.parameters).toMatchObject({ sampler: "euler_ancestral", schedule: "exponential" });
    expect(parametersFromInfotext("a cat\nSteps: 8, Sampler: DPM2 a, CFG scale: 2", "c.png").unrestored).toEqual([
      "Sampler",
    ]);
    // A last line with fewer than 3 pairs is prompt text, as in A1111.
    expect(parseInfotext("a cat\nSteps: 8, Seed: 1").prompt).toBe("a cat\nSteps: 8, Seed: 1");
    expect(() => parametersFromInfotext("a\nSteps: x, Seed: 1, CFG scale: 2", "d.png")).toThrow(
      /d.png: A1111 parameter "Steps: x" is not a number/,
    );
  });

  it("text chunks go before the image data; non-Latin-1 text as UTF-8 iTXt, read back", () => {
    const image = { width: 2, height: 1, data: new Uint8ClampedArray([1, 2, 3, 255, 4, 5, 6, 255]) };
    const png = encodePng(image, {
      [INFOTEXT_KEYWORD]: "猫, café\nSteps: 1, Sampler: Euler, CFG scale: 1",
      Software: "x",
    });
    const types: string[] = [];
    const view = new DataView(png.buffer, png.byteOffset);
    for (let at = 8; at < png.length; at += 12 + view.getUint32(at)) {
      types.push(String.fromCharCode(...png.subarray(at + 4, at + 8)));
    }
    expect(types).toEqual(["IHDR", "iTXt", "tEXt", "IDAT", "IEND"]);
    const decoded = decodePng(png, "test");
    expect(decoded.text).toEqual({
      [INFOTEXT_KEYWORD]: "猫, café\nSteps: 1, Sampler: Euler, CFG scale: 1",
      Software: "x",
    });
    expect(decoded.data).toEqual(image.data);
  });
});
