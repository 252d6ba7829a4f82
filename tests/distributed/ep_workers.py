"""What each spawned rank runs for the expert-parallel tests (see test_expert_parallel.py).

Every rank builds the same float64 single-process reference (same seed) and trains it on the whole batch; the
expert-parallel copy takes this rank's rows of the batch. Rank 0 saves, per case, the largest relative
difference of the loss, the router losses, this rank's logits and every parameter's full gradient, over a few
AdamW steps, and what the all-to-all moved.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import archspec
from archspec.expert_parallel import expert_modules
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


def built(spec: archspec.Spec) -> torch.nn.Module:
    """The float64 model; a correction bias (DeepSeek-V3) gets random values so that it changes the choices."""
    torch.manual_seed(0)
    model = archspec.build(spec, dtype=torch.float64)
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
    if mode.startswith("2d"):
        return dict(ep=int(mode.removesuffix("-uneven").split("x")[1]), fsdp=True)
    return {
        "ep": dict(ep=world, fsdp=False),
        "ep+fsdp": dict(ep=world, fsdp=True),
        "ep+ac": dict(ep=world, fsdp=True, activation_checkpointing=True),
        "ep+compile": dict(ep=world, fsdp=False, compile={"backend": "aot_eager"}),
        "ep+tp": dict(ep=world, fsdp=False, tp=True),
    }[mode.removesuffix("-uneven")]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def case_result(rank: int, world: int, spec: archspec.Spec, mode: str) -> dict[str, Any]:
    uneven = mode.endswith("-uneven")
    reference = built(spec)
    model = copy.deepcopy(reference)
    try:
        archspec.parallelize(model, mesh_for(mode, world), **options_for(mode, world))
    except ArchspecError as exc:
        return {"error": str(exc)}
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    worst = {"loss": 0.0, "aux": 0.0, "logits": 0.0, "grad": 0.0}
    traffic = []
    for ids in batches(spec, uneven):
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
        worst["worst_grad"] = max(errors, key=errors.get)
        traffic.append({name: vars(experts.traffic) for name, experts in expert_modules(model)})
        for optimizer in (ref_opt, opt):
            optimizer.step()
            optimizer.zero_grad()
    return {**worst, "traffic": traffic}


def parity_worker(rank: int, world: int, cases: list[tuple[str, str]], specs: dict[str, Any], out: str) -> None:
    results = {}
    for name, mode in cases:
        results[(name, mode)] = case_result(rank, world, archspec.spec_from_dict(specs[name]), mode)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, Path(out))
