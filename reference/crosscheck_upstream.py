"""Runs the ORIGINAL upstream code on the committed tiny checkpoints and compares its outputs
with the committed dumps. This is what proves the port in ldm_ref/ (see README.md).

Upstream sources are read from --upstream ROOT (not part of this repository):
  ROOT/stablediffusion   Stability-AI/stablediffusion   (or CompVis/stable-diffusion, with --ldm)
  ROOT/k-diffusion       crowsonkb/k-diffusion
  ROOT/open_clip         mlfoundations/open_clip at v2.0.2 (the version SD2 was released with)
  ROOT/transformers      huggingface/transformers 4.27 (src/transformers/models/clip/modeling_clip.py
                         and src/transformers/activations.py)

Dependencies Debian's Python lacks (einops, tqdm, pytorch_lightning, omegaconf, ...) are
replaced by small shims below; none of them computes anything the comparison depends on,
except `rearrange`, which is implemented in full for the patterns the upstream code uses.

Usage: /usr/bin/python3 reference/crosscheck_upstream.py --upstream /tmp/upstream [--ldm stable-diffusion]
"""

import argparse
import ast
import dataclasses
import os
import re
import sys
import types
from collections import OrderedDict
from functools import partial

sys.dont_write_bytecode = True

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from ldm_ref.clip import CLIP_VIT_L14_TEXT, OPENCLIP_VIT_H14_TEXT  # noqa: E402
from ldm_ref.safetensors_io import load_file  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packages", "ldm", "test", "fixtures", "dumps")
CONFIGS = ["tiny-sd1", "tiny-sd2", "tiny-inpaint"]


# ---------------------------------------------------------------- shims for missing packages


def _parse_axes(side):
    groups = []
    for match in re.finditer(r"\(([^)]*)\)|(\S+)", side):
        groups.append(match.group(1).split() if match.group(1) is not None else [match.group(2)])
    return groups


def rearrange(tensor, pattern, **sizes):
    """einops.rearrange for patterns made of names and parenthesised groups."""
    left, right = (_parse_axes(side) for side in pattern.split("->"))
    if len(left) != tensor.ndim:
        raise ValueError(f"rearrange {pattern!r}: tensor has {tensor.ndim} dims")
    known = dict(sizes)
    for group, dim in zip(left, tensor.shape):
        unknown = [name for name in group if name not in known]
        product = int(np.prod([known[name] for name in group if name in known]))
        if len(unknown) > 1:
            raise ValueError(f"rearrange {pattern!r}: cannot infer {unknown}")
        if unknown:
            known[unknown[0]] = dim // product
    flat_left = [name for group in left for name in group]
    flat_right = [name for group in right for name in group]
    out = tensor.reshape([known[name] for name in flat_left]).permute([flat_left.index(n) for n in flat_right])
    return out.reshape([int(np.prod([known[name] for name in group])) for group in right])


def repeat(*_args, **_kwargs):
    raise NotImplementedError("einops.repeat is not reached by the code paths this check runs")


def install_shims():
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    module("einops", rearrange=rearrange, repeat=repeat)
    module("tqdm", tqdm=lambda iterable, **_: iterable, trange=lambda *a, **_: range(*a))
    sys.modules["tqdm.auto"] = sys.modules["tqdm"]
    module("scipy", integrate=None)
    module("scipy.integrate")
    module("torchdiffeq", odeint=None)
    module("torchsde")
    module("safetensors")
    module("kornia")
    module("torchvision")
    module("torchvision.ops")
    module("torchvision.ops.misc", FrozenBatchNorm2d=nn.Module)
    module("torchvision.transforms")
    module("torchvision.transforms.functional")
    module("torchvision.utils", make_grid=None)

    class ListConfig(list):
        pass

    module("omegaconf", ListConfig=ListConfig, OmegaConf=None)
    module("omegaconf.listconfig", ListConfig=ListConfig)
    module("taming")
    module("taming.modules")
    module("taming.modules.vqvae")
    module("taming.modules.vqvae.quantize", VectorQuantizer2=None)
    module("pytorch_lightning", LightningModule=nn.Module)
    module("pytorch_lightning.utilities")
    module("pytorch_lightning.utilities.distributed", rank_zero_only=lambda f: f)
    module(
        "transformers",
        T5Tokenizer=None,
        T5EncoderModel=None,
        CLIPTokenizer=None,
        CLIPTextModel=None,
    )


