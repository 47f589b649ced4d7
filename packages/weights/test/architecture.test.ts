import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  CLIP_VIT_L_TEXT,
  clipTextParamShapes,
  condStageParamShapes,
  firstStageConfigFromYaml,
  ldmConfigFromYaml,
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

/**
 * Every model CompVis/latent-diffusion releases, from its ORIGINAL modules built at full size with random weights
 * (reference/full_size_counts.py): the upstream config's `model` section and each stage's key count, parameter
 * count and hash, as above.
 */
interface FullSizeRow {
  config: string;
  total: number;
  stages: Record<string, { count: number; params: number; sha256: string }>;
  model: { target: string; params: Record<string, unknown> };
}
const fullSize: { source: string; rows: Record<string, FullSizeRow> } = JSON.parse(
  readFileSync(join(import.meta.dirname, "fixtures", "full-size.json"), "utf8"),
);

/** Our key tables for each stage of a row's config (JSON is YAML: the `model` section goes to the readers as it is). */
function ourStages(row: FullSizeRow): Record<string, ParamShapes> {
  const text = JSON.stringify({ model: row.model });
  const alone = firstStageConfigFromYaml(text, row.config);
  if (alone) return { first_stage: vaeParamShapes(alone.vae) };
  const config = ldmConfigFromYaml(text, row.config);
  return {
    unet: unetParamShapes(config.unet),
    first_stage: vaeParamShapes(config.vae),
    cond_stage: config.text ? clipTextParamShapes(config.text) : condStageParamShapes(config.cond_stage),
  };
}

describe("full-size parameters of every released config equal the original modules' (reference/full_size_counts.py)", () => {
  const rows = Object.entries(fullSize.rows);

  it("the table holds the issue's 22 models, each stage's counts summing to its total", () => {
    expect(rows.map(([name]) => name).sort()).toEqual(
      [
        ...["celebahq-ldm-vq-4", "ffhq-ldm-vq-4", "lsun_bedrooms-ldm-vq-4", "lsun_churches-ldm-kl-8", "cin256-v2"],
        ...["cin-ldm-vq-f8", "txt2img-f8-large", "text2img256", "layout2img-openimages256", "bsr_sr"],
        ...["semantic_synthesis256", "semantic_synthesis512", "inpainting_big"],
        ...["vq-f4", "vq-f4-noattn", "vq-f8", "vq-f8-n256", "vq-f16", "kl-f4", "kl-f8", "kl-f16", "kl-f32"],
      ].sort(),
    );
    for (const [, row] of rows) expect(Object.values(row.stages).reduce((n, s) => n + s.params, 0)).toBe(row.total);
  });

  it.each(rows)("%s: every stage's keys and shapes", (name, row) => {
    const ours = ourStages(row);
    const stages = Object.keys(row.stages);
    expect(Object.fromEntries(stages.map((stage) => [stage, summary(ours[stage])])), name).toEqual(row.stages);
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
