"""Tiny random-weight versions of the paper's own LDM configs (CompVis/latent-diffusion), run by the ORIGINAL
CompVis/latent-diffusion and taming-transformers code, written as checkpoints + YAML + reference dumps into
packages/ldm/test/fixtures/dumps/.

Usage (the upstream sources are never committed: export them into a temporary folder first):
    git --git-dir=<latent-diffusion mirror> archive HEAD | tar -x -C /tmp/upstream-ldm      (or copy its .py files)
    git --git-dir=<taming-transformers mirror> archive HEAD | tar -x -C /tmp/upstream-taming
    /usr/bin/python3 reference/make_ldm_family_dumps.py --ldm /tmp/upstream-ldm --taming /tmp/upstream-taming

Each tiny YAML keeps the structure of the upstream config it shrinks (reference/ldm_family/*.yaml):
- tiny-celebahq:  configs/latent-diffusion/celebahq-ldm-vq-4.yaml (VQ-f4, unconditional, AttentionBlocks with
                  num_head_channels, QKVAttentionLegacy), with a model_ema.* copy that differs (use_ema default true);
- tiny-churches:  lsun_churches-ldm-kl-8.yaml (KL-f8, unconditional, use_scale_shift_norm, resblock_updown,
                  scale_by_std: the scale_factor buffer in the checkpoint; new attention order on top, to cover
                  QKVAttention);
- tiny-cin:       cin256-v2.yaml (VQ-f4, ClassEmbedder, crossattn, SpatialTransformer with num_heads 1; CFG against
                  the last class);
- tiny-bsr:       models/ldm/bsr_sr/config.yaml (VQ-f4, cond stage torch.nn.Identity: the low-resolution image in
                  [-1, 1] concatenated to the latent, UNet in_channels 6);
- tiny-seg:       models/ldm/semantic_synthesis256/config.yaml (VQ-f4, SpatialRescaler over a one-hot segmentation
                  map, 12 classes instead of 182, concat);
- tiny-cin-f8:    cin-ldm-vq-f8.yaml (VQ-f8 with a mid-level attention block, ClassEmbedder of the default 1000
                  classes without a "no class", SpatialTransformer by num_head_channels, use_ema default; unguided).
Dumps: vae.encode (VQ: h, quant, indices; KL: moments), vae.decode, unet (c_concat for the concat models), cond
(ClassEmbedder on class_label, SpatialRescaler on segmentation), sample (upstream DDIMSampler, eta 0, and eta 1 with
global_seed: torch.manual_seed right before sampling; conditioned on class_label, LR_image or segmentation). tiny-bsr
also gets sample-tiles: a 4x larger LR_image sampled with split_input_params as ldm/notebook_helpers.py sets them
(UNet on overlapping latent crops, blended by apply_model's fold with get_weighting), ks and stride shrunk; and
notebook: an 8-bit image upscaled as the notebook does it from torch.manual_seed(seed) (not a validate dump: the
pipeline test runs `upscale` on it); tiny-seg gets generate: a class-id map sampled from torch.manual_seed(seed), what
`generate --segmentation` with that seed must give.
"""

import argparse
import os
import sys
import types

import numpy as np
import torch
import yaml
from torch import nn

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from crosscheck_upstream import install_shims, upstream_latent_diffusion  # noqa: E402
from ldm_ref.safetensors_io import save_file  # noqa: E402

OUT = os.path.join(HERE, "..", "packages", "ldm", "test", "fixtures", "dumps")
CONFIGS = os.path.join(HERE, "ldm_family")


