"""Writes the UNet dump at a latent size the UNet cannot halve cleanly (issue 6).

tiny-sd1's UNet halves once (channel_mult [1, 2]); a 5×7 latent becomes 3×4 after the stride-2
Downsample, and ×2 (6×8) would not meet the 5×7 skip connection. The reference upsamples to the
skip's size instead (`upsample_to_skip`, diffusers' forward_upsample_size). Weights: the committed
tiny-sd1 checkpoint, so the dump is checked with it.

Usage: /usr/bin/python3 reference/make_odd_size_dump.py [--precision-report]
  → packages/ldm/test/fixtures/dumps/tiny-sd1.unet-5x7.dump.safetensors
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True

import torch  # noqa: E402
import yaml  # noqa: E402

from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import load_file, save_file  # noqa: E402
from make_dumps import BATCH, CONTEXT_LENGTH, DEFAULT_OUT, metadata, relative_error  # noqa: E402

NAME = "tiny-sd1"
LATENT = (5, 7)
INPUT_SEED = 2061


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision-report", action="store_true", help="also compare float32 against float64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open(os.path.join(DEFAULT_OUT, f"{NAME}.yaml")) as file:
        config = yaml.safe_load(file)
    model = LatentDiffusion(config).eval()
    model.load_checkpoint_state_dict(load_file(os.path.join(DEFAULT_OUT, f"{NAME}.safetensors"))[0])
    unet = model.model.diffusion_model
    context_dim = config["model"]["params"]["unet_config"]["params"]["context_dim"]

    generator = torch.Generator().manual_seed(INPUT_SEED)
    inputs = {
        "unet.in.x": torch.randn((BATCH, 4, *LATENT), generator=generator),
        "unet.in.timesteps": torch.tensor([640, 15], dtype=torch.int64),
        "unet.in.context": torch.randn((BATCH, CONTEXT_LENGTH, context_dim), generator=generator),
    }
    run = lambda net, dtype: net(  # noqa: E731
        inputs["unet.in.x"].to(dtype), inputs["unet.in.timesteps"], inputs["unet.in.context"].to(dtype), True
    )
    with torch.no_grad():
        eps = run(unet, torch.float32)
        # The option changes nothing where ×2 meets the skip: the committed 8×8 dump's path stays the original's.
        x8 = torch.randn((BATCH, 4, 8, 8), generator=generator)
        t8, c8 = inputs["unet.in.timesteps"], inputs["unet.in.context"]
        assert torch.equal(unet(x8, t8, c8, True), unet(x8, t8, c8))
    tensors = {**inputs, "unet.out.eps": eps}
    out = os.path.join(DEFAULT_OUT, f"{NAME}.unet-{LATENT[0]}x{LATENT[1]}.dump.safetensors")
    save_file(tensors, out, metadata(NAME, weights_dtype="float16", latent=f"{LATENT[0]}x{LATENT[1]}"))
    print(f"wrote {out}")
    if args.precision_report:
        with torch.no_grad():
            exact = run(unet.double(), torch.float64)
        print(f"  unet.out.eps: float32 vs float64 max|diff|/max|ref| = {relative_error(eps, exact):.2e}")


if __name__ == "__main__":
    main()
