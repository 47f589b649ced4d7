"""The released SD 1.5 architecture with random weights (seeded), on a small latent, to prove
the full-size networks: writes into --out (default reference/out/sd15-random/, git-ignored)
  sd15-random.safetensors       float32 checkpoint in the original layout (~4.3 GB)
  sd15-random.yaml              v1-inference.yaml shape (no text_config: CLIP ViT-L/14 implied)
  sd15-random.dump.safetensors  vae.encode (1x3x128x128), vae.decode and unet (latent 1x4x16x16,
                                context 1x77x768), clip (1x77 ids)

Usage: /usr/bin/python3 reference/full_size.py [--out DIR] [--precision-report]
Peak memory about 9 GB (13 GB with --precision-report); see README.md for the timings.
"""

import argparse
import os
import sys
import time

sys.dont_write_bytecode = True

import torch  # noqa: E402
import yaml  # noqa: E402

from ldm_ref.configs import SD15_CONFIG  # noqa: E402
from ldm_ref.init import randomize_  # noqa: E402
from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import save_file  # noqa: E402

NAME = "sd15-random"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", NAME)
WEIGHT_SEED = 1515
INPUT_SEED = 2515
LATENT = (16, 16)
START_TOKEN, END_TOKEN = 49406, 49407


def make_inputs():
    generator = torch.Generator().manual_seed(INPUT_SEED)
    h, w = LATENT
    words = torch.randint(1, START_TOKEN, (9,), generator=generator).tolist()
    ids = [START_TOKEN] + words + [END_TOKEN] * (77 - 1 - len(words))  # SD1 pads with the end token
    return {
        "vae.encode.in.x": torch.rand((1, 3, h * 8, w * 8), generator=generator) * 2 - 1,
        "vae.decode.in.z": torch.randn((1, 4, h, w), generator=generator) / SD15_CONFIG["model"]["params"]["scale_factor"],
        "unet.in.x": torch.randn((1, 4, h, w), generator=generator),
        "unet.in.timesteps": torch.tensor([500], dtype=torch.int64),
        "unet.in.context": torch.randn((1, 77, 768), generator=generator),
        "clip.in.input_ids": torch.tensor([ids], dtype=torch.int64),
    }


def run_components(model, inputs, dtype, timings=None):
    """Each component's outputs in `dtype`; the component is converted in place and back."""
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    steps = {
        "vae.encode": (model.first_stage_model, lambda: {"vae.encode.out.moments": model.first_stage_model.encode_moments(cast["vae.encode.in.x"])}),
        "vae.decode": (model.first_stage_model, lambda: {"vae.decode.out.x": model.first_stage_model.decode(cast["vae.decode.in.z"])}),
        "unet": (
            model.model,
            lambda: {"unet.out.eps": model.apply_model(cast["unet.in.x"], cast["unet.in.timesteps"], cast["unet.in.context"])},
        ),
        "clip": (model.cond_stage_model, lambda: model.cond_stage_model.transformer(cast["clip.in.input_ids"])),
    }
    out = {}
    for component, (module, compute) in steps.items():
        module.to(dtype)
        start = time.perf_counter()
        with torch.no_grad():
            result = compute()
        if timings is not None:
            timings[component] = time.perf_counter() - start
        module.float()
        for key, value in result.items():
            out[key if key.startswith(component) else f"clip.out.{key}"] = value.float()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--precision-report", action="store_true", help="also compare float32 against float64")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    start = time.perf_counter()
    model = LatentDiffusion(SD15_CONFIG).eval()
    randomize_(model, WEIGHT_SEED, {})
    count = sum(p.numel() for p in model.parameters())
    print(f"built and randomised {count / 1e6:.1f} M parameters in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    checkpoint_path = os.path.join(args.out, f"{NAME}.safetensors")
    save_file(model.checkpoint_state_dict(), checkpoint_path)
    with open(os.path.join(args.out, f"{NAME}.yaml"), "w") as file:
        yaml.safe_dump(SD15_CONFIG, file, sort_keys=False, default_flow_style=None)
    size = os.path.getsize(checkpoint_path)
    print(f"wrote checkpoint ({size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")

    inputs = make_inputs()
    timings = {}
    outputs = run_components(model, inputs, torch.float32, timings)
    for component, seconds in timings.items():
        print(f"  {component}: {seconds:.1f} s")
    tensors = {**inputs, **outputs}
    meta = {"config": NAME, "torch_version": torch.__version__, "dtype": "float32", "weights_dtype": "float32"}
    save_file(tensors, os.path.join(args.out, f"{NAME}.dump.safetensors"), meta)

    if args.precision_report:
        exact = run_components(model, inputs, torch.float64)
        for key, value in outputs.items():
            reference = exact[key].double()
            error = (value.double() - reference).abs().max().item() / reference.abs().max().item()
            print(f"  {key}: float32 vs float64 max|diff|/max|ref| = {error:.2e}")


if __name__ == "__main__":
    main()
