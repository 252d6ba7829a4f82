"""Expert parallelism: each rank holds `experts / ep` routed experts, and tokens travel to them and back with
`torch.distributed` all-to-all collectives (GShard, Lepikhin et al. 2020, https://arxiv.org/abs/2006.16668).

archspec runs a built model as it is; `archspec.parallelize(model, mesh, ep=N)` calls `apply_expert_parallel`,
which changes three things and nothing in the model's code:

- every `Experts` module's weights ([experts, out, in]) become DTensors `Shard(0)` on the expert-parallel mesh dim:
  rank r holds experts [r E/N, (r+1) E/N). State-dict keys are unchanged, so torch.distributed.checkpoint reshards
  them to another EP degree, and `full_tensor()` gathers them for an export;
- the `Experts` module's forward, which receives the rows already grouped by expert with their offsets, sends each
  row to the rank holding its expert, runs that rank's experts, and sends the results back (below);
- the model's router loss gathers every rank's router logits and choices first, so the balance loss and the z-loss
  are those of the global batch, as one process would compute them on it.

The router, the top-k weights, the shared experts and attention run on each rank's own tokens as before. The
expert-parallel ranks are data-parallel for everything else: each takes its own part of the batch. Every rank runs
every forward (the all-to-alls are collective), with batches of one shape when labels are given (the router
losses gather equal-sized tensors).

One MoE layer, per rank (E experts, N ranks, L = E / N local experts)::

    rows grouped by global expert, counts [E]
      -> all_to_all(counts)                          each rank learns how many rows of its L experts every rank sends
      -> all_to_all(rows, split by destination)      received: source-major, expert-minor
      -> regroup expert-major, grouped matmuls of the L local experts
      -> undo the regrouping, all_to_all back        each rank gets its rows' results, in its own order

Dropless by default (every routed row is computed, as in one process); `capacity_factor` caps each expert at
ceil(factor * rows / E) rows per source rank, the rows past it are dropped (their output is zero, so the token keeps
only its other experts and the residual) and counted in `ExpertTraffic.dropped`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from archspec.nn.moe import Experts, MoE, RouterLoss, RouterStats
from archspec.spec.errors import ArchspecError

__all__ = ["ExpertTraffic", "GlobalRouterLoss", "apply_expert_parallel", "check_ep", "expert_modules"]


class ExpertParallelError(ArchspecError):
    """A model or mesh that cannot be expert-parallel as asked."""


@dataclass
class ExpertTraffic:
    """What one `Experts` module's last forward moved: rows (token, expert slot pairs) sent to and received from
    every rank (index: the other rank; the own rank's entry is the rows that stayed local), and rows dropped by the
    capacity factor. Bytes on the wire: rows times d_model times the element size, once there and once back."""

    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    dropped: int = 0
    per_expert: list[int] = field(default_factory=list)  # rows each local expert computed


def expert_modules(model: nn.Module) -> list[tuple[str, Experts]]:
    """The routed experts of a model: every MoE layer's `Experts` module, by name."""
    return [(f"{name}.experts", module.experts) for name, module in model.named_modules() if isinstance(module, MoE)]


def apply_expert_parallel(
    model: nn.Module, ep_mesh: Any, data_group: Any = None, capacity_factor: float | None = None
) -> list[nn.Parameter]:
    """Shard every MoE layer's routed experts over `ep_mesh` (1-D) and route tokens to them; returns the expert
    parameters (now DTensors). `data_group`: the process group whose ranks share one global batch (all
    data-parallel ranks; default: the whole world), over which the router losses are computed."""
    found = expert_modules(model)
    check_ep(model, ep_mesh.size(), capacity_factor)
    degree = ep_mesh.size()
    params = []
    for _, experts in found:
        params.extend(_shard_experts(experts, ep_mesh))
        experts.traffic = ExpertTraffic()  # type: ignore[assignment]
        forward = _ExpertParallelForward(experts, ep_mesh.get_group(), degree, capacity_factor)
        experts.forward = forward  # type: ignore[method-assign]
    router_loss = getattr(model, "router_loss", None)
    if isinstance(router_loss, RouterLoss):
        model.router_loss = GlobalRouterLoss(router_loss, data_group)  # type: ignore[assignment]
    return params


def check_ep(model: nn.Module, degree: int, capacity_factor: float | None = None) -> None:
    """Raise `ExpertParallelError` unless the model has routed experts that split evenly over `degree` ranks."""
    found = expert_modules(model)
    if not found:
        raise ExpertParallelError("ep needs a model with routed experts (a spec with a `moe` section)")
    counts = {module.up.shape[0] for _, module in found}
    if any(count % degree for count in counts):
        raise ExpertParallelError(
            f"expert parallelism over {degree} ranks gives each rank experts / {degree}, but the model has "
            f"{' / '.join(map(str, sorted(counts)))} experts per layer; use an ep degree that divides it"
        )
    if capacity_factor is not None and capacity_factor <= 0:
        raise ExpertParallelError(f"capacity_factor must be > 0, got {capacity_factor}")


def _shard_experts(experts: Experts, ep_mesh: Any) -> list[nn.Parameter]:
    """Replace each [experts, ...] weight and bias by its rank's slice as a DTensor Shard(0); every rank built the
    same weights (same seed), so the slices need no communication."""
    from torch.distributed.tensor import DTensor, Shard

    rank, degree = ep_mesh.get_local_rank(), ep_mesh.size()
    params = []
    for name in _WEIGHTS:
        weight = getattr(experts, name)
        if weight is None:
            continue
        local = weight.detach().chunk(degree, dim=0)[rank].clone()
        sharded = nn.Parameter(DTensor.from_local(local, ep_mesh, [Shard(0)], run_check=False))
        setattr(experts, name, sharded)
        params.append(sharded)
    return params


# ------------------------------------------------------------------------------------------- dispatch
class _ExpertParallelForward:
    """The `Experts.forward(x_sorted, offsets)` of an expert-parallel rank: same arguments, same result."""

    def __init__(self, experts: Experts, group: Any, degree: int, capacity_factor: float | None) -> None:
        self.experts, self.group, self.degree, self.capacity_factor = experts, group, degree, capacity_factor

    @torch.compiler.disable  # data-dependent split sizes and collectives: eager, a graph break in a compiled block
    def __call__(self, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        experts, degree = self.experts, self.degree
        counts = torch.diff(offsets, prepend=offsets.new_zeros(1))  # [E] rows per global expert
        local_experts = counts.shape[0] // degree
        kept = counts
        if self.capacity_factor is not None:
            kept = counts.clamp(max=math.ceil(self.capacity_factor * x_sorted.shape[0] / counts.shape[0]))
        send = x_sorted
        if not torch.equal(kept, counts):
            keep = torch.arange(x_sorted.shape[0], device=offsets.device) - (offsets - counts).repeat_interleave(
                counts
            ) < kept.repeat_interleave(counts)  # a row's place within its expert's block < the expert's cap
            send = x_sorted[keep]
        # how many rows of each of my local experts every rank sends: [source rank, local expert]
        received_counts = torch.empty_like(kept)
        dist.all_to_all_single(received_counts, kept, group=self.group)
        received_counts = received_counts.view(degree, local_experts)
        send_splits = kept.view(degree, local_experts).sum(dim=1).tolist()
        receive_splits = received_counts.sum(dim=1).tolist()
        experts.traffic = ExpertTraffic(  # type: ignore[assignment]
            send_splits, receive_splits, int((counts - kept).sum()), received_counts.sum(dim=0).tolist()
        )

        received = _all_to_all(send, receive_splits, send_splits, self.group)
        # source-major -> expert-major: each local expert's rows in one block (sources in rank order, as the tokens
        # of the global batch are ordered in one process)
        segment = torch.arange(received_counts.numel(), device=offsets.device).repeat_interleave(
            received_counts.flatten()
        )
        order = (segment % local_experts).argsort(stable=True)
        local_offsets = received_counts.sum(dim=0).cumsum(0)
        # every rank's loss is its own tokens' mean and data parallelism averages the ranks': the rows here come from
        # all ep ranks, so their gradient is scaled by 1 / ep (FSDP over "dp" averages over the rest)
        rows = _local_forward(experts, received.index_select(0, order), local_offsets, 1.0 / degree)
        back = torch.empty_like(order)
        back[order] = torch.arange(order.shape[0], device=order.device)
        result = _all_to_all(rows.index_select(0, back), send_splits, receive_splits, self.group)
        if send is x_sorted:
            return result
        out = result.new_zeros(x_sorted.shape[0], result.shape[1])
        return out.index_put((keep.nonzero().squeeze(1),), result)


def _local_forward(experts: Experts, rows: torch.Tensor, offsets: torch.Tensor, grad_scale: float) -> torch.Tensor:
    """`Experts.forward` itself, run on this rank's slices of the weights (the DTensors' local tensors), so the
    expert computation is the single-process code. The weights' gradients are scaled by `grad_scale`."""
    weights = {}
    for name in _WEIGHTS:
        weight = getattr(experts, name)
        weights[name] = None if weight is None else _ScaleGrad.apply(weight.to_local(), grad_scale)
    local = SimpleNamespace(activation=experts.activation, glu=experts.glu, **weights)
    return Experts.forward(local, rows, offsets)  # type: ignore[arg-type]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `scale` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


_WEIGHTS = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")
"""The experts' tensors with a leading expert dim (the biases are gpt-oss's; None where a model has none)."""


class _AllToAll(torch.autograd.Function):
    """All-to-all of rows with variable split sizes; its backward is the reverse all-to-all of the gradient."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.splits, ctx.group = (input_splits, output_splits), group
        out = x.new_empty(sum(output_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        output_splits, input_splits = ctx.splits
        return _AllToAll.apply(grad, output_splits, input_splits, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: Any) -> torch.Tensor:
    return _AllToAll.apply(x, output_splits, input_splits, group)


# ------------------------------------------------------------------------------------------ router loss
class GlobalRouterLoss(RouterLoss):
    """The model's router loss over the global batch: every data-parallel rank's router logits, choices and token
    mask are gathered (in rank order: the global batch's row order) and the single-process loss is computed on them.

    Each rank then holds the same value. Its gradient reaches each rank's own logits summed over the ranks (the
    gather's backward), and data-parallel averaging divides by their number: the gradient of one process's loss.
    """

    def __init__(self, inner: RouterLoss, group: Any = None) -> None:
        super().__init__(inner.balance, inner.aux_coef, inner.z_coef)
        self.group = group

    def __call__(self, stats: list[RouterStats], real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        world = dist.get_world_size(self.group)
        gathered = []
        for layer in stats:
            whole = RouterStats(_gather_rows(layer.logits, self.group), _gather_rows(layer.selected, self.group))
            whole.rows = layer.rows * world
            gathered.append(whole)
        return super().__call__(gathered, None if real is None else _gather_rows(real, self.group))


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 (equal shapes); backward: the gradient summed over the ranks, this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group, ctx.rows = group, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows], None


def _gather_rows(x: torch.Tensor, group: Any) -> torch.Tensor:
    if x.is_floating_point():
        return _GatherRows.apply(x, group)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)
