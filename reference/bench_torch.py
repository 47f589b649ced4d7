"""Times the SD 1.5 networks on PyTorch, as the peer of benchmarks/e2e.ts (CPU) and benchmarks/gpu.ts (CUDA):
the UNet forward at batch 2 (classifier-free guidance) on an S×S latent, the VAE decode of one S×S
latent, and the CLIP text encoder on batch 2 (77 tokens), each under torch.no_grad. By default: one warm-up
call, then the median of --repeats wall-clock runs (after a CUDA synchronize); prints one JSON object.

--serve times one call at a time on request, so that e2e.ts can take turns with its own calls: after loading
it prints {"peer", "latent", "load_ms"}, then reads commands from stdin, one a line (unet, vae_decode or clip:
one call of that part, answered by {"part", "ms"}; quit or the end of stdin stops it; any other command exits
with status 2). Warm-up calls are the caller's to make.

Usage: /usr/bin/python3 reference/bench_torch.py CHECKPOINT.safetensors CONFIG.yaml [--latent S] [--threads N] [--serve]
       python3 reference/bench_torch.py --random [--device cuda] [--no-tf32] [--half] [--sdpa]
The random-weight SD 1.5 checkpoint comes from `/usr/bin/python3 reference/full_size.py`; --random builds
the same architecture with PyTorch's default initialisation instead (no file: what a GPU machine without
the 4 GB checkpoint can time).
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from ldm_ref.attention import CrossAttention  # noqa: E402

from ldm_ref.configs import SD15_CONFIG  # noqa: E402
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


def sdpa_forward(self, x, context=None):
    """CrossAttention.forward with one fused scaled_dot_product_attention (its default scale is the port's
    dim_head ** -0.5), as diffusers runs SD on PyTorch 2: the peer a user compares with."""
    context = x if context is None else context
    b, n, _ = x.shape

    def heads(t):  # 'b n (h d) -> b h n d'
        return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context)))
    return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def timed_ms(fn, device):
    """Wall-clock ms of one call of fn (after a CUDA synchronize)."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000


@contextlib.contextmanager
def inference(device, half):
    # Autocast runs the normalisations and softmax in float32 on float16 weights, as diffusers' fp16 runs do.
    precision = torch.autocast(device.type, dtype=torch.float16) if half else contextlib.nullcontext()
    with torch.no_grad(), precision:
        yield


def median_ms(fn, repeats, device, half=False):
    with inference(device, half):
        timed_ms(fn, device)  # warm-up: first-call allocations (and CUDA's kernel selection)
        return statistics.median(timed_ms(fn, device) for _ in range(repeats))


def serve(parts, device, half):
    """Answers one timed call per command line of stdin (see the module docstring)."""
    with inference(device, half):
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                return
            if command not in parts:
                print(f"bench_torch.py --serve: unknown command {command!r}; commands: {', '.join(parts)}, quit",
                      file=sys.stderr)
                sys.exit(2)
            print(json.dumps({"part": command, "ms": timed_ms(parts[command], device)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("config", nargs="?")
    parser.add_argument("--random", action="store_true", help="SD 1.5 with PyTorch's default initialisation, no checkpoint")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--no-tf32", action="store_true",
                        help="CUDA float32 without TF32 (PyTorch's default lets cuDNN's convolutions use it)")
    parser.add_argument("--half", action="store_true",
                        help="float16 weights and inputs under CUDA autocast (diffusers' fp16 setting; CUDA only)")
    parser.add_argument("--sdpa", action="store_true",
                        help="attention by torch.nn.functional.scaled_dot_product_attention (PyTorch >= 2.0)")
    parser.add_argument("--latent", type=int, default=64, help="latent side S (64 = a 512×512 image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true",
                        help="time one call per command read from stdin instead of medians (benchmarks/e2e.ts)")
    args = parser.parse_args()
    if args.random == bool(args.checkpoint or args.config):
        sys.exit("give either CHECKPOINT CONFIG or --random")
    for path in () if args.random else (args.checkpoint, args.config):
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: make it with `/usr/bin/python3 reference/full_size.py`")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    if args.half and device.type != "cuda":
        sys.exit("--half needs --device cuda: it times the GPU peer's float16 path")
    if args.sdpa:
        if not hasattr(F, "scaled_dot_product_attention"):
            sys.exit(f"--sdpa needs PyTorch >= 2.0 (scaled_dot_product_attention); this is {torch.__version__}")
        CrossAttention.forward = sdpa_forward
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.latent < 1:
        sys.exit(f"--latent must be a positive integer, got {args.latent}")
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.random:
        model, config = LatentDiffusion(SD15_CONFIG).eval(), SD15_CONFIG
    else:
        model, config = load_model(args.checkpoint, args.config)
    model.to(device)
    if args.half:
        model.half()
    load_ms = (time.perf_counter() - start) * 1000
    generator = torch.Generator().manual_seed(0)
    s = args.latent
    unet = model.model.diffusion_model
    if model.model.conditioning_key != "crossattn":
        sys.exit(f"{args.checkpoint}: conditioning_key {model.model.conditioning_key!r}; this benchmark times crossattn (text-to-image) UNets")
    context_dim = config["model"]["params"]["unet_config"]["params"]["context_dim"]
    x = torch.randn((2, 4, s, s), generator=generator).to(device)
    timesteps = torch.tensor([500, 500], dtype=torch.int64, device=device)
    context = torch.randn((2, CLIP_TOKENS, context_dim), generator=generator).to(device)
    z = torch.randn((1, 4, s, s), generator=generator).to(device)
    vocab = next(m for m in model.cond_stage_model.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    ids = torch.randint(0, vocab, (2, CLIP_TOKENS), generator=generator).to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    if device.type == "cuda":
        where += ", float16 (autocast)" if args.half else ", no TF32" if args.no_tf32 else ", TF32 convolutions (default)"
    if args.sdpa:
        where += ", SDPA attention"
    if args.half:
        x, context, z = x.half(), context.half(), z.half()

    parts = {
        # The crossattn UNet call of apply_model; upsample_to_skip (as ours) lets latents that do not halve evenly run.
        "unet": lambda: unet(x, timesteps, context=context, upsample_to_skip=True),
        "vae_decode": lambda: model.first_stage_model.decode(z),
        "clip": lambda: model.cond_stage_model(ids),
    }
    loaded = {"peer": f"torch {torch.__version__} {where}", "latent": s, "load_ms": load_ms}
    if args.serve:
        print(json.dumps(loaded), flush=True)
        serve(parts, device, args.half)
        return
    timings = {f"{name}_ms": median_ms(fn, args.repeats, device, args.half) for name, fn in parts.items()}
    print(json.dumps({**loaded, **timings}))


if __name__ == "__main__":
    main()
