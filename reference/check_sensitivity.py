"""Shows that the committed dumps catch the known implementation traps: reloads each tiny
checkpoint into the reference model, introduces one classic mistake at a time, and prints
how far the outputs then move from the dump (max|diff| / max|ref|). Anything well above the
1e-4 tolerance of `ldm validate` is a mistake the dumps detect. The unmodified model must
reproduce the dumps exactly (the "baseline" row), which also checks checkpoint loading.

Usage: /usr/bin/python3 reference/check_sensitivity.py [--fixtures DIR]
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from ldm_ref import attention, clip, unet, vae  # noqa: E402
from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import load_file  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "ldm", "test", "fixtures", "dumps")
TOLERANCE = 1e-4


def set_eps(model, module_type, eps, owner=None):
    """Sets eps on every norm of `module_type` (inside modules of type `owner` if given)."""
    roots = [m for m in model.modules() if isinstance(m, owner)] if owner else [model]
    for root in roots:
        for module in root.modules():
            if type(module) is module_type:
                module.eps = eps


def patch(obj, name, value):
    original = getattr(obj, name)
    setattr(obj, name, value)
    return lambda: setattr(obj, name, original)


def swapped_geglu(self, x):
    gate, value = self.proj(x).chunk(2, dim=-1)
    return value * F.gelu(gate)


def sin_first_embedding(timesteps, dim, max_period=10000):
    cos_sin = ORIGINAL_EMBEDDING(timesteps, dim, max_period)
    half = dim // 2
    return torch.cat([cos_sin[:, half:], cos_sin[:, :half]], dim=-1)


def symmetric_pad_downsample(self, x):
    return self.conv(F.pad(x, (1, 0, 1, 0)))


ORIGINAL_EMBEDDING = unet.timestep_embedding

# (name, affected output prefix, function(model) -> undo callback)
MISTAKES = [
    ("VAE GroupNorm eps 1e-5 (instead of 1e-6)", "vae.", lambda m: set_eps(m.first_stage_model, nn.GroupNorm, 1e-5)),
    ("UNet ResBlock GroupNorm eps 1e-6 (instead of 1e-5)", "unet.", lambda m: set_eps(m.model, unet.GroupNorm32, 1e-6)),
    (
        "SpatialTransformer GroupNorm eps 1e-5 (instead of 1e-6)",
        "unet.",
        lambda m: set_eps(m.model, nn.GroupNorm, 1e-5, owner=attention.SpatialTransformer),
    ),
    ("transformer LayerNorm eps 1e-6 (instead of 1e-5)", "unet.", lambda m: set_eps(m.model, nn.LayerNorm, 1e-6)),
    ("CLIP LayerNorm eps 1e-6 (instead of 1e-5)", "clip.", lambda m: set_eps(m.cond_stage_model, nn.LayerNorm, 1e-6)),
    ("GEGLU halves swapped", "unet.", lambda m: patch(attention.GEGLU, "forward", swapped_geglu)),
    ("timestep embedding sin before cos", "unet.", lambda m: patch(unet, "timestep_embedding", sin_first_embedding)),
    ("VAE Downsample padded top/left", "vae.encode", lambda m: patch(vae.Downsample, "forward", symmetric_pad_downsample)),
    (
        "CLIP activation swapped (quick_gelu <-> gelu)",
        "clip.",
        lambda m: [
            setattr(layer.mlp, "activation_fn", clip.ACTIVATIONS["gelu" if layer.mlp.activation_fn is clip.ACTIVATIONS["quick_gelu"] else "quick_gelu"])
            for layer in m.cond_stage_model.transformer.text_model.encoder.layers
        ],
    ),
    (
        "UNet attention with one head",
        "unet.",
        lambda m: [setattr(a, "heads", 1) for a in m.modules() if isinstance(a, attention.CrossAttention)],
    ),
    (
        "penultimate CLIP state without final_layer_norm",
        "clip.out.penultimate",
        lambda m: patch(m.cond_stage_model.transformer.text_model, "final_layer_norm", nn.Identity()),
    ),
]


def outputs(model, dump):
    with torch.no_grad():
        result = {
            "vae.encode.out.moments": model.first_stage_model.encode_moments(dump["vae.encode.in.x"]),
            "vae.decode.out.x": model.first_stage_model.decode(dump["vae.decode.in.z"]),
            "unet.out.eps": model.apply_model(
                dump["unet.in.x"], dump["unet.in.timesteps"], dump["unet.in.context"], dump.get("unet.in.c_concat")
            ),
        }
        text = model.cond_stage_model.transformer(dump["clip.in.input_ids"])
        result["clip.out.last_hidden_state"] = text["last_hidden_state"]
        result["clip.out.penultimate_hidden_state"] = text["penultimate_hidden_state"]
    return result


def worst(model, dump, prefix):
    errors = [
        (value - dump[key]).abs().max().item() / dump[key].abs().max().item()
        for key, value in outputs(model, dump).items()
        if key.startswith(prefix)
    ]
    return max(errors)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", default=FIXTURES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = sorted(p[: -len(".yaml")] for p in os.listdir(args.fixtures) if p.endswith(".yaml"))
    print("| mistake | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = {"baseline (no mistake)": {}}
    for name in names:
        config = yaml.safe_load(open(os.path.join(args.fixtures, f"{name}.yaml")))
        checkpoint, _ = load_file(os.path.join(args.fixtures, f"{name}.safetensors"))
        dump, _ = load_file(os.path.join(args.fixtures, f"{name}.dump.safetensors"))
        model = LatentDiffusion(config).eval()
        model.load_checkpoint_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint.items()})
        rows["baseline (no mistake)"][name] = worst(model, dump, "")
        for label, prefix, apply in MISTAKES:
            fresh = LatentDiffusion(config).eval()
            fresh.load_state_dict(model.state_dict())
            undo = apply(fresh)
            rows.setdefault(label, {})[name] = worst(fresh, dump, prefix)
            if callable(undo):
                undo()
    for label, by_config in rows.items():
        cells = []
        for name in names:
            error = by_config[name]
            flag = "" if label.startswith("baseline") or error > 10 * TOLERANCE else " (weak)"
            cells.append(f"{error:.1e}{flag}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
