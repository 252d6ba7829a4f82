"""Writing safetensors files tensor by tensor: one file, or shards and their index above a size.

Each tensor is a `Lazy`: its shape and dtype make the header, and it is made only when its bytes are written and
released after, so writing a checkpoint needs about one tensor beyond the model (`safetensors.torch.save_file`
would hold the bytes of a whole file at once).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from archspec.interop.checkpoint import INDEX, SINGLE
from archspec.interop.errors import ExportError


class Lazy(NamedTuple):
    """One checkpoint tensor, described by its shape and dtype (for the safetensors header) and made only when it is
    written: a fused QKV, a transposed or dtype-cast copy exists only while it is being written."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(tensors: dict[str, Lazy], out: Path, max_shard_bytes: int) -> None:
    """`out/model.safetensors`, or shards `model-0000i-of-0000n.safetensors` and their index above
    `max_shard_bytes`; earlier files of either kind in `out` are removed first."""
    for stale in [*out.glob("model*.safetensors"), out / INDEX]:
        stale.unlink(missing_ok=True)
    total = sum(t.nbytes for t in tensors.values())
    if total <= max_shard_bytes:
        _write_file(out / SINGLE, tensors)
        return
    shards: list[dict[str, Lazy]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _write_file(out / file, shard)
        weight_map |= dict.fromkeys(shard, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _write_file(path: Path, tensors: dict[str, Lazy]) -> None:
    """One safetensors file, streamed: the header from the shapes, then each tensor made, written and released."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, lazy in tensors.items():
        header[name] = {
            "dtype": _DTYPES[lazy.dtype],
            "shape": list(lazy.shape),
            "data_offsets": [offset, offset + lazy.nbytes],
        }
        offset += lazy.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name, lazy in tensors.items():
            tensor = lazy.make().cpu()
            if tuple(tensor.shape) != lazy.shape or tensor.dtype != lazy.dtype or not tensor.is_contiguous():
                raise ExportError(
                    f"{name}: made as {tuple(tensor.shape)} {tensor.dtype}, not {lazy.shape} {lazy.dtype}"
                )
            if tensor.numel():
                file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor
