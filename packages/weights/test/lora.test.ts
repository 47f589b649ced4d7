import { describe, expect, it } from "vitest";
import {
  dottedModulePath,
  type LoraTensor,
  type LoraTensors,
  modelParamShapes,
  resolveLora,
  standardConfig,
  TEXT_PREFIX,
  UNET_PREFIX,
} from "../src/index.ts";

const sd1 = standardConfig("sd1");
const sd2 = standardConfig("sd2");

function tensor(shape: number[]): LoraTensor {
  return { shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
}

/** A rank-1 LoRA module fitting `key`'s weight in `config` (kohya's conv factors for 4-d weights). */
function factorsFor(config: typeof sd1, key: string, prefix: string, suffix: [string, string]) {
  const shape = modelParamShapes(config).get(key) as number[];
  return {
    [`${prefix}${suffix[0]}`]: tensor([1, ...shape.slice(1)]),
    [`${prefix}${suffix[1]}`]: tensor([shape[0], 1, ...shape.slice(2).map(() => 1)]),
  };
}

function lora(tensors: Record<string, LoraTensor>, metadata: Record<string, string> = {}): LoraTensors {
  return { origin: "test.safetensors", tensors: new Map(Object.entries(tensors)), metadata };
}

const KOHYA: [string, string] = [".lora_down.weight", ".lora_up.weight"];
const PEFT: [string, string] = [".lora_A.weight", ".lora_B.weight"];

describe("LoRA module names", () => {
  it("reads kohya's underscores back as the diffusers module path", () => {
    expect(dottedModulePath("down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0")).toBe(
      "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0",
    );
    expect(dottedModulePath("mid_block_resnets_1_time_emb_proj")).toBe("mid_block.resnets.1.time_emb_proj");
    expect(dottedModulePath("text_model_encoder_layers_11_self_attn_q_proj")).toBe(
      "text_model.encoder.layers.11.self_attn.q_proj",
    );
    expect(dottedModulePath("time_embedding_linear_1")).toBe("time_embedding.linear_1");
  });

  // diffusers' UNet2DConditionModel ↔ UNetModel correspondence for SD 1.5 and 2.x (three residual blocks per
  // level counting the down/upsampler slot, no attention at the lowest level, up block 0 without attentions).
  const UNET_CASES: [string, string][] = [
    ["down_blocks_0_attentions_0_proj_in", "input_blocks.1.1.proj_in"],
    ["down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q", "input_blocks.5.1.transformer_blocks.0.attn1.to_q"],
    ["down_blocks_2_downsamplers_0_conv", "input_blocks.9.0.op"],
    ["down_blocks_3_resnets_1_conv2", "input_blocks.11.0.out_layers.3"],
    ["down_blocks_1_resnets_0_conv_shortcut", "input_blocks.4.0.skip_connection"],
    ["mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", "middle_block.1.transformer_blocks.0.ff.net.0.proj"],
    ["mid_block_resnets_1_time_emb_proj", "middle_block.2.emb_layers.1"],
    ["up_blocks_0_resnets_2_conv1", "output_blocks.2.0.in_layers.2"],
    ["up_blocks_0_upsamplers_0_conv", "output_blocks.2.1.conv"],
    ["up_blocks_1_upsamplers_0_conv", "output_blocks.5.2.conv"],
    [
      "up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
      "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0",
    ],
    ["conv_in", "input_blocks.0.0"],
    ["time_embedding_linear_2", "time_embed.2"],
    ["conv_out", "out.2"],
  ];

  it.each([
    ["SD 1.5", sd1],
    ["SD 2.x", sd2],
  ])("maps kohya and PEFT UNet names onto %s's original keys", (_, config) => {
    for (const [kohya, original] of UNET_CASES) {
      const key = `${UNET_PREFIX}${original}.weight`;
      const [layer] = resolveLora(lora(factorsFor(config, key, `lora_unet_${kohya}`, KOHYA)), config);
      expect(layer.key, kohya).toBe(key);
      const dotted = `unet.${dottedModulePath(kohya)}`;
      const [peft] = resolveLora(lora(factorsFor(config, key, dotted, PEFT)), config);
      expect(peft.key, dotted).toBe(key);
    }
    // kohya names in the original layout (A1111 reads them too).
    const key = `${UNET_PREFIX}output_blocks.5.1.proj_out.weight`;
    expect(
      resolveLora(lora(factorsFor(config, key, "lora_unet_output_blocks_5_1_proj_out", KOHYA)), config)[0].key,
    ).toBe(key);
  });

  it("maps lora_te_, lora_te1_ and text_encoder. names onto the text encoder, with the text multiplier", () => {
    const key = `${TEXT_PREFIX}encoder.layers.11.mlp.fc2.weight`;
    for (const prefix of [
      "lora_te_text_model_encoder_layers_11_mlp_fc2",
      "lora_te1_text_model_encoder_layers_11_mlp_fc2",
    ]) {
      const [layer] = resolveLora(lora(factorsFor(sd1, key, prefix, KOHYA)), sd1);
      expect([layer.key, layer.component]).toEqual([key, "text"]);
    }
    const peft = "text_encoder.text_model.encoder.layers.11.mlp.fc2";
    expect(resolveLora(lora(factorsFor(sd1, key, peft, PEFT)), sd1)[0].key).toBe(key);
  });

  it("uses alpha / rank as the scale, alpha = rank without an .alpha key", () => {
    const key = `${UNET_PREFIX}input_blocks.1.1.proj_in.weight`;
    const t = factorsFor(sd1, key, "lora_unet_down_blocks_0_attentions_0_proj_in", KOHYA);
    expect(resolveLora(lora(t), sd1)[0].scale).toBe(1);
    const alpha = { "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": { shape: [], data: Float32Array.of(0.25) } };
    expect(resolveLora(lora({ ...t, ...alpha }), sd1)[0].scale).toBe(0.25);
  });
});

describe("LoRA errors", () => {
  it("lists every key that matches no layer in one error", () => {
    const good = factorsFor(
      sd1,
      `${UNET_PREFIX}input_blocks.1.1.proj_in.weight`,
      "lora_unet_down_blocks_0_attentions_0_proj_in",
      KOHYA,
    );
    const bad = {
      "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": tensor([1, 320]),
      "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": tensor([320, 1]),
      "lora_te_text_model_encoder_layers_40_mlp_fc1.lora_down.weight": tensor([1, 768]),
      "lora_te_text_model_encoder_layers_40_mlp_fc1.lora_up.weight": tensor([3072, 1]),
      "lora_unet_conv_in.hada_w1_a": tensor([320, 1]),
      "lora_unet_conv_out.lora_down.weight": tensor([1, 320, 3, 3]),
    };
    const error = (() => {
      try {
        resolveLora(lora({ ...good, ...bad }), sd1);
      } catch (e) {
        return (e as Error).message;
      }
    })();
    expect(error).toMatch(/^test\.safetensors does not fit this SD 1\.x model \(4 keys\):/);
    expect(error).toContain("lora_unet_down_blocks_9_attentions_0_proj_in: matches no layer of this SD 1.x model");
    expect(error).toContain("lora_te_text_model_encoder_layers_40_mlp_fc1: matches no layer");
    expect(error).toContain("lora_unet_conv_in.hada_w1_a: LyCORIS LoHa (hada_*) is not supported");
    expect(error).toContain("lora_unet_conv_out: has a down factor but no up factor");
  });

  it("refuses an SDXL LoRA by name", () => {
    const te2 = { "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": tensor([1, 1280]) };
    expect(() => resolveLora(lora(te2), sd1)).toThrow(
      "test.safetensors is an SDXL LoRA (key lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight); this model is SD 1.x",
    );
    expect(() => resolveLora(lora({}, { ss_base_model_version: "sdxl_base_v1-0" }), sd2)).toThrow(
      'test.safetensors is an SDXL LoRA (metadata "sdxl_base_v1-0"); this model is SD 2.x',
    );
  });

  it("names the key and both shapes when a LoRA does not fit (an SD 1.x LoRA on SD 2.x)", () => {
    const key = `${UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight`;
    const sd1Lora = factorsFor(sd1, key, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", KOHYA);
    expect(() => resolveLora(lora(sd1Lora), sd2)).toThrow(
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k: up [320, 1] · down [1, 768] does not fit model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight [320, 1024] (768 inputs, the layer has 1024)",
    );
    const conv = `${UNET_PREFIX}input_blocks.1.0.in_layers.2.weight`;
    const oneByOne = {
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": tensor([4, 320, 1, 1]),
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": tensor([320, 4, 1, 1]),
    };
    expect(modelParamShapes(sd1).get(conv)).toEqual([320, 320, 3, 3]);
    expect(() => resolveLora(lora(oneByOne), sd1)).toThrow("(kernel [1, 1], the layer's [3, 3])");
  });
});

describe("LoRA on an inpainting UNet", () => {
  it("takes an SD LoRA's 4-channel conv_in as the first 4 of the 9 inpainting channels (A1111 pads it)", () => {
    const inpainting = standardConfig("sd1", { inpainting: true });
    const factors = (channels: number) => ({
      "lora_unet_conv_in.lora_down.weight": tensor([4, channels, 3, 3]),
      "lora_unet_conv_in.lora_up.weight": tensor([320, 4, 1, 1]),
    });
    const [layer] = resolveLora(lora(factors(4)), inpainting);
    expect([layer.key, layer.shape]).toEqual([`${UNET_PREFIX}input_blocks.0.0.weight`, [320, 9, 3, 3]]);
    expect(resolveLora(lora(factors(9)), inpainting)).toHaveLength(1);
    expect(() => resolveLora(lora(factors(5)), inpainting)).toThrow("(5 inputs, the layer has 9)");
    expect(() => resolveLora(lora(factors(9)), sd1)).toThrow("(9 inputs, the layer has 4)");
  });
});
