"""Minimal safetensors reader/writer (the format: 8-byte little-endian header length,
a JSON header mapping names to {dtype, shape, data_offsets}, then the raw little-endian data).

Written here because Debian's Python has no `safetensors` package. Tensors are stored in
sorted name order, offsets relative to the start of the data section, as the reference
implementation does, so files are byte-for-byte reproducible.
"""

import json
import struct

import numpy as np
import torch

_TORCH_TO_ST = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_TO_TORCH = {name: dtype for dtype, name in _TORCH_TO_ST.items()}

# safetensors aligns the data section to 8 bytes by padding the JSON header with spaces.
_HEADER_ALIGNMENT = 8


def _tensor_bytes(tensor):
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the 16-bit payload.
        return tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    array = tensor.numpy()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def save_file(tensors, path, metadata=None):
    """Write `tensors` (name -> torch.Tensor) to `path`; `metadata` values must be strings."""
    header = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise TypeError(f"safetensors metadata value for {key!r} must be a string, got {type(value).__name__}")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in _TORCH_TO_ST:
            raise TypeError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        data = _tensor_bytes(tensor)
        header[name] = {
            "dtype": _TORCH_TO_ST[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % _HEADER_ALIGNMENT)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)))
        file.write(header_bytes)
        for chunk in chunks:
            file.write(chunk)


def load_file(path):
    """Read a safetensors file; returns (tensors: name -> torch.Tensor, metadata: dict)."""
    with open(path, "rb") as file:
        raw = file.read()
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_length].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = raw[8 + header_length :]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _ST_TO_TORCH[info["dtype"]]
        chunk = bytearray(data[begin:end])
        if dtype == torch.bfloat16:
            tensor = torch.from_numpy(np.frombuffer(chunk, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
            tensor = torch.from_numpy(np.frombuffer(chunk, dtype=numpy_dtype).astype(numpy_dtype.newbyteorder("=")))
        tensors[name] = tensor.reshape(info["shape"])
    return tensors, metadata
