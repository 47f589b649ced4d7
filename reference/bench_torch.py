"""Times the SD 1.5 networks of a checkpoint on PyTorch CPU, as the peer of benchmarks/e2e.ts:
the UNet forward at batch 2 (classifier-free guidance) on an S×S latent, the VAE decode of one S×S
latent, and the CLIP text encoder on batch 2 (77 tokens). Each under torch.no_grad after one warm-up
call; the median of --repeats wall-clock runs. Prints one JSON object.

Usage: /usr/bin/python3 reference/bench_torch.py CHECKPOINT.safetensors CONFIG.yaml [--latent S] [--threads N]
The random-weight SD 1.5 checkpoint comes from `/usr/bin/python3 reference/full_size.py`.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import yaml  # noqa: E402

from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import load_file  # noqa: E402

CLIP_TOKENS = 77


def load_model(checkpoint, config_path):
    with open(config_path) as file:
        config = yaml.safe_load(file)
    model = LatentDiffusion(config).eval()
    state, _ = load_file(checkpoint)
    model.load_checkpoint_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model, config


def median_ms(fn, repeats):
    with torch.no_grad():
        fn()  # warm-up: first-call allocations
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("config")
    parser.add_argument("--latent", type=int, default=64, help="latent side S (64 = a 512×512 image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for path in (args.checkpoint, args.config):
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: make it with `/usr/bin/python3 reference/full_size.py`")
    if args.latent < 1:
        sys.exit(f"--latent must be a positive integer, got {args.latent}")
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, config = load_model(args.checkpoint, args.config)
    load_ms = (time.perf_counter() - start) * 1000
    generator = torch.Generator().manual_seed(0)
    s = args.latent
    unet = model.model.diffusion_model
    if model.model.conditioning_key != "crossattn":
        sys.exit(f"{args.checkpoint}: conditioning_key {model.model.conditioning_key!r}; this benchmark times crossattn (text-to-image) UNets")
    context_dim = config["model"]["params"]["unet_config"]["params"]["context_dim"]
    x = torch.randn((2, 4, s, s), generator=generator)
    timesteps = torch.tensor([500, 500], dtype=torch.int64)
    context = torch.randn((2, CLIP_TOKENS, context_dim), generator=generator)
    z = torch.randn((1, 4, s, s), generator=generator)
    vocab = next(m for m in model.cond_stage_model.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    ids = torch.randint(0, vocab, (2, CLIP_TOKENS), generator=generator)

    result = {
        "peer": f"torch {torch.__version__} CPU, {args.threads} threads",
        "latent": s,
        "load_ms": load_ms,
        # The crossattn UNet call of apply_model; upsample_to_skip (as ours) lets latents that do not halve evenly run.
        "unet_ms": median_ms(lambda: unet(x, timesteps, context=context, upsample_to_skip=True), args.repeats),
        "vae_decode_ms": median_ms(lambda: model.first_stage_model.decode(z), args.repeats),
        "clip_ms": median_ms(lambda: model.cond_stage_model(ids), args.repeats),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
