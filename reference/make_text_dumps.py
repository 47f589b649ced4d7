"""Writes tiny random-weight versions of the paper's BERTEmbedder-conditioned LDMs, with dumps computed by the
ORIGINAL upstream modules:
  tiny-txt2img     configs/latent-diffusion/txt2img-1p4B-eval.yaml: KL-f8, BERTEmbedder on bert-base-uncased ids
  tiny-text2img256 models/ldm/text2img256/config.yaml: VQ-f4 (3 channels), BERTEmbedder on bert-base-uncased ids
  tiny-layout2img  models/ldm/layout2img-openimages256/config.yaml: VQ-f4 (3 channels), BERTEmbedder without
                   tokenizer on layout tokens (vocab_size 8192, max_seq_len 92)

Upstream code is read from --upstream, a `git archive` of CompVis/latent-diffusion, and --taming, one of
CompVis/taming-transformers (its VectorQuantizer2; not part of this repository): the models are built from
UNetModel, AutoencoderKL / VQModelInterface and BERTEmbedder (x_transformer.py), sampled with DDIMSampler;
crosscheck_upstream.py's shims stand in for missing packages.

Into packages/ldm/test/fixtures/dumps/, per model NAME:
  NAME.safetensors              checkpoint (weights float16, schedule buffers float32)
  NAME.yaml                     the upstream config's structure at tiny sizes
  NAME.dump.safetensors         vae.encode, vae.decode, unet, cond (BERTEmbedder on input_ids)
  NAME.sample-ddim.safetensors  DDIM, guided against the unconditional input; the image decoded (quantized first
                                for VQ). txt2img, text2img256: scripts/txt2img.py's guidance 5.0 against the
                                encoder on "".
                                layout2img: guidance 2.0 against the empty layout.

txt2img's ids are bert-base-uncased's for prompts of test/fixtures/tokenizer/bert-prompts.json (the golden file of
reference/tokenizer/bert_tokenizer_fixtures.py); layout2img's are sequences of test/fixtures/tokenizer/
layout-cases.json (reference/tokenizer/layout_fixtures.py, taming's builder).

Usage: /usr/bin/python3 reference/make_text_dumps.py --upstream /tmp/latent-diffusion --taming /tmp/taming-transformers
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
TOKENIZER_FIXTURES = os.path.join(HERE, "..", "packages", "ldm", "test", "fixtures", "tokenizer")
PROMPTS = os.path.join(TOKENIZER_FIXTURES, "bert-prompts.json")
LAYOUTS = os.path.join(TOKENIZER_FIXTURES, "layout-cases.json")
STEPS = 10
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

TXT2IMG = {
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
            "image_size": 8,
            "channels": 4,
            "cond_stage_trainable": True,
            "conditioning_key": "crossattn",
            "monitor": "val/loss_simple_ema",
            "scale_factor": 0.18215,
            "use_ema": False,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 8,
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


# layout2img-openimages256's structure: VQ-f4 with 3 channels and no scale_factor (1.0), a UNet with
# num_head_channels, a BERTEmbedder over 8192 layout tokens and 92 positions.
LAYOUT2IMG = {
    "model": {
        "base_learning_rate": 2.0e-06,
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.0015,
            "linear_end": 0.0205,
            "log_every_t": 100,
            "timesteps": 1000,
            "loss_type": "l1",
            "first_stage_key": "image",
            "cond_stage_key": "coordinates_bbox",
            "image_size": 8,
            "channels": 3,
            "conditioning_key": "crossattn",
            "cond_stage_trainable": True,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 8,
                    "in_channels": 3,
                    "out_channels": 3,
                    "model_channels": 32,
                    "attention_resolutions": [1],
                    "num_res_blocks": 1,
                    "channel_mult": [1, 2],
                    "num_head_channels": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 16,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.VQModelInterface",
                "params": {
                    "embed_dim": 3,
                    "n_embed": 64,
                    "monitor": "val/rec_loss",
                    "ddconfig": {
                        "double_z": False,
                        "z_channels": 3,
                        "resolution": 32,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 1, 1],
                        "num_res_blocks": 1,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                    "lossconfig": {"target": "torch.nn.Identity"},
                },
            },
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.BERTEmbedder",
                "params": {"n_embed": 16, "n_layer": 2, "vocab_size": 8192, "max_seq_len": 92, "use_tokenizer": False},
            },
            "monitor": "val/loss_simple_ema",
        },
    }
}


# text2img256's structure (models/ldm/text2img256/config.yaml): VQ-f4 with 3 channels and no scale_factor (1.0),
# tiny-layout2img's UNet (num_head_channels) with attention below the first level only, as text2img256,
# a BERTEmbedder on bert-base-uncased ids (real vocabulary and 77 positions; n_embed 8 keeps its two vocabulary-sized
# matrices at 1 MB in float16).
TEXT2IMG256 = {
    "model": {
        "base_learning_rate": 2.0e-06,
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.0015,
            "linear_end": 0.0195,
            "num_timesteps_cond": 1,
            "log_every_t": 200,
            "timesteps": 1000,
            "first_stage_key": "image",
            "cond_stage_key": "caption",
            "image_size": 8,
            "channels": 3,
            "cond_stage_trainable": True,
            "conditioning_key": "crossattn",
            "monitor": "val/loss_simple_ema",
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {**LAYOUT2IMG["model"]["params"]["unet_config"]["params"], "attention_resolutions": [2], "context_dim": 8},
            },
            "first_stage_config": LAYOUT2IMG["model"]["params"]["first_stage_config"],
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.BERTEmbedder",
                "params": {"n_embed": 8, "n_layer": 2},
            },
        },
    }
}

def prompt_ids(prompts):
    by_prompt = {case["prompt"]: case["input_ids"] for case in json.load(open(PROMPTS))["cases"]}
    return torch.tensor([by_prompt[p] for p in prompts], dtype=torch.int64)


def layout_ids(indices):
    cases = json.load(open(LAYOUTS))["cases"]
    return torch.tensor([cases[i]["tokens"] for i in indices], dtype=torch.int64)


# Per model: seeds, VAE factor, sampling guidance, the conditioning ids (component, sample cond and uncond).
SPECS = {
    "tiny-txt2img": {
        "config": TXT2IMG,
        "seeds": (1005, 2005, 45),
        "factor": 8,
        "guidance_scale": 5.0,  # scripts/txt2img.py's default --scale
        # A short prompt and the longest, truncated to all 77 positions (no padding left).
        "cond_ids": lambda: prompt_ids(["a virus monster is playing guitar, oil on canvas", LONGEST_PROMPT]),
        "sample_cond_ids": lambda: prompt_ids(["A  Photo\tof\n\nthe   CAT!!!", "naïve café résumé Ångström über straße"]),
        "sample_uncond_ids": lambda: prompt_ids(["", ""]),
    },
    "tiny-text2img256": {
        "config": TEXT2IMG256,
        "seeds": (1007, 2007, 47),
        "factor": 4,
        "guidance_scale": 5.0,  # the BERT models' default, as scripts/txt2img.py
        "cond_ids": lambda: prompt_ids(["A  Photo\tof\n\nthe   CAT!!!", LONGEST_PROMPT]),
        "sample_cond_ids": lambda: prompt_ids(["a virus monster is playing guitar, oil on canvas", "naïve café résumé Ångström über straße"]),
        "sample_uncond_ids": lambda: prompt_ids(["", ""]),
    },
    "tiny-layout2img": {
        "config": LAYOUT2IMG,
        "seeds": (1006, 2006, 46),
        "factor": 4,
        "guidance_scale": 2.0,
        "cond_ids": lambda: layout_ids([2, 4]),
        "sample_cond_ids": lambda: layout_ids([3, 1]),
        "sample_uncond_ids": lambda: layout_ids([0, 0]),
    },
}
LONGEST_PROMPT = max(json.load(open(PROMPTS))["cases"], key=lambda case: len(case["wordpiece"]))["prompt"]


def build(params):
    from ldm.models.autoencoder import AutoencoderKL, VQModelInterface
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.encoders.modules import BERTEmbedder

    model = nn.Module()
    model.model = nn.Module()
    model.model.diffusion_model = UNetModel(**params["unet_config"]["params"])
    first = params["first_stage_config"]["params"]
    if params["first_stage_config"]["target"].endswith("VQModelInterface"):
        model.first_stage_model = VQModelInterface(
            first["embed_dim"], ddconfig=first["ddconfig"], lossconfig=first["lossconfig"], n_embed=first["n_embed"]
        )
    else:
        model.first_stage_model = AutoencoderKL(first["ddconfig"], first["lossconfig"], first["embed_dim"])
    # use_tokenizer=False: ids come in (upstream's tokenizer is HF's, which Debian lacks; see the golden file).
    bert = {**params["cond_stage_config"]["params"], "use_tokenizer": False}
    model.cond_stage_model = BERTEmbedder(**bert, device="cpu")
    return model.eval()


def nearest_code_margin(codebook, z):
    """The smallest (second-nearest − nearest) squared distance over z's vectors, relative to the second: how far
    each latent is from a tie between two codes, which f32 rounding could break either way."""
    vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    top = ((vectors[:, None, :] - codebook[None]) ** 2).sum(-1).topk(2, largest=False).values
    return ((top[:, 1] - top[:, 0]) / top[:, 1]).min().item()


def install_upstream(upstream, taming):
    install_shims()
    sys.modules["clip"] = type(sys)("clip")  # encoders/modules.py imports it for the CLIP embedders only
    sys.modules["einops"].reduce = None  # x_transformer.py imports it and never calls it
    if taming:
        for name in [m for m in sys.modules if m == "taming" or m.startswith("taming.")]:
            del sys.modules[name]  # the real VectorQuantizer2 instead of the shim
        sys.path.insert(0, taming)
    sys.path.insert(0, upstream)


def write_model(name, spec, upstream, out_dir):
    from ldm.models.diffusion.ddim import DDIMSampler

    config = spec["config"]
    params = config["model"]["params"]
    weight_seed, input_seed, sample_seed = spec["seeds"]
    model = build(params)
    vq = "n_embed" in params["first_stage_config"]["params"]
    probes = {k: v for k, v in PROBES.items() if not (vq and k.startswith("first_stage_model"))}
    randomize_(model, weight_seed, probes)
    with torch.no_grad():
        if vq:  # randomize_ has no rule for the codebook: codes of the latents' scale
            codebook = model.first_stage_model.quantize.embedding.weight
            codebook.copy_(torch.randn(codebook.shape, generator=torch.Generator().manual_seed(weight_seed)))
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())  # compute with exactly the stored float16 weights
    ldm = upstream_latent_diffusion(upstream)(params, model.model.diffusion_model)
    checkpoint = {key: t.half() for key, t in model.state_dict().items()}
    checkpoint.update({key: b.float() for key, b in ldm.named_buffers(recurse=False)})
    save_file(checkpoint, os.path.join(out_dir, f"{name}.safetensors"))
    with open(os.path.join(out_dir, f"{name}.yaml"), "w") as file:
        yaml.safe_dump(config, file, sort_keys=False, default_flow_style=None)

    generator = torch.Generator().manual_seed(input_seed)
    size = params["image_size"]
    channels = params["channels"]
    scale = params.get("scale_factor", 1.0)
    factor = spec["factor"]
    vae, bert = model.first_stage_model, model.cond_stage_model
    inputs = {
        "vae.encode.in.x": torch.rand((2, 3, factor * size, factor * size), generator=generator) * 2 - 1,
        "vae.decode.in.z": torch.randn((2, channels, size, size), generator=generator) / scale,
        "unet.in.x": torch.randn((2, channels, size, size), generator=generator),
        "unet.in.timesteps": TIMESTEPS,
        "unet.in.context": torch.randn(
            (2, params["cond_stage_config"]["params"].get("max_seq_len", 77), params["unet_config"]["params"]["context_dim"]),
            generator=generator,
        ),
        "cond.in.input_ids": spec["cond_ids"](),
    }
    sample = {
        "sample.in.x_T": torch.randn((2, channels, size, size), generator=torch.Generator().manual_seed(sample_seed)),
        "sample.in.cond_ids": spec["sample_cond_ids"](),
        "sample.in.uncond_ids": spec["sample_uncond_ids"](),
    }
    with torch.no_grad():
        if vq:
            h = vae.encode(inputs["vae.encode.in.x"])
            quant, _, (_, _, indices) = vae.quantize(h)
            encoded = {"vae.encode.out.h": h, "vae.encode.out.quant": quant,
                       "vae.encode.out.indices": indices.reshape(h.shape[0], *h.shape[2:])}
        else:
            encoded = {"vae.encode.out.moments": vae.encode(inputs["vae.encode.in.x"]).parameters}
        outputs = {
            **encoded,
            "vae.decode.out.x": vae.decode(inputs["vae.decode.in.z"]),
            "unet.out.eps": ldm.apply_model(
                inputs["unet.in.x"], inputs["unet.in.timesteps"], {"c_crossattn": [inputs["unet.in.context"]]}
            ),
            "cond.out.c_crossattn": bert.encode(inputs["cond.in.input_ids"]),
        }
        sampler = DDIMSampler(ldm)
        sampler.register_buffer = partial(setattr, sampler)  # upstream moves its buffers to CUDA; stay on the CPU
        z_0, _ = sampler.sample(
            S=STEPS, batch_size=2, shape=(channels, size, size), conditioning=bert.encode(sample["sample.in.cond_ids"]),
            verbose=False, x_T=sample["sample.in.x_T"], eta=0.0, unconditional_guidance_scale=spec["guidance_scale"],
            unconditional_conditioning=bert.encode(sample["sample.in.uncond_ids"]),
        )
        sample["sample.out.z_0"] = z_0
        sample["sample.out.image"] = vae.decode(z_0 / scale)
    meta = {"config": name, "torch_version": torch.__version__, "dtype": "float32", "weights_dtype": "float16"}
    sample_margin = {}
    if vq:
        codebook = vae.quantize.embedding.weight
        margin = min(nearest_code_margin(codebook, z) for z in (inputs["vae.decode.in.z"], outputs["vae.encode.out.h"]))
        meta["nearest_code_margin"] = f"{margin:.2e}"
        sample_margin["nearest_code_margin"] = f"{nearest_code_margin(codebook, sample['sample.out.z_0']):.2e}"
    components = {k: (v if k.endswith("indices") or not v.is_floating_point() else v.float()) for k, v in {**inputs, **outputs}.items()}
    save_file(components, os.path.join(out_dir, f"{name}.dump.safetensors"), meta)
    sample_meta = {**meta, "sampler": "ddim", "steps": str(STEPS), "guidance_scale": str(spec["guidance_scale"]),
                   "eta": "0.0", "seed": str(sample_seed), **sample_margin}
    save_file({k: v.float() if v.is_floating_point() else v for k, v in sample.items()},
              os.path.join(out_dir, f"{name}.sample-ddim.safetensors"), sample_meta)
    print("wrote", name, "to", out_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="git archive of CompVis/latent-diffusion")
    parser.add_argument("--taming", required=True, help="git archive of CompVis/taming-transformers")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--model", action="append", choices=sorted(SPECS), help="only these models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_upstream(args.upstream, args.taming)
    os.makedirs(args.out, exist_ok=True)
    for name in args.model or list(SPECS):
        write_model(name, SPECS[name], args.upstream, args.out)


if __name__ == "__main__":
    main()
