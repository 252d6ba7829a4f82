"""What each rank of the memory-plan check runs: steady-state training steps under FSDP2 or TP, measured.

For each case every rank builds the same tiny model, parallelizes it with `archspec.parallelize`, runs an AdamW
step (which allocates the optimizer states), then measures the next step with `MemTracker` (see
`tests/unit/test_planner_measured.py`). Rank r writes its peaks, one line per case, to `out / f"{r}.txt"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh

import archspec

Case = tuple[dict[str, Any], str, int, int]  # spec data, "fsdp" or "tp", batch (all ranks), seq


def measure_cases(rank: int, world: int, cases: list[Case], out: str) -> None:
    mesh = init_device_mesh("cpu", (world,))
    peaks = [str(_measure(rank, world, mesh, *case)) for case in cases]
    Path(out, f"{rank}.txt").write_text("\n".join(peaks))


def _measure(rank: int, world: int, mesh: Any, data: dict[str, Any], mode: str, batch: int, seq: int) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker

    spec = archspec.spec_from_dict(data)
    torch.manual_seed(0)
    model = archspec.build(spec)
    archspec.parallelize(model, mesh, fsdp=mode == "fsdp", tp=mode == "tp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = batch // world if mode == "fsdp" else batch  # FSDP ranks take their share of the batch

    def step() -> None:
        generator = torch.Generator().manual_seed(rank if mode == "fsdp" else 0)
        ids = torch.randint(0, spec.vocab_size, (rows, seq), generator=generator)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    return peak["Total"]
