"""Parameter counts of every model CompVis/latent-diffusion releases, from its ORIGINAL modules built at full size
with random weights (PyTorch's default initialisation, seeded), for packages/weights/test/fixtures/full-size.json:
per row the upstream config's `model` section and, per stage (UNet, first stage, cond stage), the number of
tensors (`count`), of parameters (`params`) and a sha256 of the sorted "key<TAB>[shape]" lines under the
LatentDiffusion checkpoint names (`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.`), as
reference-keys.json. packages/weights/test/architecture.test.ts checks that our architecture tables give the same
for the same config, with no upstream code or file at hand.

Built from --upstream (a `git archive` of CompVis/latent-diffusion) and --taming (of CompVis/taming-transformers:
VectorQuantizer2): UNetModel, AutoencoderKL / VQModel / VQModelInterface (`lossconfig` replaced by torch's
Identity: the training losses are not the model; the first-stage-only checkpoints also store them as `loss.*`,
LPIPS and the discriminator), and the cond stage of `cond_stage_config` (ClassEmbedder, SpatialRescaler,
BERTEmbedder with use_tokenizer false, which changes no parameter; Identity; nothing for __is_first_stage__ and
__is_unconditional__).

--info DIR also writes, per row, DIR/NAME.safetensors: the checkpoint layout of the original modules (their
state_dict, plus for LatentDiffusion the schedule buffers of upstream's register_schedule, LitEma's model_ema.*
where use_ema, and the scale_factor buffer where scale_by_std), float32, its data a sparse hole (no gigabytes
written), and DIR/NAME.yaml (the upstream config); then runs `ldm info --json` on each and compares the UNet, VAE
and cond stage parameter counts with the original's. A first-stage-only row is written as its own checkpoint
(VQModel / AutoencoderKL keys, no prefix).

Usage: /usr/bin/python3 reference/full_size_counts.py --upstream /tmp/latent-diffusion --taming /tmp/taming-transformers
           [--only NAME ...] [--info /tmp/full-size] [--out packages/weights/test/fixtures/full-size.json]
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from crosscheck_upstream import upstream_latent_diffusion  # noqa: E402
from ldm_ref.keys import summary  # noqa: E402
from ldm_ref.safetensors_io import save_layout  # noqa: E402
from make_text_dumps import install_upstream  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "packages", "weights", "test", "fixtures", "full-size.json")
SEED = 19

# Every released model of the issue's table: name → its config in CompVis/latent-diffusion. The checkpoints'
# own configs models/ldm/{celeba256,ffhq256,lsun_beds256,lsun_churches256,cin256}/config.yaml describe the same
# networks as the configs/latent-diffusion ones below (cin256 = cin-ldm-vq-f8).
ROWS = {
    "celebahq-ldm-vq-4": "configs/latent-diffusion/celebahq-ldm-vq-4.yaml",
    "ffhq-ldm-vq-4": "configs/latent-diffusion/ffhq-ldm-vq-4.yaml",
    "lsun_bedrooms-ldm-vq-4": "configs/latent-diffusion/lsun_bedrooms-ldm-vq-4.yaml",
    "lsun_churches-ldm-kl-8": "configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml",
    "cin256-v2": "configs/latent-diffusion/cin256-v2.yaml",
    "cin-ldm-vq-f8": "configs/latent-diffusion/cin-ldm-vq-f8.yaml",
    "txt2img-f8-large": "configs/latent-diffusion/txt2img-1p4B-eval.yaml",
    "text2img256": "models/ldm/text2img256/config.yaml",
    "layout2img-openimages256": "models/ldm/layout2img-openimages256/config.yaml",
    "bsr_sr": "models/ldm/bsr_sr/config.yaml",
    "semantic_synthesis256": "models/ldm/semantic_synthesis256/config.yaml",
    "semantic_synthesis512": "models/ldm/semantic_synthesis512/config.yaml",
    "inpainting_big": "models/ldm/inpainting_big/config.yaml",
    **{name: f"models/first_stage_models/{name}/config.yaml"
       for name in ["vq-f4", "vq-f4-noattn", "vq-f8", "vq-f8-n256", "vq-f16", "kl-f4", "kl-f8", "kl-f16", "kl-f32"]},
}
PREFIXES = {"unet": "model.diffusion_model.", "first_stage": "first_stage_model.", "cond_stage": "cond_stage_model."}
# ldm info's component names for the stages.
INFO_COMPONENTS = {"unet": "UNet", "first_stage": "VAE", "cond_stage": "cond stage"}
IDENTITY = {"target": "torch.nn.Identity"}
# DDPM's constructor defaults, for configs that leave them out.
SCHEDULE_DEFAULTS = {"timesteps": 1000, "linear_start": 1e-4, "linear_end": 2e-2}


def first_stage(target, params):
    from ldm.util import get_obj_from_str

    # Random weights: the configs' ckpt_path (the released first stage, to start training from) is not loaded.
    params = {k: v for k, v in params.items() if k != "ckpt_path"}
    return get_obj_from_str(target)(**{**params, "lossconfig": IDENTITY}).eval()


def cond_stage(config):
    from ldm.util import instantiate_from_config

    if not isinstance(config, dict):  # __is_first_stage__ (the first stage encodes), __is_unconditional__
        return None
    if config["target"].endswith("BERTEmbedder"):  # no HF tokenizer here; it has no parameters
        config = {**config, "params": {**config["params"], "use_tokenizer": False}}
    return instantiate_from_config(config).eval()


def build(model_config):
    """The stages of a config's `model`: {stage: module}."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    params = model_config["params"]
    if "unet_config" not in params:  # a first stage alone
        return {"first_stage": first_stage(model_config["target"], params)}
    stages = {
        "unet": UNetModel(**params["unet_config"]["params"]).eval(),
        "first_stage": first_stage(params["first_stage_config"]["target"], params["first_stage_config"]["params"]),
    }
    cond = cond_stage(params["cond_stage_config"])
    if cond is not None:
        stages["cond_stage"] = cond
    return stages


