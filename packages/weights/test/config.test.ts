import { describe, expect, it } from "vitest";
import {
  COND_PREFIX,
  ConfigError,
  configFromYaml,
  ldmConfigFromYaml,
  modelParamShapes,
  standardConfig,
  UNET_PREFIX,
  VAE_PREFIX,
} from "../src/index.ts";

// The model parts of CompVis' configs/stable-diffusion/v1-inference.yaml and Stability's
// configs/stable-diffusion/v2-inference-v.yaml (training-only entries left out), with their values.
const V1 = `
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_heads: 8
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 768
        use_checkpoint: True
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 512
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
`;

const V2_V = `
model:
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    scale_factor: 0.18215
    unet_config:
      params:
        use_fp16: True
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False
    first_stage_config:
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
`;

// The paper's txt2img-f8-large (CompVis/latent-diffusion configs/latent-diffusion/txt2img-1p4B-eval.yaml) has V1's
// UNet and first stage with context_dim 1280 and a BERTEmbedder(n_embed 1280, n_layer 32).
const TXT2IMG = V1.replace("context_dim: 768", "context_dim: 1280").replace(
  "target: ldm.modules.encoders.modules.FrozenCLIPEmbedder",
  `target: ldm.modules.encoders.modules.BERTEmbedder
      params:
        n_embed: 1280
        n_layer: 32`,
);

describe("the paper's BERTEmbedder models", () => {
  it("txt2img-1p4B-eval.yaml: a BERTEmbedder with bert-base-uncased's vocabulary and length; not an SD config", () => {
    const config = ldmConfigFromYaml(TXT2IMG, "txt2img-1p4B-eval.yaml");
    expect(config.cond_stage).toEqual({
      target: "BERTEmbedder",
      n_embed: 1280,
      n_layer: 32,
      vocab_size: 30522,
      max_seq_len: 77,
      use_tokenizer: true,
    });
    expect(config.family).toBe("ldm");
    expect(() => configFromYaml(TXT2IMG, "txt2img-1p4B-eval.yaml")).toThrow(
      /a BERTEmbedder-conditioned LatentDiffusion, not a CLIP text-to-image/,
    );
  });

  it("counts the parameters the original modules have (reference/full_size_txt2img.py built them: 1.538 B)", () => {
    const shapes = modelParamShapes(ldmConfigFromYaml(TXT2IMG));
    const count = (prefix: string) =>
      [...shapes].filter(([k]) => k.startsWith(prefix)).reduce((n, [, s]) => n + s.reduce((a, b) => a * b, 1), 0);
    expect([count(UNET_PREFIX), count(VAE_PREFIX), count(COND_PREFIX)]).toEqual([872_300_484, 83_653_863, 581_994_042]);
  });

  it("layout2img's BERTEmbedder takes ids as they are (use_tokenizer false, 8192 tokens, 92 positions)", () => {
    const layout = TXT2IMG.replace(
      "n_layer: 32",
      "n_layer: 16\n        vocab_size: 8192\n        max_seq_len: 92\n        use_tokenizer: false",
    );
    expect(ldmConfigFromYaml(layout).cond_stage).toMatchObject({
      vocab_size: 8192,
      max_seq_len: 92,
      use_tokenizer: false,
    });
  });
});

