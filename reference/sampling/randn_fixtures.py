"""Dumps torch.randn / torch.rand values for packages/ldm/test/fixtures/randn/.

Run with Debian's PyTorch 1.13 (CPU):
    /usr/bin/python3 reference/sampling/randn_fixtures.py            # x86 AVX2 kernel (what x86 builds use)
    ATEN_CPU_CAPABILITY=default /usr/bin/python3 reference/sampling/randn_fixtures.py --kernel scalar

Each case records the first and last 16 values and the SHA-256 of the whole float32 array (little endian),
so the TypeScript test can check every bit of large draws without committing them.
"""

import argparse
import base64
import hashlib
import json
import os

import torch

SEEDS = [0, 1, 42, 2**32 - 1, 0xDEADBEEF12345678]
SHAPES = [[1], [7], [15], [16], [17], [33], [4 * 64 * 64], [2, 4, 64, 64]]


def summary(t: torch.Tensor, full: bool = False) -> dict:
    flat = t.contiguous().view(-1).numpy()
    out = {
        "shape": list(t.shape),
        "head": [float(v) for v in flat[:16]],
        "tail": [float(v) for v in flat[-16:]],
        "sha256": hashlib.sha256(flat.astype("<f4").tobytes()).hexdigest(),
    }
    if full:
        out["float32_base64"] = base64.b64encode(flat.astype("<f4").tobytes()).decode()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="avx2", choices=["avx2", "scalar"])
    args = parser.parse_args()
    cases = []
    for seed in SEEDS:
        for shape in SHAPES:
            g = torch.Generator().manual_seed(seed)
            cases.append({"seed": str(seed), "op": "randn", "draws": [summary(torch.randn(shape, generator=g))]})
    # Successive draws from one generator: odd scalar-path sizes leave a cached normal in the generator,
    # vectorised draws neither use nor clear it, rand interleaves the raw 32-bit stream.
    for seed in [0, 42]:
        g = torch.Generator().manual_seed(seed)
        draws = [
            ("randn", [7]),
            ("randn", [3]),
            ("randn", [33]),
            ("randn", [1]),
            ("rand", [5]),
            ("randn", [2, 4, 8, 8]),
            ("rand", [17]),
            ("randn", [5]),
        ]
        out = []
        for op, shape in draws:
            t = torch.randn(shape, generator=g) if op == "randn" else torch.rand(shape, generator=g)
            out.append({"op": op, **summary(t)})
        cases.append({"seed": str(seed), "op": "sequence", "draws": out})
    # Whole arrays for the scalar kernel, whose libm-dependent last bits are compared value by value.
    if args.kernel == "scalar":
        for seed in [0, 42]:
            g = torch.Generator().manual_seed(seed)
            cases.append({"seed": str(seed), "op": "full", "draws": [summary(torch.randn([4096], generator=g), True)]})
    # Re-seeding clears the cached normal (CPUGeneratorImpl::set_current_seed).
    g = torch.Generator().manual_seed(5)
    torch.randn([1], generator=g)
    g.manual_seed(5)
    cases.append({"seed": "5", "op": "reseed", "draws": [summary(torch.randn([3], generator=g))]})

    out_dir = os.path.join(os.path.dirname(__file__), "../../packages/ldm/test/fixtures/randn")
    path = os.path.join(out_dir, f"torch-{args.kernel}.json")
    meta = {
        "torch": torch.__version__,
        "kernel": args.kernel,
        "cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "generator": "torch.Generator().manual_seed(seed), float32 CPU",
    }
    with open(path, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=1)
        f.write("\n")
    print("wrote", path, len(cases), "cases")


if __name__ == "__main__":
    main()
