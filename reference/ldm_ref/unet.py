"""UNetModel with SpatialTransformer cross-attention, following CompVis/Stability
`ldm/modules/diffusionmodules/openaimodel.py` (the configuration space used by SD 1.x/2.x:
use_spatial_transformer, no scale-shift norm, no resblock up/down, no class labels).

Module structure and attribute names are the original's, so `state_dict()` keys are the
checkpoint keys below `model.diffusion_model.`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding, cos half first then sin half (the original order)."""
    half = dim // 2
    steps = torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """The UNet's `normalization()`: 32 groups, PyTorch's default eps 1e-5, statistics in at
    least float32 (the original upcasts half-precision inputs)."""

    def __init__(self, channels):
        super().__init__(32, channels)

    def forward(self, x):
        upcast = x.dtype in (torch.float16, torch.bfloat16)
        return super().forward(x.float() if upcast else x).type(x.dtype)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None, upsample_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x, size=None):
        # `size` (diffusers' Upsample2D `output_size`): the skip connection's size, for latents that
        # did not halve cleanly; the original always doubles.
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Downsample(nn.Module):
    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None):
        super().__init__()
        self.out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, self.out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(self.out_channels),
            nn.SiLU(),
            nn.Identity(),  # dropout in the original; keeps `out_layers.3` as the conv's key
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        h = h + emb_out[..., None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class UNetModel(nn.Module):
    def __init__(
        self,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        channel_mult,
        context_dim,
        num_heads=-1,
        num_head_channels=-1,
        transformer_depth=1,
        use_linear_in_transformer=False,
    ):
        super().__init__()
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError("set exactly one of num_heads (SD1) and num_head_channels (SD2)")
        self.model_channels = model_channels

        def attention_shape(ch):
            # SD1 fixes the head count, SD2 the head width.
            if num_head_channels == -1:
                return num_heads, ch // num_heads
            return ch // num_head_channels, num_head_channels

        def transformer(ch):
            heads, dim_head = attention_shape(ch)
            return SpatialTransformer(
                ch, heads, dim_head, transformer_depth, context_dim, use_linear=use_linear_in_transformer
            )

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        input_block_chans = [model_channels]
        ch = model_channels
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, time_embed_dim, out_channels=mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim),
            transformer(ch),
            ResBlock(ch, time_embed_dim),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = input_block_chans.pop()
                layers = [ResBlock(ch + skip_ch, time_embed_dim, out_channels=model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            nn.Conv2d(model_channels, out_channels, 3, padding=1),
        )

    def forward(self, x, timesteps, context, upsample_to_skip=False):
        """upsample_to_skip: upsample to each next skip connection's size rather than ×2 (diffusers'
        forward_upsample_size), so latents that do not halve cleanly work; the original fails on them."""
        skips = []
        t_emb = timestep_embedding(timesteps, self.model_channels)
        # The embedding is float32 by construction; follow the weights when the model is not.
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            upsample_size = tuple(skips[-1].shape[-2:]) if upsample_to_skip and skips else None
            h = module(h, emb, context, upsample_size)
        return self.out(h)
