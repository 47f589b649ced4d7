"""LatentDiffusion as far as inference needs it, following `ldm/models/diffusion/ddpm.py`:
the noise schedule buffers (`register_schedule`), `apply_model` through the DiffusionWrapper
(crossattn, or hybrid = concat + crossattn for inpainting), eps/v parameterization helpers,
first-stage decoding with the scale factor, and the text conditioning.

`checkpoint_state_dict()` / `load_checkpoint_state_dict()` use the original single-file
layout: `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`
(SD1, HF CLIP) or `cond_stage_model.model.*` (SD2, OpenCLIP), plus the schedule buffers.
"""

import math

import numpy as np
import torch
from torch import nn

from .clip import (
    CLIP_VIT_L14_TEXT,
    OPENCLIP_VIT_H14_TEXT,
    CLIPTextModel,
    from_openclip_state_dict,
    to_openclip_state_dict,
)
from .unet import UNetModel
from .vae import AutoencoderKL

SD1_CLIP_TARGET = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
OPENCLIP_TARGET = "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"
UNET_ARGS = (
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
    "channel_mult",
    "context_dim",
    "num_heads",
    "num_head_channels",
    "transformer_depth",
    "use_linear_in_transformer",
)


def make_beta_schedule(n_timestep, linear_start, linear_end):
    """The original "linear" schedule: linear in sqrt(beta), float64."""
    return (torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2).numpy()


class DiffusionWrapper(nn.Module):
    def __init__(self, unet_params, conditioning_key):
        super().__init__()
        if not unet_params.get("use_spatial_transformer"):
            raise ValueError("only UNets with use_spatial_transformer: true (cross-attention) are supported")
        if conditioning_key not in ("crossattn", "hybrid"):
            raise ValueError(f"conditioning_key {conditioning_key!r} is not supported (crossattn, hybrid)")
        self.diffusion_model = UNetModel(**{k: unet_params[k] for k in UNET_ARGS if k in unet_params})
        self.conditioning_key = conditioning_key

    def forward(self, x, t, context, c_concat=None):
        if self.conditioning_key == "hybrid":
            x = torch.cat([x, c_concat], dim=1)
        return self.diffusion_model(x, t, context=context)


class FrozenCLIPEmbedder(nn.Module):
    """`cond_stage_model`: holds the text encoder as `.transformer` and picks the layer."""

    def __init__(self, text_config, layer, openclip):
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"cond_stage_config layer {layer!r} is not supported (last, penultimate)")
        self.transformer = CLIPTextModel(text_config)
        self.layer = layer
        self.openclip = openclip
        if openclip:
            width = text_config["hidden_size"]
            self.text_projection = nn.Parameter(torch.empty(width, text_config["projection_dim"]))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, input_ids):
        return self.transformer(input_ids)[f"{self.layer}_hidden_state"]


class LatentDiffusion(nn.Module):
    def __init__(self, config):
        super().__init__()
        params = config["model"]["params"]
        self.parameterization = params.get("parameterization", "eps")
        if self.parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization {self.parameterization!r} is not supported (eps, v)")
        self.scale_factor = params["scale_factor"]
        self.model = DiffusionWrapper(params["unet_config"]["params"], params["conditioning_key"])
        first_stage = params["first_stage_config"]["params"]
        self.first_stage_model = AutoencoderKL(first_stage["ddconfig"], first_stage["embed_dim"])
        cond = params["cond_stage_config"]
        if cond["target"] not in (SD1_CLIP_TARGET, OPENCLIP_TARGET):
            raise ValueError(f"cond_stage_config target {cond['target']!r} is not supported")
        openclip = cond["target"] == OPENCLIP_TARGET
        cond_params = cond.get("params", {})
        # Real configs name no text_config: the released encoder of each target is implied.
        text_config = cond_params.get("text_config", OPENCLIP_VIT_H14_TEXT if openclip else CLIP_VIT_L14_TEXT)
        self.cond_stage_model = FrozenCLIPEmbedder(text_config, cond_params.get("layer", "last"), openclip)
        self.register_schedule(params["timesteps"], params["linear_start"], params["linear_end"])

    def register_schedule(self, timesteps, linear_start, linear_end):
        betas = make_beta_schedule(timesteps, linear_start, linear_end)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.num_timesteps = int(timesteps)

        def buffer(name, value):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))

        buffer("betas", betas)
        buffer("alphas_cumprod", alphas_cumprod)
        buffer("alphas_cumprod_prev", alphas_cumprod_prev)
        buffer("sqrt_alphas_cumprod", np.sqrt(alphas_cumprod))
        buffer("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - alphas_cumprod))
        buffer("log_one_minus_alphas_cumprod", np.log(1.0 - alphas_cumprod))
        buffer("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / alphas_cumprod))
        buffer("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / alphas_cumprod - 1))
        # v_posterior = 0 in every SD config.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        buffer("posterior_variance", posterior_variance)
        buffer("posterior_log_variance_clipped", np.log(np.maximum(posterior_variance, 1e-20)))
        buffer("posterior_mean_coef1", betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        buffer("posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

    def apply_model(self, x, t, context, c_concat=None):
        return self.model(x, t, context, c_concat)

    def get_learned_conditioning(self, input_ids):
        return self.cond_stage_model(input_ids)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)  # this rounding, as the original

    def _at(self, buffer, t, like):
        return buffer[t.long()].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def predict_start_from_z_and_v(self, x_t, t, v):
        return self._at(self.sqrt_alphas_cumprod, t, x_t) * x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_eps_from_z_and_v(self, x_t, t, v):
        return self._at(self.sqrt_alphas_cumprod, t, x_t) * v + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t

    def checkpoint_state_dict(self):
        state = {}
        for name, tensor in self.state_dict().items():
            if not name.startswith("cond_stage_model."):
                state[name] = tensor
        cond = self.cond_stage_model
        text_state = cond.transformer.state_dict()
        if cond.openclip:
            converted = to_openclip_state_dict(text_state, cond.text_projection.data, cond.logit_scale.data)
            state.update({f"cond_stage_model.model.{k}": v for k, v in converted.items()})
        else:
            state.update({f"cond_stage_model.transformer.{k}": v for k, v in text_state.items()})
        return {name: tensor.detach().contiguous() for name, tensor in state.items()}

    def load_checkpoint_state_dict(self, state):
        own = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
        cond = self.cond_stage_model
        if cond.openclip:
            prefix = "cond_stage_model.model."
            openclip_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            own["cond_stage_model.text_projection"] = openclip_state["text_projection"]
            own["cond_stage_model.logit_scale"] = openclip_state["logit_scale"]
            text_state = from_openclip_state_dict(openclip_state)
        else:
            prefix = "cond_stage_model.transformer."
            text_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        own.update({f"cond_stage_model.transformer.{k}": v for k, v in text_state.items()})
        self.load_state_dict(own, strict=True)
