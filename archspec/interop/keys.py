"""Checkpoint names: where each archspec tensor sits in a `transformers` checkpoint.

Each family module builds a `KeyMap` from the spec (archspec module -> HF module, per model and per layer);
`tensor_sources` turns it into one `Source` per archspec state-dict key. Loading (`weights.py`) reads those sources
and export (`hf_export.py`) writes them, so a family's names are written down once, in its own module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from archspec.spec.schema import Spec

Split = Callable[[torch.Tensor], torch.Tensor]
"""Cuts one part (q, k, v, gate, up) out of a fused tensor."""

FusedPart = Callable[[Spec, str], Split]
"""A family's fused layouts: the split of one part, given the spec (head counts fix where QKV's rows sit)."""


@dataclass(frozen=True)
class Source:
    """Where one archspec tensor comes from: an HF tensor name, optionally a part of a fused tensor."""

    name: str
    split: Split | None = None
    transpose: bool = (
        False  # the last two dims swapped: GPT-2's Conv1D stores [in, out], gpt-oss's experts [E, in, out]
    )
    stack: tuple[str, ...] = ()  # per-expert tensors stacked into one [experts, ...] tensor (`name` is the first)
    alternative: Source | None = None  # another layout of the same tensor (5.x fused experts vs hub per-expert)
    fuse_dim: int = 0  # the dim along which `split` cuts its part (export concatenates the parts along it)
    leading_ones: int = 0  # the checkpoint's tensor has this many extra leading dims of size 1 (ERNIE's [1, E] bias)


@dataclass(frozen=True)
class ExpertNames:
    """The routed experts' names: the hub's per-expert tensors `{module}.{e}.{parts[part]}.weight` for gate, up and
    down, and the fused [experts, 2 x d_ff, d_model] gate-up (gate rows first) and [experts, d_model, d_ff] down
    tensors of transformers 5.x (`gate_up`, `down`). A family whose checkpoints only ever had the fused tensors
    (Granite-MoE's `input_linear` / `output_linear`) sets `per_expert=False`: they are then read and written."""

    module: str = "mlp.experts"
    parts: dict[str, str] = field(default_factory=lambda: {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"})
    gate_up: str = "mlp.experts.gate_up_proj"
    down: str = "mlp.experts.down_proj"
    per_expert: bool = True


@dataclass
class KeyMap:
    """A family's names: archspec module path -> HF module path, per model and per layer (`{i}`)."""

    top: dict[str, str]
    layer_prefix: str
    layer: dict[str, str]
    fused: dict[str, tuple[str, str]] = field(default_factory=dict)  # archspec module -> (hf module, part)
    conv1d: frozenset[str] = frozenset()
    aliases: dict[str, str] = field(default_factory=dict)  # alternative HF names found in real checkpoints
    experts: ExpertNames = field(default_factory=ExpertNames)
    params: dict[str, str] = field(default_factory=dict)  # "archspec module.param" -> HF parameter name
    # "archspec module.param" in a layer -> its Source given the layer's prefix: tensors kept elsewhere or laid out
    # otherwise (a bias on another module, a [1, E] bias, gpt-oss's interleaved and transposed experts)
    sources: dict[str, Callable[[str], Source]] = field(default_factory=dict)
    ignored: frozenset[str] = frozenset()  # checkpoint tensors that hold no weights of their own
    base_prefix: str = ""  # the base model's prefix, which old hub files leave out ("model.", "transformer.")


def split_rows(spec: Spec, part: str) -> Split:
    """The fused layouts of row-stacked tensors (weight [out, in] or bias [out]), the default of every family.

    gate / up: GLM's gate_up_proj, rows [0:I] gate and [I:2I] up. q / k / v: rows as [kv_heads, group + 2,
    head_dim], each group's query heads, then its key, then its value. That one layout serves BLOOM, NeoX and
    multi-head Falcon ([heads, 3, head_dim], group = 1), Falcon-7B multi-query ([q_0 .. q_{h-1}, k, v],
    kv_heads = 1) and Falcon-40B's new architecture.
    """
    if part in ("gate", "up"):
        return lambda t: t.chunk(2, dim=0)[0 if part == "gate" else 1]
    index = "qkv".index(part)
    heads, kv_heads, head_dim = spec.attention.heads, spec.kv_heads, spec.head_dim
    group = heads // kv_heads

    def grouped(t: torch.Tensor) -> torch.Tensor:
        rows = t.reshape(kv_heads, group + 2, head_dim, *t.shape[1:])
        picked = rows[:, :group] if part == "q" else rows[:, group + index - 1]
        return picked.reshape(-1, *t.shape[1:])

    return grouped


def tensor_sources(names: KeyMap, split: Callable[[str], Split], spec: Spec, keys: Iterable[str]) -> dict[str, Source]:
    """For each archspec state-dict key, the HF tensor it comes from (`split(part)`: the family's fused layouts)."""
    sources: dict[str, Source] = {}
    for key in keys:
        module, _, param = key.rpartition(".")
        layer_match = re.fullmatch(r"layers\.(\d+)\.(.+)", module)
        if layer_match:
            prefix, inner = names.layer_prefix.format(i=layer_match.group(1)), layer_match.group(2)
            table = names.layer
        else:
            prefix, inner, table = "", module, names.top
        if layer_match and f"{inner}.{param}" in names.sources:  # laid out as the family says
            sources[key] = names.sources[f"{inner}.{param}"](prefix)
        elif layer_match and inner == "mlp.experts":
            sources[key] = _expert_source(names.experts, spec, prefix, param)
        elif inner in table:
            hf_module = table[inner]
            hf_param = names.params.get(f"{inner}.{param}", param)
            sources[key] = Source(
                f"{prefix}{hf_module}.{hf_param}", transpose=hf_module in names.conv1d and param == "weight"
            )
        elif inner in names.fused:
            hf_module, part = names.fused[inner]
            transpose = hf_module in names.conv1d and param == "weight"
            sources[key] = Source(f"{prefix}{hf_module}.{param}", split(part), transpose)
    return sources


def _expert_source(experts: ExpertNames, spec: Spec, prefix: str, part: str) -> Source:
    """Stacked per-expert tensors (hub layout), or the fused gate-up / down tensors."""
    assert spec.moe is not None
    if part == "down":
        fused = Source(f"{prefix}{experts.down}")
    else:
        index = 0 if part == "gate" else 1
        fused = Source(f"{prefix}{experts.gate_up}", split=lambda t: t.chunk(2, dim=1)[index], fuse_dim=1)
    if not experts.per_expert:
        return fused
    stacked = tuple(f"{prefix}{experts.module}.{e}.{experts.parts[part]}.weight" for e in range(spec.moe.experts))
    return Source(stacked[0], stack=stacked, alternative=fused)
