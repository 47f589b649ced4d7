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


def _header(tensors, metadata):
    """The padded JSON header of `tensors` (name -> anything with .dtype, .shape, .numel(), .element_size()) in
    sorted name order, and the data section's size."""
    header = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise TypeError(f"safetensors metadata value for {key!r} must be a string, got {type(value).__name__}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in _TORCH_TO_ST:
            raise TypeError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _TORCH_TO_ST[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % _HEADER_ALIGNMENT)
    return struct.pack("<Q", len(header_bytes)) + header_bytes, offset


def save_file(tensors, path, metadata=None):
    """Write `tensors` (name -> torch.Tensor) to `path`; `metadata` values must be strings.
    Tensors are converted and written one at a time, so a multi-GB checkpoint needs no
    second copy in memory."""
    header, _ = _header(tensors, metadata)
    with open(path, "wb") as file:
        file.write(header)
        for name in sorted(tensors):
            file.write(_tensor_bytes(tensors[name]))


def save_layout(tensors, path, metadata=None):
    """A valid safetensors file of `tensors`' names, dtypes and shapes whose data section is a hole (all zeros):
    the file has the full size, but on a sparse-file system it takes the header's bytes on disk. For readers of
    the header (parameter counts) without writing gigabytes; the values are not the tensors'."""
    header, size = _header(tensors, metadata)
    with open(path, "wb") as file:
        file.write(header)
        file.truncate(len(header) + size)


def load_file(path):
    """Read a safetensors file; returns (tensors: name -> torch.Tensor, metadata: dict).
    The file is memory-mapped and each tensor copied out once, so multi-GB checkpoints
    cost their size in memory, not twice that."""
    with open(path, "rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_length).decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_length)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _ST_TO_TORCH[info["dtype"]]
        chunk = data[begin:end]
        if dtype == torch.bfloat16:
            tensor = torch.from_numpy(chunk.view("<i2").astype(np.int16)).view(torch.bfloat16)
        else:
            numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
            tensor = torch.from_numpy(chunk.view(numpy_dtype.newbyteorder("<")).astype(numpy_dtype))
        tensors[name] = tensor.reshape(info["shape"])
    return tensors, metadata
