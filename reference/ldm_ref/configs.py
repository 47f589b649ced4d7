"""Model configurations in the original YAML shape (v1-inference.yaml / v2-inference-v.yaml /
v1-inpainting-inference.yaml): `model.target`, `model.params` with the schedule, and
`unet_config`, `first_stage_config`, `cond_stage_config`.

`cond_stage_config.params.text_config` (Hugging Face CLIPTextConfig keys) is an ldm.ts
extension that describes a non-standard text encoder; real configs omit it and imply
CLIP ViT-L/14 (FrozenCLIPEmbedder) or OpenCLIP ViT-H/14 (FrozenOpenCLIPEmbedder).
"""

from .ldm import OPENCLIP_TARGET, SD1_CLIP_TARGET

def make_config(*, target, unet, ddconfig, embed_dim, cond_target, text_config, layer=None, parameterization=None,
                conditioning_key="crossattn", latent_size):
    params = {}
    if parameterization is not None:
        params["parameterization"] = parameterization
    params.update(
        {
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "num_timesteps_cond": 1,
            "log_every_t": 200,
            "timesteps": 1000,
            "first_stage_key": "jpg",
            "cond_stage_key": "txt",
            "image_size": latent_size,
            "channels": 4,
            "cond_stage_trainable": False,
            "conditioning_key": conditioning_key,
            "monitor": "val/loss_simple_ema",
            "scale_factor": 0.18215,
            "use_ema": False,
        }
    )
    if target.endswith("LatentInpaintDiffusion"):
        params["finetune_keys"] = None
    unet_params = {"image_size": latent_size}
    unet_params.update(unet)
    unet_params.update({"use_spatial_transformer": True, "use_checkpoint": True, "legacy": False})
    params["unet_config"] = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params}
    params["first_stage_config"] = {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": embed_dim,
            "monitor": "val/rec_loss",
            "ddconfig": ddconfig,
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }
    cond = {"target": cond_target}
    cond_params = {}
    if cond_target == OPENCLIP_TARGET:
        cond_params["freeze"] = True
    if layer is not None:
        cond_params["layer"] = layer
    if text_config is not None:
        cond_params["text_config"] = dict(text_config)
    if cond_params:
        cond["params"] = cond_params
    params["cond_stage_config"] = cond
    return {"model": {"base_learning_rate": 1.0e-04, "target": target, "params": params}}


def tiny_ddconfig(ch_mult):
    return {
        "double_z": True,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": list(ch_mult),
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def tiny_text_config(hidden_act):
    return {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
    }


TINY_UNET_COMMON = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": 1,
    # The 64-channel level matters: with 32 channels every GroupNorm(32) has groups of one
    # channel, which cancels the per-channel timestep embedding a ResBlock adds before its
    # second norm; the time embedding would then be invisible in the dumps. (The first
    # multiplier must be 1: the original's final conv takes model_channels inputs.)
    "channel_mult": [1, 2],
    "transformer_depth": 1,
    "context_dim": 32,
}

TINY_CONFIGS = {
    # SD1 shape: fixed head count (4 heads: 8 wide at 32 channels, 16 wide at 64 in the middle
    # block), conv proj_in/proj_out, CLIP with quick_gelu, last layer, eps-prediction.
    "tiny-sd1": make_config(
        target="ldm.models.diffusion.ddpm.LatentDiffusion",
        unet={**TINY_UNET_COMMON, "attention_resolutions": [1], "num_heads": 4},
        ddconfig=tiny_ddconfig([1, 1, 1, 1]),
        embed_dim=4,
        cond_target=SD1_CLIP_TARGET,
        text_config=tiny_text_config("quick_gelu"),
        latent_size=8,
    ),
    # SD2 shape: fixed head width (16: 2 heads at 32 channels, 4 at 64), linear proj_in/proj_out,
    # OpenCLIP naming with exact GELU, penultimate layer, v-prediction; a VAE whose first level
    # has 64 channels (nin_shortcut, GroupNorm groups of 2).
    "tiny-sd2": make_config(
        target="ldm.models.diffusion.ddpm.LatentDiffusion",
        unet={
            **TINY_UNET_COMMON,
            "attention_resolutions": [1],
            "num_head_channels": 16,
            "use_linear_in_transformer": True,
        },
        ddconfig=tiny_ddconfig([2, 1, 1, 1]),
        embed_dim=4,
        cond_target=OPENCLIP_TARGET,
        text_config=tiny_text_config("gelu"),
        layer="penultimate",
        parameterization="v",
        latent_size=8,
    ),
    # SD1 inpainting shape: 9 UNet input channels (latent, mask, masked-image latent), hybrid
    # conditioning; attention only at the second level.
    "tiny-inpaint": make_config(
        target="ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
        unet={**TINY_UNET_COMMON, "in_channels": 9, "attention_resolutions": [2], "num_heads": 2},
        ddconfig=tiny_ddconfig([1, 1, 1, 1]),
        embed_dim=4,
        cond_target=SD1_CLIP_TARGET,
        text_config=tiny_text_config("quick_gelu"),
        conditioning_key="hybrid",
        latent_size=8,
    ),
}

# The released SD 1.5 architecture (v1-inference.yaml); no text_config: CLIP ViT-L/14 is implied.
SD15_CONFIG = make_config(
    target="ldm.models.diffusion.ddpm.LatentDiffusion",
    unet={
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4],
        "num_heads": 8,
        "transformer_depth": 1,
        "context_dim": 768,
    },
    ddconfig={
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
    embed_dim=4,
    cond_target=SD1_CLIP_TARGET,
    text_config=None,
    latent_size=64,
)
