"""Writes the tiny random-weight test models and their reference dumps.

For every config in ldm_ref.configs.TINY_CONFIGS, into the output folder:
  <config>.safetensors              checkpoint, original single-file layout (weights float16,
                                    schedule buffers float32, CLIP position_ids int64)
  <config>.yaml                     original-style config
  <config>.dump.safetensors         vae.encode, vae.decode, unet, clip components
  <config>.sample-<sampler>.safetensors   full CFG sampling loops

Usage: /usr/bin/python3 reference/make_dumps.py [--out DIR] [--weights-dtype float16|float32] [--precision-report]
"""

import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep reference/ free of __pycache__ folders

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from ldm_ref.configs import TINY_CONFIGS  # noqa: E402
from ldm_ref.init import randomize_  # noqa: E402
from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import save_file  # noqa: E402
from ldm_ref.samplers import SAMPLERS  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "ldm", "test", "fixtures", "dumps")
BATCH = 2
CONTEXT_LENGTH = 77
SAMPLE_STEPS = 10
GUIDANCE_SCALE = 7.5
VAE_FACTOR = 8

UNET = "model.diffusion_model."
VAE_PROBES = {"first_stage_model.encoder.conv_in": 0.01, "first_stage_model.decoder.conv_in": 0.003}

# Small inputs for: the first ResBlock's norms (conv_in), the first SpatialTransformer's
# GroupNorm (that ResBlock's residual branch), the middle transformer's LayerNorms (proj_in).
FIRST_LEVEL_ATTENTION_PROBES = {
    UNET + "input_blocks.0.0": 0.01,
    UNET + "input_blocks.1.0.out_layers.3": 0.01,
    UNET + "input_blocks.1.0.emb_layers.1": 0.01,
    UNET + "middle_block.1.proj_in": 0.01,
}

# Per config: seeds, latent size (h, w), UNet timesteps, samplers, and probe layers
# (see ldm_ref/init.py) placed so each kind of norm sees a small-variance input once.
SPECS = {
    "tiny-sd1": {
        "weight_seed": 1001,
        "input_seed": 2001,
        "sample_seed": 42,
        "latent": (8, 8),
        "timesteps": torch.tensor([911, 37], dtype=torch.int64),
        "samplers": ["ddim", "plms", "euler"],
        "probes": FIRST_LEVEL_ATTENTION_PROBES,
    },
    "tiny-sd2": {
        "weight_seed": 1002,
        "input_seed": 2002,
        "sample_seed": 43,
        "latent": (6, 10),
        # Fractional timesteps, as k-diffusion samplers produce them, and t = 0.
        "timesteps": torch.tensor([803.37, 0.0], dtype=torch.float32),
        "samplers": ["ddim", "euler"],
        "probes": FIRST_LEVEL_ATTENTION_PROBES,
    },
    "tiny-inpaint": {
        "weight_seed": 1003,
        "input_seed": 2003,
        "sample_seed": 44,
        "latent": (6, 8),
        "timesteps": torch.tensor([500, 3], dtype=torch.int64),
        "samplers": ["ddim"],
        "probes": {
            UNET + "input_blocks.0.0": 0.01,
            UNET + "input_blocks.2.0.op": 0.01,
            UNET + "input_blocks.3.0.out_layers.3": 0.01,
            UNET + "input_blocks.3.0.emb_layers.1": 0.01,
            UNET + "middle_block.1.proj_in": 0.01,
        },
    },
}


def build_model(config, spec, weights_dtype):
    model = LatentDiffusion(config).eval()
    randomize_(model, spec["weight_seed"], {**VAE_PROBES, **spec["probes"]})
    with torch.no_grad():
        # Round to the stored precision so the reference computes with exactly the stored weights.
        for parameter in model.parameters():
            parameter.copy_(parameter.to(weights_dtype).float())
    return model


def checkpoint_tensors(model, weights_dtype):
    state = model.checkpoint_state_dict()
    schedule = {name for name, _ in model.named_buffers(recurse=False)}
    out = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and name not in schedule:
            tensor = tensor.to(weights_dtype)
        out[name] = tensor
    return out


