"""More of the paper's models (CompVis/latent-diffusion) run by the ORIGINAL upstream code, beside
make_ldm_family_dumps.py (whose checkpoints the loss dumps read: run it first), into packages/ldm/test/fixtures/dumps/.

Usage (the upstream sources exported into temporary folders, never committed, as for make_ldm_family_dumps.py):
    /usr/bin/python3 reference/make_ldm_family_extra_dumps.py --ldm /tmp/upstream-ldm --taming /tmp/upstream-taming

- tiny-inpainting: models/ldm/inpainting_big/config.yaml shrunk (reference/ldm_family/tiny-inpainting.yaml), weights
  random, with a model_ema.* copy (use_ema's default) and cond_stage_model.* = first_stage_model.* (the cond stage IS
  the first stage). Everything as scripts/inpaint.py computes it: make_batch's image, mask (binarised) and
  masked_image = (1 − mask)·image, each then ·2 − 1; c = cat(first stage encode of masked_image, mask resized
  nearest to the latent). Dumps: cond (mask + masked_image → c_concat), unet (with c_concat), and the DDIMSampler's
  sample (eta 0: x_T = torch.randn from x_T_seed, which is what the library draws from that seed; eta 1 with
  global_seed) with its outputs z_0, image (decode_first_stage: quantized) and inpainted = (1 − mask)·image +
  mask·predicted after clamping each to [0, 1], as the script writes it (before its ·255 and uint8).
- tiny-vq-f4, tiny-kl-f8: models/first_stage_models/{vq-f4,kl-f8}/config.yaml shrunk: a VQModel / AutoencoderKL
  alone, its checkpoint keys without a prefix plus a `loss.discriminator.*` tensor as the released files carry their
  training loss's modules. Dumps: vae.encode (VQ: h = encode_to_prequant, quant and indices as encode returns them;
  KL: moments), vae.decode (VQ: z quantized first, as VQModel.forward decodes encode's quant; KL: decode); and
  <name>.roundtrip: an 8-bit image's latent (VQ: h and indices; KL: the posterior's mode and a seeded sample) and its
  decoding, what `ldm vae encode` / `decode` must give.
- <model>.loss for tiny-celebahq, tiny-churches, tiny-cin, tiny-inpainting, tiny-bsr and tiny-seg (unconditional VQ
  and KL with scale_by_std, class crossattn, and the three kinds of concat: the first stage's masked image + mask,
  the low-resolution image itself, the SpatialRescaler over a one-hot segmentation map): upstream
  LatentDiffusion.p_losses at a fixed t, batch 1. After torch.manual_seed(seed) the image is encoded as get_input
  does (encode_first_stage, get_first_stage_encoding: KL samples its posterior from the global generator) and
  p_losses draws its noise with torch.randn_like; the dump holds x, x_start, noise, t and the conditioning
  (class_label; mask + masked_image; LR_image in [-1, 1] from 8-bit values; the one-hot segmentation of a blocky
  class map), and the loss_dict's loss_simple (the config's loss_type, l2 by default).
"""

import os
import sys

import torch
import yaml

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from crosscheck_upstream import methods_from_source  # noqa: E402
from ldm_ref.safetensors_io import load_file, save_file  # noqa: E402
from make_ldm_family_dumps import (  # noqa: E402
    CONFIGS,
    build,
    first_stage_params,
    block_labels,
    nearest_code_margin,
    one_hot,
    parse_args_and_import,
    randomize,
    state_dict,
)


def copy_yaml(name, out):
    with open(os.path.join(CONFIGS, f"{name}.yaml")) as src, open(os.path.join(out, f"{name}.yaml"), "w") as dst:
        dst.write(src.read())


def inpaint_batch(generator, batch, side):
    """scripts/inpaint.py's make_batch for `batch` random images and masks (each a rectangle whose edges do not
    fall on the latent grid, so resizing the mask to the latent matters)."""
    image = torch.randint(0, 256, (batch, 3, side, side), generator=generator).float() / 255
    mask = torch.zeros((batch, 1, side, side))
    for b in range(batch):
        top, left = (int(v) for v in torch.randint(1, side // 2, (2,), generator=generator))
        height, width = (int(v) for v in torch.randint(side // 4, side // 2, (2,), generator=generator))
        mask[b, :, top : top + height, left : left + width] = 1
    masked_image = (1 - mask) * image
    return {k: v * 2.0 - 1.0 for k, v in {"image": image, "mask": mask, "masked_image": masked_image}.items()}


def inpaint_conditioning(vae, batch, latent_shape):
    """scripts/inpaint.py: encode the masked image, concatenate the mask resized (nearest) to the latent."""
    c = vae.encode(batch["masked_image"])
    cc = torch.nn.functional.interpolate(batch["mask"], size=latent_shape)
    return torch.cat((c, cc), dim=1)


def inpainted(batch, x_samples):
    """scripts/inpaint.py's result before ·255: each clamped to [0, 1], the prediction inside the mask."""
    image = torch.clamp((batch["image"] + 1.0) / 2.0, min=0.0, max=1.0)
    mask = torch.clamp((batch["mask"] + 1.0) / 2.0, min=0.0, max=1.0)
    predicted = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)
    return (1 - mask) * image + mask * predicted


def make_inpainting(args, DDIMSampler, UpstreamLatentDiffusion, seed=71):
    name = "tiny-inpainting"
    config = yaml.safe_load(open(os.path.join(CONFIGS, f"{name}.yaml")))
    params = config["model"]["params"]
    unet, vae, _ = build(config)
    randomize(unet, seed)
    randomize(vae, seed + 100)
    ema_unet, _, _ = build(config)
    randomize(ema_unet, seed + 300)
    latent = params["image_size"]
    side = latent * 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    meta = {"config": name, "torch_version": torch.__version__, "dtype": "float32"}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    with torch.no_grad():
        # The first stage alone (VQ-f4 without attention, attn_type none), as make_ldm_family_dumps.py dumps it.
        x = torch.rand((2, 3, side, side), generator=g) * 2 - 1
        h = vae.encode(x)
        quant, _, (_, _, indices) = vae.quantize(h)
        tensors.update({"vae.encode.in.x": x, "vae.encode.out.h": h, "vae.encode.out.quant": quant})
        tensors["vae.encode.out.indices"] = indices.reshape(h.shape[0], h.shape[2], h.shape[3]).long()
        z = torch.randn((2, 3, latent, latent), generator=g)
        tensors.update({"vae.decode.in.z": z, "vae.decode.out.x": vae.decode(z)})
        margins = [nearest_code_margin(h, vae.quantize.embedding.weight)]
        batch = inpaint_batch(g, 2, side)
        c = inpaint_conditioning(vae, batch, (latent, latent))
        margins.append(nearest_code_margin(c[:, :3], vae.quantize.embedding.weight))
        meta["vq_min_relative_margin"] = f"{min(margins):.3e}"
        tensors.update({"cond.in.mask": batch["mask"], "cond.in.masked_image": batch["masked_image"]})
        tensors["cond.out.c_concat"] = c
        x = torch.randn((2, 3, latent, latent), generator=g)
        t = torch.tensor([911, 37])
        tensors.update({"unet.in.x": x, "unet.in.timesteps": t, "unet.in.c_concat": c})
        tensors["unet.out.eps"] = ema_unet(torch.cat([x, c], dim=1), t)

        ldm = UpstreamLatentDiffusion({**params, "conditioning_key": "concat"}, ema_unet)
        one = inpaint_batch(g, 1, side)
        c1 = inpaint_conditioning(vae, one, (latent, latent))
        shape = (3, latent, latent)
        x_T_seed = seed + 1
        x_T = torch.randn((1, *shape), generator=torch.Generator().manual_seed(x_T_seed))
        inputs = {
            "sample.in.x_T": x_T,
            "sample.in.image": one["image"],
            "sample.in.mask": one["mask"],
            "sample.in.masked_image": one["masked_image"],
        }
        for eta in [0.0, 1.0]:
            sampler = DDIMSampler(ldm)
            sampler.register_buffer = lambda n, a, s=sampler: setattr(s, n, a)
            global_seed = seed + 2
            torch.manual_seed(global_seed)
            z0, _ = sampler.sample(S=10, conditioning=c1, batch_size=1, shape=shape, eta=eta, x_T=x_T, verbose=False)
            x_samples = vae.decode(z0 / params.get("scale_factor", 1.0))  # decode_first_stage: quantizes
            sample = {
                **inputs,
                "sample.out.z_0": z0,
                "sample.out.image": x_samples,
                "sample.out.inpainted": inpainted(one, x_samples),
            }
            sample_meta = {**meta, "sampler": "ddim", "steps": "10", "guidance_scale": "1.0", "eta": str(eta)}
            sample_meta["x_T_seed"] = str(x_T_seed)
            if eta:
                sample_meta["global_seed"] = str(global_seed)
            suffix = "ddim" if eta == 0 else "ddim-eta1"
            save_file(sample, os.path.join(args.out, f"{name}.sample-{suffix}.safetensors"), sample_meta)
    save_file(tensors, os.path.join(args.out, f"{name}.dump.safetensors"), meta)
    weights = state_dict(unet, vae, None, ema_unet)
    # LatentDiffusion.instantiate_cond_stage: cond_stage_model = first_stage_model, so its state_dict holds both.
    weights.update({k.replace("first_stage_model.", "cond_stage_model.", 1): v for k, v in weights.items()
                    if k.startswith("first_stage_model.")})
    save_file(weights, os.path.join(args.out, f"{name}.safetensors"))
    copy_yaml(name, args.out)
    print(name, "written", meta["vq_min_relative_margin"])


def make_first_stage(args, name, seed):
    from ldm.models.autoencoder import AutoencoderKL, VQModel

    config = yaml.safe_load(open(os.path.join(CONFIGS, f"{name}.yaml")))
    model = config["model"]
    cls = VQModel if model["target"].endswith("VQModel") else AutoencoderKL
    vae = cls(**first_stage_params(model["params"])).eval()
    randomize(vae, seed)
    dd = model["params"]["ddconfig"]
    side = dd["resolution"]
    latent = side // 2 ** (len(dd["ch_mult"]) - 1)
    meta = {"config": name, "torch_version": torch.__version__, "dtype": "float32"}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = torch.rand((2, 3, side, side), generator=g) * 2 - 1
        z = torch.randn((2, model["params"]["embed_dim"], latent, latent), generator=g)
        tensors = {"vae.encode.in.x": x, "vae.decode.in.z": z}
        if cls is VQModel:
            h = vae.encode_to_prequant(x)
            quant, _, (_, _, indices) = vae.encode(x)
            tensors.update({"vae.encode.out.h": h, "vae.encode.out.quant": quant})
            tensors["vae.encode.out.indices"] = indices.reshape(h.shape[0], h.shape[2], h.shape[3]).long()
            meta["vq_min_relative_margin"] = f"{nearest_code_margin(h, vae.quantize.embedding.weight):.3e}"
            tensors["vae.decode.out.x"] = vae.decode(vae.quantize(z)[0])
        else:
            tensors["vae.encode.out.moments"] = vae.quant_conv(vae.encoder(x))
            tensors["vae.decode.out.x"] = vae.decode(z)
    save_file(tensors, os.path.join(args.out, f"{name}.dump.safetensors"), meta)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in vae.state_dict().items()}
    # The released first-stage checkpoints also hold their training loss (LPIPS, the patch discriminator).
    weights["loss.discriminator.main.0.weight"] = torch.randn((4, 3, 4, 4), generator=g).half()
    save_file(weights, os.path.join(args.out, f"{name}.safetensors"))
    copy_yaml(name, args.out)
    print(name, "written", meta.get("vq_min_relative_margin"))


def make_roundtrip(args, name, seed):
    """<name>.roundtrip: an 8-bit image, 8 pixels wider than tall (a transposition shows), through the original module
    as `ldm vae encode` / `decode` run it. VQ: h = encode_to_prequant(x), the indices of its codes and decode(quant)
    (VQModel.forward). KL: the posterior's mode, posterior.sample() after torch.manual_seed(seed), and decode(mode).
    The weights are the fixture checkpoint's (make_first_stage writes it); not a validate dump: the CLI test reads it."""
    from ldm.models.autoencoder import AutoencoderKL, VQModel

    config = yaml.safe_load(open(os.path.join(CONFIGS, f"{name}.yaml")))
    model = config["model"]
    cls = VQModel if model["target"].endswith("VQModel") else AutoencoderKL
    vae = cls(**first_stage_params(model["params"])).eval()
    weights = load_file(os.path.join(args.out, f"{name}.safetensors"))[0]
    vae.load_state_dict({k: v.float() for k, v in weights.items() if not k.startswith("loss.")})
    side = model["params"]["ddconfig"]["resolution"]
    g = torch.Generator().manual_seed(seed)
    meta = {"config": name, "torch_version": torch.__version__, "dtype": "float32", "seed": str(seed)}
    with torch.no_grad():
        pixels = torch.randint(0, 256, (1, 3, side, side + 8), generator=g).float()
        x = pixels / 255 * 2 - 1
        tensors = {"roundtrip.in.pixels": pixels}
        if cls is VQModel:
            h = vae.encode_to_prequant(x)
            quant, _, (_, _, indices) = vae.quantize(h)
            meta["vq_min_relative_margin"] = f"{nearest_code_margin(h, vae.quantize.embedding.weight):.3e}"
            tensors.update({"roundtrip.out.h": h, "roundtrip.out.x": vae.decode(quant)})
            tensors["roundtrip.out.indices"] = indices.reshape(h.shape[0], h.shape[2], h.shape[3]).long()
        else:
            posterior = vae.encode(x)
            torch.manual_seed(seed)
            tensors.update({"roundtrip.out.mode": posterior.mode(), "roundtrip.out.sample": posterior.sample()})
            tensors["roundtrip.out.x"] = vae.decode(posterior.mode())
    save_file(tensors, os.path.join(args.out, f"{name}.roundtrip.safetensors"), meta)
    print(name, "roundtrip", meta.get("vq_min_relative_margin"))


def upstream_loss_model(args, UpstreamLatentDiffusion):
    """UpstreamLatentDiffusion with upstream's p_losses, q_sample, get_loss and get_first_stage_encoding."""
    from ldm.modules.diffusionmodules.util import extract_into_tensor
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
    from ldm.util import default, mean_flat

    ddpm = os.path.join(args.ldm, "ldm", "models", "diffusion", "ddpm.py")
    namespace = {
        "torch": torch,
        "default": default,
        "mean_flat": mean_flat,
        "extract_into_tensor": extract_into_tensor,
        "DiagonalGaussianDistribution": DiagonalGaussianDistribution,
    }
    methods = methods_from_source(ddpm, "DDPM", ["q_sample", "get_loss"], dict(namespace))
    methods.update(
        methods_from_source(ddpm, "LatentDiffusion", ["p_losses", "get_first_stage_encoding"], dict(namespace))
    )

    class LossModel(UpstreamLatentDiffusion):
        def __init__(self, params, unet, scale_factor):
            super().__init__(params, unet)
            # DDPM's defaults for what p_losses reads (logvar_init 0, l_simple_weight 1, original_elbo_weight 0).
            self.loss_type = params.get("loss_type", "l2")
            self.logvar = torch.zeros(params["timesteps"])
            self.learn_logvar = False
            self.l_simple_weight = 1.0
            self.original_elbo_weight = 0.0
            self.scale_factor = scale_factor

    for name, fn in methods.items():
        setattr(LossModel, name, fn)
    return LossModel


def load_prefixed(module, weights, prefix):
    module.load_state_dict({k[len(prefix) :]: v.float() for k, v in weights.items() if k.startswith(prefix)})


def make_loss(args, LossModel, name, seed, t):
    config = yaml.safe_load(open(os.path.join(CONFIGS, f"{name}.yaml")))
    params = config["model"]["params"]
    unet, vae, cond_model = build(config)
    weights = load_file(os.path.join(args.out, f"{name}.safetensors"))[0]
    load_prefixed(vae, weights, "first_stage_model.")
    if cond_model is not None:
        load_prefixed(cond_model, weights, "cond_stage_model.")
    if params.get("use_ema", True):
        names = [k for k in unet.state_dict()]
        unet.load_state_dict({k: weights["model_ema.diffusion_model" + k.replace(".", "")].float() for k in names})
    else:
        load_prefixed(unet, weights, "model.diffusion_model.")
    scale_factor = float(weights["scale_factor"]) if params.get("scale_by_std") else params.get("scale_factor", 1.0)
    cond = params["cond_stage_config"]
    key = None if cond == "__is_unconditional__" else params.get(
        "conditioning_key", "concat" if params.get("concat_mode", True) else "crossattn"
    )
    ldm = LossModel({**params, "conditioning_key": key}, unet, scale_factor).eval()
    ldm.first_stage_model = vae
    side = params["image_size"] * 2 ** (len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]) - 1)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    with torch.no_grad():
        # An 8-bit image, so that the library's loss reads the same pixels from a PNG.
        image = torch.randint(0, 256, (1, 3, side, side), generator=g).float() / 255
        x = image * 2 - 1
        c = None
        if isinstance(cond, dict) and cond["target"].endswith("ClassEmbedder"):
            label = torch.tensor([4])
            c = cond_model({"class_label": label})
            tensors["loss.in.class_label"] = label
        elif cond == "__is_first_stage__":
            batch = inpaint_batch(g, 1, side)
            batch["image"] = x
            batch["masked_image"] = (1 - (batch["mask"] + 1) / 2) * image * 2 - 1
            c = inpaint_conditioning(vae, batch, (params["image_size"],) * 2)
            tensors.update({"loss.in.mask": batch["mask"], "loss.in.masked_image": batch["masked_image"]})
        elif isinstance(cond, dict) and cond["target"].endswith("Identity"):
            # bsr_sr: c is the low-resolution image itself, at the latent's size; 8-bit, as the library reads a PNG.
            latent = params["image_size"]
            c = torch.randint(0, 256, (1, 3, latent, latent), generator=g).float() / 255 * 2 - 1
            tensors["loss.in.LR_image"] = c
        elif isinstance(cond, dict) and cond["target"].endswith("SpatialRescaler"):
            # Semantic synthesis (cond_stage_trainable: get_learned_conditioning runs in shared_step, as here).
            classes = cond["params"]["in_channels"]
            segmentation = one_hot(block_labels(1, classes, side, 4, g), classes)
            c = cond_model(segmentation)
            tensors["loss.in.segmentation"] = segmentation
        torch.manual_seed(seed)
        x_start = ldm.get_first_stage_encoding(vae.encode(x))
        noise = torch.randn_like(x_start)
        ts = torch.tensor([t])
        _, loss_dict = ldm.p_losses(x_start, c, ts, noise=noise)
        tensors.update({"loss.in.x": x, "loss.in.x_start": x_start, "loss.in.noise": noise, "loss.in.t": ts})
        tensors["loss.out.loss_simple"] = loss_dict["val/loss_simple"].reshape(1)
    meta = {
        "config": name,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "seed": str(seed),
        "loss_type": ldm.loss_type,
    }
    save_file(tensors, os.path.join(args.out, f"{name}.loss.safetensors"), meta)
    print(name, "loss", ldm.loss_type, float(tensors["loss.out.loss_simple"]))


def main():
    args, DDIMSampler, UpstreamLatentDiffusion = parse_args_and_import()

    make_inpainting(args, DDIMSampler, UpstreamLatentDiffusion)
    make_first_stage(args, "tiny-vq-f4", 72)
    make_first_stage(args, "tiny-kl-f8", 73)
    make_roundtrip(args, "tiny-vq-f4", 74)
    make_roundtrip(args, "tiny-kl-f8", 75)
    LossModel = upstream_loss_model(args, UpstreamLatentDiffusion)
    for name, seed, t in [("tiny-celebahq", 81, 637), ("tiny-churches", 82, 250), ("tiny-cin", 83, 911),
                          ("tiny-inpainting", 84, 480), ("tiny-bsr", 85, 700), ("tiny-seg", 86, 150)]:
        make_loss(args, LossModel, name, seed, t)


if __name__ == "__main__":
    main()