describe("original-style YAML configs", () => {
  it("v1-inference.yaml is the standard SD 1.x config", () => {
    expect(configFromYaml(V1, "v1-inference.yaml")).toEqual(standardConfig("sd1"));
  });

  it("v2-inference-v.yaml is the standard SD 2.x config with v-prediction", () => {
    expect(configFromYaml(V2_V, "v2-inference-v.yaml")).toEqual(standardConfig("sd2", { parameterization: "v" }));
  });

  it("an inpainting UNet (9 input channels) is flagged", () => {
    const config = configFromYaml(V1.replace("in_channels: 4", "in_channels: 9"));
    expect(config.inpainting).toBe(true);
    expect(config.unet.in_channels).toBe(9);
  });

  it("a small custom model, with a text_config in HF CLIPTextConfig terms", () => {
    const custom = V1.replace("model_channels: 320", "model_channels: 32")
      .replace("context_dim: 768", "context_dim: 64")
      .replace(
        "target: ldm.modules.encoders.modules.FrozenCLIPEmbedder",
        `target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        text_config:
          hidden_size: 64
          num_hidden_layers: 2
          num_attention_heads: 4
          intermediate_size: 128
          max_position_embeddings: 16
          vocab_size: 1000
          hidden_act: gelu`,
      );
    const config = configFromYaml(custom);
    expect(config.unet.model_channels).toBe(32);
    expect(config.text).toEqual({
      vocab_size: 1000,
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      max_position_embeddings: 16,
      hidden_act: "gelu",
      layer_norm_eps: 1e-5,
      layer: "last",
      pad_token_id: 49407,
    });
  });

  it("model.params.image_size is the latent side pipelines default to", () => {
    const withSize = V1.replace("    timesteps: 1000\n", "    timesteps: 1000\n    image_size: 64\n");
    expect(configFromYaml(withSize).image_size).toBe(64);
    expect(configFromYaml(V1).image_size).toBeUndefined();
  });

  it("omitted parameters take the original constructors' defaults", () => {
    const config = configFromYaml(V1.replace(/\n {4}(linear_start|linear_end|timesteps|scale_factor):.*/g, ""));
    expect(config).toMatchObject({ linear_start: 1e-4, linear_end: 2e-2, timesteps: 1000, scale_factor: 1 });
  });

  const errors: [string, string, RegExp][] = [
    ["missing model.params", "model: {}", /cfg\.yaml: missing model\.params/],
    ["not YAML", "model: [", /cfg\.yaml: not valid YAML/],
    ["empty", "", /cfg\.yaml: missing a top-level mapping/],
    [
      "missing a required size",
      V1.replace("        model_channels: 320\n", ""),
      /missing unet_config\.params\.model_channels/,
    ],
    [
      "a wrong type",
      V1.replace("num_res_blocks: 2\n        channel_mult", 'num_res_blocks: "two"\n        channel_mult'),
      /unet_config\.params\.num_res_blocks must be an integer, not "two"/,
    ],
    [
      "an unsupported architecture option",
      V1.replace("legacy: False", "legacy: False\n        num_classes: 10"),
      /unet_config\.params\.num_classes: 10 is not supported/,
    ],
    [
      "a context width without transformers",
      V1.replace("use_spatial_transformer: True", "use_spatial_transformer: False"),
      /context_dim needs use_spatial_transformer: true/,
    ],
    [
      "an unknown first stage",
      V1.replace("ldm.models.autoencoder.AutoencoderKL", "ldm.models.autoencoder.IdentityFirstStage"),
      /first_stage_config\.target "ldm\.models\.autoencoder\.IdentityFirstStage" is not supported \(AutoencoderKL, VQModelInterface, VQModel\)/,
    ],
    [
      "an unknown model class",
      V1.replace("ldm.models.diffusion.ddpm.LatentDiffusion", "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion"),
      /model\.target ".*LatentUpscaleDiffusion" is not supported/,
    ],
    [
      "an unknown text encoder",
      V1.replace("FrozenCLIPEmbedder", "FrozenT5Embedder"),
      /cond_stage_config\.target ".*FrozenT5Embedder" is not supported/,
    ],
    [
      "an unknown parameterization",
      V2_V.replace('parameterization: "v"', 'parameterization: "x0"'),
      /parameterization "x0" is not supported/,
    ],
    [
      "a hidden layer index",
      V2_V.replace('layer: "penultimate"', 'layer: "hidden"'),
      /cond_stage_config\.params\.layer "hidden" is not supported/,
    ],
  ];
  for (const [what, text, message] of errors) {
    it(`names the problem: ${what}`, () => {
      expect(() => configFromYaml(text, "cfg.yaml")).toThrow(ConfigError);
      expect(() => configFromYaml(text, "cfg.yaml")).toThrow(message);
    });
  }
});
