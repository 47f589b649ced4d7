"""Where the PyTorch peer's SD 1.5 UNet call spends its time, per op and shape: the counterpart of
`pnpm bench:profile --latent S --parts unet` (benchmarks/profile.ts), for comparing the two family by family.

Loads a checkpoint as bench_torch.py does (float32, CPU, --threads), runs the UNet once at batch 2 on an S×S
latent with a 77-token context (warm-up), then once more with a wall-clock timer around every Conv2d, Linear,
GEGLU, CrossAttention, GroupNorm and LayerNorm call (forward hooks; CPU ops are synchronous, so the time is the
op's own). Each call's time is charged to it less its timed children: a CrossAttention row is its attention core
(the two einsums and the softmax), its projections are Linear rows; a GEGLU's projection is a "linear GEGLU" row
and its gate a "GEGLU gate" row, which our profile counts inside the GEGLU linear. Rows are named as profile.ts
names ours. Prints the family sums, the time outside the timed modules, and the top rows. Nothing here asserts a
time.

Usage: /usr/bin/python3 reference/profile_torch.py CHECKPOINT.safetensors CONFIG.yaml [--latent S] [--threads N] [--top N]
"""

import argparse
import collections
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench_torch import CLIP_TOKENS, load_model  # noqa: E402
from ldm_ref.attention import GEGLU, CrossAttention  # noqa: E402

TIMED = (torch.nn.Conv2d, torch.nn.Linear, GEGLU, CrossAttention, torch.nn.GroupNorm, torch.nn.LayerNorm)


def row(module, parent, x):
    """(family, row name) of one timed call with input x."""
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        stride = f"/{module.stride[0]}" if module.stride[0] != 1 else ""
        shape = f"{module.in_channels}→{module.out_channels} @ {x.shape[2]}×{x.shape[3]} ×{x.shape[0]}"
        return "conv", f"conv {kh}×{kw}{stride} {shape}"
    if isinstance(module, torch.nn.Linear):
        family = "linear GEGLU" if isinstance(parent, GEGLU) else "linear"
        return family, f"{family} {x.numel() // x.shape[-1]}×{module.out_features}×{module.in_features}"
    if isinstance(module, GEGLU):
        return "linear GEGLU", "GEGLU gate"
    if isinstance(module, CrossAttention):
        # The context comes as a keyword, which torch 1.13's hooks do not see: self- and cross-attention share a row.
        return "attention", f"attention, {x.shape[1]} queries (self and cross), {module.heads} heads"
    return "norm", f"{type(module).__name__} {list(x.shape)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("config")
    parser.add_argument("--latent", type=int, default=64, help="latent side S (64 = a 512×512 image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=40, help="rows printed")
    args = parser.parse_args()
    for path in (args.checkpoint, args.config):
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: make it with `/usr/bin/python3 reference/full_size.py`")
    torch.set_num_threads(args.threads)
    model, config = load_model(args.checkpoint, args.config)
    unet = model.model.diffusion_model
    context_dim = config["model"]["params"]["unet_config"]["params"]["context_dim"]
    generator = torch.Generator().manual_seed(0)
    s = args.latent
    x = torch.randn((2, 4, s, s), generator=generator)
    timesteps = torch.tensor([500, 500], dtype=torch.int64)
    context = torch.randn((2, CLIP_TOKENS, context_dim), generator=generator)

    parents = {child: module for module in unet.modules() for child in module.children()}
    open_calls = []  # [start, time of timed children] per timed call in progress
    rows = collections.defaultdict(lambda: [0, 0.0])  # (family, name) -> [calls, seconds]

    def before(module, inputs):
        open_calls.append([time.perf_counter(), 0.0])

    def after(module, inputs, output):
        start, children = open_calls.pop()
        elapsed = time.perf_counter() - start
        if open_calls:
            open_calls[-1][1] += elapsed
        r = rows[row(module, parents.get(module), inputs[0])]
        r[0] += 1
        r[1] += elapsed - children

    with torch.no_grad():
        unet(x, timesteps, context=context, upsample_to_skip=True)
        for module in unet.modules():
            if isinstance(module, TIMED):
                module.register_forward_pre_hook(before)
                module.register_forward_hook(after)
        start = time.perf_counter()
        unet(x, timesteps, context=context, upsample_to_skip=True)
        total = time.perf_counter() - start

    families = collections.defaultdict(float)
    for (family, _), (_, seconds) in rows.items():
        families[family] += seconds
    print(f"torch {torch.__version__} CPU, {args.threads} threads: UNet batch 2 @ {s}×{s}, {total * 1000:.0f} ms\n")
    print("| op family | ms | share |\n|---|---:|---:|")
    for family, seconds in sorted(families.items(), key=lambda kv: -kv[1]):
        print(f"| {family} | {seconds * 1000:.1f} | {100 * seconds / total:.1f}% |")
    outside = total - sum(families.values())
    print(f"| (outside the timed modules) | {outside * 1000:.1f} | {100 * outside / total:.1f}% |\n")
    print("| op and shape | calls | ms | share |\n|---|---:|---:|---:|")
    for (_, name), (calls, seconds) in sorted(rows.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"| {name} | {calls} | {seconds * 1000:.1f} | {100 * seconds / total:.1f}% |")


if __name__ == "__main__":
    main()
