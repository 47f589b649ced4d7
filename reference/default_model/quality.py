"""Quality check of a text-to-image checkpoint on the emoji dataset (issue 7's protocol).

For 20 training captions (the primary captions of 20 emojis drawn with a fixed seed among those
without skin-tone modifiers), one image each is generated from the same x_T (torch.randn of the
latent shape from torch.Generator().manual_seed(--seed), what `ldm generate --seed` draws), with
DDIM, 20 steps (what CI affords: the TypeScript test replays this run), classifier-free guidance
against "" at scale 7.5 (the default of `ldm generate`).

Distance: both images as RGB in [0, 1] (dataset images are composited on white), averaged down
to 16x16 (area), then the Euclidean (L2) distance over the 16*16*3 values. A caption passes when
its image is closer to its own emoji than to at least 90% of the other emojis of the dataset
(strictly closer: ties count against it). The check passes when all 20 captions pass.

Usage:
  /usr/bin/python3 reference/default_model/quality.py --model DIR/emoji-ldm [--grid out.png] [--dump run.safetensors]
  /usr/bin/python3 reference/default_model/quality.py --model DIR/emoji-ldm --random-weights
  /usr/bin/python3 reference/default_model/quality.py --model DIR/emoji-ldm --vae-only
(--vae-only scores the VAE's reconstructions of the 20 emojis instead of generated images: what
the check gives when the diffusion model is perfect, i.e. the ceiling set by the autoencoder.)
(--model is the stem of <stem>.safetensors and <stem>.yaml; the tokenizer folder is the config's
cond_stage_config.params.tokenizer, relative to the config.) Exit status 0 when the check passes.
"""

import argparse
import hashlib
import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from default_model.bpe import BPE_FILE, Tokenizer  # noqa: E402
from ldm_ref.init import randomize_  # noqa: E402
from ldm_ref.ldm import LatentDiffusion  # noqa: E402
from ldm_ref.safetensors_io import load_file, save_file  # noqa: E402
from ldm_ref.samplers import SAMPLERS  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "out", "emoji", "emoji-64")
CAPTIONS = 20
CAPTION_SEED = 2024
DISTANCE_SIZE = 16
PASS_FRACTION = 0.9
RANDOM_WEIGHTS_SEED = 7


def load_model(stem, random_weights):
    with open(stem + ".yaml") as file:
        config = yaml.safe_load(file)
    model = LatentDiffusion(config).eval()
    if random_weights:
        randomize_(model, RANDOM_WEIGHTS_SEED, {})
    else:
        tensors, _ = load_file(stem + ".safetensors")
        model.load_checkpoint_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    folder = config["model"]["params"]["cond_stage_config"]["params"]["tokenizer"]
    tokenizer = Tokenizer.from_file(os.path.join(os.path.dirname(os.path.abspath(stem)), folder, BPE_FILE))
    return model, tokenizer, config


def chosen_items(items):
    """CAPTIONS emojis without skin-tone modifiers, drawn with CAPTION_SEED, in dataset order."""
    candidates = [i for i, item in enumerate(items) if item["skin_tone_base"] == item["codepoints"]]
    return sorted(np.random.default_rng(CAPTION_SEED).choice(candidates, CAPTIONS, replace=False).tolist())


def farther_fraction(distances, row, index):
    """Of the emojis other than `index`, the fraction strictly farther from image `row` than emoji `index`
    (ties count against it)."""
    own = distances[row, index]
    others = torch.cat([distances[row, :index], distances[row, index + 1 :]])
    return (others > own).double().mean().item()


def downsampled(images):
    """[N, 3, H, W] in [0, 1] -> [N, 3 * 16 * 16], area-averaged."""
    return F.adaptive_avg_pool2d(images, DISTANCE_SIZE).flatten(1)


@torch.no_grad()
def generate(model, tokenizer, config, captions, args):
    """The sampling run as a `sample` dump's tensors (README's dump format): x_T, ids, z_0, raw image."""
    params = config["model"]["params"]
    shape = (1, params["channels"], params["image_size"], params["image_size"])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).repeat(len(captions), 1, 1, 1)
    cond_ids = torch.tensor([tokenizer.tokenize(c) for c in captions])
    uncond_ids = torch.tensor([tokenizer.tokenize("")] * len(captions))
    context = model.get_learned_conditioning(cond_ids)
    uncond = model.get_learned_conditioning(uncond_ids)
    z = SAMPLERS[args.sampler](model, x_T, context, uncond, args.steps, args.scale)
    return {
        "sample.in.x_T": x_T,
        "sample.in.cond_ids": cond_ids,
        "sample.in.uncond_ids": uncond_ids,
        "sample.out.z_0": z.float(),
        "sample.out.image": model.decode_first_stage(z).float(),
    }


