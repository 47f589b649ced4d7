"""The peer of benchmarks/builtin.ts: `ldm generate PROMPT --model STEM.safetensors --width W --height H --seed S
--out OUT.png` done by our PyTorch reference (reference/ldm_ref) on the same checkpoint, as one command from
start to PNG. The same defaults as `ldm generate`: DDIM (eta 0), 50 steps, guidance 7.5 against "", x_T =
torch.randn of the latent shape from torch.Generator().manual_seed(seed), the image clamped to [-1, 1] and
rounded to 8 bits. benchmarks/builtin.ts times the whole process (wall clock), as it times `ldm generate`.

Usage: /usr/bin/python3 reference/bench_builtin.py --model STEM PROMPT --out OUT.png
         [--width 64] [--height 64] [--seed 42] [--steps 50] [--scale 7.5] [--threads 2]
(STEM: <STEM>.safetensors and <STEM>.yaml; the tokenizer folder is the config's, as reference/default_model/quality.py.)
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from default_model.quality import load_model  # noqa: E402
from ldm_ref.samplers import sample_ddim  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--model", required=True, help="checkpoint stem: <stem>.safetensors, <stem>.yaml")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scale", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for path in (args.model + ".safetensors", args.model + ".yaml"):
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist")
    torch.set_num_threads(args.threads)

    model, tokenizer, config = load_model(args.model, random_weights=False)
    params = config["model"]["params"]
    factor = 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    if args.width % factor or args.height % factor:
        sys.exit(f"--width {args.width} and --height {args.height} must be multiples of the VAE's factor {factor}")
    shape = (1, params["channels"], args.height // factor, args.width // factor)
    with torch.no_grad():
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
        context = model.get_learned_conditioning(torch.tensor([tokenizer.tokenize(args.prompt)]))
        uncond = model.get_learned_conditioning(torch.tensor([tokenizer.tokenize("")]))
        z = sample_ddim(model, x_T, context, uncond, args.steps, args.scale)
        image = (model.decode_first_stage(z).clamp(-1, 1) + 1) / 2
    pixels = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
