"""The PyTorch CPU peer of benchmarks/ldm-family.ts: one released CompVis/latent-diffusion model, built at full size by
its ORIGINAL modules (from --upstream / --taming, as full_size_counts.py builds them: PyTorch's default random
initialisation, seeded), timed on one sampling step and one decode:
  unet_ms    the UNet call of one step (DiffusionWrapper's: the latent with c_concat joined along channels, the
             context for cross-attention) at --batch (2: classifier-free guidance's conditional and unconditional
             halves in one call, as DDIMSampler makes it), timestep 500;
  decode_ms  the first stage's decode of one latent (VQ: quantized first, as VQModelInterface.decode).
Inputs are random, of the shapes the benchmark gives; under torch.no_grad, the median of --repeats wall-clock calls
after one warm-up call. The model's `model` section comes from packages/weights/test/fixtures/full-size.json (the
same the TypeScript side reads). Prints one JSON object.

Usage: /usr/bin/python3 reference/bench_ldm_family.py NAME --upstream /tmp/latent-diffusion --taming /tmp/taming-transformers
           --latent S --batch B --context L [--threads N] [--repeats N]
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

from full_size_counts import OUT as TABLE, SEED, build  # noqa: E402
from make_text_dumps import install_upstream  # noqa: E402


def median_ms(fn, repeats):
    def timed():
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000

    with torch.no_grad():
        timed()
        return statistics.median(timed() for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a row of full-size.json")
    parser.add_argument("--upstream", required=True, help="git archive of CompVis/latent-diffusion")
    parser.add_argument("--taming", required=True, help="git archive of CompVis/taming-transformers")
    parser.add_argument("--latent", type=int, required=True, help="latent side S")
    parser.add_argument("--batch", type=int, default=1, help="UNet batch (2 with guidance)")
    parser.add_argument("--context", type=int, default=0, help="context length L of cross-attention models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rows = json.load(open(TABLE))["rows"]
    if args.name not in rows:
        sys.exit(f"{args.name}: not a row of {TABLE} ({', '.join(rows)})")
    torch.set_num_threads(args.threads)
    install_upstream(args.upstream, args.taming)
    model_config = rows[args.name]["model"]

    start = time.perf_counter()
    torch.manual_seed(SEED)
    stages = build(model_config)
    build_ms = (time.perf_counter() - start) * 1000
    generator = torch.Generator().manual_seed(0)
    s = args.latent
    vae = stages["first_stage"]
    channels = vae.quant_conv.out_channels // (1 if hasattr(vae, "quantize") else 2)
    z = torch.randn((1, channels, s, s), generator=generator)
    # VQModelInterface.decode quantizes; VQModel.decode (a first stage alone) takes codes already quantized.
    interface = type(vae).__name__ == "VQModelInterface"
    decode = (lambda: vae.decode(z)) if interface or not hasattr(vae, "quantize") else (lambda: vae.decode(vae.quantize(z)[0]))
    result = {"peer": f"torch {torch.__version__} CPU, {args.threads} threads", "latent": s, "build_ms": build_ms}
    if "unet" in stages:
        unet = stages["unet"]
        params = model_config["params"]["unet_config"]["params"]
        x = torch.randn((args.batch, params["in_channels"], s, s), generator=generator)  # latent and c_concat
        t = torch.full((args.batch,), 500, dtype=torch.int64)
        context = (torch.randn((args.batch, args.context, params["context_dim"]), generator=generator)
                   if params.get("context_dim") else None)
        result["unet_ms"] = median_ms(lambda: unet(x, t, context=context), args.repeats)
    result["decode_ms"] = median_ms(decode, args.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
