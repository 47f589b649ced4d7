"""Writes tiny-txt2img: a tiny random-weight version of the paper's text-to-image LDM
(CompVis/latent-diffusion configs/latent-diffusion/txt2img-1p4B-eval.yaml: KL-f8 first stage,
BERTEmbedder cond stage, cross-attention UNet), with dumps computed by the ORIGINAL upstream modules.

Upstream code is read from --upstream, a `git archive` of CompVis/latent-diffusion (not part of this
repository): the model is built from its UNetModel, AutoencoderKL and BERTEmbedder (x_transformer.py),
sampled with its DDIMSampler; crosscheck_upstream.py's shims stand in for missing packages.

Into packages/ldm/test/fixtures/dumps/:
  tiny-txt2img.safetensors              checkpoint (weights float16, schedule buffers float32)
  tiny-txt2img.yaml                     the upstream config's structure at tiny sizes
  tiny-txt2img.dump.safetensors         vae.encode, vae.decode, unet, cond (BERTEmbedder on input_ids)
  tiny-txt2img.sample-ddim.safetensors  scripts/txt2img.py's sampling: DDIM, guidance 5.0 against the encoder on ""

Token ids are bert-base-uncased's for prompts of test/fixtures/tokenizer/bert-prompts.json (the
golden file of reference/tokenizer/bert_tokenizer_fixtures.py), so the real vocabulary size and
sequence length (30522, 77) are exercised.

Usage: /usr/bin/python3 reference/make_text_dumps.py --upstream /tmp/latent-diffusion
"""

import argparse
from functools import partial
import json
import os
import sys

sys.dont_write_bytecode = True

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from crosscheck_upstream import install_shims, upstream_latent_diffusion  # noqa: E402
from ldm_ref.init import randomize_  # noqa: E402
from ldm_ref.safetensors_io import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "packages", "ldm", "test", "fixtures", "dumps")
PROMPTS = os.path.join(HERE, "..", "packages", "ldm", "test", "fixtures", "tokenizer", "bert-prompts.json")
NAME = "tiny-txt2img"
STEPS = 10
GUIDANCE_SCALE = 5.0  # scripts/txt2img.py's default --scale
WEIGHT_SEED, INPUT_SEED, SAMPLE_SEED = 1005, 2005, 45
LATENT = (8, 8)
TIMESTEPS = torch.tensor([911, 37], dtype=torch.int64)
UNET = "model.diffusion_model."
# As make_dumps.py: small inputs so that each kind of norm's eps shows (ldm_ref/init.py), here also
# the x-transformer's first LayerNorm (its embeddings are std 0.02 already, as upstream initialises them).
PROBES = {
    "first_stage_model.encoder.conv_in": 0.01,
    "first_stage_model.decoder.conv_in": 0.003,
    UNET + "input_blocks.0.0": 0.01,
    UNET + "input_blocks.1.0.out_layers.3": 0.01,
    UNET + "input_blocks.1.0.emb_layers.1": 0.01,
    UNET + "middle_block.1.proj_in": 0.01,
}

CONFIG = {
    "model": {
        "base_learning_rate": 5.0e-05,
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "num_timesteps_cond": 1,
            "log_every_t": 200,
            "timesteps": 1000,
            "first_stage_key": "image",
            "cond_stage_key": "caption",
            "image_size": LATENT[0],
            "channels": 4,
            "cond_stage_trainable": True,
            "conditioning_key": "crossattn",
            "monitor": "val/loss_simple_ema",
            "scale_factor": 0.18215,
            "use_ema": False,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": LATENT[0],
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 32,
                    "attention_resolutions": [1],
                    "num_res_blocks": 1,
                    "channel_mult": [1, 2],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 16,
                    "use_checkpoint": True,
                    "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "monitor": "val/rec_loss",
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 64,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 1, 1, 1],
                        "num_res_blocks": 1,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                    "lossconfig": {"target": "torch.nn.Identity"},
                },
            },
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.BERTEmbedder",
                "params": {"n_embed": 16, "n_layer": 2},
            },
        },
    }
}


def build(params):
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.encoders.modules import BERTEmbedder

    model = nn.Module()
    model.model = nn.Module()
    model.model.diffusion_model = UNetModel(**params["unet_config"]["params"])
    first = params["first_stage_config"]["params"]
    model.first_stage_model = AutoencoderKL(first["ddconfig"], first["lossconfig"], first["embed_dim"])
    # use_tokenizer=False: ids come in (upstream's tokenizer is HF's, which Debian lacks; see the golden file).
    model.cond_stage_model = BERTEmbedder(**params["cond_stage_config"]["params"], use_tokenizer=False, device="cpu")
    return model.eval()


