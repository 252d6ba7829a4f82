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

Two layouts need more than that, and both stay exact:

- T5 (encoder-decoder): every stack's relative-bias table `[buckets, heads]` is split by heads (columns), so each
  rank's bias covers exactly its heads; cross-attention splits like self-attention.
- MLA (DeepSeek): the up-projections `q` / `q_up` and `kv_up` are split by heads; the down-projections and latent
  norms stay replicated (their input gradients are summed where `q_up` / `kv_up` begin). The rope key that
  `kv_down` produces is shared by all heads but read by each rank's heads only, so its gradient is summed over the
  ranks (`SharedRopeKey`: identity forward, all-reduce backward, Megatron's "f").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from archspec.spec.errors import ArchspecError

__all__ = ["blocks", "enable_activation_checkpointing", "parallelize", "tp_plan"]


class ParallelismError(ArchspecError):
    """A model or mesh that cannot be parallelized as asked (e.g. heads not divisible by the TP degree)."""


# --------------------------------------------------------------------------------------------- the plan
def tp_plan(model: nn.Module | Any) -> dict[str, Any]:
    """The tensor-parallel plan of a built model (or of a spec's, built on the meta device): `{module name:
    ParallelStyle}` for `parallelize_module`.

    It reads the modules the compiler chose: every attention splits by heads (q, k, v by output features, o by
    input features; MLA as described above), every MLP and shared expert by its hidden width, T5's relative-bias
    tables by heads, the embedding by vocabulary rows and the head by vocabulary columns. Routed experts and the
    vision tower stay whole on each rank. Users with their own training loop can pass the plan to
    `torch.distributed.tensor.parallel.parallelize_module` directly; `parallelize` also checks the head counts,
    keeps tied embeddings tied and sets the local head counts the KV cache needs.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    from archspec.nn.attention import Attention
    from archspec.nn.mla import LatentAttention
    from archspec.nn.mlp import MLP, GatedMLP
    from archspec.nn.norms import HeadNorm
    from archspec.nn.positions import RelativePositionBias

    if not isinstance(model, nn.Module):  # a spec
        from archspec.builder import build

        model = build(model, device="meta")
    plan: dict[str, Any] = {
        # vocabulary rows split; each rank looks up its rows, the partial sums are all-reduced
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
    }
    for name, module in model.named_modules():
        if name.startswith("vision_tower"):
            continue
        if isinstance(module, LatentAttention):
            plan.update(_mla_plan(name, module))
        elif isinstance(module, Attention):
            if getattr(module, "sinks", None) is not None:
                raise ParallelismError(
                    f"{name}: its attention sinks (a logit per head) are not split by tensor parallelism yet; "
                    "use FSDP for this model"
                )
            for projection in ("q", "k", "v"):
                plan[f"{name}.{projection}"] = ColwiseParallel()
            if getattr(module, "q_norm", None) is not None:
                # per-head norms see [batch, seq, local heads, head_dim] ([batch, local heads, seq, head_dim] after
                # RoPE): a DTensor sharded on the head dim, so the replicated weight's gradient is summed over the
                # ranks' heads (SequenceParallel's mechanics, on the head dim)
                placement = getattr(module, "qk_norm_at", "head")
                if placement == "projection" or isinstance(module.q_norm, HeadNorm):
                    what = "the whole projection" if placement == "projection" else "a weight per head"
                    raise ParallelismError(
                        f"{name}: its q/k norms span every head ({what}), which tensor parallelism would split; "
                        "use FSDP for this model"
                    )
                heads_dim = 1 if placement == "rotated" else 2
                plan[f"{name}.q_norm"] = SequenceParallel(sequence_dim=heads_dim, use_local_output=True)
                plan[f"{name}.k_norm"] = SequenceParallel(sequence_dim=heads_dim, use_local_output=True)
            plan[f"{name}.o"] = RowwiseParallel()
        elif isinstance(module, MLP | GatedMLP):
            if isinstance(module, GatedMLP):
                plan[f"{name}.gate"] = ColwiseParallel()
            plan[f"{name}.up"] = ColwiseParallel()
            plan[f"{name}.down"] = RowwiseParallel()
        elif isinstance(module, RelativePositionBias):  # [buckets, heads] split by heads: each rank's its heads'
            plan[f"{name}.table"] = ColwiseParallel()
    # vocabulary columns split, logits gathered: the loss and generate() see full logits
    plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    return plan


def _mla_plan(name: str, attn: nn.Module) -> dict[str, Any]:
    """MLA: heads split in the up-projections and the output; the latents (and their norms) replicated."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        f"{name}.q" if attn.q is not None else f"{name}.q_up": ColwiseParallel(),
        f"{name}.kv_up": ColwiseParallel(),
        f"{name}.kv_down": SharedRopeKey(attn.rope_dim),
        f"{name}.o": RowwiseParallel(),
    }


