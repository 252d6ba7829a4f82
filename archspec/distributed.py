"""Hand a built model to PyTorch's own distributed engines: tensor parallelism, FSDP2, activation checkpointing.

archspec ships no distributed runtime. Because every model uses the same module names (`layers.3.attn.q`,
`layers.3.mlp.down`, ...), one tensor-parallel plan fits every spec, and `parallelize` applies, in the order
torchtitan uses:

1. tensor parallelism (`torch.distributed.tensor.parallel.parallelize_module` with `tp_plan(spec)`),
2. activation checkpointing per block (`torch.utils.checkpoint`, non-reentrant),
3. `torch.compile` per block,
4. FSDP2: `fully_shard` on every block, then on the root.

The tensor-parallel plan is Megatron's (Shoeybi et al. 2019, https://arxiv.org/abs/1909.08053): q/k/v and
gate/up are split by output features (each rank owns whole heads / a slice of the hidden MLP width), o and down by
input features, so each block costs one all-reduce for attention and one for the MLP. The token embedding is split
by vocabulary rows and the head by vocabulary columns; the logits are gathered, so the loss is computed as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from archspec.spec.errors import ArchspecError
from archspec.spec.schema import GATED_ACTIVATIONS

__all__ = ["blocks", "enable_activation_checkpointing", "parallelize", "tp_plan"]


class ParallelismError(ArchspecError):
    """A model or mesh that cannot be parallelized as asked (e.g. heads not divisible by the TP degree)."""


# --------------------------------------------------------------------------------------------- the plan
def tp_plan(spec: Any) -> dict[str, Any]:
    """The tensor-parallel plan of a spec: `{module pattern: ParallelStyle}` for `parallelize_module`.

    Patterns use archspec's uniform names (`*` matches a layer index). Only modules the spec has are listed, so
    the plan applies without warnings. Users with their own training loop can pass it to
    `torch.distributed.tensor.parallel.parallelize_module` directly; `parallelize` also checks the head counts
    and keeps tied embeddings tied.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    plan: dict[str, Any] = {
        # vocabulary rows split; each rank looks up its rows, the partial sums are all-reduced
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
    }
    _check_tp_support(spec)
    for name in ("q", "k", "v"):
        plan[f"layers.*.attn.{name}"] = ColwiseParallel()
    if spec.attention.qk_norm:
        # per-head norms see [batch, seq, local heads, head_dim]: a DTensor sharded on the head dim, so the
        # replicated weight's gradient is summed over the ranks' heads (SequenceParallel's mechanics, dim 2)
        plan["layers.*.attn.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["layers.*.attn.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    plan["layers.*.attn.o"] = RowwiseParallel()
    gated = spec.mlp.activation in GATED_ACTIVATIONS
    moe = getattr(spec, "moe", None)
    for index in range(spec.n_layers) if moe is not None else [None]:
        layer = "layers.*" if index is None else f"layers.{index}"
        if index is not None and spec.is_moe_layer(index):
            # routed experts stay whole on every rank (expert parallelism is another plan); a shared expert is an
            # ordinary MLP and splits like one
            if not moe.shared_experts:
                continue
            layer += ".mlp.shared"
        else:
            layer += ".mlp"
        if gated:
            plan[f"{layer}.gate"] = ColwiseParallel()
        plan[f"{layer}.up"] = ColwiseParallel()
        plan[f"{layer}.down"] = RowwiseParallel()
    # vocabulary columns split, logits gathered: the loss and generate() see full logits
    plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    return plan


def _check_tp_support(spec: Any) -> None:
    if spec.structure == "encoder-decoder" or spec.position.kind == "relative-bias":
        raise ParallelismError(
            f"spec '{spec.name}': tensor parallelism does not support structure {spec.structure!r} / position "
            f"{spec.position.kind!r} yet (its relative-bias table covers all heads); use FSDP (fsdp=True, tp=False)"
        )
    if spec.attention.kind == "mla":
        raise ParallelismError(
            f"spec '{spec.name}': tensor parallelism does not support attention.kind 'mla' yet (the rope key is "
            "shared by all heads, so its gradient would need an all-reduce inside the attention); use FSDP"
        )


def check_tp_degree(spec: Any, degree: int) -> None:
    """Raise `ParallelismError` unless the spec's head counts split evenly over `degree` ranks."""
    _check_tp_support(spec)
    problems = []
    heads, kv_heads = spec.attention.heads, spec.kv_heads
    if heads % degree:
        problems.append(f"attention.heads = {heads}")
    if kv_heads % degree:
        problems.append(f"attention.kv_heads = {kv_heads}")
    if problems:
        raise ParallelismError(
            f"spec '{spec.name}': tensor parallelism over {degree} ranks splits whole heads, but "
            f"{' and '.join(problems)} is not divisible by {degree}; use a TP degree that divides "
            f"both heads ({heads}) and kv_heads ({kv_heads})"
        )


# ----------------------------------------------------------------------------------------- parallelize
def parallelize(
    model: nn.Module,
    mesh: Any,
    *,
    fsdp: bool = True,
    tp: bool = False,
    activation_checkpointing: bool = False,
    compile: bool | dict[str, Any] = False,
) -> nn.Module:
    """Parallelize a model built by `archspec.build`, in place, and return it.

    `mesh` is a `DeviceMesh`: 1-D when only one of `fsdp` / `tp` is on; 2-D for both, its dims named
    `("dp", "tp")` (or taken in that order). `compile` may be a dict of `torch.compile` options
    (e.g. `{"backend": "aot_eager"}`); blocks are compiled one by one.

    Under TP each rank holds `heads / tp` query and `kv_heads / tp` key/value heads; ALiBi slopes are sliced to
    the rank's heads and `model.kv_heads` is set to the local count, so the KV cache of `generate` fits too.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ParallelismError("this model has no .spec: build it with archspec.build(spec)")
    dp_mesh, tp_mesh = _split_mesh(mesh, fsdp, tp)

    if tp_mesh is not None:
        _apply_tp(model, spec, tp_mesh)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if compile:
        options = compile if isinstance(compile, dict) else {}
        for block in blocks(model):
            block.compile(**options)
    if dp_mesh is not None:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in blocks(model):
            cross = getattr(block, "cross_attn", None)
            if cross is not None and hasattr(cross, "project_kv"):
                # encoder-decoder: the model projects the encoder output to cross-attention K/V outside the block's
                # forward, so the cross-attention is its own FSDP unit whose project_kv also gathers its weights
                fully_shard(cross, mesh=dp_mesh)
                register_fsdp_forward_method(cross, "project_kv")
            fully_shard(block, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
    return model


def _split_mesh(mesh: Any, fsdp: bool, tp: bool) -> tuple[Any, Any]:
    if not (fsdp or tp):
        return None, None
    if fsdp and tp:
        if mesh.ndim != 2:
            raise ParallelismError(f"fsdp=True and tp=True need a 2-D mesh (dp, tp); got a {mesh.ndim}-D mesh")
        names = mesh.mesh_dim_names
        if names is not None and "dp" in names and "tp" in names:
            return mesh["dp"], mesh["tp"]
        if names is not None:
            return mesh[names[0]], mesh[names[1]]
        raise ParallelismError("name the 2-D mesh's dims: init_device_mesh(..., mesh_dim_names=('dp', 'tp'))")
    if mesh.ndim != 1:
        names = mesh.mesh_dim_names or ()
        wanted = "dp" if fsdp else "tp"
        if wanted in names:
            return (mesh[wanted], None) if fsdp else (None, mesh[wanted])
        raise ParallelismError(f"a {mesh.ndim}-D mesh needs a dim named {wanted!r} when only {wanted} is on")
    return (mesh, None) if fsdp else (None, mesh)


def _apply_tp(model: nn.Module, spec: Any, tp_mesh: Any) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    degree = tp_mesh.size()
    check_tp_degree(spec, degree)
    tied = spec.embeddings.tied
    parallelize_module(model, tp_mesh, tp_plan(spec))
    if tied:  # both are Shard(0) over the vocabulary: one DTensor parameter serves both
        model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    rank = tp_mesh.get_local_rank()
    slopes = getattr(model, "alibi_slopes", None)
    if slopes is not None:  # rank r owns query heads [r * heads / tp, (r + 1) * heads / tp)
        model.alibi_slopes = slopes.chunk(degree)[rank].clone()
    if hasattr(model, "kv_heads"):
        model.kv_heads = spec.kv_heads // degree


# ------------------------------------------------------------------------------ activation checkpointing
def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The transformer blocks of a model: the children of every `ModuleList` named `layers`
    (`layers`, and `encoder.layers` / `decoder.layers` for encoder-decoder models)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] == "layers":
            yield from module


def enable_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each block's activations in the backward pass instead of storing them (Chen et al. 2016,
    https://arxiv.org/abs/1604.06174): activation memory drops from one set per block to about one block's.

    Works without torch.distributed, under FSDP2 and with `torch.compile` (non-reentrant checkpointing). The
    blocks keep their names, so state dicts and checkpoints are unchanged. Only passes that record gradients are
    checkpointed (`generate` and `torch.no_grad` evaluation run as before). Returns the model; idempotent.
    """
    for block in blocks(model):
        if getattr(block, "_archspec_checkpointed", False):
            continue
        block.forward = _checkpointed(block.forward)  # type: ignore[method-assign]
        block._archspec_checkpointed = True  # type: ignore[assignment]
    return model


def _checkpointed(forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run
