"""Chooses the built-in model's guidance scale on captions the quality check does not use.

quality.py scores 20 fixed captions; choosing a sampling setting by that score would tune the setting to
the check. This scores --count other training captions (primary captions of emojis without skin-tone
modifiers, not among quality.py's 20, drawn with --pick-seed) with quality.py's protocol (same x_T seed,
sampler, steps and distance) at each guidance scale, and prints the pass rate, mean fraction and failing
captions per scale.

Usage: /usr/bin/python3 reference/default_model/sweep_guidance.py --model DIR/emoji-ldm [--scales 3 5 7.5]
"""

import argparse
import os
import sys
from types import SimpleNamespace

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from default_model.quality import (  # noqa: E402
    DEFAULT_DATA,
    PASS_FRACTION,
    chosen_items,
    downsampled,
    farther_fraction,
    generate,
    load_model,
)


def held_out_items(items, count, seed):
    checked = set(chosen_items(items))
    candidates = [i for i, item in enumerate(items) if item["skin_tone_base"] == item["codepoints"] and i not in checked]
    return sorted(np.random.default_rng(seed).choice(candidates, count, replace=False).tolist())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint stem: <stem>.safetensors, <stem>.yaml")
    parser.add_argument("--data", default=DEFAULT_DATA, help="dataset stem: <stem>.npy, <stem>.json")
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 9.0])
    parser.add_argument("--count", type=int, default=100, help="held-out captions")
    parser.add_argument("--pick-seed", type=int, default=7)
    parser.add_argument("--seed", type=int, default=42, help="x_T seed, as quality.py")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer, config = load_model(args.model, False)
    pixels = np.load(args.data + ".npy")
    with open(args.data + ".json", encoding="utf-8") as file:
        items = json.load(file)["items"]
    reference = downsampled(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
    picked = held_out_items(items, args.count, args.pick_seed)
    captions = [items[i]["captions"][0] for i in picked]
    print(f"{len(picked)} held-out captions (none of quality.py's 20), {args.sampler} {args.steps} steps, seed {args.seed}")
    for scale in args.scales:
        run = SimpleNamespace(seed=args.seed, sampler=args.sampler, steps=args.steps, scale=scale)
        images = (generate(model, tokenizer, config, captions, run)["sample.out.image"].clamp(-1, 1) + 1) / 2
        distances = torch.cdist(downsampled(images), reference)
        fractions = [farther_fraction(distances, row, index) for row, index in enumerate(picked)]
        passed = sum(f >= PASS_FRACTION for f in fractions)
        print(f"scale {scale:4}: {passed}/{len(picked)} pass, mean fraction {np.mean(fractions):.1%}, "
              f"median {np.median(fractions):.1%}", flush=True)
        failing = [f"{caption} {f:.1%}" for caption, f in zip(captions, fractions) if f < PASS_FRACTION]
        if failing:
            print(f"  failing: {', '.join(failing)}", flush=True)


if __name__ == "__main__":
    main()
