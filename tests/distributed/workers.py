"""What each spawned rank runs. Every rank builds the same single-process reference model (same seed) and the
same batch; the parallel copy must reproduce the reference's loss and every parameter's full gradient.

Rank 0 saves one dict: {(spec name, mode): {"loss": |diff|, "grad": max |diff|} or {"error": message}} and
{("resume", spec name, mode): {"expected": losses, "resumed": losses}}.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import archspec
from archspec.spec.errors import ArchspecError

BATCH, SEQ = 4, 12


def batch(spec: archspec.Spec, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, spec.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def reference(spec: archspec.Spec) -> tuple[torch.nn.Module, float, dict[str, torch.Tensor]]:
    """The freshly initialised model (kept untouched), and the loss and gradients of one pass on the full batch."""
    torch.manual_seed(0)
    base = archspec.build(spec)
    model = copy.deepcopy(base)
    ids = batch(spec)
    loss = model(ids, labels=ids).loss
    loss.backward()
    return base, loss.item(), {name: p.grad for name, p in model.named_parameters()}


def mesh_for(mode: str, world: int) -> Any:
    if mode.startswith("2d"):  # "2d-1x2": dp 1 x tp 2
        dp, tp = (int(n) for n in mode.split("-")[1].split("x"))
        return init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    return init_device_mesh("cpu", (world,))


def options_for(mode: str) -> dict[str, Any]:
    return {
        "fsdp": dict(fsdp=True),
        "fsdp+ac": dict(fsdp=True, activation_checkpointing=True),
        "fsdp+compile": dict(fsdp=True, compile={"backend": "aot_eager"}),
        "tp": dict(fsdp=False, tp=True),
        "tp-generate": dict(fsdp=False, tp=True),
        "tp+ac": dict(fsdp=False, tp=True, activation_checkpointing=True),
        "tp+compile": dict(fsdp=False, tp=True, compile={"backend": "aot_eager"}),
        "2d-1x2": dict(fsdp=True, tp=True),
        "2d-2x1": dict(fsdp=True, tp=True),
    }[mode]


def data_shards(mode: str, world: int, rank: int) -> tuple[int, int]:
    """How many data-parallel shards the batch is cut into, and which one this rank gets."""
    if mode.startswith("fsdp"):
        return world, rank
    if mode.startswith("2d"):
        dp = int(mode.split("-")[1].split("x")[0])
        tp = world // dp
        return dp, rank // tp
    return 1, 0


def parity_results(rank: int, world: int, cases: list[tuple[str, str]], specs: dict[str, Any]) -> dict[tuple, Any]:
    results: dict[tuple, Any] = {}
    references: dict[str, Any] = {}
    for name, mode in cases:
        spec = archspec.spec_from_dict(specs[name])
        if name not in references:
            references[name] = reference(spec)
        base, ref_loss, ref_grads = references[name]
        model = copy.deepcopy(base)
        try:
            archspec.parallelize(model, mesh_for(mode, world), **options_for(mode))
        except ArchspecError as exc:
            results[(name, mode)] = {"error": str(exc)}
            continue
        if mode == "tp-generate":  # greedy decoding with the KV cache: the same tokens as the single process
            prompt = batch(spec)[:2, :5]
            with torch.no_grad():
                results[(name, mode)] = {
                    "equal": torch.equal(
                        model.generate(prompt, max_new_tokens=4), base.generate(prompt, max_new_tokens=4)
                    )
                }
            continue
        shards, index = data_shards(mode, world, rank)
        ids = batch(spec).chunk(shards)[index]
        loss = model(ids, labels=ids).loss
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        grads = {n: full(p.grad) for n, p in model.named_parameters()}
        assert grads.keys() == ref_grads.keys(), sorted(set(grads) ^ set(ref_grads))
        results[(name, mode)] = {
            "loss": abs(total.item() / world - ref_loss) if shards > 1 else abs(loss.item() - ref_loss),
            "grad": max((grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads),
        }
    return results


# ------------------------------------------------------------------------------------- checkpoint resume
def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    loss = model(ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def resume_losses(
    world: int, rank: int, spec_data: dict[str, Any], mode: str, directory: str
) -> dict[str, list[float]]:
    """Train 2 steps, save with DCP, train 2 more; a fresh model (other seed) loads the checkpoint and must
    produce the same 2 losses bit for bit."""
    spec = archspec.spec_from_dict(spec_data)
    shards, index = data_shards(mode, world, rank)
    batches = [batch(spec, seed).chunk(shards)[index] for seed in range(4)]

    def make(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = archspec.parallelize(archspec.build(spec), mesh_for(mode, world), **options_for(mode))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    model, optimizer = make(0)
    for ids in batches[:2]:
        train_step(model, optimizer, ids)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)
    expected = [train_step(model, optimizer, ids) for ids in batches[2:]]

    model, optimizer = make(1234)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=directory)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = [train_step(model, optimizer, ids) for ids in batches[2:]]
    return {"expected": expected, "resumed": resumed}


def suite_worker(
    rank: int, world: int, cases: list[tuple[str, str]], specs: dict[str, Any], resume: list[tuple[str, str]], out: str
) -> None:
    """Everything in one launch: starting processes costs seconds, the tiny models milliseconds."""
    results = parity_results(rank, world, cases, specs)
    for name, mode in resume:
        directory = str(Path(out).parent / f"ckpt-{name}-{mode}")
        results[("resume", name, mode)] = resume_losses(world, rank, specs[name], mode, directory)
    if rank == 0:
        torch.save(results, Path(out))
