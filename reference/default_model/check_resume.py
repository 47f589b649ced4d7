"""Checks that an interrupted and resumed training equals an uninterrupted one, bit for bit.

With a tiny model (VAE ch 32, UNet 32 channels, CLIP width 32) on the first 64 images of the
dataset: `vae` and `ldm` run for 2N steps in one go, and for N steps then N more after a
restart; the saved states (weights, optimizer, EMA, generator, step) must be identical.
About a minute on one thread.

Usage: /usr/bin/python3 reference/default_model/check_resume.py [--data STEM]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True

import numpy as np  # noqa: E402
import torch  # noqa: E402

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
TINY = ["--vae-ch", "32", "--vae-ch-mult", "1", "2", "--unet-channels", "32", "--unet-channel-mult", "1", "2",
        "--unet-res-blocks", "1", "--unet-attention", "2", "--unet-heads", "2",
        "--text-width", "32", "--text-layers", "2", "--text-heads", "2", "--vocab-size", "600", "--image-size", "32"]
STEPS = 3
IMAGES = 64


def train(data, run, *args):
    command = [sys.executable, TRAIN, "--data", data, *args, "--run", run]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def write_subset(stem, out_stem):
    np.save(out_stem + ".npy", np.load(stem + ".npy")[:IMAGES])
    with open(stem + ".json", encoding="utf-8") as file:
        dataset = json.load(file)
    with open(out_stem + ".json", "w", encoding="utf-8") as file:
        json.dump({**dataset, "items": dataset["items"][:IMAGES]}, file)


def flatten(value, prefix=""):
    """Every tensor and plain value of a nested state, by path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix: value}


def differences(path_a, path_b):
    a, b = (flatten({k: v for k, v in torch.load(p).items() if k not in ("seconds", "log")}) for p in (path_a, path_b))
    if a.keys() != b.keys():
        return [f"keys differ: {sorted(a.keys() ^ b.keys())[:5]}"]
    found = []
    for key in a:
        same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
        if not same:
            found.append(key)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset stem made with make_emoji_dataset.py --size 32")
    args = parser.parse_args()
    loop = ["--batch", "4", "--warmup", "2", "--log-every", "1"]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "subset")
        write_subset(args.data, data)
        runs = {name: os.path.join(tmp, name) for name in ("straight", "resumed")}
        for run in runs.values():
            train(data, run, "init", *TINY)
        for stage, state in (("vae", "vae.pt"), ("ldm", "ldm.pt")):
            train(data, runs["straight"], stage, *loop, "--steps", str(2 * STEPS))
            train(data, runs["resumed"], stage, *loop, "--steps", str(STEPS))
            train(data, runs["resumed"], stage, *loop, "--steps", str(2 * STEPS))
            found = differences(*(os.path.join(run, state) for run in runs.values()))
            failed |= bool(found)
            print(f"{stage}: {2 * STEPS} steps straight vs {STEPS} + {STEPS} resumed: "
                  + (f"DIFFERENT in {found[:5]}" if found else "identical state"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
