"""Plan -> nn.Module: `archspec.build(spec)` instantiates the compiler's plan, then initialises the weights.

Each `Call` of the plan is the constructor or function of that name in `archspec.nn` (`nn.*` and `torch.*` names:
torch's own), called with its arguments instantiated first, left to right and depth first: the same order in which
the emitted file's Python evaluates the same calls, so `torch.manual_seed(s); archspec.build(spec)` and
`torch.manual_seed(s); Model()` of the emitted file give the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch
from torch import nn

import archspec.nn as components
from archspec.compiler import plan as plan_of
from archspec.nn.init import deepnorm_init, init_weights
from archspec.plan import Call, Fn, Layers, Plan, Value
from archspec.spec.schema import Spec

__all__ = ["build", "instantiate", "materialize_buffers"]


def build(spec: Spec, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """Compile a spec into a module. `device="meta"` allocates nothing (for summaries and parameter counts).

    Parameters are created directly in `dtype`; RoPE frequencies stay float32 whatever the dtype.
    """
    plan = plan_of(spec)
    target = torch.device(device or "cpu")
    with torch.device(target), _default_dtype(dtype):
        model = instantiate(plan.model, meta=target.type == "meta")
        if target.type != "meta":
            initialise(model, plan)
    model.spec = spec  # type: ignore[assignment]
    model.plan = plan  # type: ignore[assignment]
    return model


def initialise(model: nn.Module, plan: Plan) -> None:
    """The plan's initial weights: `init_weights`, then DeepNet's gains for DeepNorm models."""
    init_weights(model, plan.init_std)
    if plan.deepnorm_beta is not None:
        deepnorm_init(model, plan.deepnorm_beta)


def instantiate(value: Value, meta: bool = False) -> Any:
    """A plan value made real: calls called, stacks built layer by layer, functions looked up in their tables."""
    if isinstance(value, Call):
        target = registry()[value.component]
        positional = [instantiate(v, meta) for k, v in value.args if k is None]
        keywords = {k: instantiate(v, meta) for k, v in value.args if k is not None}
        if meta and value.component == "nn.Embedding":
            # nn.Embedding's own normal_ init on the meta device imports torch._dynamo (seconds for nothing)
            keywords["_weight"] = torch.empty(*positional)
        return target(*positional, **keywords)
    if isinstance(value, Layers):
        return [instantiate(block, meta) for block in value.per_layer()]
    if isinstance(value, Fn):
        return tables()[value.table][value.key]
    if isinstance(value, tuple):
        return tuple(instantiate(item, meta) for item in value)
    return value


@cache
def registry() -> dict[str, Any]:
    """Component names -> the classes and functions they call: every public definition of archspec.nn's modules,
    and the torch modules plans use by name."""
    found: dict[str, Any] = {
        "nn.Linear": nn.Linear,
        "nn.Embedding": nn.Embedding,
        "nn.LayerNorm": nn.LayerNorm,
        "nn.RMSNorm": nn.RMSNorm,
        "nn.Identity": nn.Identity,
        "nn.Conv2d": nn.Conv2d,
        "torch.zeros": torch.zeros,
    }
    for module in components.modules():
        for name, value in vars(module).items():
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__:
                found.setdefault(name, value)
    return found


@cache
def tables() -> dict[str, dict[str, Any]]:
    """The tables `Fn` values name: activations, router scorings, group scores."""
    from archspec.nn.activations import ACTIVATIONS
    from archspec.nn.moe import GROUP_SCORES, SCORINGS
    from archspec.nn.vision import VISION_ACTIVATIONS

    return {
        "ACTIVATIONS": ACTIVATIONS,
        "VISION_ACTIVATIONS": VISION_ACTIVATIONS,
        "SCORINGS": SCORINGS,
        "GROUP_SCORES": GROUP_SCORES,
    }


def materialize_buffers(model: nn.Module, device: torch.device | str) -> None:
    """Recompute the non-learned buffers (RoPE frequencies, ALiBi slopes) of a model built on the meta device
    whose parameters were then assigned real tensors (e.g. by `load_hf_weights`): build the plan's calls of those
    modules again on `device` and take their buffers."""
    plan: Plan = model.plan  # type: ignore[assignment]
    with torch.device(device):
        for path, node in plan.calls():
            if node.component in _COMPUTED_BUFFERS:
                module = model.get_submodule(path)
                for name, buffer in instantiate(node).named_buffers(recurse=False):
                    module._buffers[name] = buffer


_COMPUTED_BUFFERS = ("RotaryEmbedding", "BlockRotaryEmbedding", "Alibi")
"""Modules whose buffers are computed from the plan's numbers (RoPE frequencies, ALiBi slopes), not loaded."""


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
