"""What each spawned rank runs for the expert-parallel tests (see test_expert_parallel.py).

Every rank builds the same float64 (or float32) single-process reference (same seed) and trains it on the whole batch; the
expert-parallel copy takes this rank's rows of the batch. Rank 0 saves, per case, the largest relative
difference of the loss, the router losses, this rank's logits and every parameter's full gradient, over a few
AdamW steps, and what the all-to-all moved.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import archspec
from archspec.expert_parallel import expert_modules
from archspec.nn.moe import MoE
from archspec.spec.errors import ArchspecError

BATCH, SEQ, STEPS = 4, 8, 3


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def batches(spec: archspec.Spec, uneven: bool) -> list[torch.Tensor]:
    """Random tokens; `uneven`: every row one repeated token, so a row's tokens all reach the first MoE layer with
    the same hidden state (attention over equal values) and pick the same experts: most experts get no rows."""
    out = []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(step)
        if uneven:
            tokens = torch.randint(0, spec.vocab_size, (BATCH, 1), generator=generator)
            out.append(tokens.expand(BATCH, SEQ).clone())
        else:
            out.append(torch.randint(0, spec.vocab_size, (BATCH, SEQ), generator=generator))
    return out


def built(spec: archspec.Spec, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """The model (float64 unless a case ends in -f32); a correction bias (DeepSeek-V3) gets random values so that
    it changes the choices."""
    torch.manual_seed(0)
    model = archspec.build(spec, dtype=dtype)
    for name, buffer in model.named_buffers():
        if name.endswith("correction_bias"):
            buffer.copy_(torch.randn(buffer.shape, generator=torch.Generator().manual_seed(1), dtype=buffer.dtype))
    return model


def mesh_for(mode: str, world: int) -> Any:
    if mode.startswith("2d"):  # "2d-2x2": dp 2 x ep 2
        dp, ep = (int(n) for n in mode.split("-")[1].split("x"))
        return init_device_mesh("cpu", (dp, ep), mesh_dim_names=("dp", "ep"))
    return init_device_mesh("cpu", (world,))


def options_for(mode: str, world: int) -> dict[str, Any]:
    mode = mode.removesuffix("-f32").removesuffix("-uneven")
    if mode.startswith("2d"):
        return dict(ep=int(mode.split("x")[1]), fsdp=True)
    return {
        "ep": dict(ep=world, fsdp=False),
        "ep+fsdp": dict(ep=world, fsdp=True),
        "ep+ac": dict(ep=world, fsdp=True, activation_checkpointing=True),
        "ep+compile": dict(ep=world, fsdp=False, compile={"backend": "aot_eager"}),
        "ep+tp": dict(ep=world, fsdp=False, tp=True),
        "ep+capacity1": dict(ep=world, fsdp=False, capacity_factor=1.0),
        "ep+capacity8": dict(ep=world, fsdp=False, capacity_factor=8.0),
    }[mode]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def local_bytes(params: list[torch.Tensor]) -> int:
    """The bytes this rank's parameter storage holds (a DTensor's local shard)."""
    return sum((p.to_local() if isinstance(p, DTensor) else p).untyped_storage().nbytes() for p in params)


def expert_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for _, experts in expert_modules(model) for p in experts.parameters()]


def predicted_traffic(reference: torch.nn.Module, ids: torch.Tensor, rank: int, world: int, mode: str) -> Any:
    """From the single-process routing of the whole batch: the rows this rank's part of the batch sends to each
    expert-parallel rank (expert e lives on rank e // (E / ep)), and the rows a capacity factor drops."""
    choices: list[torch.Tensor] = []
    hooks = [
        module.router.register_forward_hook(lambda _m, _a, out: choices.append(out[1]))
        for _, module in reference.named_modules()
        if isinstance(module, MoE)
    ]
    with torch.no_grad():
        reference(ids)
    for hook in hooks:
        hook.remove()
    options = options_for(mode, world)
    ep, factor = options["ep"], options.get("capacity_factor")
    predicted = []
    for selected in choices:
        mine = selected.chunk(world)[rank].flatten()  # this rank's rows of the batch: a contiguous run of tokens
        experts = reference.get_submodule(next(n for n, _ in expert_modules(reference))).up.shape[0]
        counts = torch.bincount(mine, minlength=experts)
        cap = counts.sum().item() if factor is None else math.ceil(factor * mine.numel() / experts)
        kept = counts.clamp(max=cap)
        predicted.append({"sent": kept.view(ep, -1).sum(dim=1).tolist(), "dropped": int((counts - kept).sum())})
    return predicted


def case_result(rank: int, world: int, spec: archspec.Spec, mode: str, save: str | None = None) -> dict[str, Any]:
    uneven = mode.removesuffix("-f32").endswith("-uneven")
    reference = built(spec, torch.float32 if mode.endswith("-f32") else torch.float64)
    model = copy.deepcopy(reference)
    try:
        archspec.parallelize(model, mesh_for(mode, world), **options_for(mode, world))
    except ArchspecError as exc:
        return {"error": str(exc)}
    memory = {
        "experts": local_bytes(expert_params(model)),
        "reference_experts": local_bytes(expert_params(reference)),
        "all": local_bytes(list(model.parameters())),
        "reference_all": local_bytes(list(reference.parameters())),
    }
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    worst = {"loss": 0.0, "aux": 0.0, "logits": 0.0, "grad": 0.0}
    traffic, predicted = [], []
    # float32: one step (rounding differences in the summation order, ~1e-7, grow through Adam's normalisation)
    for ids in batches(spec, uneven)[: 1 if mode.endswith("-f32") else STEPS]:
        predicted.append(predicted_traffic(reference, ids, rank, world, mode))
        ref_out = reference(ids, labels=ids)
        ref_out.loss.backward()
        out = model(ids.chunk(world)[rank], labels=ids.chunk(world)[rank])
        out.loss.backward()
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        worst["loss"] = max(worst["loss"], relative(loss / world, ref_out.loss.detach()))
        for key in ("aux_loss", "z_loss"):
            if getattr(ref_out, key) is not None and getattr(ref_out, key).item() != 0:
                worst["aux"] = max(worst["aux"], relative(getattr(out, key).detach(), getattr(ref_out, key).detach()))
        worst["logits"] = max(
            worst["logits"], relative(out.logits.detach(), ref_out.logits.chunk(world)[rank].detach())
        )
        grads = {n: full(p.grad) for n, p in model.named_parameters()}
        ref_grads = dict(reference.named_parameters())
        assert grads.keys() == ref_grads.keys(), sorted(set(grads) ^ set(ref_grads))
        # relative to the tensor's largest entry, or to a millionth of the model's largest gradient for a tensor
        # whose exact gradient is 0 (k in a layer whose keys all see one repeated token) and holds rounding noise
        scale = max(p.grad.abs().max().item() for p in reference.parameters())
        errors = {
            n: (
                (grads[n] - ref_grads[n].grad).abs().max() / max(ref_grads[n].grad.abs().max().item(), 1e-6 * scale)
            ).item()
            for n in grads
        }
        worst["grad"] = max(worst["grad"], max(errors.values()))
        traffic.append([vars(experts.traffic) for _, experts in expert_modules(model)])
        for optimizer in (ref_opt, opt):
            optimizer.step()
            optimizer.zero_grad()
    if save is not None:
        save_run(model, opt, reference, spec, Path(save), rank)
    return {**worst, "traffic": traffic, "predicted": predicted, "memory": memory}


def save_run(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    reference: torch.nn.Module,
    spec: archspec.Spec,
    directory: Path,
    rank: int,
) -> None:
    """A run directory as examples/train.py writes it (spec.yaml, step-N/ DCP checkpoint of model and optimizer),
    and the single-process reference's weights after the same steps (reference.pt)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory / "run" / f"step-{STEPS}"))
    if rank == 0:
        (directory / "run" / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        torch.save(reference.state_dict(), directory / "reference.pt")


def parity_worker(
    rank: int, world: int, cases: list[tuple[str, str]], specs: dict[str, Any], out: str, save: tuple | None = None
) -> None:
    """Every case in one launch; `save`: (spec name, mode, directory) of the case whose run is also saved."""
    results = {}
    for name, mode in cases:
        directory = save[2] if save is not None and save[:2] == (name, mode) else None
        results[(name, mode)] = case_result(rank, world, archspec.spec_from_dict(specs[name]), mode, directory)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, Path(out))


def reshard_worker(rank: int, world: int, spec_data: dict[str, Any], modes: list[str], directory: str) -> None:
    """Load the saved run's model into expert-parallel models of another degree / layout: each full tensor must
    equal the single-process reference's after the same steps (rank 0 writes the largest difference per mode)."""
    spec = archspec.spec_from_dict(spec_data)
    expected = torch.load(Path(directory) / "reference.pt")
    differences = {}
    for mode in modes:
        torch.manual_seed(1234)  # other initial weights: everything must come from the checkpoint
        model = archspec.parallelize(
            archspec.build(spec, dtype=torch.float64), mesh_for(mode, world), **options_for(mode, world)
        )
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(Path(directory) / "run" / f"step-{STEPS}"))
        set_model_state_dict(model, state["model"])
        differences[mode] = max(
            (full(t) - expected[n]).abs().max().item() for n, t in model.state_dict().items() if n in expected
        )
    if rank == 0:
        torch.save(differences, Path(directory) / f"reshard-{world}.pt")