def write_dump(path, tensors, args, chosen, items, fractions):
    """The run as a `sample` dump that `ldm validate` and the TypeScript quality test replay."""
    with open(args.model + ".safetensors", "rb") as file:
        checkpoint_sha256 = hashlib.sha256(file.read()).hexdigest()
    metadata = {
        "sampler": args.sampler,
        "steps": str(args.steps),
        "guidance_scale": str(args.scale),
        "eta": "0",
        "seed": str(args.seed),
        "torch_version": torch.__version__,
        "checkpoint_sha256": checkpoint_sha256,
        # Which dataset images the captions belong to, to score generated images against the dataset.
        "quality_items": json.dumps(
            [{"index": i, "codepoints": items[i]["codepoints"], "caption": items[i]["captions"][0]} for i in chosen]
        ),
        "quality_rule": f"closer to its own emoji than to >= {PASS_FRACTION:.0%} of the others, all captions",
        # Per caption, the fraction of the other emojis farther from the image than its own emoji.
        "quality_fractions": json.dumps(fractions),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint stem: <stem>.safetensors, <stem>.yaml")
    parser.add_argument("--random-weights", action="store_true", help="the same architecture with random weights")
    parser.add_argument("--vae-only", action="store_true", help="score VAE reconstructions (posterior mean) instead")
    parser.add_argument("--data", default=DEFAULT_DATA, help="dataset stem: <stem>.npy, <stem>.json")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", help="write generated (top) over dataset (bottom) images to this PNG")
    parser.add_argument("--dump", help="also write the run as a `sample` dump (safetensors) for the TypeScript tests")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer, config = load_model(args.model, args.random_weights)
    pixels = np.load(args.data + ".npy")
    with open(args.data + ".json", encoding="utf-8") as file:
        items = json.load(file)["items"]
    dataset = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    resolution = config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["resolution"]
    if dataset.shape[-1] != resolution:
        sys.exit(f"{args.data}: images are {dataset.shape[-1]} px, the model makes {resolution} px")
    chosen = chosen_items(items)
    captions = [items[i]["captions"][0] for i in chosen]
    if args.vae_only:
        with torch.no_grad():
            mean = model.first_stage_model.encode(dataset[chosen] * 2 - 1).mode()
            images = (model.first_stage_model.decode(mean).clamp(-1, 1) + 1) / 2
    else:
        tensors = generate(model, tokenizer, config, captions, args)
        images = (tensors["sample.out.image"].clamp(-1, 1) + 1) / 2

    reference = downsampled(dataset)
    distances = torch.cdist(downsampled(images), reference)  # [20, N]
    passed = 0
    fractions = []
    for row, (index, caption) in enumerate(zip(chosen, captions)):
        own = distances[row, index]
        fraction = farther_fraction(distances, row, index)
        nearest = items[int(distances[row].argmin())]["captions"][0]
        fractions.append(fraction)
        passed += fraction >= PASS_FRACTION
        print(f"{'pass' if fraction >= PASS_FRACTION else 'FAIL'} {fraction:6.1%} closer than own: "
              f"{caption!r} (own distance {own:.2f}; nearest emoji {nearest!r})")
    if args.dump and not args.vae_only:
        write_dump(args.dump, tensors, args, chosen, items, fractions)
    what = "random weights" if args.random_weights else args.model + (" (VAE reconstructions)" if args.vae_only else "")
    print(f"{what}: {passed}/{len(chosen)} captions pass (need all); "
          f"mean fraction {np.mean(fractions):.1%}, median {np.median(fractions):.1%}")
    if args.grid:
        own_images = dataset[chosen]
        grid = torch.cat([torch.cat(list(images), dim=2), torch.cat(list(own_images), dim=2)], dim=1)
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(args.grid)
        print(f"wrote {args.grid}")
    sys.exit(0 if passed == len(chosen) else 1)


if __name__ == "__main__":
    main()
