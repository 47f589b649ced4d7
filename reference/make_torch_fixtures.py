"""Writes the PyTorch checkpoint fixtures of @ldm/weights' .ckpt/.pt reader.

Into packages/weights/test/fixtures/torch/:
  zip.pt, legacy.pt        the same state dict, torch.save's zip format and its legacy format
                           (_use_new_zipfile_serialization=False); deflated.pt and zip64.pt hold zip.pt's
                           entries deflated, and with zip64 records (as torch writes past 4 GiB): every dtype, a 0-d tensor, two views
                           of one storage (one with an offset, one strided), a transposed (non-contiguous)
                           tensor, an nn.Parameter
  lightning.ckpt           {"state_dict": …, "global_step", "epoch", optimizer states, …} as Lightning saves
  model-legacy.pt          {"model": …} in the legacy format
  embedding.pt             a textual-inversion embedding as AUTOMATIC1111 saves one (tensor under string_to_param)
  expected.json            every tensor of those state dicts: dtype, shape, values (row-major)
  hostile/*                checkpoints that must be refused (see HOSTILE below); the payloads, were they
                           ever executed, would create /tmp/ldm-pwned-<name>
And packages/ldm/test/fixtures/dumps/tiny-sd1.ckpt: tiny-sd1.safetensors as the paper's checkpoints store
their weights, torch.save({"state_dict": sd, "global_step": n}).

Usage: /usr/bin/python3 reference/make_torch_fixtures.py   (~8 s; byte-identical on re-run except the legacy
files, whose storage keys are Python object ids)
"""

import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict

sys.dont_write_bytecode = True

import torch  # noqa: E402

from ldm_ref.safetensors_io import load_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "packages", "weights", "test", "fixtures", "torch")
DUMPS = os.path.join(HERE, "..", "packages", "ldm", "test", "fixtures", "dumps")

torch.manual_seed(0)


def state_dict():
    sd = OrderedDict()
    sd["f32"] = torch.randn(3, 4)
    sd["f16"] = torch.randn(2, 5).half()
    sd["bf16"] = torch.randn(4, 3).bfloat16()
    sd["f64"] = torch.randn(2, 2, dtype=torch.float64)
    sd["i64"] = torch.tensor([-(2**40), 0, 7, 2**52], dtype=torch.int64)
    sd["i32"] = torch.tensor([-5, 1 << 30], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255, 9], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd["shared.rows"] = base[1:3]  # storage offset 6, contiguous
    sd["shared.column"] = base[:, 2]  # stride 6
    sd["transposed"] = torch.randn(5, 3).t()  # [3, 5], strides (1, 3)
    sd["sliced"] = torch.randn(4, 6, 2)[1:, ::2, 1]  # offset, two strides
    sd["param.weight"] = torch.nn.Parameter(torch.randn(2, 3))
    return sd


def expected(sd):
    out = {}
    for name, t in sd.items():
        t = t.detach()
        values = t.to(torch.float64) if t.is_floating_point() else t.to(torch.int64)
        out[name] = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "values": [v if t.is_floating_point() else int(v) for v in values.flatten().tolist()],
        }
    return out


# ---- hostile and broken checkpoints -------------------------------------------------------------------


def zip_bytes(entries, zip64=False):
    """A zip archive from (name, data, method, declared_size or None) with fixed timestamps. zip64: every
    size and offset saturated in the directory and given in zip64 extra fields, with the zip64 end records."""
    buf = io.BytesIO()
    central = []
    for name, data, method, declared in entries:
        raw = zlib.compress(data)[2:-4] if method == 8 else data
        size = len(data) if declared is None else declared
        crc = zlib.crc32(data)
        offset = buf.tell()
        name_b = name.encode()
        buf.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc, len(raw), size, len(name_b), 0))
        buf.write(name_b + raw)
        extra = struct.pack("<HHQQQ", 1, 24, size, len(raw), offset) if zip64 else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (len(raw), size, offset)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0x21, crc, sizes[0],
                                   sizes[1], len(name_b), len(extra), 0, 0, 0, 0, sizes[2]) + name_b + extra)
    start = buf.tell()
    for c in central:
        buf.write(c)
    dir_size = buf.tell() - start
    if zip64:
        record = buf.tell()
        buf.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(central), len(central), dir_size, start))
        buf.write(struct.pack("<IIQI", 0x07064B50, 0, record, 1))
        buf.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    else:
        buf.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), dir_size, start, 0))
    return buf.getvalue()


def torch_zip(obj):
    """torch.save's archive entries for `obj`, as (name, bytes)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(n, z.read(n)) for n in z.namelist()]


def with_pickle(pickle_bytes, method=0):
    """A valid small checkpoint's archive with data.pkl replaced (deflated when method is 8)."""
    entries = torch_zip({"state_dict": {"w": torch.arange(10, dtype=torch.float32)}})
    return zip_bytes([(n, pickle_bytes, method, None) if n.endswith("/data.pkl") else (n, d, 0, None) for n, d in entries])


def marker(name):
    return f"/tmp/ldm-pwned-{name}"


def proto2(*parts):
    return b"\x80\x02" + b"".join(parts) + b"."


def unicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


