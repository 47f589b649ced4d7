"""CLIP text encoder with Hugging Face `CLIPTextModel` semantics (transformers
`models/clip/modeling_clip.py`): token + position embeddings, causal mask, pre-LN
encoder layers, final layer norm. Attribute names are HF's, so `state_dict()` keys are
those below `cond_stage_model.transformer.` in SD1 checkpoints.

SD2 checkpoints store the same network in OpenCLIP's layout (`cond_stage_model.model.*`,
fused `attn.in_proj_weight`); `to_openclip_state_dict` / `from_openclip_state_dict` convert.
"""

import torch
import torch.nn.functional as F
from torch import nn

# HF CLIPTextConfig of openai/clip-vit-large-patch14 (SD1's text encoder).
CLIP_VIT_L14_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}

# OpenCLIP ViT-H-14 text tower (SD2's text encoder), in CLIPTextConfig terms.
OPENCLIP_VIT_H14_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 1024,
}


ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI CLIP (SD1)
    "gelu": F.gelu,  # exact erf GELU, OpenCLIP ViT-H (SD2)
}


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.position_embedding = nn.Embedding(config["max_position_embeddings"], config["hidden_size"])
        # A persistent int64 buffer in the transformers versions SD1 checkpoints were saved with.
        self.register_buffer("position_ids", torch.arange(config["max_position_embeddings"]).expand((1, -1)))

    def forward(self, input_ids):
        position_ids = self.position_ids[:, : input_ids.shape[-1]]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim = config["hidden_size"]
        self.num_heads = config["num_attention_heads"]
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"hidden_size {self.embed_dim} is not divisible by num_attention_heads {self.num_heads}")
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _heads(self, t, bsz):
        return t.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2).reshape(bsz * self.num_heads, -1, self.head_dim)

    def forward(self, hidden_states, causal_attention_mask):
        bsz, tgt_len, embed_dim = hidden_states.shape
        # HF scales the query before the product.
        query = self._heads(self.q_proj(hidden_states) * self.scale, bsz)
        key = self._heads(self.k_proj(hidden_states), bsz)
        value = self._heads(self.v_proj(hidden_states), bsz)
        weights = torch.bmm(query, key.transpose(1, 2))
        weights = weights.view(bsz, self.num_heads, tgt_len, tgt_len) + causal_attention_mask
        weights = F.softmax(weights.view(bsz * self.num_heads, tgt_len, tgt_len), dim=-1)
        out = torch.bmm(weights, value)
        out = out.view(bsz, self.num_heads, tgt_len, self.head_dim).transpose(1, 2).reshape(bsz, tgt_len, embed_dim)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.activation_fn = ACTIVATIONS[config["hidden_act"]]
        self.fc1 = nn.Linear(config["hidden_size"], config["intermediate_size"])
        self.fc2 = nn.Linear(config["intermediate_size"], config["hidden_size"])

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])

    def forward(self, hidden_states, causal_attention_mask):
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), causal_attention_mask)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config["num_hidden_layers"])])


class CLIPTextTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])

    def forward(self, input_ids):
        """Returns the output of every layer (index 0: embeddings), before the final norm."""
        hidden_states = self.embeddings(input_ids)
        bsz, seq_len = input_ids.shape
        # Additive causal mask filled with the dtype's most negative finite value, as HF does.
        lowest = torch.finfo(hidden_states.dtype).min
        mask = torch.full((bsz, 1, seq_len, seq_len), lowest, dtype=hidden_states.dtype, device=hidden_states.device)
        mask = mask.triu(1)
        states = [hidden_states]
        for layer in self.encoder.layers:
            hidden_states = layer(hidden_states, mask)
            states.append(hidden_states)
        return states


class CLIPTextModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        self.text_model = CLIPTextTransformer(config)

    def forward(self, input_ids):
        """last_hidden_state: all layers then final_layer_norm (SD1's conditioning, SD2 "last").
        penultimate_hidden_state: all layers but the last, then final_layer_norm (SD2's
        conditioning via FrozenOpenCLIPEmbedder(layer="penultimate"); "clip skip 2")."""
        states = self.text_model(input_ids)
        norm = self.text_model.final_layer_norm
        return {"last_hidden_state": norm(states[-1]), "penultimate_hidden_state": norm(states[-2])}


# HF CLIPTextModel key (below `transformer.`) -> OpenCLIP key (below `model.`), apart from
# the fused attention projection.
_OPENCLIP_TOP_LEVEL = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_LAYER = "text_model.encoder.layers.{}."
_OPENCLIP_BLOCK = "transformer.resblocks.{}."


def _layer_renames(layer):
    hf, openclip = _HF_LAYER.format(layer), _OPENCLIP_BLOCK.format(layer)
    return {
        f"{hf}{src}.{kind}": f"{openclip}{dst}.{kind}" for src, dst in _OPENCLIP_LAYER.items() for kind in ("weight", "bias")
    }


def to_openclip_state_dict(hf_state, text_projection, logit_scale):
    """HF CLIPTextModel keys (below `transformer.`) -> OpenCLIP text keys (below `model.`).
    `text_projection` and `logit_scale` are carried by an OpenCLIP model (and SD2 checkpoints)
    although the diffusion model never uses them."""
    out = {dst: hf_state[src] for src, dst in _OPENCLIP_TOP_LEVEL.items()}
    layer = 0
    while f"{_HF_LAYER.format(layer)}layer_norm1.weight" in hf_state:
        out.update({dst: hf_state[src] for src, dst in _layer_renames(layer).items()})
        for kind in ("weight", "bias"):
            parts = [hf_state[f"{_HF_LAYER.format(layer)}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{_OPENCLIP_BLOCK.format(layer)}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        layer += 1
    out["text_projection"] = text_projection
    out["logit_scale"] = logit_scale
    return out


def from_openclip_state_dict(openclip_state):
    """Inverse of `to_openclip_state_dict` (drops text_projection and logit_scale)."""
    out = {src: openclip_state[dst] for src, dst in _OPENCLIP_TOP_LEVEL.items()}
    out["text_model.embeddings.position_ids"] = torch.arange(openclip_state["positional_embedding"].shape[0])[None]
    layer = 0
    while f"{_OPENCLIP_BLOCK.format(layer)}ln_1.weight" in openclip_state:
        out.update({src: openclip_state[dst] for src, dst in _layer_renames(layer).items()})
        for kind in ("weight", "bias"):
            fused = openclip_state[f"{_OPENCLIP_BLOCK.format(layer)}attn.in_proj_{kind}"]
            for name, part in zip(("q", "k", "v"), fused.chunk(3, dim=0)):
                out[f"{_HF_LAYER.format(layer)}self_attn.{name}_proj.{kind}"] = part
        layer += 1
    return out
