"""Loading a Hugging Face checkpoint into a built model: names resolved, shapes checked, then tensors streamed.

Loading never half-succeeds: every model tensor must be found with the right shape and every checkpoint tensor
used, all checked from the safetensors headers (`checkpoint.CheckpointReader`) before anything is read or written;
`WeightLoadError` names every problem at once. Names come from the family's key map (`registry.archspec_sources`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from archspec.interop.checkpoint import CheckpointReader
from archspec.interop.convert import read_hf_config
from archspec.interop.keys import KeyMap, Source
from archspec.interop.registry import FAMILY_OF, archspec_sources, key_map
from archspec.spec.errors import WeightLoadError
from archspec.spec.schema import Spec


@dataclass
class _Planned:
    """One archspec tensor's checkpoint source, resolved to checkpoint names."""

    key: str
    source: Source
    names: list[str]

    def shape(self, reader: Reader) -> tuple[int, ...]:
        """The shape this source yields, computed on the meta device from the header shapes alone."""
        shapes = [reader.shape(name) for name in self.names]
        if self.source.stack:
            tensor = torch.empty((len(shapes), *shapes[0]), device="meta")
        else:
            tensor = torch.empty(shapes[0], device="meta")
        return tuple(self._transform(tensor).shape)

    def load(self, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        if self.source.stack:
            return self._transform(torch.stack([read(name) for name in self.names]))
        return self._transform(read(self.names[0]))

    def _transform(self, tensor: torch.Tensor) -> torch.Tensor:
        ones = self.source.leading_ones
        if ones and tensor.shape[:ones] == (1,) * ones:
            tensor = tensor.reshape(tensor.shape[ones:])
        if self.source.split is not None:
            tensor = self.source.split(tensor)
        return tensor.mT if self.source.transpose else tensor


def load_hf_weights(model: nn.Module, directory: str | Path, model_type: str | None = None) -> nn.Module:
    """Load a Hugging Face checkpoint into a model built by `archspec.build`.

    Strict: every model tensor must be found with the right shape and every checkpoint tensor used, else
    `WeightLoadError` names them all. Shapes are checked from the safetensors headers *before* anything is read or
    written, so a checkpoint that does not fit leaves the model untouched. Data is then streamed shard by shard
    (peak memory: the model plus about one shard), with a progress bar for multi-shard checkpoints. Works on a
    meta-device model too (tensors are then assigned, not copied).
    """
    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise WeightLoadError("this model has no .spec: build it with archspec.build(spec)")
    model_type = model_type or read_hf_config(directory).get("model_type")
    if model_type not in FAMILY_OF:
        raise WeightLoadError(f"{directory}: model_type {model_type!r} is not supported")
    return load_from_reader(model, CheckpointReader(directory), model_type, directory)  # type: ignore[arg-type]


class Reader(Protocol):
    """Tensors under HF names: a safetensors checkpoint (`CheckpointReader`) or a GGUF file (`gguf.GgufTensors`)."""

    files: dict[str, Path]  # tensor name -> the file it is in

    def names(self) -> set[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> torch.Tensor: ...


def load_from_reader(
    model: nn.Module, reader: Reader, model_type: str, where: str | Path, progress: bool = False
) -> nn.Module:
    """`load_hf_weights` given the reader: resolve and check every name and shape, then stream (`progress`: a bar
    per tensor even for a single file)."""
    spec: Spec = model.spec  # type: ignore[assignment]
    directory = where
    names = key_map(model_type, spec)
    expected = model.state_dict()
    tied = spec.embeddings.tied
    wanted = [k for k in expected if not (tied and k == "lm_head.weight")]
    sources = archspec_sources(model_type, spec, wanted)
    available = reader.names()

    plan: list[_Planned] = []
    used: set[str] = set()
    missing, mismatched = [], []
    for key in wanted:
        source = sources.get(key)
        found = _find(source, available, names)
        if source is None or found is None:
            missing.append(f"{key} (from {source.name if source else '?'})")
            continue
        planned = _Planned(key, *found)
        used.update(planned.names)
        shape = planned.shape(reader)
        if shape != tuple(expected[key].shape):
            mismatched.append(
                f"{key}: checkpoint {planned.names[0]} gives {shape}, model has {tuple(expected[key].shape)}"
            )
            continue
        plan.append(planned)
    if tied:
        head = _resolve(names.top["lm_head"] + ".weight", available, names)
        if head is not None:
            embed_name = sources["embed.weight"].name
            if embed_name in available and not torch.equal(reader.get(head), reader.get(embed_name)):
                mismatched.append(
                    f"lm_head.weight: the spec ties embeddings but the checkpoint's {head} differs from {embed_name}"
                )
            used.add(head)
    ignored = {n for n in available if n in names.ignored or _ignorable(n)}
    unexpected = sorted(available - used - ignored)
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    if mismatched:
        problems.append("wrong shape: " + "; ".join(mismatched))
    if problems:
        raise WeightLoadError(f"{directory}: checkpoint does not fit the spec '{spec.name}': " + " | ".join(problems))

    on_meta = any(t.is_meta for t in expected.values())
    _stream(model, plan, reader, expected, assign=on_meta, progress=progress)
    if on_meta:
        from archspec.builder import materialize_buffers

        materialize_buffers(model, device="cpu")
    if tied:
        model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    return model


def _stream(
    model: nn.Module,
    plan: list[_Planned],
    reader: Reader,
    expected: dict[str, torch.Tensor],
    assign: bool,
    progress: bool = False,
) -> None:
    """Copy (or assign) every planned tensor, one checkpoint file at a time; only the tensors it reads are held
    (q, k and v, read one after the other, share their fused tensor), so memory is the model plus one tensor."""
    from rich.progress import Progress

    by_file = sorted(plan, key=lambda p: str(reader.files[p.names[0]]))
    files = sorted({str(reader.files[p.names[0]]) for p in plan})
    held: dict[str, torch.Tensor] = {}
    what = f"loading {len(files)} shards" if len(files) > 1 else f"loading {Path(files[0]).name if files else ''}"
    with Progress(transient=True, disable=len(files) < 2 and not progress) as bar:
        task = bar.add_task(what, total=len(by_file))
        for planned in by_file:
            for name in [n for n in held if n not in planned.names]:
                del held[name]  # a fused tensor is reused by the next q, k and v: keep only what this one reads

            def read(name: str) -> torch.Tensor:
                if name not in held:
                    held[name] = reader.get(name)
                return held[name]

            target = expected[planned.key]
            _put(model, planned.key, planned.load(read).to(target.dtype).contiguous(), assign)
            bar.advance(task)


def _put(model: nn.Module, key: str, tensor: torch.Tensor, assign: bool) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, attr)
    if not assign:
        with torch.no_grad():
            old.copy_(tensor)
    elif isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor


def _find(source: Source | None, available: set[str], names: KeyMap) -> tuple[Source, list[str]] | None:
    """The first layout of `source` whose tensors are all in the checkpoint, with their checkpoint names."""
    while source is not None:
        wanted = source.stack or (source.name,)
        resolved = [_resolve(name, available, names) for name in wanted]
        if all(resolved):
            return source, resolved  # type: ignore[return-value]
        source = source.alternative
    return None


def _resolve(name: str, available: set[str], names: KeyMap) -> str | None:
    """The checkpoint's name for `name`: itself, a known alias, or without the base-model prefix (old hub files)."""
    for candidate in _candidates(name, names):
        if candidate in available:
            return candidate
    return None


def _candidates(name: str, names: KeyMap) -> Iterator[str]:
    yield name
    if name in names.aliases:
        yield names.aliases[name]
    for old, new in names.aliases.items():
        if old.endswith(".") and old in name:
            yield name.replace(old, new)
    if names.base_prefix and name.startswith(names.base_prefix):
        yield name.removeprefix(names.base_prefix)


def _ignorable(name: str) -> bool:
    """Buffers some checkpoints carry that hold no learned weights (rotary tables, GPT-2's causal masks)."""
    return name.endswith(("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias"))