class TokenIds:
    """CLIP-shaped id rows for a tiny vocabulary: start = vocab-2, end = vocab-1, like
    49406/49407 in the real one; SD1's CLIP pads with the end token, OpenCLIP with 0."""

    def __init__(self, config, generator):
        cond = config["model"]["params"]["cond_stage_config"]
        vocab = cond["params"]["text_config"]["vocab_size"]
        self.start, self.end = vocab - 2, vocab - 1
        self.pad = 0 if cond["target"].endswith("FrozenOpenCLIPEmbedder") else self.end
        self.vocab = vocab
        self.generator = generator

    def row(self, length):
        words = torch.randint(1, self.vocab - 2, (min(length, CONTEXT_LENGTH - 2),), generator=self.generator).tolist()
        ids = [self.start] + words + [self.end]
        return ids + [self.pad] * (CONTEXT_LENGTH - len(ids))

    def batch(self, lengths):
        return torch.tensor([self.row(n) for n in lengths], dtype=torch.int64)


def make_inputs(config, spec):
    """All inputs of one config, drawn from one seeded generator (float32)."""
    generator = torch.Generator().manual_seed(spec["input_seed"])
    params = config["model"]["params"]
    h, w = spec["latent"]
    z_channels = params["first_stage_config"]["params"]["embed_dim"]
    context_dim = params["unet_config"]["params"]["context_dim"]
    ids = TokenIds(config, generator)
    inputs = {
        "vae.encode.in.x": torch.rand((BATCH, 3, h * VAE_FACTOR, w * VAE_FACTOR), generator=generator) * 2 - 1,
        # Unscaled latents, as the pipeline hands them to the decoder (std ~ 1 / scale_factor).
        "vae.decode.in.z": torch.randn((BATCH, z_channels, h, w), generator=generator) / params["scale_factor"],
        "unet.in.x": torch.randn((BATCH, 4, h, w), generator=generator),
        "unet.in.timesteps": spec["timesteps"],
        "unet.in.context": torch.randn((BATCH, CONTEXT_LENGTH, context_dim), generator=generator),
        # A short prompt, and one that fills all 77 positions (no padding left).
        "clip.in.input_ids": ids.batch([5, 80]),
        "sample.cond_ids": ids.batch([7, 12]),
        "sample.uncond_ids": ids.batch([0, 0]),
    }
    if params["conditioning_key"] == "hybrid":
        inputs["image"] = torch.rand((BATCH, 3, h * VAE_FACTOR, w * VAE_FACTOR), generator=generator) * 2 - 1
        inputs["unet.in.c_concat"] = torch.cat(
            [
                (torch.rand((BATCH, 1, h, w), generator=generator) > 0.5).float(),
                torch.randn((BATCH, 4, h, w), generator=generator),
            ],
            dim=1,
        )
    return inputs


