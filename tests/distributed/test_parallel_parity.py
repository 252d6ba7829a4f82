"""FSDP2, tensor parallelism and both together reproduce the single-process model on 2 CPU processes (gloo).

Reference: the same model (same seed) run in one process on the whole batch. FSDP ranks each take half the
batch (FSDP2 averages gradients, the loss is the mean of the two halves' means); TP ranks take the whole batch.
Tolerance 1e-5 on the loss and on every parameter's full gradient.
"""

from __future__ import annotations

import pytest
import torch
from launch import launch
from tiny import shrink, spec_files
from workers import suite_worker

import archspec


def dense_tiny_specs() -> dict[str, archspec.Spec]:
    """One tiny spec per distinct dense decoder architecture in specs/ (MHA/GQA/MQA attention, no MoE)."""
    specs: dict[str, archspec.Spec] = {}
    signatures: set[str] = set()
    for path in spec_files():
        spec = archspec.load_spec(path)
        if spec.attention.kind != "mha" or spec.moe is not None or spec.structure != "decoder":
            continue
        tiny = shrink(spec)
        signature = tiny.model_copy(update={"name": "x", "description": ""}).model_dump_json()
        if signature not in signatures:
            signatures.add(signature)
            specs[path.stem] = tiny
    return specs


TOLERANCE = 1e-5
WORLD = 2
SPECS = {name: spec.model_dump(mode="json") for name, spec in dense_tiny_specs().items()}
DENSE = sorted(SPECS)
TP_SPLITTABLE = [name for name in DENSE if SPECS[name]["attention"]["kv_heads"] % WORLD == 0]
MQA = [name for name in DENSE if SPECS[name]["attention"]["kv_heads"] % WORLD]

CASES = (
    [(name, "fsdp") for name in DENSE]
    + [(name, "tp") for name in TP_SPLITTABLE]
    + [(name, "fsdp+ac") for name in ("llama3-70b", "gpt2", "bloom-176b")]
    + [(name, "tp+ac") for name in ("llama3-70b",)]
    + [(name, "2d-1x2") for name in ("llama3-70b", "gpt2")]
    + [(name, "2d-2x1") for name in ("llama3-70b",)]
    + [(name, "tp") for name in MQA]
)
RESUME = [("llama3-70b", "fsdp"), ("llama3-70b", "tp")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One launch for every case: spawning processes costs seconds, the tiny models milliseconds."""
    out = tmp_path_factory.mktemp("parity") / "results.pt"
    launch(suite_worker, WORLD, CASES, SPECS, RESUME, str(out))
    return torch.load(out)


PARITY = [case for case in CASES if case[0] not in MQA or case[1] != "tp"]


@pytest.mark.parametrize(("name", "mode"), PARITY, ids=[f"{name}-{mode}" for name, mode in PARITY])
def test_parallel_matches_single_process(results, name, mode):
    result = results[(name, mode)]
    assert "error" not in result, result.get("error")
    assert result["loss"] <= TOLERANCE
    assert result["grad"] <= TOLERANCE


@pytest.mark.parametrize("name", MQA)
def test_tp_refuses_heads_that_do_not_split(results, name):
    error = results[(name, "tp")].get("error", "")
    assert "kv_heads = 1 is not divisible by 2" in error


@pytest.mark.parametrize(("name", "mode"), RESUME, ids=[f"{name}-{mode}" for name, mode in RESUME])
def test_checkpoint_resume_reproduces_the_next_steps_exactly(results, name, mode):
    """torch.distributed.checkpoint save -> load into a model with other weights -> the same losses, bit for bit."""
    losses = results[("resume", name, mode)]
    assert losses["resumed"] == losses["expected"]
