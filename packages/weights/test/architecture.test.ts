import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  CLIP_VIT_L_TEXT,
  clipTextParamShapes,
  OPEN_CLIP_VIT_H_TEXT,
  type ParamShapes,
  SD1_UNET,
  SD2_UNET,
  sdVae,
  unetHeads,
  unetParamShapes,
  vaeParamShapes,
} from "../src/index.ts";

/** Key counts, parameter counts and a hash of the sorted "key\tshape" lines, from the original PyTorch modules. */
const reference: Record<string, { count: number; params: number; sha256: string }> = JSON.parse(
  readFileSync(join(import.meta.dirname, "fixtures", "reference-keys.json"), "utf8"),
);

function summary(shapes: ParamShapes) {
  const lines = [...shapes].map(([k, s]) => `${k}\t[${s.join(", ")}]`).sort();
  return {
    count: lines.length,
    params: [...shapes.values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0),
    sha256: createHash("sha256").update(lines.join("\n")).digest("hex"),
  };
}

function params(shapes: ParamShapes): number {
  return summary(shapes).params;
}

describe("canonical key lists match the original modules exactly (names and shapes)", () => {
  it("SD 1.x UNet (v1-inference.yaml)", () => expect(summary(unetParamShapes(SD1_UNET))).toEqual(reference.sd1_unet));
  it("SD 1.x inpainting UNet (9 input channels)", () =>
    expect(summary(unetParamShapes({ ...SD1_UNET, in_channels: 9 }))).toEqual(reference.sd1_inpaint_unet));
  it("SD 2.x UNet (v2-inference-v.yaml: linear projections, 64-channel heads, context 1024)", () =>
    expect(summary(unetParamShapes(SD2_UNET))).toEqual(reference.sd2_unet));
  it("AutoencoderKL", () => expect(summary(vaeParamShapes(sdVae("sd1")))).toEqual(reference.vae));

  // Text encoders: open_clip's docs/model_profile.csv gives the text towers' sizes with the contrastive
  // projection, which a CLIPTextModel (and our canonical text keys) leave out: ViT-L-14 123.65 M including a
  // 768×768 projection; ViT-H-14 354.03 M including a 1024×1024 projection and the logit scale.
  it("CLIP ViT-L/14 text model (SD 1.x): 123,060,480 parameters", () =>
    expect(params(clipTextParamShapes(CLIP_VIT_L_TEXT))).toBe(123_060_480));
  it("OpenCLIP ViT-H/14 text transformer (SD 2.x), all 24 layers", () => {
    const total = params(clipTextParamShapes(OPEN_CLIP_VIT_H_TEXT)) + 1024 * 1024 + 1;
    expect(Math.round(total / 1e4) / 100).toBe(354.03);
  });
});

describe("UNet heads", () => {
  it("SD 1.x: 8 heads whose width grows with the channels; SD 2.x: 64-channel heads whose count grows", () => {
    expect([320, 640, 1280].map((c) => unetHeads(SD1_UNET, c))).toEqual([
      { heads: 8, dimHead: 40 },
      { heads: 8, dimHead: 80 },
      { heads: 8, dimHead: 160 },
    ]);
    expect([320, 640, 1280].map((c) => unetHeads(SD2_UNET, c))).toEqual([
      { heads: 5, dimHead: 64 },
      { heads: 10, dimHead: 64 },
      { heads: 20, dimHead: 64 },
    ]);
  });
});