def checkpoint_layout(model_config, stages, upstream):
    """name → tensor of the checkpoint the released model's state_dict would be."""
    params = model_config["params"]
    if "unet" not in stages:
        return dict(stages["first_stage"].state_dict())
    from ldm.modules.ema import LitEma

    out = {PREFIXES[stage] + k: v for stage, module in stages.items() for k, v in module.state_dict().items()}
    schedule = {**SCHEDULE_DEFAULTS, "conditioning_key": None, **params}
    ldm = upstream_latent_diffusion(upstream)(schedule, stages["unet"])
    out.update({k: v for k, v in ldm.state_dict().items() if "." not in k})  # persistent schedule buffers
    if params.get("use_ema", True):
        wrapper = nn.Module()
        wrapper.diffusion_model = stages["unet"]
        out.update({f"model_ema.{k}": v for k, v in LitEma(wrapper).state_dict().items()})
    if params.get("scale_by_std", False):
        out["scale_factor"] = torch.tensor(params.get("scale_factor", 1.0))
    return out


def ldm_info(path, config):
    run = subprocess.run(
        ["node", os.path.join(ROOT, "packages", "ldm", "bin", "ldm.mjs"), "info", "--json", path, "--config", config],
        capture_output=True, text=True, cwd=ROOT,
    )
    if run.returncode != 0:
        return None, (run.stderr.strip() or run.stdout.strip()).splitlines()[-1]
    report = json.loads(run.stdout)
    return {c["name"]: c["parameters"] for c in report["components"]}, None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="git archive of CompVis/latent-diffusion")
    parser.add_argument("--taming", required=True, help="git archive of CompVis/taming-transformers")
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), help="these rows (the table keeps the others)")
    parser.add_argument("--info", metavar="DIR", help="write sparse checkpoints here and compare `ldm info` on them")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_upstream(args.upstream, args.taming)
    table = json.load(open(args.out)) if os.path.exists(args.out) else {}
    table["source"] = (
        "reference/full_size_counts.py: the ORIGINAL CompVis/latent-diffusion modules (and taming-transformers' "
        "VectorQuantizer2) built from each config with random weights; per stage: tensors, parameters, sha256 of the "
        "sorted 'key<TAB>[shape]' lines under the LatentDiffusion checkpoint names"
    )
    table.setdefault("rows", {})
    mismatches = []
    for name in args.only or list(ROWS):
        path = ROWS[name]
        model_config = yaml.safe_load(open(os.path.join(args.upstream, path)))["model"]
        start = time.perf_counter()
        torch.manual_seed(SEED)
        stages = build(model_config)
        counts = {stage: summary(PREFIXES[stage], module) for stage, module in stages.items()}
        total = sum(c["params"] for c in counts.values())
        table["rows"][name] = {"config": path, "total": total, "stages": counts, "model": model_config}
        print(f"{name}: {total:,} parameters ({time.perf_counter() - start:.0f} s)", flush=True)
        for stage, c in counts.items():
            print(f"  {stage:12s} {c['params']:>13,} in {c['count']} tensors")
        if args.info:
            os.makedirs(args.info, exist_ok=True)
            checkpoint = os.path.join(args.info, f"{name}.safetensors")
            config = os.path.join(args.info, f"{name}.yaml")
            layout = {k: v.float() if v.is_floating_point() else v for k, v in checkpoint_layout(model_config, stages, args.upstream).items()}
            save_layout(layout, checkpoint)
            with open(os.path.join(args.upstream, path)) as src, open(config, "w") as dst:
                dst.write(src.read())
            reported, error = ldm_info(checkpoint, config)
            if error:
                mismatches.append(name)
                print(f"  ldm info: FAILED: {error}")
            else:
                # ldm info lists the components that store tensors (not an Identity cond stage).
                expected = {INFO_COMPONENTS[stage]: c["params"] for stage, c in counts.items() if c["count"]}
                same = reported == expected
                if not same:
                    mismatches.append(name)
                print(f"  ldm info: {'same counts' if same else f'DIFFERENT: {reported} vs {expected}'}")
        del stages
    table["rows"] = {name: table["rows"][name] for name in ROWS if name in table["rows"]}
    with open(args.out, "w") as file:
        file.write(json.dumps(table, indent=1) + "\n")
    print("wrote", os.path.relpath(args.out))
    if args.info:
        print(f"ldm info: {len(mismatches)} row(s) differ or fail: {', '.join(mismatches)}" if mismatches else "ldm info: every row agrees")


if __name__ == "__main__":
    main()
