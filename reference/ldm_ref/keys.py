"""The summary of a module's checkpoint keys that packages/weights/test/architecture.test.ts compares with ours."""

import hashlib


def summary(prefix, module):
    """Tensor count, parameter count and sha256 of the sorted "key<TAB>[shape]" lines of `module`'s state_dict,
    its keys under `prefix`."""
    lines = sorted(f"{prefix}{k}\t{list(v.shape)}" for k, v in module.state_dict().items())
    return {
        "count": len(lines),
        "params": sum(v.numel() for v in module.state_dict().values()),
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }
