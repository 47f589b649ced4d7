"""Trains the built-in text-to-image model on the emoji dataset, on the CPU, resumably.

Stages (each resumes from its own state file in --run when it exists; state is saved every
--save-minutes, at the end, and on Ctrl-C, atomically):
  init    writes <run>/model.yaml: the original-style config (v1-inference shape, SD1 CLIP with a
          `text_config`, plus `cond_stage_config.params.tokenizer`), from the size flags.
  vae     AutoencoderKL: L1 + L1 of image gradients (a cheap edge term; no LPIPS or GAN here) +
          KL with LDM's weight 1e-6 relative to the per-pixel sum. State: <run>/vae.pt.
  ldm     UNet + CLIP text encoder jointly on the frozen VAE's latents (sampled from the posterior
          each step, times scale_factor = 1 / std of the dataset's latents, fixed at the stage's
          first start), L_simple (eps MSE), uniform t over the 1000 "linear" (scaled_linear)
          steps, 10% of captions dropped to "" for classifier-free guidance, EMA of the weights.
          State: <run>/ldm.pt.
  export  <out>/<name>.safetensors (original single-file layout, weights float16 (or --float32)
          from the EMA, schedule buffers float32, position_ids int64), <out>/<name>.yaml,
          <out>/tokenizer/.
  bench   seconds per training step of candidate sizes (nothing saved).

Randomness comes from one torch.Generator per stage, saved with the state, so a resumed run
continues exactly as an uninterrupted one would (same thread count: the thread count changes
float summation order).

Usage: see reference/default_model/README.md ("Training").
"""

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from default_model.bpe import Tokenizer, learn_merges, write_tokenizer_folder  # noqa: E402
from ldm_ref.configs import make_config  # noqa: E402
from ldm_ref.ldm import SD1_CLIP_TARGET, LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import save_file  # noqa: E402
from ldm_ref.vae import AutoencoderKL  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "out", "emoji", "emoji-64")
LDM_TARGET = "ldm.models.diffusion.ddpm.LatentDiffusion"
TOKENIZER_FOLDER = "tokenizer"
KL_WEIGHT = 1e-6  # LDM's autoencoder configs, relative to the reconstruction loss summed over pixels
GRADIENT_WEIGHT = 0.5
CAPTION_DROP = 0.1
PRIMARY_CAPTION_PROBABILITY = 0.5
EMA_DECAY = 0.999
GRAD_CLIP = 1.0


def build_config(args):
    """The original-style config for the size flags (see README: the chosen sizes are the defaults)."""
    factor = 2 ** (len(args.vae_ch_mult) - 1)
    if args.image_size % (factor * 2 ** (len(args.unet_channel_mult) - 1)):
        raise ValueError(f"image size {args.image_size} does not divide by the VAE and UNet downsampling")
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": args.image_size,
        "in_channels": 3,
        "out_ch": 3,
        "ch": args.vae_ch,
        "ch_mult": list(args.vae_ch_mult),
        "num_res_blocks": args.vae_res_blocks,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    unet = {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": args.unet_channels,
        "attention_resolutions": list(args.unet_attention),
        "num_res_blocks": args.unet_res_blocks,
        "channel_mult": list(args.unet_channel_mult),
        "num_heads": args.unet_heads,
        "transformer_depth": 1,
        "context_dim": args.text_width,
    }
    text_config = {
        "vocab_size": args.vocab_size,
        "hidden_size": args.text_width,
        "intermediate_size": 4 * args.text_width,
        "num_hidden_layers": args.text_layers,
        "num_attention_heads": args.text_heads,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": args.text_width,
    }
    config = make_config(
        target=LDM_TARGET,
        unet=unet,
        ddconfig=ddconfig,
        embed_dim=4,
        cond_target=SD1_CLIP_TARGET,
        text_config=text_config,
        latent_size=args.image_size // factor,
    )
    params = config["model"]["params"]
    params["cond_stage_trainable"] = True  # trained jointly with the UNet
    params["cond_stage_config"]["params"]["tokenizer"] = TOKENIZER_FOLDER
    return config


