"""SpatialTransformer and its parts, following CompVis/Stability `ldm/modules/attention.py`.

Inference only: dropout layers of the original are kept as `nn.Identity` where they sit
inside an `nn.Sequential`, so that parameter indices (and therefore checkpoint keys such
as `to_out.0.weight` and `ff.net.2.weight`) stay those of the original.
"""

import torch
import torch.nn.functional as F
from torch import nn


def normalize(channels):
    # GroupNorm of the transformer input: 32 groups, eps 1e-6 (the UNet's ResBlocks use 1e-5).
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        # First half is the value, second half the gate.
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim))

    def forward(self, x):
        return self.net(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim, heads, dim_head):
        super().__init__()
        inner_dim = dim_head * heads
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Identity())

    def _split_heads(self, t):
        # 'b n (h d) -> (b h) n d'
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3).reshape(b * self.heads, n, -1)

    def forward(self, x, context=None):
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        # The original (SD2, ATTN_PRECISION=fp32) upcasts q and k before the similarity.
        sim = torch.einsum("b i d, b j d -> b i j", q.float(), k.float()) * self.scale
        sim = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", sim.to(v.dtype), v)
        # '(b h) n d -> b n (h d)'
        bh, n, d = out.shape
        out = out.reshape(bh // self.heads, self.heads, n, d).permute(0, 2, 1, 3).reshape(bh // self.heads, n, -1)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, n_heads, d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SpatialTransformer(nn.Module):
    """proj_in / proj_out are 1x1 convolutions (SD1) or linears on the flattened tokens (SD2)."""

    def __init__(self, in_channels, n_heads, d_head, depth, context_dim, use_linear):
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.norm = normalize(in_channels)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim) for _ in range(depth)]
        )
        if use_linear:
            # The original declares Linear(in_channels, inner_dim) here; both are equal in every
            # released model, and the weight shape [inner_dim, in_channels] is what checkpoints hold.
            self.proj_out = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.reshape(b, x.shape[1], h * w).permute(0, 2, 1).contiguous()  # 'b c h w -> b (h w) c'
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context=context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.permute(0, 2, 1).reshape(b, x.shape[2], h, w).contiguous()  # 'b (h w) c -> b c h w'
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