def inpainting_concat(model, image, latent_size):
    """c_concat as LatentInpaintDiffusion builds it: the mask resized to the latent, then the
    scaled latent of the masked image (posterior mean, so the dump stays deterministic)."""
    b, _, height, width = image.shape
    mask = torch.zeros((b, 1, height, width), dtype=image.dtype)
    mask[0, :, height // 4 : height // 2, width // 4 : (3 * width) // 4] = 1
    mask[1, :, height // 2 :, :] = 1
    masked_image = image * (mask < 0.5)
    latent = model.scale_factor * model.first_stage_model.encode(masked_image).mode()
    return torch.cat([F.interpolate(mask, size=latent_size), latent], dim=1)


def component_dumps(model, inputs, dtype):
    """Inputs and outputs of each component, computed in `dtype` (outputs returned as float32)."""
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    out = {}
    with torch.no_grad():
        out["vae.encode.out.moments"] = model.first_stage_model.encode_moments(cast["vae.encode.in.x"])
        out["vae.decode.out.x"] = model.first_stage_model.decode(cast["vae.decode.in.z"])
        out["unet.out.eps"] = model.apply_model(
            cast["unet.in.x"], cast["unet.in.timesteps"], cast["unet.in.context"], cast.get("unet.in.c_concat")
        )
        clip = model.cond_stage_model.transformer(cast["clip.in.input_ids"])
        out["clip.out.last_hidden_state"] = clip["last_hidden_state"]
        out["clip.out.penultimate_hidden_state"] = clip["penultimate_hidden_state"]
    return {k: v.float() for k, v in out.items()}


def sample_dump(model, inputs, spec, sampler, dtype):
    h, w = spec["latent"]
    x_T = torch.randn((BATCH, 4, h, w), generator=torch.Generator().manual_seed(spec["sample_seed"]))
    tensors = {
        "sample.in.x_T": x_T,
        "sample.in.cond_ids": inputs["sample.cond_ids"],
        "sample.in.uncond_ids": inputs["sample.uncond_ids"],
    }
    with torch.no_grad():
        c_concat = None
        if "image" in inputs:
            c_concat = inpainting_concat(model, inputs["image"].to(dtype), (h, w))
            tensors["sample.in.c_concat"] = c_concat.float()
        context = model.get_learned_conditioning(tensors["sample.in.cond_ids"])
        uncond = model.get_learned_conditioning(tensors["sample.in.uncond_ids"])
        z_0 = SAMPLERS[sampler](model, x_T.to(dtype), context, uncond, SAMPLE_STEPS, GUIDANCE_SCALE, 0.0, c_concat)
        tensors["sample.out.z_0"] = z_0.float()
        if sampler == "ddim":
            tensors["sample.out.image"] = model.decode_first_stage(z_0).float()
    return tensors


def metadata(name, **extra):
    return {"config": name, "torch_version": torch.__version__, "dtype": "float32", **extra}


def relative_error(value, reference):
    scale = reference.abs().max().item()
    return (value.double() - reference.double()).abs().max().item() / scale


def write_config(name, config, spec, out_dir, weights_dtype, precision_report):
    model = build_model(config, spec, weights_dtype)
    tag = str(weights_dtype).replace("torch.", "")
    save_file(checkpoint_tensors(model, weights_dtype), os.path.join(out_dir, f"{name}.safetensors"))
    with open(os.path.join(out_dir, f"{name}.yaml"), "w") as file:
        yaml.safe_dump(config, file, sort_keys=False, default_flow_style=None)

    inputs = make_inputs(config, spec)
    components = component_dumps(model, inputs, torch.float32)
    tensors = {k: v for k, v in inputs.items() if ".in." in k}
    tensors.update(components)
    save_file(tensors, os.path.join(out_dir, f"{name}.dump.safetensors"), metadata(name, weights_dtype=tag))

    samples = {
        sampler: sample_dump(model, inputs, spec, sampler, torch.float32) for sampler in spec["samplers"]
    }
    for sampler, sample_tensors in samples.items():
        meta = metadata(
            name,
            weights_dtype=tag,
            sampler=sampler,
            steps=str(SAMPLE_STEPS),
            guidance_scale=str(GUIDANCE_SCALE),
            eta="0.0",
            seed=str(spec["sample_seed"]),
        )
        save_file(sample_tensors, os.path.join(out_dir, f"{name}.sample-{sampler}.safetensors"), meta)

    if precision_report:
        # The same computation in float64: how far float32 itself is from the exact result.
        model64 = model.double()
        exact = component_dumps(model64, inputs, torch.float64)
        for key, value in components.items():
            print(f"  {name} {key}: float32 vs float64 max|diff|/max|ref| = {relative_error(value, exact[key]):.2e}")
        for sampler, sample_tensors in samples.items():
            exact_sample = sample_dump(model64, inputs, spec, sampler, torch.float64)
            for key in sample_tensors:
                if ".out." in key:
                    err = relative_error(sample_tensors[key], exact_sample[key])
                    print(f"  {name} sample-{sampler} {key}: float32 vs float64 = {err:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: the committed fixtures)")
    parser.add_argument("--weights-dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--precision-report", action="store_true", help="also compare float32 against float64")
    parser.add_argument("--config", action="append", choices=sorted(TINY_CONFIGS), help="only these configs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    weights_dtype = getattr(torch, args.weights_dtype)
    for name in args.config or list(TINY_CONFIGS):
        print(f"{name}")
        write_config(name, TINY_CONFIGS[name], SPECS[name], args.out, weights_dtype, args.precision_report)


if __name__ == "__main__":
    main()