class Payload:
    """An object whose unpickling calls `fn(*args)` (Python's pickle would run it)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class FakeStorage:
    pass


class FakeTensor:
    """Pickles as torch does a tensor, with the view we choose (even an impossible one)."""

    def __init__(self, offset, size, stride, key="0", numel=10):
        self.view, self.key, self.numel = (offset, size, stride), key, numel

    def __reduce__(self):
        storage = FakeStorage()
        storage.pid = ("storage", torch.FloatStorage, self.key, "cpu", self.numel)
        return torch._utils._rebuild_tensor_v2, (storage, *self.view, False, OrderedDict())


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return getattr(obj, "pid", None) if isinstance(obj, FakeStorage) else None


def torch_like(obj):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def touch(name):
    return f"touch {marker(name)}"


def hostile():
    w = FakeTensor(0, (10,), (1,))
    files = {
        # REDUCE on os.system, written out (os.system pickles as posix.system on Linux)
        "reduce-os-system.pt": with_pickle(proto2(b"cos\nsystem\n", unicode(touch("reduce-os-system")), b"\x85R")),
        "builtins-exec.pt": with_pickle(
            proto2(b"cbuiltins\nexec\n", unicode(f"open('{marker('builtins-exec')}', 'w')"), b"\x85R")
        ),
        # what pickle writes for an object whose __reduce__ returns os.system
        "posix-system.pt": with_pickle(torch_like({"state_dict": {"w": w}, "x": Payload(os.system, touch("posix-system"))})),
        # deep inside an otherwise plain value, after the state dict
        "nested-global.ckpt": with_pickle(
            torch_like({"state_dict": {"w": w}, "callbacks": {"a": [1, {"b": (2, Payload(eval, f"__import__('os').system('{touch('nested-global')}')"))}]}})
        ),
        "lightning-callback.ckpt": with_pickle(b"\x80\x02}q\x00(X\x05\x00\x00\x00epochK\x01X\t\x00\x00\x00callbacks}q\x01cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\nq\x02}q\x03su."),
        "memo-index.pt": with_pickle(proto2(b"}j\xff\xff\xff\xff")),
        "truncated-pickle.pt": with_pickle(torch_like({"state_dict": {"w": w}})[:40]),
        "missing-storage.pt": with_pickle(torch_like({"state_dict": {"w": FakeTensor(0, (10,), (1,), key="7")}})),
        "offset-past-end.pt": with_pickle(torch_like({"state_dict": {"w": FakeTensor(4, (3, 3), (3, 1))}})),
        "stride-past-end.pt": with_pickle(torch_like({"state_dict": {"w": FakeTensor(0, (2, 2), (9, 1))}})),
        # data.pkl announces 100 bytes and inflates to 64 MiB
        "zip-bomb.pt": zip_bytes([("a/data.pkl", b"\0" * (64 << 20), 8, 100)]),
        "nesting.pt": with_pickle(b"\x80\x02" + b"(" * 100_000, method=8),
        "list-nesting.pt": with_pickle(b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".", method=8),
    }
    files["truncated-zip.pt"] = with_pickle(torch_like({"state_dict": {"w": w}}))[:-30]
    return files


def main():
    os.makedirs(os.path.join(OUT, "hostile"), exist_ok=True)
    sd = state_dict()
    torch.save(sd, os.path.join(OUT, "zip.pt"))
    torch.save(sd, os.path.join(OUT, "legacy.pt"), _use_new_zipfile_serialization=False)
    entries = torch_zip(sd)
    with open(os.path.join(OUT, "deflated.pt"), "wb") as f:
        f.write(zip_bytes([(n, d, 8, None) for n, d in entries]))
    with open(os.path.join(OUT, "zip64.pt"), "wb") as f:
        f.write(zip_bytes([(n, d, 0, None) for n, d in entries], zip64=True))
    small = OrderedDict((k, sd[k]) for k in ["f32", "shared.rows", "shared.column", "param.weight"])
    lightning = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": small,
        "optimizer_states": [{"state": {0: {"step": 5, "exp_avg": torch.ones(3, 4)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [],
    }
    torch.save(lightning, os.path.join(OUT, "lightning.ckpt"))
    torch.save({"model": small}, os.path.join(OUT, "model-legacy.pt"), _use_new_zipfile_serialization=False)
    vector = torch.randn(2, 8, requires_grad=True)
    embedding = {"string_to_token": {"*": 265}, "string_to_param": {"*": vector}, "name": "toy", "step": 100,
                 "sd_checkpoint": None, "sd_checkpoint_name": None}
    torch.save(embedding, os.path.join(OUT, "embedding.pt"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"torch_version": torch.__version__, "tensors": expected({**sd, "*": vector})}, f, indent=1)
        f.write("\n")
    for name, data in hostile().items():
        with open(os.path.join(OUT, "hostile", name), "wb") as f:
            f.write(data)
    tiny = load_file(os.path.join(DUMPS, "tiny-sd1.safetensors"))
    tensors = tiny[0] if isinstance(tiny, tuple) else tiny
    torch.save({"state_dict": OrderedDict(sorted(tensors.items())), "global_step": 1000}, os.path.join(DUMPS, "tiny-sd1.ckpt"))


if __name__ == "__main__":
    main()
