"""Deterministic random weights for the tiny test models.

The goal is discriminating dumps, not trained behaviour:
- every weight is random (the original zero-initialises out_layers.3, proj_out and the
  UNet's final conv; zeros there would hide whole sub-networks from the comparison);
- linear/conv weights have std 1/sqrt(fan_in), so activations stay O(1) through the net;
- norm affine parameters are 1 + N(0, 0.1) and N(0, 0.1), so swapping or dropping them shows;
- "probes": a few layers are scaled down so that the norm right after them sees inputs with
  variance ~1e-4, where the norm's eps (1e-6 vs 1e-5) changes the result by a few percent
  instead of 1e-6, and a wrong eps fails the 1e-4 tolerance.
"""

import torch
from torch import nn

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm)


def randomize_(model, seed, probes):
    """Fill every parameter of `model` from a generator seeded with `seed`.
    `probes` maps module names to a factor applied to that module's weight and bias."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=generator, dtype=torch.float64).float() * std

    modules = dict(model.named_modules())
    missing = [name for name in probes if name not in modules]
    if missing:
        raise KeyError(f"probe modules not in the model: {missing}")
    filled = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(normal(module.weight.shape, fan_in**-0.5))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.1))
            elif isinstance(module, NORM_TYPES):
                module.weight.copy_(1.0 + normal(module.weight.shape, 0.1))
                module.bias.copy_(normal(module.bias.shape, 0.1))
            elif isinstance(module, nn.Embedding):
                # CLIP's own init scales (token 0.02, position 0.01): the first LayerNorm of the
                # text encoder then sees small inputs, which also probes its eps.
                std = 0.01 if name.endswith("position_embedding") else 0.02
                module.weight.copy_(normal(module.weight.shape, std))
            else:
                continue
            filled.update(id(p) for p in module.parameters(recurse=False))
            if name in probes:
                for parameter in module.parameters(recurse=False):
                    parameter.mul_(probes[name])
        for name, parameter in model.named_parameters():
            if id(parameter) in filled:
                continue
            if name.endswith("logit_scale"):
                continue  # keeps OpenCLIP's ln(1/0.07); unused by diffusion
            if parameter.ndim != 2:
                raise TypeError(f"no initialisation rule for parameter {name} of shape {tuple(parameter.shape)}")
            parameter.copy_(normal(parameter.shape, parameter.shape[0] ** -0.5))
