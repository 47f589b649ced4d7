"""Deterministic samplers with classifier-free guidance, following
- CompVis/Stability `ldm/models/diffusion/ddim.py` (DDIMSampler, eta = 0),
- CompVis `ldm/models/diffusion/plms.py` (PLMSSampler),
- crowsonkb/k-diffusion `sampling.sample_euler` with `external.CompVisDenoiser`
  (or `CompVisVDenoiser` for v-prediction) and the usual CFG denoiser wrapper.

Guidance is batched as the original does it: one UNet call of batch 2B on
cat([uncond, cond]), then uncond + scale * (cond - uncond).
Every loop starts from a given x_T; nothing here draws random numbers.
"""

import numpy as np
import torch


def guided_output(model, x, t, context, uncond_context, guidance_scale, c_concat=None):
    """The model output (eps or v) under classifier-free guidance."""
    x_in = torch.cat([x] * 2)
    t_in = torch.cat([t] * 2)
    c_in = torch.cat([uncond_context, context])
    concat_in = None if c_concat is None else torch.cat([c_concat] * 2)
    out_uncond, out_cond = model.apply_model(x_in, t_in, c_in, concat_in).chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def ddim_timesteps(num_steps, num_train_timesteps):
    """make_ddim_timesteps('uniform'): every c-th step from 0, then +1 (the original's offset)."""
    stride = num_train_timesteps // num_steps
    return np.asarray(list(range(0, num_train_timesteps, stride))) + 1


class _DdimSchedule:
    """make_ddim_sampling_parameters with eta = 0: a_t, a_prev (the first a_prev is
    alphas_cumprod[0], not 1) and sqrt(1 - a_t), in the model's dtype."""

    def __init__(self, model, steps):
        self.timesteps = ddim_timesteps(steps, model.num_timesteps)
        alphas_cumprod = model.alphas_cumprod
        self.alphas = alphas_cumprod[self.timesteps]
        self.alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])
        self.sqrt_one_minus_alphas = torch.sqrt(1.0 - self.alphas)

    def step(self, x, e_t, index, pred_x0=None):
        """x_prev and pred_x0 for step `index`; `pred_x0` overrides the eps-based estimate (v-prediction)."""
        a_t = self.alphas[index]
        a_prev = self.alphas_prev[index]
        if pred_x0 is None:
            pred_x0 = (x - self.sqrt_one_minus_alphas[index] * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * e_t
        return a_prev.sqrt() * pred_x0 + dir_xt, pred_x0


def _check_eta(eta):
    if eta != 0:
        raise ValueError(f"eta={eta}: only eta = 0 is deterministic from x_T, which the dumps need")


def sample_ddim(model, x_T, context, uncond_context, steps, guidance_scale, eta=0.0, c_concat=None):
    _check_eta(eta)
    schedule = _DdimSchedule(model, steps)
    x = x_T
    batch = x.shape[0]
    timesteps = np.flip(schedule.timesteps)
    for i, step in enumerate(timesteps):
        index = len(timesteps) - i - 1
        t = torch.full((batch,), int(step), dtype=torch.long)
        out = guided_output(model, x, t, context, uncond_context, guidance_scale, c_concat)
        if model.parameterization == "v":
            e_t = model.predict_eps_from_z_and_v(x, t, out)
            x, _ = schedule.step(x, e_t, index, pred_x0=model.predict_start_from_z_and_v(x, t, out))
        else:
            x, _ = schedule.step(x, out, index)
    return x


def sample_plms(model, x_T, context, uncond_context, steps, guidance_scale, eta=0.0, c_concat=None):
    _check_eta(eta)
    if model.parameterization != "eps":
        raise ValueError("the original PLMS sampler only handles eps-prediction models")
    schedule = _DdimSchedule(model, steps)
    x = x_T
    batch = x.shape[0]
    time_range = list(np.flip(schedule.timesteps))
    old_eps = []

    def eps_at(x, step):
        t = torch.full((batch,), int(step), dtype=torch.long)
        return guided_output(model, x, t, context, uncond_context, guidance_scale, c_concat)

    for i, step in enumerate(time_range):
        index = len(time_range) - i - 1
        next_step = time_range[min(i + 1, len(time_range) - 1)]
        e_t = eps_at(x, step)
        if len(old_eps) == 0:
            # Pseudo improved Euler: a second model call at the next timestep.
            x_prev, _ = schedule.step(x, e_t, index)
            e_t_prime = (e_t + eps_at(x_prev, next_step)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, _ = schedule.step(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x


class CompVisDenoiser:
    """k-diffusion's DiscreteSchedule + CompVisDenoiser / CompVisVDenoiser: a denoiser
    D(x, sigma) over the model's discrete schedule, t continuous (interpolated in log sigma)."""

    def __init__(self, model):
        self.model = model
        alphas_cumprod = model.alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def get_sigmas(self, n):
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, dtype=self.sigmas.dtype)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t):
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def __call__(self, x, sigma, context, c_concat=None):
        sigma_ = sigma[:, None, None, None]
        c_in = 1 / (sigma_**2 + 1) ** 0.5
        out = self.model.apply_model(x * c_in, self.sigma_to_t(sigma), context, c_concat)
        if self.model.parameterization == "v":
            c_skip = 1 / (sigma_**2 + 1)
            c_out = -sigma_ / (sigma_**2 + 1) ** 0.5
            return out * c_out + x * c_skip
        return x + out * -sigma_


def sample_euler(model, x_T, context, uncond_context, steps, guidance_scale, eta=0.0, c_concat=None):
    """k-diffusion sample_euler (s_churn = 0) on `steps` sigmas spaced linearly in t, plus 0.
    x_T is unit-variance noise; the loop starts from x_T * sigma_max as k-diffusion users do."""
    _check_eta(eta)
    denoiser = CompVisDenoiser(model)
    sigmas = denoiser.get_sigmas(steps)
    x = x_T * sigmas[0]
    batch = x.shape[0]
    concat_in = None if c_concat is None else torch.cat([c_concat] * 2)
    for i in range(len(sigmas) - 1):
        sigma_in = torch.full((2 * batch,), float(sigmas[i]), dtype=x.dtype)
        uncond, cond = denoiser(
            torch.cat([x] * 2), sigma_in, torch.cat([uncond_context, context]), concat_in
        ).chunk(2)
        denoised = uncond + (cond - uncond) * guidance_scale
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


SAMPLERS = {"ddim": sample_ddim, "plms": sample_plms, "euler": sample_euler}
