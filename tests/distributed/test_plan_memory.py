"""The memory plan of FSDP2 and tensor-parallel training against each rank's measured peak, on 2 CPU processes
(gloo): the same measurement as `tests/unit/test_planner_measured.py` (MemTracker, the second AdamW step,
float32), run under `archspec.parallelize`.

FSDP ranks take half the batch each and hold half of every parameter, gradient and optimizer state, plus the
gathered and reduce-scattered buffers of one FSDP unit; TP ranks take the whole batch and hold the split weights
(read from `tp_plan`) and their heads' activations. Dense (Llama), MoE (Mixtral) and T5 at a parameter-heavy
and an activation-heavy point.
"""

from __future__ import annotations

import pytest
from launch import launch
from plan_workers import measure_cases
from tiny import SPECS_DIR, shrink

import archspec
from archspec.analysis.planner import DEVICES, plan_memory

WORLD = 2
NAMES = ["llama3-8b", "mixtral-8x7b", "t5-small"]
POINTS = [(2, 20), (4, 64)]  # (batch over all ranks, seq)
CASES = [(name, mode, batch, seq) for name in NAMES for mode in ("fsdp", "tp") for batch, seq in POINTS]
TOLERANCE = 0.10


def _spec(name: str) -> archspec.Spec:
    spec = shrink(archspec.load_spec(SPECS_DIR / f"{name}.yaml"))
    data = spec.model_dump(mode="json")
    if data.get("moe"):  # a balancing loss per rank is not the full batch's; jitter is random
        data["moe"]["router"].update(aux_loss_coef=0.0, z_loss_coef=0.0, jitter=0.0)
    return archspec.spec_from_dict(data)


@pytest.fixture(scope="module")
def peaks(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, list[int]]:
    out = tmp_path_factory.mktemp("plan-memory")
    cases = [(_spec(name).model_dump(mode="json"), mode, batch, seq) for name, mode, batch, seq in CASES]
    launch(measure_cases, WORLD, cases, str(out))
    per_rank = [[int(line) for line in (out / f"{rank}.txt").read_text().splitlines()] for rank in range(WORLD)]
    return {case: [ranks[index] for ranks in per_rank] for index, case in enumerate(CASES)}


@pytest.mark.parametrize("case", CASES, ids=[f"{n}-{m}-b{b}-s{s}" for n, m, b, s in CASES])
def test_plan_matches_each_ranks_measured_peak(peaks: dict[tuple, list[int]], case: tuple) -> None:
    name, mode, batch, seq = case
    sharding = {"fsdp": WORLD, "batch": batch // WORLD} if mode == "fsdp" else {"tp": WORLD, "batch": batch}
    plan = plan_memory(_spec(name), seq=seq, dtype="float32", device=DEVICES["cpu"], **sharding)
    for rank, measured in enumerate(peaks[case]):
        error = plan.memory.total / measured - 1
        assert abs(error) <= TOLERANCE, f"rank {rank}: plan {plan.memory.total} vs measured {measured}"
