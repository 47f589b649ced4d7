import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Tensor } from "@ldm/tensor";
import { useDevice } from "@ldm/tensor/testing";
import { configFromYaml, type ModelConfig, modelParamShapes } from "@ldm/weights";
import { type Checkpoint, openCheckpoint } from "@ldm/weights/node";
import { describe, expect, it } from "vitest";

/**
 * The reference checkpoints in fixtures/dumps were written from the original PyTorch modules (reference/
 * make_dumps.py): SD1 with HF CLIP naming, SD2 with OpenCLIP's fused in_proj, an inpainting UNet. Their YAML
 * configs say what the models are; detection from the weights must agree on everything shapes can tell, and
 * the canonical keys must be exactly those of the architecture the YAML describes.
 */
const DUMPS = join(import.meta.dirname, "fixtures", "dumps");
const NAMES = ["tiny-sd1", "tiny-sd2", "tiny-inpaint"];

const device = await useDevice();

async function open(name: string): Promise<{ checkpoint: Checkpoint; yaml: ModelConfig }> {
  const path = join(DUMPS, `${name}.yaml`);
  return {
    checkpoint: await openCheckpoint(join(DUMPS, `${name}.safetensors`)),
    yaml: configFromYaml(readFileSync(path, "utf8"), path),
  };
}

/** The fields detection cannot know (heads, VAE resolution, trained size, schedule, parameterization) set from the YAML. */
function withUndetectables(detected: ModelConfig, yaml: ModelConfig): ModelConfig {
  return {
    ...detected,
    parameterization: yaml.parameterization,
    image_size: yaml.image_size,
    unet: { ...detected.unet, num_heads: yaml.unet.num_heads, num_head_channels: yaml.unet.num_head_channels },
    vae: { ...detected.vae, ddconfig: { ...detected.vae.ddconfig, resolution: yaml.vae.ddconfig.resolution } },
    text: { ...detected.text, num_attention_heads: yaml.text.num_attention_heads },
  };
}

describe("reference checkpoints written from the original PyTorch modules", () => {
  for (const name of NAMES) {
    it(`${name}: canonical keys and shapes are exactly the YAML architecture's; detection agrees with the YAML`, async () => {
      const { checkpoint, yaml } = await open(name);
      try {
        const expected = modelParamShapes(yaml);
        expect([...checkpoint.source.keys()].sort()).toEqual([...expected.keys()].sort());
        for (const [key, shape] of expected) expect(checkpoint.source.describe(key)?.shape, key).toEqual(shape);
        expect(withUndetectables(checkpoint.config().config, yaml)).toEqual(yaml);
        expect((await checkpoint.readSchedule()).betas.length).toBe(yaml.timesteps);
      } finally {
        await checkpoint.close();
      }
    });
  }

  it("tiny-sd2: q, k and v come out of OpenCLIP's fused in_proj_weight as its row thirds", async () => {
    const { checkpoint } = await open("tiny-sd2");
    try {
      const fused = checkpoint.files[0];
      const inProj = "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight";
      const [rows, cols] = fused.entry(inProj).shape;
      const all = new Uint16Array((await fused.readBytes(inProj)).buffer);
      const layer = "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn";
      const tensors = [0, 1, 2].map(() => Tensor.empty(device, [rows / 3, cols], "f16"));
      await checkpoint.source.load(
        ["q_proj", "k_proj", "v_proj"].map((p, i) => ({ key: `${layer}.${p}.weight`, tensor: tensors[i] })),
      );
      for (const [i, t] of tensors.entries()) {
        expect(await t.read()).toEqual(all.subarray((i * all.length) / 3, ((i + 1) * all.length) / 3));
        t.dispose();
      }
    } finally {
      await checkpoint.close();
    }
  });
});