def read_config(run):
    path = os.path.join(run, "model.yaml")
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist: run `train.py init --run {run}` first")
    with open(path) as file:
        return yaml.safe_load(file)


def write_yaml(config, path):
    with open(path, "w") as file:
        yaml.safe_dump(config, file, sort_keys=False, default_flow_style=None)


class Dataset:
    """Images as float [-1, 1] NCHW, per-image sampling weights (skin-tone variants of one emoji
    share one emoji's weight; `upweight` multiplies the weight of a subgroup's emojis), and every
    caption's 77 token ids."""

    def __init__(self, stem, tokenizer=None, upweight=None):
        for suffix in (".npy", ".json"):
            if not os.path.exists(stem + suffix):
                sys.exit(f"{stem}{suffix} is missing: run reference/data/make_emoji_dataset.py")
        pixels = torch.from_numpy(np.load(stem + ".npy"))
        self.images = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with open(stem + ".json", encoding="utf-8") as file:
            self.items = json.load(file)["items"]
        if len(self.items) != len(self.images):
            raise ValueError(f"{stem}: {len(self.items)} captions for {len(self.images)} images")
        bases = {}
        for item in self.items:
            bases[item["skin_tone_base"]] = bases.get(item["skin_tone_base"], 0) + 1
        upweight = upweight or {}
        unknown = set(upweight) - {item["subgroup"] for item in self.items}
        if unknown:
            sys.exit(f"--upweight: no emoji of subgroup {', '.join(sorted(unknown))} in {stem}.json")
        self.weights = torch.tensor(
            [upweight.get(item["subgroup"], 1.0) / bases[item["skin_tone_base"]] for item in self.items],
            dtype=torch.float64,
        )
        if tokenizer is not None:
            self.caption_ids = [torch.tensor([tokenizer.tokenize(c) for c in item["captions"]]) for item in self.items]
            self.empty_ids = torch.tensor(tokenizer.tokenize(""))

    def sample(self, batch, generator):
        return torch.multinomial(self.weights, batch, replacement=True, generator=generator)

    def caption_batch(self, indices, generator):
        """Per image: dropped to "" with CAPTION_DROP, else the primary caption with
        PRIMARY_CAPTION_PROBABILITY, else any of its captions."""
        draws = torch.rand(len(indices), 3, generator=generator, dtype=torch.float64)
        rows = []
        for (drop, primary, which), index in zip(draws.tolist(), indices.tolist()):
            options = self.caption_ids[index]
            if drop < CAPTION_DROP:
                rows.append(self.empty_ids)
            elif primary < PRIMARY_CAPTION_PROBABILITY:
                rows.append(options[0])
            else:
                rows.append(options[min(int(which * len(options)), len(options) - 1)])
        return torch.stack(rows)


def image_gradients(x):
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_loss(vae, images, generator):
    posterior = vae.encode(images)
    z = posterior.sample(torch.randn(posterior.mean.shape, generator=generator))
    reconstruction = vae.decode(z)
    l1 = (reconstruction - images).abs().mean()
    gradient = sum((a - b).abs().mean() for a, b in zip(image_gradients(reconstruction), image_gradients(images)))
    pixels = images[0].numel()
    kl = 0.5 * (posterior.mean**2 + posterior.std**2 - 1.0 - posterior.logvar).flatten(1).sum(1).mean()
    loss = l1 + GRADIENT_WEIGHT * gradient + KL_WEIGHT * kl / pixels
    return loss, {"l1": l1.item(), "grad": gradient.item(), "kl": kl.item()}


class Ema:
    """LitEma's schedule: decay min(EMA_DECAY, (1 + n) / (10 + n)) at update n."""

    def __init__(self, module):
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module):
        self.updates += 1
        decay = min(EMA_DECAY, (1 + self.updates) / (10 + self.updates))
        for name, value in module.state_dict().items():
            if name in self.shadow:
                self.shadow[name].mul_(decay).add_(value.detach(), alpha=1 - decay)

    def state_dict(self):
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state):
        self.shadow, self.updates = state["shadow"], state["updates"]


class DiffusionTrainer(torch.nn.Module):
    """The trained parts: `model` (DiffusionWrapper, keys model.diffusion_model.*) and
    `cond_stage_model` (keys cond_stage_model.transformer.*), as in LatentDiffusion."""

    def __init__(self, ldm):
        super().__init__()
        self.model = ldm.model
        self.cond_stage_model = ldm.cond_stage_model
        self.register_buffer("sqrt_alphas_cumprod", ldm.sqrt_alphas_cumprod.clone())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", ldm.sqrt_one_minus_alphas_cumprod.clone())

    def loss(self, z0, ids, generator):
        t = torch.randint(0, len(self.sqrt_alphas_cumprod), (z0.shape[0],), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        shape = (-1, 1, 1, 1)
        x_t = self.sqrt_alphas_cumprod[t].view(shape) * z0 + self.sqrt_one_minus_alphas_cumprod[t].view(shape) * noise
        eps = self.model(x_t, t, self.cond_stage_model(ids))
        return F.mse_loss(eps, noise)


class Stage:
    """A resumable training loop: state file, generator, optimizer, periodic atomic saves."""

    def __init__(self, path, args, modules, lr, ema=None):
        self.path, self.args = path, args
        self.modules = modules
        self.ema = ema
        parameters = [p for m in modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
        self.parameters = parameters
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step, self.seconds, self.extra = 0, 0.0, {}
        self.log = []
        if os.path.exists(path):
            state = torch.load(path)
            if state["threads"] != args.threads:
                print(f"note: {path} was trained with {state['threads']} threads, now {args.threads}: "
                      "the run continues but not bit-identically")
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            self.step, self.seconds, self.extra, self.log = state["step"], state["seconds"], state["extra"], state["log"]
            if ema is not None:
                ema.load_state_dict(state["ema"])
            print(f"resumed {path} at step {self.step} ({self.seconds / 3600:.2f} h trained)")

    def save(self):
        state = {
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "seconds": self.seconds,
            "extra": self.extra,
            "log": self.log,
            "threads": self.args.threads,
            "ema": None if self.ema is None else self.ema.state_dict(),
        }
        torch.save(state, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)

    def run(self, step_fn):
        """Calls step_fn() -> (loss tensor, metrics) until --steps or --minutes; logs every
        --log-every steps; saves every --save-minutes and at the end (also on SIGINT/SIGTERM).
        Data-parallel (torch.distributed initialised): every rank steps on its own batch with the
        gradients averaged over the ranks, so the weights stay identical; rank 0 decides when to
        stop and save, and alone logs and saves."""
        rank, ranks = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        stop = {"signal": None}

        def request_stop(signum, _frame):
            stop["signal"] = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        last_save = started
        window = []
        try:
            while True:
                now = time.monotonic()
                finished = (self.step >= self.args.steps or stop["signal"] is not None
                            or (self.args.minutes and now - started > self.args.minutes * 60))
                control = torch.tensor([float(finished), float(now - last_save > self.args.save_minutes * 60)])
                if ranks > 1:
                    dist.broadcast(control, 0)
                if control[0]:
                    break
                t0 = time.monotonic()
                lr = self.args.lr * min(1.0, (self.step + 1) / self.args.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, metrics = step_fn()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if ranks > 1:
                    average_gradients(self.parameters, ranks)
                torch.nn.utils.clip_grad_norm_(self.parameters, GRAD_CLIP)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(*self.modules.values())
                self.step += 1
                elapsed = time.monotonic() - t0
                self.seconds += elapsed
                window.append({"loss": loss.item(), **metrics, "s": elapsed})
                if rank == 0 and (self.step % self.args.log_every == 0 or self.step == self.args.steps):
                    mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    self.log.append({"step": self.step, **mean})
                    print(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in mean.items()), flush=True)
                    window = []
                if control[1]:
                    if rank == 0:
                        self.save()
                    last_save = time.monotonic()
        finally:
            if rank == 0:
                self.save()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if rank == 0:
            print(f"saved {self.path} at step {self.step} ({self.seconds / 3600:.2f} h of steps)")


def average_gradients(parameters, ranks):
    """All-reduces the gradients as one flat buffer (one message instead of one per tensor)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= ranks
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def train_vae(args):
    config = read_config(args.run)
    params = config["model"]["params"]["first_stage_config"]["params"]
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(params["ddconfig"], params["embed_dim"])
    data = Dataset(args.data)
    stage = Stage(os.path.join(args.run, "vae.pt"), args, {"vae": vae}, args.lr)

    def step():
        indices = data.sample(args.batch, stage.generator)
        return vae_loss(vae, crop(data.images[indices], args.crop, stage.generator), stage.generator)

    stage.run(step)
    stage.extra["eval"] = evaluate_vae(vae, data.images)
    stage.save()
    print("reconstruction of every 16th image (posterior mean): " + json.dumps(stage.extra["eval"]))


@torch.no_grad()
def evaluate_vae(vae, images, every=16):
    """PSNR (images in [0, 1]) and mean absolute error in 8-bit steps, decoding the posterior mean."""
    subset = images[::every]
    reconstruction = torch.cat([vae.decode(vae.encode(subset[i : i + 64]).mode()) for i in range(0, len(subset), 64)])
    error = (reconstruction.clamp(-1, 1) - subset) / 2
    mse = error.pow(2).flatten(1).mean(1)
    psnr = (-10 * torch.log10(mse)).mean().item()
    return {"psnr_db": round(psnr, 2), "mae_8bit": round(255 * error.abs().mean().item(), 2)}


def crop(images, size, generator):
    """One random size×size window per batch (the VAE is convolutional but for its mid-block
    attention, which then sees fewer pixels); the full image when size is 0."""
    if not size or size >= images.shape[-1]:
        return images
    top, left = torch.randint(0, images.shape[-1] - size + 1, (2,), generator=generator).tolist()
    return images[..., top : top + size, left : left + size]


def load_trained_vae(run, config):
    state_path = os.path.join(run, "vae.pt")
    if not os.path.exists(state_path):
        sys.exit(f"{state_path} does not exist: train the VAE first (train.py vae --run {run})")
    params = config["model"]["params"]["first_stage_config"]["params"]
    vae = AutoencoderKL(params["ddconfig"], params["embed_dim"])
    vae.load_state_dict(torch.load(state_path)["modules"]["vae"])
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae, images, batch=64):
    moments = [vae.encode_moments(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat(moments)


def train_ldm(args):
    if args.ranks > 1:
        torch.multiprocessing.spawn(train_ldm_rank, args=(args,), nprocs=args.ranks)
    else:
        train_ldm_rank(0, args)


def train_ldm_rank(rank, args):
    if args.ranks > 1:
        torch.set_num_threads(args.threads)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=args.ranks)
    config = read_config(args.run)
    torch.manual_seed(args.seed)
    ldm = LatentDiffusion(config)
    tokenizer = Tokenizer.from_file(os.path.join(args.run, TOKENIZER_FOLDER, "bpe_emoji.txt.gz"))
    vocab = config["model"]["params"]["cond_stage_config"]["params"]["text_config"]["vocab_size"]
    if len(tokenizer.vocab) != vocab:
        sys.exit(f"tokenizer has {len(tokenizer.vocab)} tokens, text_config.vocab_size is {vocab}")
    data = Dataset(args.data, tokenizer, dict(args.upweight))
    vae = load_trained_vae(args.run, config)
    t0 = time.monotonic()
    moments = encode_dataset(vae, data.images)
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    print(f"encoded {len(moments)} images in {time.monotonic() - t0:.0f} s")

    trainer = DiffusionTrainer(ldm)
    stage = Stage(os.path.join(args.run, "ldm.pt"), args, {"trainer": trainer}, args.lr, ema=Ema(trainer))
    if "scale_factor" not in stage.extra:
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))
        stage.extra["scale_factor"] = 1.0 / (mean + std * noise).flatten().std().item()
        print(f"scale_factor = 1 / std of the dataset latents = {stage.extra['scale_factor']:.5f}")
    scale = stage.extra["scale_factor"]
    # Rank 0 draws from the saved generator; the others from generators seeded by rank and the
    # step they start at (so a data-parallel run resumes, but not bit-identically).
    generator = stage.generator if rank == 0 else torch.Generator().manual_seed(args.seed + 7919 * rank + stage.step)

    def step():
        indices = data.sample(args.batch, generator)
        ids = data.caption_batch(indices, generator)
        noise = torch.randn(mean[indices].shape, generator=generator)
        z0 = scale * (mean[indices] + std[indices] * noise)
        return trainer.loss(z0, ids, generator), {}

    stage.run(step)


def export(args):
    config = copy.deepcopy(read_config(args.run))
    ldm = LatentDiffusion(config)
    ldm.first_stage_model.load_state_dict(load_trained_vae(args.run, config).state_dict())
    state_path = os.path.join(args.run, "ldm.pt")
    if not os.path.exists(state_path):
        sys.exit(f"{state_path} does not exist: train the diffusion model first (train.py ldm --run {args.run})")
    state = torch.load(state_path)
    trainer = DiffusionTrainer(ldm)  # shares ldm's modules
    weights = state["modules"]["trainer"] if args.no_ema else state["ema"]["shadow"]
    trainer.load_state_dict({**trainer.state_dict(), **weights})
    config["model"]["params"]["scale_factor"] = round(state["extra"]["scale_factor"], 5)
    # Prompts are padded with <|endoftext|>, the vocabulary's last id (bpe.py), as FrozenCLIPEmbedder pads.
    text_config = config["model"]["params"]["cond_stage_config"]["params"]["text_config"]
    text_config.setdefault("pad_token_id", text_config["vocab_size"] - 1)
    schedule = {name for name, _ in ldm.named_buffers(recurse=False)}
    weights_dtype = torch.float32 if args.float32 else torch.float16
    tensors = {
        name: tensor.to(weights_dtype) if tensor.is_floating_point() and name not in schedule else tensor
        for name, tensor in ldm.checkpoint_state_dict().items()
    }
    os.makedirs(args.out, exist_ok=True)
    metadata = {"steps": str(state["step"]), "ema": str(not args.no_ema), "format": "pt"}
    save_file(tensors, os.path.join(args.out, f"{args.name}.safetensors"), metadata)
    write_yaml(config, os.path.join(args.out, f"{args.name}.yaml"))
    shutil.copytree(os.path.join(args.run, TOKENIZER_FOLDER), os.path.join(args.out, TOKENIZER_FOLDER), dirs_exist_ok=True)
    size = os.path.getsize(os.path.join(args.out, f"{args.name}.safetensors"))
    print(f"wrote {args.out}/{args.name}.safetensors ({size / 2**20:.1f} MiB, {len(tensors)} tensors, "
          f"step {state['step']}), {args.name}.yaml, {TOKENIZER_FOLDER}/")


def init(args):
    os.makedirs(args.run, exist_ok=True)
    path = os.path.join(args.run, "model.yaml")
    config = build_config(args)
    if os.path.exists(path) and read_config(args.run) != config:
        sys.exit(f"{path} exists with other sizes; use another --run or delete it")
    folder = os.path.join(args.run, TOKENIZER_FOLDER)
    with open(args.data + ".json", encoding="utf-8") as file:
        captions = [c for item in json.load(file)["items"] for c in item["captions"]]
    tokenizer = write_tokenizer_folder(folder, learn_merges(captions, args.vocab_size - 514))
    if len(tokenizer.vocab) != args.vocab_size:
        sys.exit(f"the captions give only {len(tokenizer.vocab)} tokens; pass --vocab-size {len(tokenizer.vocab)}")
    write_yaml(config, path)
    ldm = LatentDiffusion(config)
    counts = {name: sum(p.numel() for p in getattr(ldm, name).parameters())
              for name in ("model", "first_stage_model", "cond_stage_model")}
    print(f"wrote {path} and {folder}/; parameters: {counts}, float16 size {2 * sum(counts.values()) / 2**20:.1f} MiB")


def bench(args):
    """Seconds per training step of each size preset, for the plan in README.md."""
    data = Dataset(args.data)
    for name in args.presets:
        preset = argparse.Namespace(**{**vars(args), **PRESETS[name]})
        config = build_config(preset)
        ldm = LatentDiffusion(config)
        generator = torch.Generator().manual_seed(0)
        vae = ldm.first_stage_model
        images = data.images[:preset.batch]
        vae_params = sum(p.numel() for p in vae.parameters())
        unet_params = sum(p.numel() for p in ldm.model.parameters())
        text_params = sum(p.numel() for p in ldm.cond_stage_model.parameters())
        row = {"preset": name, "vae_M": vae_params / 1e6, "unet_M": unet_params / 1e6, "text_M": text_params / 1e6}
        if "vae" in args.parts:
            batch = crop(images, preset.crop, generator)
            loss = lambda: vae_loss(vae, batch, generator)[0]  # noqa: E731
            row["vae_s_per_step"] = time_steps(vae.parameters(), loss, args.bench_steps)
        if "ldm" in args.parts:
            trainer = DiffusionTrainer(ldm)
            latent = config["model"]["params"]["image_size"]
            z0 = torch.randn(preset.batch, 4, latent, latent, generator=generator)
            ids = torch.randint(0, preset.vocab_size, (preset.batch, 77), generator=generator)
            loss = lambda: trainer.loss(z0, ids, generator)  # noqa: E731
            row["ldm_s_per_step"] = time_steps(trainer.parameters(), loss, args.bench_steps)
        print(json.dumps({**row, "batch": preset.batch, "threads": args.threads}), flush=True)


def time_steps(parameters, loss_fn, steps):
    """Wall and CPU seconds per step. The CPU time is what the step costs; on a shared machine the
    wall time is longer by however much of a core the process got."""
    optimizer = torch.optim.AdamW(list(parameters), lr=1e-4)
    wall, cpu = [], []
    for _ in range(steps + 1):  # the first step warms up allocators and is not counted
        t0, c0 = time.monotonic(), time.process_time()
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        wall.append(time.monotonic() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": round(sum(wall[1:]) / steps, 3), "cpu": round(sum(cpu[1:]) / steps, 3)}


# Candidate sizes measured for the plan (README.md); the defaults of the size flags are the choice.
PRESETS = {
    "vae-f4-ch32": {"vae_ch": 32, "vae_ch_mult": [1, 2, 2], "vae_res_blocks": 1},
    "vae-f4-ch64": {"vae_ch": 64, "vae_ch_mult": [1, 2, 2], "vae_res_blocks": 1},
    "vae-f8-ch32": {"vae_ch": 32, "vae_ch_mult": [1, 2, 2, 4], "vae_res_blocks": 1, "unet_channel_mult": [1, 2]},
    "unet-64-122": {"unet_channels": 64, "unet_channel_mult": [1, 2, 2], "unet_attention": [2, 4], "unet_res_blocks": 1},
    "unet-96-122": {"unet_channels": 96, "unet_channel_mult": [1, 2, 2], "unet_attention": [2, 4], "unet_res_blocks": 1},
    "unet-128-122": {"unet_channels": 128, "unet_channel_mult": [1, 2, 2], "unet_attention": [2, 4], "unet_res_blocks": 1},
    "unet-64-124": {"unet_channels": 64, "unet_channel_mult": [1, 2, 4], "unet_attention": [2, 4], "unet_res_blocks": 1},
    "unet-96-122-attn1": {"unet_channels": 96, "unet_channel_mult": [1, 2, 2], "unet_attention": [1, 2, 4], "unet_res_blocks": 1},
    "unet-64-122-rb2": {"unet_channels": 64, "unet_channel_mult": [1, 2, 2], "unet_attention": [2, 4], "unet_res_blocks": 2},
    "text-128x4": {"text_width": 128, "text_layers": 4, "text_heads": 4},
    "text-256x4": {"text_width": 256, "text_layers": 4, "text_heads": 4},
    "text-256x6": {"text_width": 256, "text_layers": 6, "text_heads": 4},
}


def add_size_flags(parser):
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--vae-ch", type=int, default=32)
    parser.add_argument("--vae-ch-mult", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--vae-res-blocks", type=int, default=1)
    parser.add_argument("--unet-channels", type=int, default=64)
    parser.add_argument("--unet-channel-mult", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--unet-res-blocks", type=int, default=2)
    parser.add_argument("--unet-attention", type=int, nargs="+", default=[2, 4],
                        help="downsampling factors with a SpatialTransformer")
    parser.add_argument("--unet-heads", type=int, default=4)
    parser.add_argument("--text-width", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--text-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)


def add_loop_flags(parser, batch, lr, steps):
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup", type=int, default=500, help="steps of linear learning-rate warm-up")
    parser.add_argument("--steps", type=int, default=steps, help="train until this step (total, across resumes)")
    parser.add_argument("--minutes", type=float, default=0,
                        help="stop after this many minutes of this invocation (0: no limit)")
    parser.add_argument("--save-minutes", type=float, default=10)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)


def subgroup_factor(text):
    subgroup, _, factor = text.partition("=")
    try:
        value = float(factor)
    except ValueError:
        value = 0.0
    if not subgroup or value <= 0:
        raise argparse.ArgumentTypeError(f"expected SUBGROUP=FACTOR with FACTOR > 0, got {text!r}")
    return subgroup, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 while the machine is shared)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="dataset stem: <stem>.npy and <stem>.json")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("init")
    p.add_argument("--run", required=True)
    add_size_flags(p)
    p = commands.add_parser("vae")
    p.add_argument("--run", required=True)
    p.add_argument("--crop", type=int, default=0, help="train on random crops of this side (0: whole images)")
    add_loop_flags(p, batch=16, lr=4e-4, steps=9000)
    p = commands.add_parser("ldm")
    p.add_argument("--run", required=True)
    add_loop_flags(p, batch=32, lr=2e-4, steps=8000)
    p.add_argument("--ranks", type=int, default=1,
                   help="data-parallel processes (each --threads threads, its own --batch; gradients averaged)")
    p.add_argument("--port", type=int, default=29517, help="local TCP port of the data-parallel rendezvous")
    p.add_argument("--upweight", type=subgroup_factor, nargs="+", default=[], metavar="SUBGROUP=FACTOR",
                   help="draw a subgroup's emojis FACTOR times as often (e.g. country-flag=2)")
    p = commands.add_parser("export")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="emoji-ldm")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--float32", action="store_true", help="float32 weights (to measure what float16 changes)")
    p = commands.add_parser("bench")
    add_size_flags(p)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--parts", nargs="+", default=["vae", "ldm"], choices=["vae", "ldm"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=0)
    p.add_argument("--bench-steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"init": init, "vae": train_vae, "ldm": train_ldm, "export": export, "bench": bench}[args.command](args)


if __name__ == "__main__":
    main()