def package_without_init(name, path):
    """Makes `import name.sub` load name/sub.py without running name/__init__.py (which
    imports everything the package offers, with dependencies we do not have)."""
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
    return package


def methods_from_source(path, class_name, names, namespace, optional=()):
    """Compiles the named methods of `class_name` in the upstream file as plain functions
    (`optional` ones only where that version of the file has them)."""
    tree = ast.parse(open(path).read())
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    defs = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name in (*names, *optional)]
    missing = set(names) - {node.name for node in defs}
    if missing:
        raise KeyError(f"{class_name} in {path} has no {sorted(missing)}")
    for node in defs:
        node.decorator_list = []
    code = compile(ast.Module(body=defs, type_ignores=[]), path, "exec")
    exec(code, namespace)
    return {node.name: namespace[node.name] for node in defs}


def load_hf_clip(root):
    """transformers' CLIPTextModel from its source file, with its package-relative imports
    (configuration, PreTrainedModel, docstring decorators) replaced by minimal stand-ins."""
    src = os.path.join(root, "src", "transformers")

    def strip(text):
        text = re.sub(r"^import torch_mlu\s*$", "", text, flags=re.M)
        text = re.sub(r"^from \.+[\w.]* import \([^)]*\)", "", text, flags=re.M)
        return re.sub(r"^from \.+[\w.]* import .*$", "", text, flags=re.M)

    class _Version:
        @staticmethod
        def parse(value):
            return tuple(int(p) for p in re.findall(r"\d+", value)[:3])

    logging = types.SimpleNamespace(get_logger=lambda *_: types.SimpleNamespace(warning=print, info=print))
    activations = {"__name__": "hf_activations", "version": _Version, "logging": logging}
    exec(compile(strip(open(os.path.join(src, "activations.py")).read()), "activations.py", "exec"), activations)

    class ModelOutput(OrderedDict):
        def __post_init__(self):
            for field in dataclasses.fields(self):
                value = getattr(self, field.name)
                if value is not None:
                    self[field.name] = value

        def __getitem__(self, key):
            if isinstance(key, str):
                return dict.__getitem__(self, key)
            return self.to_tuple()[key]

        def to_tuple(self):
            return tuple(self[k] for k in self.keys())

    @dataclasses.dataclass
    class BaseModelOutput(ModelOutput):
        last_hidden_state: torch.Tensor = None
        hidden_states: tuple = None
        attentions: tuple = None

    @dataclasses.dataclass
    class BaseModelOutputWithPooling(ModelOutput):
        last_hidden_state: torch.Tensor = None
        pooler_output: torch.Tensor = None
        hidden_states: tuple = None
        attentions: tuple = None

    class PreTrainedModel(nn.Module):
        def __init__(self, config, *_, **__):
            super().__init__()
            self.config = config

        def post_init(self):
            pass

    def decorator_factory(*_, **__):
        return lambda f: f

    namespace = {
        "__name__": "hf_modeling_clip",
        "ACT2FN": activations["ACT2FN"],
        "BaseModelOutput": BaseModelOutput,
        "BaseModelOutputWithPooling": BaseModelOutputWithPooling,
        "PreTrainedModel": PreTrainedModel,
        "ModelOutput": ModelOutput,
        "add_start_docstrings": decorator_factory,
        "add_start_docstrings_to_model_forward": decorator_factory,
        "replace_return_docstrings": decorator_factory,
        "logging": logging,
        "CLIPConfig": object,
        "CLIPTextConfig": object,
        "CLIPVisionConfig": object,
    }
    path = os.path.join(src, "models", "clip", "modeling_clip.py")
    exec(compile(strip(open(path).read()), path, "exec"), namespace)
    return namespace["CLIPTextModel"]


def upstream_latent_diffusion(ldm_dir):
    """A class holding the slice of upstream LatentDiffusion that the samplers call (register_schedule,
    apply_model, DiffusionWrapper.forward, the v helpers), compiled from ldm_dir's ddpm.py (whose imports
    need pytorch_lightning and more); `ldm` must already be importable from ldm_dir."""
    from ldm.modules.diffusionmodules import util as ldm_util

    ddpm_path = os.path.join(ldm_dir, "ldm", "models", "diffusion", "ddpm.py")
    ddpm_namespace = {
        "torch": torch,
        "np": np,
        "partial": partial,
        "make_beta_schedule": ldm_util.make_beta_schedule,
        "extract_into_tensor": ldm_util.extract_into_tensor,
        "exists": lambda v: v is not None,
    }
    ddpm_methods = methods_from_source(
        ddpm_path,
        "DDPM",
        ["register_schedule"],
        dict(ddpm_namespace),
        optional=["predict_start_from_z_and_v", "predict_eps_from_z_and_v"],  # v-prediction: SD2 code only
    )
    # apply_model with split_input_params (the super-resolution notebook's tiles) calls the fold/weighting helpers.
    tiling = ["get_fold_unfold", "get_weighting", "delta_border", "meshgrid"]
    ddpm_methods.update(
        methods_from_source(ddpm_path, "LatentDiffusion", ["apply_model"], dict(ddpm_namespace), optional=tiling)
    )
    wrapper_forward = methods_from_source(ddpm_path, "DiffusionWrapper", ["forward"], dict(ddpm_namespace))["forward"]

    class UpstreamLatentDiffusion(nn.Module):
        """The slice of upstream LatentDiffusion the samplers call, with upstream methods."""

        def __init__(self, params, unet):
            super().__init__()
            self.parameterization = params.get("parameterization", "eps")
            self.v_posterior = 0.0
            self.device = torch.device("cpu")
            self.model_wrapper = nn.Module()
            self.model_wrapper.diffusion_model = unet
            self.model_wrapper.conditioning_key = params["conditioning_key"]
            self.model_wrapper.sequential_cross_attn = False
            self.model = lambda x, t, **cond: wrapper_forward(self.model_wrapper, x, t, **cond)
            self.model.conditioning_key = params["conditioning_key"]
            ddpm_methods["register_schedule"](
                self, timesteps=params["timesteps"], linear_start=params["linear_start"], linear_end=params["linear_end"]
            )

        def apply_model(self, x, t, cond):
            return ddpm_methods["apply_model"](self, x, t, cond)

        def get_fold_unfold(self, x, kernel_size, stride, uf=1, df=1):
            return ddpm_methods["get_fold_unfold"](self, x, kernel_size, stride, uf, df)

        def get_weighting(self, h, w, Ly, Lx, device):
            return ddpm_methods["get_weighting"](self, h, w, Ly, Lx, device)

        def delta_border(self, h, w):
            return ddpm_methods["delta_border"](self, h, w)

        def meshgrid(self, h, w):
            return ddpm_methods["meshgrid"](self, h, w)

        def predict_start_from_z_and_v(self, x_t, t, v):
            return ddpm_methods["predict_start_from_z_and_v"](self, x_t, t, v)

        def predict_eps_from_z_and_v(self, x_t, t, v):
            return ddpm_methods["predict_eps_from_z_and_v"](self, x_t, t, v)

    return UpstreamLatentDiffusion


# ---------------------------------------------------------------- comparison helpers


class Report:
    def __init__(self):
        self.rows = []

    def compare(self, config, name, upstream, dumped):
        upstream = upstream.detach().float()
        if upstream.shape != dumped.shape:
            raise AssertionError(f"{config} {name}: upstream shape {tuple(upstream.shape)} vs dump {tuple(dumped.shape)}")
        diff = (upstream - dumped).abs().max().item()
        scale = dumped.abs().max().item()
        self.rows.append((config, name, diff, diff / scale))
        print(f"  {name:38s} max|diff| {diff:.3e}   relative to max|ref| {diff / scale:.3e}")