def SharedRopeKey(rope_dim: int) -> Any:  # noqa: N802 (a ParallelStyle factory, named like one)
    """The ParallelStyle of MLA's replicated `kv_down`, whose output is `[latent | rope key]`.

    The rope key is shared by all heads, and each rank's heads contribute only part of its gradient. Forward: the
    identity. Backward: the rope key's gradient is all-reduced over the TP ranks (the latent's already is, where
    `kv_up` begins). Built on first use so that importing this module does not import torch.distributed.tensor.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate
    from torch.distributed.tensor.parallel.style import ParallelStyle

    class _SharedRopeKey(ParallelStyle):
        def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
            def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
                latent, rope = output.split([output.shape[-1] - rope_dim, rope_dim], dim=-1)
                # to_local(grad_placements=Partial), then from_local(Replicate)'s backward: a sum over the ranks
                shared = DTensor.from_local(rope, device_mesh, [Replicate()], run_check=False)
                return torch.cat((latent, shared.to_local(grad_placements=[Partial()])), dim=-1)

            module.register_forward_hook(hook)
            return module

        def __repr__(self) -> str:
            return f"SharedRopeKey(rope_dim={rope_dim})"

    return _SharedRopeKey()


def check_tp_degree(model: nn.Module, degree: int) -> None:
    """Raise `ParallelismError` unless every attention's head counts split evenly over `degree` ranks."""
    from archspec.nn.attention import Attention
    from archspec.nn.mla import LatentAttention

    for name, module in model.named_modules():
        if name.startswith("vision_tower") or not isinstance(module, Attention | LatentAttention):
            continue
        heads = module.heads
        kv_heads = getattr(module, "kv_heads", heads)
        problems = [f"{what} = {count}" for what, count in (("heads", heads), ("kv_heads", kv_heads)) if count % degree]
        if problems:
            spec = getattr(model, "spec", None)
            raise ParallelismError(
                f"spec '{getattr(spec, 'name', '?')}': tensor parallelism over {degree} ranks splits whole heads, but "
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
    ep: int = 1,
    capacity_factor: float | None = None,
    activation_checkpointing: bool = False,
    compile: bool | dict[str, Any] = False,
) -> nn.Module:
    """Parallelize a model built by `archspec.build`, in place, and return it.

    `mesh` is a `DeviceMesh`: 1-D when only one of `fsdp` / `tp` is on; 2-D for both, its dims named
    `("dp", "tp")` (or taken in that order). `compile` may be a dict of `torch.compile` options
    (e.g. `{"backend": "aot_eager"}`); blocks are compiled one by one.

    Under TP each rank holds `heads / tp` query and `kv_heads / tp` key/value heads (T5: and those heads' columns
    of the relative-bias tables; MLA: the whole latent, replicated); ALiBi slopes are sliced to the rank's heads and
    the attentions' `heads` / `kv_heads` are set to the local counts, so the KV cache of
    `generate` fits too.

    `ep > 1`: expert parallelism (`archspec.expert_parallel`): the routed experts are split over `ep` ranks and
    every rank takes its own part of the batch. The mesh is 1-D with `ep` ranks (EP alone, or EP with the other
    weights sharded by FSDP over the same ranks), or 2-D `("dp", "ep")` with `fsdp=True` (EP x FSDP: the experts
    also sharded over "dp", the other weights over all ranks). Not combined with TP. `capacity_factor` caps the
    rows each expert takes from each rank (default: dropless).
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ParallelismError("this model has no .spec: build it with archspec.build(spec)")
    if ep > 1 or capacity_factor is not None:
        return _parallelize_ep(model, mesh, ep, fsdp, tp, capacity_factor, activation_checkpointing, compile)
    dp_mesh, tp_mesh = _split_mesh(mesh, fsdp, tp)

    if tp_mesh is not None:
        _apply_tp(model, spec, tp_mesh)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if compile:
        options = compile if isinstance(compile, dict) else {}
        if tp_mesh is not None:
            _detach_embedding_view(model)
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


def _parallelize_ep(
    model: nn.Module,
    mesh: Any,
    ep: int,
    fsdp: bool,
    tp: bool,
    capacity_factor: float | None,
    activation_checkpointing: bool,
    compile: bool | dict[str, Any],
) -> nn.Module:
    """EP alone or EP x FSDP. Every rank is data-parallel: the loss is the mean of the ranks' losses, so every
    gradient is averaged over all ranks. The experts' gradients already hold the contributions of every EP rank's
    tokens (through the all-to-all's backward, scaled by 1 / ep there), and are averaged over the "dp" ranks that
    hold the same experts by FSDP."""
    from archspec.expert_parallel import apply_expert_parallel, check_ep, expert_modules

    if tp:
        raise ParallelismError(
            "expert parallelism (ep) does not combine with tensor parallelism (tp) yet: use ep alone, or ep with "
            "fsdp on a 2-D mesh ('dp', 'ep')"
        )
    if ep < 2:
        raise ParallelismError(f"capacity_factor applies to expert parallelism: pass ep >= 2 (got ep={ep})")
    check_ep(model, ep, capacity_factor)  # before the mesh: a model that cannot be split is refused as such
    dp_mesh, ep_mesh, data_mesh = _split_ep_mesh(mesh, ep, fsdp)
    world = data_mesh.size()
    expert_params = apply_expert_parallel(model, ep_mesh, data_mesh.get_group(), capacity_factor)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if compile:
        for block in blocks(model):
            block.compile(**(compile if isinstance(compile, dict) else {}))
    if not fsdp:
        expert = {id(p) for p in expert_params}
        for p in model.parameters():
            if id(p) not in expert:
                p.register_post_accumulate_grad_hook(_averaged_over(data_mesh.get_group(), world))
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        ignored = None
        if dp_mesh is not None:  # the experts: sharded over "dp" too
            for _, experts in expert_modules(model):
                fully_shard(experts, mesh=dp_mesh)
        else:
            ignored = set(expert_params)
        for block in blocks(model):
            fully_shard(block, mesh=data_mesh, ignored_params=ignored)
        fully_shard(model, mesh=data_mesh, ignored_params=ignored)
    return model


def _averaged_over(group: Any, world: int) -> Any:
    """A post-accumulate-grad hook: the gradient averaged over the data-parallel ranks (EP without FSDP)."""

    def hook(param: torch.Tensor) -> None:
        torch.distributed.all_reduce(param.grad, group=group)  # type: ignore[arg-type]
        param.grad.div_(world)  # type: ignore[union-attr]

    return hook


def _split_ep_mesh(mesh: Any, ep: int, fsdp: bool) -> tuple[Any, Any, Any]:
    """(dp mesh or None, ep mesh, the 1-D mesh of all data-parallel ranks) of a 1-D or ("dp", "ep") mesh."""
    if ep < 1:
        raise ParallelismError(f"ep must be >= 1, got {ep}")
    if mesh.ndim == 1:
        if mesh.size() != ep:
            raise ParallelismError(
                f"ep={ep} on a 1-D mesh of {mesh.size()} ranks: a 1-D mesh for expert parallelism has ep ranks; "
                "for EP x FSDP use a 2-D mesh init_device_mesh(..., (dp, ep), mesh_dim_names=('dp', 'ep'))"
            )
        return None, mesh, mesh
    names = mesh.mesh_dim_names or ()
    if mesh.ndim != 2 or tuple(names) != ("dp", "ep"):
        raise ParallelismError(f"expert parallelism needs a 1-D mesh or a 2-D mesh named ('dp', 'ep'); got {names}")
    if mesh["ep"].size() != ep:
        raise ParallelismError(f"ep={ep} but the mesh's 'ep' dim has {mesh['ep'].size()} ranks")
    if not fsdp:
        raise ParallelismError(
            "a ('dp', 'ep') mesh shards the experts and the other weights over 'dp' with FSDP: "
            "pass fsdp=True, or use a 1-D mesh of ep ranks"
        )
    return mesh["dp"], mesh["ep"], mesh._flatten("dp_ep")


def _detach_embedding_view(model: nn.Module) -> None:
    """Under TP the embedding's output is `to_local()` of a DTensor, a view whose base is that DTensor. A compiled
    first block (AOTAutograd) hands the gradient of such a view input back through its base as a plain tensor, and
    DTensor's redistribute backward then fails (torch 2.13: "'Tensor' object has no attribute '_local_tensor'").
    A copy of the output breaks the view relation; it costs one [batch, seq, d_model] copy per step."""
    embed = getattr(model, "embed", None)
    if embed is not None:
        embed.register_forward_hook(lambda module, args, output: output.clone())


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

    from archspec.nn.attention import Attention
    from archspec.nn.mla import LatentAttention

    degree = tp_mesh.size()
    check_tp_degree(model, degree)
    tied = spec.embeddings.tied
    parallelize_module(model, tp_mesh, tp_plan(model))
    if tied:  # both are Shard(0) over the vocabulary: one DTensor parameter serves both
        model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    rank = tp_mesh.get_local_rank()
    paths = getattr(model, "attention", None)
    alibi = getattr(paths, "alibi", None)
    if alibi is not None:  # rank r owns query heads [r * heads / tp, (r + 1) * heads / tp)
        alibi.slopes = alibi.slopes.chunk(degree)[rank].clone()
    for name, module in model.named_modules():  # the split attentions' own counts size their KV caches
        if isinstance(module, Attention | LatentAttention) and not name.startswith("vision_tower"):
            for attr in ("heads", "kv_heads"):
                if isinstance(getattr(module, attr, None), int):
                    setattr(module, attr, getattr(module, attr) // degree)


# ------------------------------------------------------------------------------ activation checkpointing
def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The transformer blocks of a model: the children of every `ModuleList` named `layers`
    (`layers`, and `encoder.layers` / `decoder.layers` for encoder-decoder models)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] == "layers":
            yield from module


def enable_activation_checkpointing(model: nn.Module, every: int = 1) -> nn.Module:
    """Recompute each block's activations in the backward pass instead of storing them (Chen et al. 2016,
    https://arxiv.org/abs/1604.06174): activation memory drops from one set per block to about one block's.

    `every`: checkpoint blocks 0, every, 2 every, ... only; 2 is selective checkpointing by layer (torchtitan's
    `selective` with frequency 2): about half the activations for half the recomputation. Works without
    torch.distributed, under FSDP2 and with `torch.compile` (non-reentrant checkpointing). The blocks keep their
    names, so state dicts and checkpoints are unchanged. Only passes that record gradients are checkpointed
    (`generate` and `torch.no_grad` evaluation run as before). Returns the model; idempotent.
    """
    if every < 1:
        raise ParallelismError(f"checkpoint every {every} blocks: must be at least 1")
    for index, block in enumerate(blocks(model)):
        if index % every or getattr(block, "_archspec_checkpointed", False):
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
