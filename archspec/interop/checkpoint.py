"""Reading safetensors checkpoints: one file or shards listed in an index, every failure named by its file.

A checkpoint that cannot be read (truncated, empty, a garbage header, a shard missing from the index) raises
`WeightLoadError` with the file it concerns: with sharded checkpoints a bare safetensors error would not tell the
user which of fifty shards is broken. Headers are read before any tensor data, so shapes can be checked against a
model before anything is copied into it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from archspec.spec.errors import WeightLoadError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@contextmanager
def open_safetensors(file: Path) -> Iterator[Any]:
    """`safetensors.safe_open(file)`, with unreadable files raised as `WeightLoadError` naming the file."""
    try:
        handle = safe_open(str(file), "pt")
    except (SafetensorError, OSError) as exc:
        raise WeightLoadError(f"{file}: not a readable safetensors file ({_reason(exc)})") from None
    with handle:
        try:
            yield handle
        except SafetensorError as exc:  # a header that parsed but data that does not (e.g. cut short)
            raise WeightLoadError(f"{file}: damaged safetensors file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class CheckpointReader:
    """Tensors of a checkpoint directory: model.safetensors, or shards listed in model.safetensors.index.json.

    Shapes come from the safetensors headers, so a checkpoint is checked against a model before any data is read.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index, single = self.directory / INDEX, self.directory / SINGLE
        if index.is_file():
            self.files = {name: self.directory / file for name, file in _weight_map(index).items()}
            missing_shards = sorted({str(f) for f in self.files.values() if not f.is_file()})
            if missing_shards:
                raise WeightLoadError(f"{index}: shard files are missing: {', '.join(missing_shards)}")
        elif single.is_file():
            with open_safetensors(single) as handle:
                self.files = {name: single for name in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        else:
            raise WeightLoadError(f"{self.directory}: no {SINGLE} or {INDEX}")
        self._shapes: dict[str, tuple[int, ...]] = {}

    def names(self) -> set[str]:
        return set(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from its file's header. Every header is read on the first call: a damaged shard fails
        here, before the model is touched, and a tensor the index lists but its shard lacks is named."""
        if not self._shapes:
            for file in sorted(set(self.files.values())):
                with open_safetensors(file) as handle:
                    for key in handle.keys():  # noqa: SIM118
                        self._shapes[key] = tuple(handle.get_slice(key).get_shape())
            absent = sorted(name for name in self.files if name not in self._shapes)
            if absent:
                shown = ", ".join(f"{n} (in {self.files[n].name})" for n in absent[:5])
                raise WeightLoadError(f"{self.directory / INDEX}: the index lists tensors its shards lack: {shown}")
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        with open_safetensors(self.files[name]) as handle:
            return handle.get_tensor(name)


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except json.JSONDecodeError as exc:
        raise WeightLoadError(f"{index}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (KeyError, TypeError):
        raise WeightLoadError(f"{index}: no 'weight_map' object (not a safetensors index)") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightLoadError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return weight_map
