"""Reference sampler runs for packages/ldm/test/fixtures/samplers/samplers.json.

Runs the original samplers on a deterministic toy model with Debian's PyTorch 1.13 (CPU):
    /usr/bin/python3 reference/sampling/sampler_fixtures.py --compvis /tmp/sd-ref --k-diffusion /tmp/kd-ref \
        --a1111 /tmp/a1111-ref
where /tmp/sd-ref holds CompVis/stable-diffusion's ldm/ (commit 21f890f), /tmp/kd-ref holds
crowsonkb/k-diffusion's k_diffusion/ (commit 4601bf0) and /tmp/a1111-ref holds AUTOMATIC1111/stable-diffusion-webui's
modules/sd_samplers_lcm.py (commit f8391b8). Only upstream code that sampling uses is run:
- CompVis: DDIMSampler and PLMSSampler (register_buffer overridden to keep buffers on the CPU instead of moving
  them to CUDA), and DDPM/LatentDiffusion's register_schedule, q_posterior, predict_start_from_noise,
  p_mean_variance, p_sample, p_sample_loop, taken from ddpm.py with `ast` (the module itself needs Lightning).
- k-diffusion: sampling.py and external.py loaded without the package __init__; every k-sampler on the model's
  own σ (get_sigmas), Karras's and the exponential spacing. The SDE samplers get k-diffusion's
  default_noise_sampler (torch.randn_like per call) instead of their default Brownian tree (torchsde, which
  A1111 also uses): we draw their noise from the run's generator in that order.
- A1111: LCMCompVisDenoiser and sample_lcm, taken from sd_samplers_lcm.py with `ast` (the module imports the
  whole web UI), with `shared.sd_model.device` stood in.
Modules those files import but sampling never calls (tqdm, einops, scipy, torchdiffeq, torchsde, safetensors,
torchvision) are empty stand-ins; tqdm/trange are identity wrappers.

Toy model (elementwise, smooth, t-dependent): out(x, t) = tanh(0.3·x)·(t/1000) + 0.1·x, in float32, used as ε or
as v. Latents [1, 4, 8, 8]; x_T = torch.randn with Generator seed 1234; stochastic samplers draw from the global
CPU generator seeded with torch.manual_seed(NOISE_SEED) just before sampling.
"""

import argparse
import ast
import json
import os
import sys
import types
from functools import partial

import numpy as np
import torch

NOISE_SEED = 77
SHAPE = [1, 4, 8, 8]
STEPS = 10


def install_stand_ins() -> None:
    def identity_iter(iterable=None, *args, **kwargs):
        return iterable

    def trange(n, *args, **kwargs):
        return range(n)

    tqdm = types.ModuleType("tqdm")
    tqdm.tqdm = identity_iter
    tqdm.trange = trange
    tqdm_auto = types.ModuleType("tqdm.auto")
    tqdm_auto.tqdm = identity_iter
    tqdm_auto.trange = trange
    tqdm.auto = tqdm_auto
    einops = types.ModuleType("einops")
    einops.repeat = einops.rearrange = None
    scipy = types.ModuleType("scipy")
    scipy.integrate = types.ModuleType("scipy.integrate")
    torchdiffeq = types.ModuleType("torchdiffeq")
    torchdiffeq.odeint = None
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    for name, module in {
        "tqdm": tqdm, "tqdm.auto": tqdm_auto, "einops": einops, "scipy": scipy, "scipy.integrate": scipy.integrate,
        "torchdiffeq": torchdiffeq, "torchsde": types.ModuleType("torchsde"),
        "safetensors": types.ModuleType("safetensors"), "torchvision": tv,
        "torchvision.transforms": tv.transforms, "torchvision.transforms.functional": tv.transforms.functional,
    }.items():
        sys.modules[name] = module


def toy_output(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(0.3 * x) * (t / 1000) + 0.1 * x


def load_upstream(compvis: str, kdiff: str):
    sys.path.insert(0, compvis)
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.models.diffusion.plms import PLMSSampler
    from ldm.modules.diffusionmodules import util as ldm_util

    source = open(os.path.join(compvis, "ldm/models/diffusion/ddpm.py")).read()
    wanted = {
        "DDPM": ["register_schedule", "predict_start_from_noise", "q_posterior", "q_sample"],
        "LatentDiffusion": ["p_mean_variance", "p_sample", "p_sample_loop"],
    }
    namespace = {
        "torch": torch, "np": np, "partial": partial, "tqdm": sys.modules["tqdm"].tqdm,
        "make_beta_schedule": ldm_util.make_beta_schedule, "extract_into_tensor": ldm_util.extract_into_tensor,
        "noise_like": ldm_util.noise_like, "exists": lambda x: x is not None,
        "default": lambda val, d: val if val is not None else (d() if callable(d) else d),
    }
    methods = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in wanted:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in wanted[node.name]:
                    item.decorator_list = []
                    exec(compile(ast.Module(body=[item], type_ignores=[]), "ddpm.py", "exec"), namespace)
                    methods[item.name] = namespace[item.name]

    class ToyLatentDiffusion(torch.nn.Module):
        """The schedule and DDPM sampling methods of LatentDiffusion around the toy model."""

        def __init__(self, beta_schedule="linear"):
            super().__init__()
            self.parameterization = "eps"
            self.v_posterior = 0.0
            self.shorten_cond_schedule = False
            self.log_every_t = 100
            self.clip_denoised = False
            self.register_schedule(beta_schedule=beta_schedule, timesteps=1000, linear_start=0.00085, linear_end=0.012)
            self.calls = []

        @property
        def device(self):
            return torch.device("cpu")

        def apply_model(self, x, t, cond=None, **kwargs):
            self.calls.append(float(t.reshape(-1)[0]))
            return toy_output(x, t)

    for name, fn in methods.items():
        setattr(ToyLatentDiffusion, name, fn)

    class CpuDDIM(DDIMSampler):
        def register_buffer(self, name, attr):
            setattr(self, name, attr)

    class CpuPLMS(PLMSSampler):
        def register_buffer(self, name, attr):
            setattr(self, name, attr)

    kd = types.ModuleType("k_diffusion")
    kd.__path__ = [os.path.join(kdiff, "k_diffusion")]
    sys.modules["k_diffusion"] = kd
    from k_diffusion import external, sampling

    return ToyLatentDiffusion, CpuDDIM, CpuPLMS, ldm_util, external, sampling


def load_a1111_lcm(a1111: str, external, sampling):
    source = open(os.path.join(a1111, "modules/sd_samplers_lcm.py")).read()
    namespace = {
        "torch": torch, "utils": sys.modules["k_diffusion.utils"], "sampling": sampling,
        "DiscreteEpsDDPMDenoiser": external.DiscreteEpsDDPMDenoiser,
        "default_noise_sampler": sampling.default_noise_sampler, "trange": sys.modules["tqdm"].trange,
        "shared": types.SimpleNamespace(sd_model=types.SimpleNamespace(device=torch.device("cpu"))),
    }
    for node in ast.parse(source).body:
        if getattr(node, "name", None) in ("LCMCompVisDenoiser", "sample_lcm"):
            exec(compile(ast.Module(body=[node], type_ignores=[]), "sd_samplers_lcm.py", "exec"), namespace)
    return namespace["LCMCompVisDenoiser"], namespace["sample_lcm"]


def floats(t: torch.Tensor) -> list:
    return [float(v) for v in t.reshape(-1).to(torch.float32)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compvis", required=True)
    parser.add_argument("--k-diffusion", required=True)
    parser.add_argument("--a1111", required=True)
    args = parser.parse_args()
    install_stand_ins()
    ToyLatentDiffusion, CpuDDIM, CpuPLMS, ldm_util, external, sampling = load_upstream(args.compvis, args.k_diffusion)
    LCMCompVisDenoiser, sample_lcm = load_a1111_lcm(args.a1111, external, sampling)

    schedules = {}
    for name, kwargs in {
        "linear": dict(linear_start=0.00085, linear_end=0.012),
        "sqrt_linear": dict(linear_start=0.00085, linear_end=0.012),
        "cosine": dict(cosine_s=8e-3),
    }.items():
        betas = ldm_util.make_beta_schedule(name, 1000, **kwargs)
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        schedules[name] = {
            "betas_sample": {str(i): float(betas[i]) for i in [0, 1, 2, 10, 100, 499, 500, 501, 998, 999]},
            "alphas_cumprod_sample": {str(i): float(alphas_cumprod[i]) for i in [0, 1, 2, 10, 100, 499, 500, 501, 998, 999]},
        }

    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234))
    q_noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4321))
    q_sample = {
        "t": 500, "noise_seed": 4321,
        "z_t": floats(ToyLatentDiffusion().q_sample(x_T, torch.tensor([500]), noise=q_noise)),
    }
    runs = []

    def record(name, options, model, out):
        runs.append({"name": name, "options": options, "calls": model.calls, "x0": floats(out)})

    for eta in [0.0, 0.5]:
        model = ToyLatentDiffusion()
        torch.manual_seed(NOISE_SEED)
        out, _ = CpuDDIM(model).sample(STEPS, 1, SHAPE[1:], conditioning=None, eta=eta, x_T=x_T.clone(), verbose=False)
        record("ddim", {"eta": eta}, model, out)

    model = ToyLatentDiffusion()
    torch.manual_seed(NOISE_SEED)
    out, _ = CpuPLMS(model).sample(STEPS, 1, SHAPE[1:], conditioning=None, x_T=x_T.clone(), verbose=False)
    record("plms", {}, model, out)

    for clip in [False, True]:
        model = ToyLatentDiffusion()
        model.clip_denoised = clip
        torch.manual_seed(NOISE_SEED)
        out = model.p_sample_loop(None, SHAPE, x_T=x_T.clone(), verbose=False)
        record("ddpm", {"clip_denoised": clip}, model, out)

    def with_default_noise(fn):
        return lambda model, x, sigmas, **kwargs: fn(
            model, x, sigmas, noise_sampler=sampling.default_noise_sampler(x), **kwargs)

    k_samplers = {
        "euler": sampling.sample_euler,
        "euler_ancestral": sampling.sample_euler_ancestral,
        "heun": sampling.sample_heun,
        "dpmpp_2m": sampling.sample_dpmpp_2m,
        "dpmpp_2m_sde": with_default_noise(sampling.sample_dpmpp_2m_sde),
        "dpmpp_sde": with_default_noise(sampling.sample_dpmpp_sde),
    }
    for parameterization in ["eps", "v"]:
        for schedule in ["normal", "karras", "exponential"]:
            for name, fn in k_samplers.items():
                if parameterization == "v" and (name not in ("euler", "dpmpp_2m") or schedule == "exponential"):
                    continue
                # The CompVis repo predates v-prediction; only the k-diffusion wrapper reads it.
                model = ToyLatentDiffusion()
                wrapper = (external.CompVisDenoiser if parameterization == "eps" else external.CompVisVDenoiser)(model)
                sigma_min, sigma_max = wrapper.sigmas[0].item(), wrapper.sigmas[-1].item()
                if schedule == "karras":
                    sigmas = sampling.get_sigmas_karras(STEPS, sigma_min, sigma_max)
                elif schedule == "exponential":
                    sigmas = sampling.get_sigmas_exponential(STEPS, sigma_min, sigma_max)
                else:
                    sigmas = wrapper.get_sigmas(STEPS)
                torch.manual_seed(NOISE_SEED)
                out = fn(wrapper, x_T.clone() * sigmas[0], sigmas, extra_args={"cond": None}, disable=True)
                record(name, {"schedule": schedule, "parameterization": parameterization}, model, out)
                runs[-1]["sigmas"] = floats(sigmas)

    for steps in [1, 4, 8]:
        model = ToyLatentDiffusion()
        wrapper = LCMCompVisDenoiser(model)
        sigmas = wrapper.get_sigmas(steps)
        torch.manual_seed(NOISE_SEED)
        out = sample_lcm(wrapper, x_T.clone() * sigmas[0], sigmas, extra_args={"cond": None}, disable=True)
        record("lcm", {"steps": steps}, model, out)
        runs[-1]["sigmas"] = floats(sigmas)

    out_dir = os.path.join(os.path.dirname(__file__), "../../packages/ldm/test/fixtures/samplers")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "samplers.json"), "w") as f:
        json.dump({
            "torch": torch.__version__, "shape": SHAPE, "steps": STEPS, "x_T_seed": 1234, "noise_seed": NOISE_SEED,
            "x_T": floats(x_T), "schedules": schedules, "q_sample": q_sample, "runs": runs,
        }, f)
        f.write("\n")
    print("wrote", len(runs), "runs")


if __name__ == "__main__":
    main()