def bert_ids(prompts, count):
    cases = json.load(open(PROMPTS))["cases"]
    by_prompt = {case["prompt"]: case["input_ids"] for case in cases}
    longest = max(cases, key=lambda case: len(case["wordpiece"]))
    chosen = [by_prompt[p] for p in prompts] + [longest["input_ids"]]
    return torch.tensor(chosen[:count], dtype=torch.int64)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="git archive of CompVis/latent-diffusion")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_shims()
    sys.modules["clip"] = type(sys)("clip")  # encoders/modules.py imports it for the CLIP embedders only
    sys.modules["einops"].reduce = None  # x_transformer.py imports it and never calls it
    sys.path.insert(0, args.upstream)
    from ldm.models.diffusion.ddim import DDIMSampler

    params = CONFIG["model"]["params"]
    model = build(params)
    randomize_(model, WEIGHT_SEED, PROBES)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())  # compute with exactly the stored float16 weights
    ldm = upstream_latent_diffusion(args.upstream)(params, model.model.diffusion_model)
    schedule = {name: getattr(ldm, name).float() for name, _ in ldm.named_buffers(recurse=False)}
    checkpoint = {name: t.half() for name, t in model.state_dict().items()}
    checkpoint.update(schedule)
    os.makedirs(args.out, exist_ok=True)
    save_file(checkpoint, os.path.join(args.out, f"{NAME}.safetensors"))
    with open(os.path.join(args.out, f"{NAME}.yaml"), "w") as file:
        yaml.safe_dump(CONFIG, file, sort_keys=False, default_flow_style=None)

    generator = torch.Generator().manual_seed(INPUT_SEED)
    h, w = LATENT
    inputs = {
        "vae.encode.in.x": torch.rand((2, 3, 8 * h, 8 * w), generator=generator) * 2 - 1,
        "vae.decode.in.z": torch.randn((2, 4, h, w), generator=generator) / params["scale_factor"],
        "unet.in.x": torch.randn((2, 4, h, w), generator=generator),
        "unet.in.timesteps": TIMESTEPS,
        "unet.in.context": torch.randn((2, 77, params["cond_stage_config"]["params"]["n_embed"]), generator=generator),
        # A short prompt and one truncated to all 77 positions (no padding left).
        "cond.in.input_ids": bert_ids(["a virus monster is playing guitar, oil on canvas"], 2),
    }
    sample_in = {
        "sample.in.x_T": torch.randn((2, 4, h, w), generator=torch.Generator().manual_seed(SAMPLE_SEED)),
        "sample.in.cond_ids": bert_ids(["A  Photo\tof\n\nthe   CAT!!!", "naïve café résumé Ångström über straße"], 2),
        "sample.in.uncond_ids": bert_ids(["", ""], 2),
    }

    def run():
        cast = {**inputs, **sample_in}
        vae, bert = model.first_stage_model, model.cond_stage_model
        with torch.no_grad():
            out = {
                "vae.encode.out.moments": vae.encode(cast["vae.encode.in.x"]).parameters,
                "vae.decode.out.x": vae.decode(cast["vae.decode.in.z"]),
                "unet.out.eps": ldm.apply_model(
                    cast["unet.in.x"], cast["unet.in.timesteps"], {"c_crossattn": [cast["unet.in.context"]]}
                ),
                "cond.out.c_crossattn": bert.encode(cast["cond.in.input_ids"]),
            }
            sampler = DDIMSampler(ldm)
            sampler.register_buffer = partial(setattr, sampler)  # upstream moves its buffers to CUDA; stay on the CPU
            z_0, _ = sampler.sample(
                S=STEPS, batch_size=2, shape=(4, h, w), conditioning=bert.encode(cast["sample.in.cond_ids"]),
                verbose=False, x_T=cast["sample.in.x_T"], eta=0.0, unconditional_guidance_scale=GUIDANCE_SCALE,
                unconditional_conditioning=bert.encode(cast["sample.in.uncond_ids"]),
            )
            out["sample.out.z_0"] = z_0
            out["sample.out.image"] = vae.decode(z_0 / params["scale_factor"])
        return {k: v.float() for k, v in out.items()}

    outputs = run()
    meta = {"config": NAME, "torch_version": torch.__version__, "dtype": "float32", "weights_dtype": "float16"}
    components = {**inputs, **{k: v for k, v in outputs.items() if not k.startswith("sample.")}}
    save_file(components, os.path.join(args.out, f"{NAME}.dump.safetensors"), meta)
    sample = {**sample_in, **{k: v for k, v in outputs.items() if k.startswith("sample.")}}
    sample_meta = {**meta, "sampler": "ddim", "steps": str(STEPS), "guidance_scale": str(GUIDANCE_SCALE), "eta": "0.0",
                   "seed": str(SAMPLE_SEED)}
    save_file(sample, os.path.join(args.out, f"{NAME}.sample-ddim.safetensors"), sample_meta)
    print("wrote", NAME, "to", args.out)


if __name__ == "__main__":
    main()