def randomize(module, seed):
    """Every parameter random (std 1/sqrt(fan_in); norms 1 + N(0, 0.1) / N(0, 0.1)), rounded to float16 so the
    float16 checkpoint holds exactly the weights the reference computed with."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                value = base + 0.1 * torch.randn(p.shape, generator=generator)
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
                value = torch.randn(p.shape, generator=generator) / np.sqrt(fan_in)
            p.copy_(value.half().float())


def first_stage_params(params):
    """A first stage's constructor arguments, less what inference never runs: the checkpoint it would restore
    first (cin-ldm-vq-f8's ckpt_path; the LatentDiffusion's weights replace it) and its training loss
    (inpainting_big's DummyLoss, which this version of the code lacks; LPIPS, which downloads VGG weights)."""
    kept = {k: v for k, v in params.items() if k != "ckpt_path"}
    return {**kept, "lossconfig": {"target": "torch.nn.Identity"}}


def build(ldm_config):
    from ldm.models.autoencoder import AutoencoderKL, VQModelInterface
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.encoders.modules import ClassEmbedder, SpatialRescaler

    params = ldm_config["model"]["params"]
    unet = UNetModel(**params["unet_config"]["params"])
    first = params["first_stage_config"]
    first_cls = VQModelInterface if first["target"].endswith("VQModelInterface") else AutoencoderKL
    vae = first_cls(**first_stage_params(first["params"]))
    cond = params["cond_stage_config"]
    cond_model = None
    if isinstance(cond, dict) and cond["target"].endswith("ClassEmbedder"):
        cond_model = ClassEmbedder(**cond["params"])
    if isinstance(cond, dict) and cond["target"].endswith("SpatialRescaler"):
        cond_model = SpatialRescaler(**cond["params"])
    return unet.eval(), vae.eval(), cond_model


def state_dict(unet, vae, cond_model, ema_unet=None, scale_factor=None):
    out = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    out.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    if cond_model is not None:
        out.update({f"cond_stage_model.{k}": v for k, v in cond_model.state_dict().items()})
    if ema_unet is not None:
        # LitEma's buffers: model_ema.<name without dots>, plus its decay and update count.
        for k, v in ema_unet.state_dict().items():
            out["model_ema.diffusion_model" + k.replace(".", "")] = v
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    if scale_factor is not None:
        out["scale_factor"] = torch.tensor(scale_factor)
    return {k: (v.half() if v.is_floating_point() and v.ndim > 0 else v) for k, v in out.items()}


def nearest_code_margin(h, codebook):
    """Relative gap between the nearest and second-nearest code over all positions (VQ dumps must not sit on a tie)."""
    z = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]).double()
    d = torch.cdist(z, codebook.double())
    two = d.topk(2, largest=False).values
    return float(((two[:, 1] - two[:, 0]) / two[:, 1].clamp_min(1e-12)).min())


