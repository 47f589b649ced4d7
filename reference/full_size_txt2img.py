"""The paper's txt2img-f8-large (CompVis/latent-diffusion configs/latent-diffusion/txt2img-1p4B-eval.yaml: KL-f8,
BERTEmbedder 1280 × 32 layers, UNet 320 channels with context 1280) built by the ORIGINAL upstream modules with
random weights (seeded), to prove the full-size layout: prints the parameter count of each component and writes
into --out (default reference/out/txt2img-f8-large-random/, git-ignored)
  txt2img-f8-large-random.safetensors       checkpoint in the original layout, weights float16 (~2.9 GB)
  txt2img-1p4B-eval.yaml                    the upstream config, unchanged
  txt2img-f8-large-random.dump.safetensors  cond (1×77 bert-base-uncased ids) and unet (latent 1×4×16×16, t = 500,
                                            context 1×77×1280), computed in float32 with the stored weights
  parameters.json                           the counts printed

Usage: /usr/bin/python3 reference/full_size_txt2img.py --upstream /tmp/latent-diffusion [--out DIR]
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.dont_write_bytecode = True

import torch  # noqa: E402
import yaml  # noqa: E402

from crosscheck_upstream import install_shims, upstream_latent_diffusion  # noqa: E402
from ldm_ref.init import randomize_  # noqa: E402
from ldm_ref.safetensors_io import save_file  # noqa: E402
from make_text_dumps import bert_ids, build  # noqa: E402

NAME = "txt2img-f8-large-random"
CONFIG = "txt2img-1p4B-eval.yaml"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", NAME)
WEIGHT_SEED, INPUT_SEED = 1414, 2414
LATENT = (16, 16)
PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "cond_stage": "cond_stage_model."}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="git archive of CompVis/latent-diffusion")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_shims()
    sys.modules["clip"] = type(sys)("clip")
    sys.modules["einops"].reduce = None
    sys.path.insert(0, args.upstream)
    os.makedirs(args.out, exist_ok=True)
    config_path = os.path.join(args.upstream, "configs", "latent-diffusion", CONFIG)
    params = yaml.safe_load(open(config_path))["model"]["params"]

    start = time.perf_counter()
    model = build(params)
    randomize_(model, WEIGHT_SEED, {})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    counts = {name: sum(p.numel() for k, p in model.named_parameters() if k.startswith(prefix))
              for name, prefix in PREFIXES.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    print(f"built and randomised in {time.perf_counter() - start:.1f} s:", json.dumps(counts))

    start = time.perf_counter()
    ldm = upstream_latent_diffusion(args.upstream)(params, model.model.diffusion_model)
    checkpoint = {name: t.half() for name, t in model.state_dict().items()}
    checkpoint.update({name: b.float() for name, b in ldm.named_buffers(recurse=False)})
    path = os.path.join(args.out, f"{NAME}.safetensors")
    save_file(checkpoint, path)
    del checkpoint
    shutil.copyfile(config_path, os.path.join(args.out, CONFIG))
    with open(os.path.join(args.out, "parameters.json"), "w") as file:
        json.dump(counts, file)
    print(f"wrote checkpoint ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")

    generator = torch.Generator().manual_seed(INPUT_SEED)
    inputs = {
        "cond.in.input_ids": bert_ids(["a virus monster is playing guitar, oil on canvas"], 1),
        "unet.in.x": torch.randn((1, 4, *LATENT), generator=generator),
        "unet.in.timesteps": torch.tensor([500], dtype=torch.int64),
        "unet.in.context": torch.randn((1, 77, params["unet_config"]["params"]["context_dim"]), generator=generator),
    }
    with torch.no_grad():
        start = time.perf_counter()
        c = model.cond_stage_model.encode(inputs["cond.in.input_ids"])
        middle = time.perf_counter()
        eps = ldm.apply_model(inputs["unet.in.x"], inputs["unet.in.timesteps"], {"c_crossattn": [inputs["unet.in.context"]]})
        print(f"cond {middle - start:.1f} s, unet {time.perf_counter() - middle:.1f} s")
    meta = {"config": NAME, "torch_version": torch.__version__, "dtype": "float32", "weights_dtype": "float16"}
    save_file({**inputs, "cond.out.c_crossattn": c, "unet.out.eps": eps}, os.path.join(args.out, f"{NAME}.dump.safetensors"), meta)


if __name__ == "__main__":
    main()
