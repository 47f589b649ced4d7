import { describe, expect, it } from "vitest";
import {
  clipTextParamShapes,
  DetectionError,
  detectConfig,
  type KeyShapes,
  type ModelConfig,
  modelParamShapes,
  OPEN_CLIP_VIT_H_TEXT,
  standardConfig,
  TEXT_PREFIX,
} from "../src/index.ts";

/** The keys and shapes a checkpoint of `config` holds, without any data. */
function shapesOf(config: ModelConfig, edit: (m: Map<string, number[]>) => void = () => {}): KeyShapes {
  const shapes = modelParamShapes(config);
  edit(shapes);
  return { describe: (key) => (shapes.has(key) ? { shape: shapes.get(key)! } : undefined), keys: () => shapes.keys() };
}

describe("detection at full size (keys and shapes of the real models)", () => {
  it("SD 1.x", () => {
    const { config, assumptions } = detectConfig(shapesOf(standardConfig("sd1")), "sd15");
    expect(config).toEqual(standardConfig("sd1"));
    expect(assumptions).toContain("UNet num_heads 8 (SD 1.x)");
  });

  it("SD 1.x inpainting", () => {
    const inpainting = standardConfig("sd1", { inpainting: true });
    expect(detectConfig(shapesOf(inpainting), "inpaint").config).toEqual(inpainting);
  });

  it("SD 2.x single file: 24 OpenCLIP layers stored, the penultimate used", () => {
    const detected = detectConfig(shapesOf(standardConfig("sd2")), "sd2", { openClipText: true }).config;
    expect(detected).toEqual(standardConfig("sd2"));
    expect(detected.text).toMatchObject({
      num_hidden_layers: 24,
      layer: "penultimate",
      hidden_act: "gelu",
      pad_token_id: 0,
    });
  });

  it("SD 2.x diffusers: 23 layers stored in HF naming, the last used; v-prediction from the scheduler", () => {
    const sd2 = standardConfig("sd2");
    const layers23 = { ...sd2, text: { ...sd2.text, num_hidden_layers: 23 } };
    const { config } = detectConfig(shapesOf(layers23), "sd2-diffusers", { parameterization: "v" });
    expect(config).toEqual({ ...layers23, parameterization: "v", text: { ...layers23.text, layer: "last" } });
  });

  it("refuses a text encoder whose width does not match the UNet's cross-attention", () => {
    const sd1 = standardConfig("sd1");
    const mixed = shapesOf(sd1, (m) => {
      for (const key of [...m.keys()]) if (key.startsWith(TEXT_PREFIX)) m.delete(key);
      for (const [k, s] of clipTextParamShapes(OPEN_CLIP_VIT_H_TEXT)) m.set(k, s);
    });
    expect(() => detectConfig(mixed, "mixed")).toThrow(
      /mixed: the text encoder is 1024 wide but the UNet's cross-attention expects 768/,
    );
  });

  it("names the key it could not read", () => {
    const broken = shapesOf(standardConfig("sd1"), (m) => m.set("model.diffusion_model.out.2.weight", [4, 320]));
    expect(() => detectConfig(broken, "broken")).toThrow(DetectionError);
    expect(() => detectConfig(broken, "broken")).toThrow(
      /broken: model\.diffusion_model\.out\.2\.weight has shape \[4, 320\], expected 4 dimensions/,
    );
    const noMiddle = shapesOf(standardConfig("sd1"), (m) =>
      m.delete("model.diffusion_model.middle_block.1.proj_in.weight"),
    );
    expect(() => detectConfig(noMiddle, "partial")).toThrow(
      /partial: cannot detect the model: model\.diffusion_model\.middle_block\.1\.proj_in\.weight is missing/,
    );
  });
});
