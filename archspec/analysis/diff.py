"""Compare resolved specs: which fields differ, and the derived figures side by side.

Specs are compared *after* `extends` and defaults (a validated `Spec` is resolved), flattened to dotted key
paths (`attention.kv_heads`). Lists are compared as whole values (`attention.window_layers: [0, 2]`). `name`
and `description` are what the columns are called, not a difference in architecture, so they are left out.
A key that exists in one spec and not another (`position.theta` of a RoPE spec against an ALiBi spec) is
reported with `ABSENT` on the side that lacks it; an optional section that one spec leaves unset
(`position.scaling: null`) shows as its keys being ABSENT there, not as a row of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from archspec.analysis.metrics import AnalysisError, AttentionCount, analyse, canonical_dtype
from archspec.spec.schema import Spec

IDENTITY_PATHS = ("name", "description")
"""Fields that name a spec rather than describe its architecture; not reported as differences."""


class _Absent:
    """The value of a key path a spec does not have."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def flatten(spec: Spec) -> dict[str, Any]:
    """The resolved spec as {dotted.key.path: value}, in schema order; lists stay whole values."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = value

    walk(spec.model_dump(mode="python"), "")
    return flat


@dataclass(frozen=True)
class FieldDiff:
    """One key path whose value is not the same in every spec; `values[i]` is spec i's (or ABSENT)."""

    path: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Figure:
    """One derived figure of every spec, e.g. parameters in total. `unit`: count, flops or bytes."""

    key: str
    label: str
    unit: str
    values: tuple[int | float, ...]

    @property
    def ratios(self) -> tuple[float | None, ...]:
        """Each value divided by the first spec's (None where the first is 0)."""
        first = self.values[0]
        return tuple(None if first == 0 else value / first for value in self.values)


@dataclass(frozen=True)
class SpecDiff:
    names: tuple[str, ...]
    context: int
    batch: int
    dtype: str
    count: AttentionCount
    fields: tuple[FieldDiff, ...]
    figures: tuple[Figure, ...]


def differing_fields(specs: Sequence[Spec]) -> list[FieldDiff]:
    """Key paths whose values differ between the specs, in schema order (keys only some specs have included)."""
    flats = [flatten(spec) for spec in specs]
    order: list[str] = []
    for flat in flats:  # merge the key orders, inserting a key new to `order` right after its predecessor
        position = 0
        for key in flat:
            if key in order:
                position = order.index(key) + 1
            else:
                order.insert(position, key)
                position += 1
    sections = {path.rsplit(".", 1)[0] for path in order if "." in path}
    diffs = []
    for path in order:
        if path in IDENTITY_PATHS:
            continue
        values = tuple(flat.get(path, ABSENT) for flat in flats)
        if path in sections and all(value is None or value is ABSENT for value in values):
            continue  # an unset optional section (`scaling: null`) against a set one: its keys say it all
        if any(not _same(values[0], value) for value in values[1:]):
            diffs.append(FieldDiff(path, values))
    return diffs


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; a spec that says `true` where another says `1` does differ.
    return type(a) is type(b) and a == b


FIGURES: tuple[tuple[str, str, str], ...] = (
    ("params_total", "parameters (total)", "count"),
    ("params_active", "parameters (active per token)", "count"),
    ("params_embeddings", "parameters (embeddings)", "count"),
    ("flops_forward_per_token", "forward FLOPs / token", "flops"),
    ("flops_train_per_token", "training FLOPs / token", "flops"),
    ("kv_bytes_per_token", "KV cache / token", "bytes"),
    ("kv_bytes_total", "KV cache (context x batch)", "bytes"),
    ("kv_bytes_windowed", "KV cache, windows capped", "bytes"),
)
"""The derived figures `diff` compares: (JSON key, label, unit)."""


def diff_specs(
    specs: Sequence[Spec],
    context: int | None = None,
    batch: int = 1,
    dtype: str = "bfloat16",
    count: AttentionCount = "causal",
    labels: Sequence[str] | None = None,
) -> SpecDiff:
    """Differences between 2+ specs. FLOPs and KV bytes are taken at one common `context` (default: the
    shortest context length among the specs, so every spec can run it). `labels` name the columns (default:
    the spec names)."""
    if len(specs) < 2:
        raise AnalysisError(f"diff needs at least two specs, got {len(specs)}")
    if labels is not None and len(labels) != len(specs):
        raise AnalysisError(f"{len(labels)} labels for {len(specs)} specs")
    if context is None:
        context = min(spec.context_length for spec in specs)
    analyses = [analyse(spec, context, batch, dtype, count) for spec in specs]
    columns: dict[str, list[int | float]] = {key: [] for key, _, _ in FIGURES}
    for a in analyses:
        columns["params_total"].append(a.params.total)
        columns["params_active"].append(a.params.active)
        columns["params_embeddings"].append(a.params.embeddings)
        columns["flops_forward_per_token"].append(a.flops.forward_per_token)
        columns["flops_train_per_token"].append(a.flops.train_per_token)
        columns["kv_bytes_per_token"].append(a.kv.bytes_per_token)
        columns["kv_bytes_total"].append(a.kv.bytes_total)
        columns["kv_bytes_windowed"].append(a.kv.bytes_windowed)
    figures = tuple(Figure(key, label, unit, tuple(columns[key])) for key, label, unit in FIGURES)
    return SpecDiff(
        names=tuple(labels) if labels is not None else tuple(spec.name for spec in specs),
        context=context,
        batch=batch,
        dtype=canonical_dtype(dtype),
        count=count,
        fields=tuple(differing_fields(specs)),
        figures=figures,
    )