def prefixed(state, prefix):
    return {k[len(prefix) :]: v.float() if v.is_floating_point() else v for k, v in state.items() if k.startswith(prefix)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ldm", default="stablediffusion", help="folder under --upstream holding the ldm package")
    parser.add_argument("--fixtures", default=FIXTURES)
    parser.add_argument("--names", nargs="+", default=CONFIGS, help="configs in --fixtures to check")
    args = parser.parse_args()
    torch.set_num_threads(1)

    install_shims()
    sys.path.insert(0, os.path.join(args.upstream, args.ldm))
    package_without_init("k_diffusion", os.path.join(args.upstream, "k-diffusion", "k_diffusion"))
    package_without_init("open_clip", os.path.join(args.upstream, "open_clip", "src", "open_clip"))

    from ldm.models.autoencoder import AutoencoderKL
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.models.diffusion.plms import PLMSSampler
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    import k_diffusion.external as k_external
    import k_diffusion.sampling as k_sampling
    import open_clip.model as open_clip_model

    HFCLIPTextModel = load_hf_clip(os.path.join(args.upstream, "transformers"))
    UpstreamLatentDiffusion = upstream_latent_diffusion(os.path.join(args.upstream, args.ldm))

    report = Report()
    for name in args.names:
        config_path = os.path.join(args.fixtures, f"{name}.yaml")
        config = yaml.safe_load(open(config_path))
        params = config["model"]["params"]
        unet_params = dict(params["unet_config"]["params"])
        if unet_params.get("use_linear_in_transformer") and args.ldm == "stable-diffusion":
            print(f"{name}: skipped (CompVis code has no use_linear_in_transformer)")
            continue
        print(f"{name} ({args.ldm})")
        checkpoint, _ = load_file(os.path.join(args.fixtures, f"{name}.safetensors"))
        dump, _ = load_file(os.path.join(args.fixtures, f"{name}.dump.safetensors"))

        with torch.no_grad():
            unet = UNetModel(**unet_params).eval()
            unet.load_state_dict(prefixed(checkpoint, "model.diffusion_model."), strict=True)
            first_stage = params["first_stage_config"]["params"]
            vae = AutoencoderKL(first_stage["ddconfig"], first_stage["lossconfig"], first_stage["embed_dim"]).eval()
            vae.load_state_dict(prefixed(checkpoint, "first_stage_model."), strict=True)
            ldm = UpstreamLatentDiffusion(params, unet)
            for buffer in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_mean_coef2"):
                report.compare(name, f"checkpoint {buffer}", getattr(ldm, buffer), checkpoint[buffer])

            report.compare(name, "vae.encode.out.moments", vae.encode(dump["vae.encode.in.x"]).parameters, dump["vae.encode.out.moments"])
            report.compare(name, "vae.decode.out.x", vae.decode(dump["vae.decode.in.z"]), dump["vae.decode.out.x"])

            unet_cond = {"c_crossattn": [dump["unet.in.context"]]}
            if "unet.in.c_concat" in dump:
                unet_cond["c_concat"] = [dump["unet.in.c_concat"]]
            eps = ldm.apply_model(dump["unet.in.x"], dump["unet.in.timesteps"], unet_cond)
            report.compare(name, "unet.out.eps", eps, dump["unet.out.eps"])

            cond_config = params["cond_stage_config"]
            openclip = cond_config["target"].endswith("FrozenOpenCLIPEmbedder")
            implied_text = OPENCLIP_VIT_H14_TEXT if openclip else CLIP_VIT_L14_TEXT  # real configs name none
            text = cond_config.get("params", {}).get("text_config", implied_text)
            if openclip:
                from ldm.modules.encoders import modules as encoders  # SD2 code only
                clip = open_clip_model.CLIP(
                    embed_dim=text["projection_dim"],
                    vision_cfg={"layers": 1, "width": 64, "head_width": 32, "patch_size": 16, "image_size": 32},
                    text_cfg={
                        "context_length": text["max_position_embeddings"],
                        "vocab_size": text["vocab_size"],
                        "width": text["hidden_size"],
                        "heads": text["num_attention_heads"],
                        "layers": text["num_hidden_layers"],
                    },
                ).eval()
                del clip.visual  # as FrozenOpenCLIPEmbedder does
                clip.load_state_dict(prefixed(checkpoint, "cond_stage_model.model."), strict=True)
                embedder = types.SimpleNamespace(model=clip)
                embedder.text_transformer_forward = partial(encoders.FrozenOpenCLIPEmbedder.text_transformer_forward, embedder)
                ids = dump["clip.in.input_ids"]
                for layer, layer_idx in (("last", 0), ("penultimate", 1)):
                    embedder.layer_idx = layer_idx
                    out = encoders.FrozenOpenCLIPEmbedder.encode_with_transformer(embedder, ids)
                    report.compare(name, f"clip.out.{layer}_hidden_state", out, dump[f"clip.out.{layer}_hidden_state"])
                encode_text = lambda ids: encoders.FrozenOpenCLIPEmbedder.encode_with_transformer(embedder, ids)  # noqa: E731
                embedder.layer_idx = 0 if cond_config["params"].get("layer", "last") == "last" else 1
            else:
                hf_config = types.SimpleNamespace(
                    attention_dropout=0.0,
                    initializer_factor=1.0,
                    output_attentions=False,
                    output_hidden_states=False,
                    use_return_dict=True,
                    **text,
                )
                clip = HFCLIPTextModel(hf_config).eval()
                clip.load_state_dict(prefixed(checkpoint, "cond_stage_model.transformer."), strict=True)
                outputs = clip(input_ids=dump["clip.in.input_ids"], output_hidden_states=True)
                report.compare(name, "clip.out.last_hidden_state", outputs.last_hidden_state, dump["clip.out.last_hidden_state"])
                penultimate = clip.text_model.final_layer_norm(outputs.hidden_states[-2])
                report.compare(name, "clip.out.penultimate_hidden_state", penultimate, dump["clip.out.penultimate_hidden_state"])
                encode_text = lambda ids: clip(input_ids=ids).last_hidden_state  # noqa: E731  (FrozenCLIPEmbedder "last")

            for path in sorted(os.listdir(args.fixtures)):
                match = re.fullmatch(rf"{re.escape(name)}\.sample-(\w+)\.safetensors", path)
                if not match:
                    continue
                sample, meta = load_file(os.path.join(args.fixtures, path))
                sampler = meta["sampler"]
                steps, scale = int(meta["steps"]), float(meta["guidance_scale"])
                x_T = sample["sample.in.x_T"]
                c = encode_text(sample["sample.in.cond_ids"])
                uc = encode_text(sample["sample.in.uncond_ids"])
                if "sample.in.c_concat" in sample:
                    if args.ldm == "stable-diffusion":
                        print(f"  sample-{sampler}: skipped (CompVis samplers cannot guide dict conditioning)")
                        continue
                    c_cat = sample["sample.in.c_concat"]
                    c = {"c_concat": [c_cat], "c_crossattn": [c]}
                    uc = {"c_concat": [c_cat], "c_crossattn": [uc]}
                shape = tuple(x_T.shape[1:])
                if sampler in ("ddim", "plms"):
                    upstream_sampler = (DDIMSampler if sampler == "ddim" else PLMSSampler)(ldm)
                    # Their register_buffer moves tensors to CUDA; keep them on the CPU.
                    upstream_sampler.register_buffer = partial(setattr, upstream_sampler)
                    z_0, _ = upstream_sampler.sample(
                        S=steps, batch_size=x_T.shape[0], shape=shape, conditioning=c, verbose=False, x_T=x_T,
                        eta=float(meta["eta"]), unconditional_guidance_scale=scale, unconditional_conditioning=uc,
                    )
                else:
                    wrap_cls = k_external.CompVisVDenoiser if ldm.parameterization == "v" else k_external.CompVisDenoiser
                    denoiser = wrap_cls(ldm)

                    def cfg_denoiser(x, sigma, cond=c, uncond=uc):
                        x_in, sigma_in = torch.cat([x] * 2), torch.cat([sigma] * 2)
                        out_uncond, out_cond = denoiser(x_in, sigma_in, cond=torch.cat([uncond, cond])).chunk(2)
                        return out_uncond + (out_cond - out_uncond) * scale

                    sigmas = denoiser.get_sigmas(steps)
                    z_0 = k_sampling.sample_euler(cfg_denoiser, x_T * sigmas[0], sigmas, disable=True)
                report.compare(name, f"sample-{sampler} z_0", z_0, sample["sample.out.z_0"])
                if "sample.out.image" in sample:
                    image = vae.decode(1.0 / params["scale_factor"] * z_0)
                    report.compare(name, f"sample-{sampler} image", image, sample["sample.out.image"])

    worst = max(rel for *_, rel in report.rows)
    print(f"worst relative difference over {len(report.rows)} comparisons: {worst:.3e}")


if __name__ == "__main__":
    main()