def one_hot(labels, classes):
    """[B, H, W] class ids -> [B, C, H, W] float one-hot, as the datasets' np.eye(n_labels)[segmentation] after
    get_input's 'b h w c -> b c h w'."""
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def block_labels(batch, classes, side, block, generator):
    """A blocky random segmentation map: one random class per block x block square."""
    coarse = torch.randint(0, classes, (batch, side // block, side // block), generator=generator)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


# The notebook's split_input_params (ldm/notebook_helpers.py: ks 128, stride 64 latent cells) with ks and stride
# shrunk to the tiny model; the clip weights and tie_braker as there.
SPLIT_INPUT = {
    "ks": (8, 8),
    "stride": (4, 4),
    "vqf": 4,
    "patch_distributed_vq": True,
    "tie_braker": False,
    "clip_max_weight": 0.5,
    "clip_min_weight": 0.01,
    "clip_max_tie_weight": 0.5,
    "clip_min_tie_weight": 0.01,
}


def import_upstream(ldm_dir, taming_dir):
    """Makes the original ldm and taming packages importable (shims for what their imports pull in and these
    models never call); returns upstream's DDIMSampler and the LatentDiffusion slice the samplers call."""
    install_shims()
    for name in ["taming", "taming.modules", "taming.modules.vqvae", "taming.modules.vqvae.quantize"]:
        sys.modules.pop(name, None)
    for name in ["clip", "PIL", "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont"]:
        mod = types.ModuleType(name)
        mod.Image = mod.ImageDraw = mod.ImageFont = None
        sys.modules[name] = mod
    sys.modules["einops"].reduce = None  # x_transformer imports it; the ClassEmbedder path never calls it
    sys.path.insert(0, taming_dir)
    sys.path.insert(0, ldm_dir)
    from ldm.models.diffusion.ddim import DDIMSampler

    return DDIMSampler, upstream_latent_diffusion(ldm_dir)


def parse_args_and_import():
    """The command line of this script and make_ldm_family_extra_dumps.py; imports the upstream code it names.
    Returns the arguments, upstream's DDIMSampler and the LatentDiffusion slice."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldm", required=True, help="CompVis/latent-diffusion sources")
    parser.add_argument("--taming", required=True, help="CompVis/taming-transformers sources")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    return (args, *import_upstream(args.ldm, args.taming))


def main():
    args, DDIMSampler, UpstreamLatentDiffusion = parse_args_and_import()
    from ldm.modules.encoders.modules import ClassEmbedder, SpatialRescaler

    models = [
        ("tiny-celebahq", 61),
        ("tiny-churches", 62),
        ("tiny-cin", 63),
        ("tiny-bsr", 64),
        ("tiny-seg", 65),
        ("tiny-cin-f8", 66),
    ]
    for name, seed in models:
        config_path = os.path.join(CONFIGS, f"{name}.yaml")
        config = yaml.safe_load(open(config_path))
        params = config["model"]["params"]
        unet, vae, cond_model = build(config)
        randomize(unet, seed)
        randomize(vae, seed + 100)
        if cond_model is not None:
            randomize(cond_model, seed + 200)
        ema_unet = None
        if params.get("use_ema", True):
            # The checkpoint's EMA copy is what upstream samples with (use_ema): the dumps use it, the plain
            # model.diffusion_model.* weights differ.
            ema_unet, _, _ = build(config)
            randomize(ema_unet, seed + 300)
            plain, sampled = unet, ema_unet
        else:
            plain, sampled = unet, unet
        scale_by_std = params.get("scale_by_std", False)
        scale_factor = 0.7071 if scale_by_std else params.get("scale_factor", 1.0)
        quantized = hasattr(vae, "quantize")
        tensors = {}
        meta = {"config": name, "torch_version": torch.__version__, "dtype": "float32"}
        f = 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
        latent = params["image_size"]
        channels = params["unet_config"]["params"]["out_channels"]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            x = torch.rand((2, 3, latent * f, latent * f), generator=g) * 2 - 1
            if quantized:
                h = vae.encode(x)
                quant, _, (_, _, indices) = vae.quantize(h)
                margin = nearest_code_margin(h, vae.quantize.embedding.weight)
                tensors.update({"vae.encode.in.x": x, "vae.encode.out.h": h, "vae.encode.out.quant": quant})
                tensors["vae.encode.out.indices"] = indices.reshape(h.shape[0], h.shape[2], h.shape[3]).long()
                meta["vq_min_relative_margin"] = f"{margin:.3e}"
                z = torch.randn((2, channels, latent, latent), generator=g)
                tensors.update({"vae.decode.in.z": z, "vae.decode.out.x": vae.decode(z)})
            else:
                moments = vae.quant_conv(vae.encoder(x))
                tensors.update({"vae.encode.in.x": x, "vae.encode.out.moments": moments})
                z = torch.randn((2, channels, latent, latent), generator=g)
                tensors.update({"vae.decode.in.z": z, "vae.decode.out.x": vae.decode(z)})
            xu = torch.randn((2, channels, latent, latent), generator=g)
            t = torch.tensor([911, 37])
            context = None
            c_concat = None
            identity = params["cond_stage_config"] != "__is_unconditional__" and params["cond_stage_config"][
                "target"
            ].endswith("Identity")
            if isinstance(cond_model, ClassEmbedder):
                labels = torch.tensor([3, cond_model.embedding.num_embeddings - 1])
                c = cond_model({"class_label": labels})
                tensors.update({"cond.in.class_label": labels, "cond.out.c_crossattn": c})
                context = c
                tensors["unet.in.context"] = c
            elif isinstance(cond_model, SpatialRescaler):
                classes = params["cond_stage_config"]["params"]["in_channels"]
                segmentation = one_hot(torch.randint(0, classes, (2, latent * f, latent * f), generator=g), classes)
                c_concat = cond_model(segmentation)
                tensors.update({"cond.in.segmentation": segmentation, "cond.out.c_concat": c_concat})
            elif identity:
                c_concat = torch.rand((2, 3, latent, latent), generator=g) * 2 - 1
            x_in = xu if c_concat is None else torch.cat([xu, c_concat], dim=1)  # DiffusionWrapper's concat
            if c_concat is not None:
                tensors["unet.in.c_concat"] = c_concat
            tensors.update({"unet.in.x": xu, "unet.in.timesteps": t, "unet.out.eps": sampled(x_in, t, context=context)})

            # Sampling with the upstream DDIMSampler over upstream apply_model / DiffusionWrapper.
            conditioning_key = None if params["cond_stage_config"] == "__is_unconditional__" else params.get(
                "conditioning_key", "concat" if params.get("concat_mode", True) else "crossattn"
            )
            ldm = UpstreamLatentDiffusion({**params, "conditioning_key": conditioning_key}, sampled)
            shape = (channels, latent, latent)
            x_T = torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed + 1))
            for eta, steps in [(0.0, 10), (1.0, 10)]:
                sampler = DDIMSampler(ldm)
                sampler.register_buffer = lambda n, a, s=sampler: setattr(s, n, a)
                extra = {}
                inputs = {"sample.in.x_T": x_T}
                guidance = 1.0
                g_cond = torch.Generator().manual_seed(seed + 3)
                if isinstance(cond_model, SpatialRescaler):
                    classes = params["cond_stage_config"]["params"]["in_channels"]
                    segmentation = one_hot(block_labels(2, classes, latent * f, 4, g_cond), classes)
                    extra = {"conditioning": cond_model(segmentation)}
                    inputs["sample.in.segmentation"] = segmentation
                elif identity:
                    low = torch.rand((2, 3, latent, latent), generator=g_cond) * 2 - 1
                    extra = {"conditioning": low}
                    inputs["sample.in.LR_image"] = low
                elif cond_model is not None:
                    label = torch.tensor([5, 7])
                    extra = {"conditioning": cond_model({"class_label": label})}
                    inputs["sample.in.class_label"] = label
                    # cin256-v2 sets n_classes 1001: its last class is "no class", guidance's unconditional
                    # input (the notebook's scale 3.0). cin-ldm-vq-f8 keeps the constructor's 1000 real
                    # classes: nothing to guide against, so it samples unguided.
                    if "n_classes" in params["cond_stage_config"]["params"]:
                        uncond = torch.tensor([cond_model.embedding.num_embeddings - 1] * 2)
                        extra["unconditional_conditioning"] = cond_model({"class_label": uncond})
                        guidance = 3.0
                        inputs["sample.in.uncond_class_label"] = uncond
                global_seed = seed + 2
                torch.manual_seed(global_seed)
                z0, _ = sampler.sample(
                    S=steps, batch_size=2, shape=shape, eta=eta, x_T=x_T, verbose=False,
                    unconditional_guidance_scale=guidance, **extra,
                )
                image = vae.decode(z0 / scale_factor) if not quantized else vae.decode(z0 / scale_factor)
                sample = {**inputs, "sample.out.z_0": z0, "sample.out.image": image}
                sample_meta = {
                    **meta, "sampler": "ddim", "steps": str(steps), "guidance_scale": str(guidance), "eta": str(eta),
                }
                if eta:
                    sample_meta["global_seed"] = str(global_seed)
                suffix = "ddim" if eta == 0 else "ddim-eta1"
                save_file(sample, os.path.join(args.out, f"{name}.sample-{suffix}.safetensors"), sample_meta)
            if identity:
                # The notebook's tiled super-resolution: DDIM with eta 1 on a latent twice the crop size, the UNet
                # on overlapping crops of it and of the low-resolution image.
                ldm.split_input_params = SPLIT_INPUT
                ldm.cond_stage_key = params["cond_stage_key"]
                side = 2 * SPLIT_INPUT["ks"][0]
                g_tiles = torch.Generator().manual_seed(seed + 4)
                low = torch.rand((1, 3, side, side), generator=g_tiles) * 2 - 1
                x_T = torch.randn((1, channels, side, side), generator=g_tiles)
                sampler = DDIMSampler(ldm)
                sampler.register_buffer = lambda n, a, s=sampler: setattr(s, n, a)
                global_seed = seed + 5
                torch.manual_seed(global_seed)
                z0, _ = sampler.sample(
                    S=10, batch_size=1, shape=(channels, side, side), eta=1.0, x_T=x_T, verbose=False, conditioning=low
                )
                del ldm.split_input_params
                tiles_meta = {
                    **meta, "sampler": "ddim", "steps": "10", "guidance_scale": "1.0", "eta": "1.0",
                    "global_seed": str(global_seed),
                    "split_input_ks": ",".join(map(str, SPLIT_INPUT["ks"])),
                    "split_input_stride": ",".join(map(str, SPLIT_INPUT["stride"])),
                }
                save_file(
                    {"sample.in.x_T": x_T, "sample.in.LR_image": low, "sample.out.z_0": z0},
                    os.path.join(args.out, f"{name}.sample-tiles.safetensors"),
                    tiles_meta,
                )
                # The notebook end to end: an 8-bit image as ToTensor reads it (k / 255, then 2c - 1), x_T and each
                # step's noise from torch's global generator seeded once (DDIMSampler draws x_T when given none),
                # decoded; `ldm upscale --seed` must give this z_0 and image.
                g_nb = torch.Generator().manual_seed(seed + 6)
                pixels = torch.randint(0, 256, (1, 3, latent, latent), generator=g_nb, dtype=torch.uint8)
                low = 2.0 * (pixels.float().div(255)) - 1.0
                notebook_seed = seed + 7
                torch.manual_seed(notebook_seed)
                sampler = DDIMSampler(ldm)
                sampler.register_buffer = lambda n, a, s=sampler: setattr(s, n, a)
                z0, _ = sampler.sample(
                    S=10, batch_size=1, shape=(channels, latent, latent), eta=1.0, verbose=False, conditioning=low
                )
                save_file(
                    {
                        "notebook.in.pixels": pixels.float(),
                        "notebook.out.z_0": z0,
                        "notebook.out.image": vae.decode(z0 / scale_factor),
                    },
                    os.path.join(args.out, f"{name}.notebook.safetensors"),
                    {**meta, "seed": str(notebook_seed), "steps": "10", "eta": "1.0", "sampler": "ddim"},
                )
            if isinstance(cond_model, SpatialRescaler):
                # ldm generate --segmentation end to end: class ids made one-hot as the datasets do
                # (np.eye(n_labels)[segmentation], then 'b h w c -> b c h w'), torch.manual_seed(seed), DDIMSampler
                # drawing x_T, eta 0, decoded; generate with the same ids and seed must give this z_0.
                classes = params["cond_stage_config"]["params"]["in_channels"]
                g_map = torch.Generator().manual_seed(seed + 6)
                labels = block_labels(1, classes, latent * f, 4, g_map)
                labels[0, : latent * f // 2, : latent * f // 4] = classes - 1  # an asymmetric patch: rows vs columns
                onehot = torch.from_numpy(np.eye(classes)[labels.numpy()]).float().permute(0, 3, 1, 2)
                map_seed = seed + 7
                torch.manual_seed(map_seed)
                sampler = DDIMSampler(ldm)
                sampler.register_buffer = lambda n, a, s=sampler: setattr(s, n, a)
                z0, _ = sampler.sample(
                    S=10, batch_size=1, shape=(channels, latent, latent), eta=0.0, verbose=False,
                    conditioning=cond_model(onehot),
                )
                save_file(
                    {"generate.in.labels": labels.float(), "generate.out.z_0": z0},
                    os.path.join(args.out, f"{name}.generate.safetensors"),
                    {**meta, "seed": str(map_seed), "steps": "10", "eta": "0.0", "sampler": "ddim"},
                )
        save_file(tensors, os.path.join(args.out, f"{name}.dump.safetensors"), meta)
        save_file(
            state_dict(unet, vae, cond_model, ema_unet, scale_factor if scale_by_std else None),
            os.path.join(args.out, f"{name}.safetensors"),
        )
        with open(config_path) as src, open(os.path.join(args.out, f"{name}.yaml"), "w") as dst:
            dst.write(src.read())
        print(name, "written", {k: tuple(v.shape) for k, v in tensors.items()}, meta.get("vq_min_relative_margin"))


if __name__ == "__main__":
    main()
