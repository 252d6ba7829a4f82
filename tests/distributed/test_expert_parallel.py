"""Expert parallelism on 2 CPU processes (gloo) reproduces the single-process model in float64 (and float32).

Reference: the same model (same seed, float64) trained in one process on the whole batch for a few AdamW steps;
each expert-parallel rank takes its half of the batch. Every step: the global loss (the ranks' mean), the router
losses (over the global batch), this rank's logits and every parameter's full gradient. Tiny specs of four MoE
families: mixtral (softmax top-2), qwen3-moe (top-k renormalised), deepseek-v3 (sigmoid scores, groups, correction
bias, a shared expert, sequence-wise balance loss), gpt-oss (expert and router biases, the clamped SwiGLU, sinks). `-uneven` batches repeat one token per row, so that most experts
get no rows from a rank. The 4-rank cases (EP over 4, EP x FSDP on a 2 x 2 mesh, resharding) are marked slow.
"""

from __future__ import annotations

import math

import pytest
import torch
from ep_workers import STEPS, parity_worker, reshard_worker
from launch import launch
from tiny import shrink

import archspec
from archspec.interop.hf_export import export_hf

FAMILIES = ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "gpt-oss-20b")  # gpt-oss: expert biases
# float64 models, but the model's cross-entropy is computed in float32 (as transformers does); "-f32" cases:
# float32 models, relative 1e-5, one step
TOLERANCE = {"loss": 1e-6, "aux": 1e-9, "logits": 1e-9, "grad": 1e-9}
TOLERANCE_F32 = dict.fromkeys(TOLERANCE, 1e-5)


def tolerances(mode: str) -> dict[str, float]:
    return TOLERANCE_F32 if mode.endswith("-f32") else TOLERANCE


SAVED = ("mixtral-8x7b", "ep")


def tiny(name: str) -> dict:
    """The spec at toy sizes; dense MLPs as wide as an expert (Mixtral's config has one width for both, so the
    exported run has a transformers counterpart)."""
    data = shrink(archspec.load_spec(f"specs/{name}.yaml")).model_dump(mode="json")
    data["mlp"]["d_ff"] = data["moe"]["d_ff"]
    return data


SPECS = {name: tiny(name) for name in FAMILIES}
CASES = (
    [(name, mode) for name in FAMILIES for mode in ("ep", "ep-uneven")]
    + [(name, mode) for name in FAMILIES for mode in ("ep+fsdp", "ep+fsdp-f32")]
    + [("mixtral-8x7b", mode) for mode in ("ep+ac", "ep+compile", "ep+tp", "ep+capacity1", "ep+capacity8")]
)
PARITY = [case for case in CASES if case[1] not in ("ep+tp", "ep+capacity1")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return tmp_path_factory.mktemp("ep")


@pytest.fixture(scope="module")
def results(saved):
    """One launch for every case (spawning costs seconds, the tiny models milliseconds): [rank] -> {case: result}."""
    launch(parity_worker, 2, CASES, SPECS, str(saved / "results.pt"), (*SAVED, str(saved)))
    return torch.load(saved / "results.pt", weights_only=False)


@pytest.mark.parametrize(("name", "mode"), PARITY, ids=[f"{name}-{mode}" for name, mode in PARITY])
def test_expert_parallel_matches_single_process(results, name, mode):
    for rank in results:
        result = rank[(name, mode)]
        assert "error" not in result, result.get("error")
        for what, tolerance in tolerances(mode).items():
            assert result[what] <= tolerance, (what, result[what])


@pytest.mark.parametrize("name", FAMILIES)
def test_uneven_routing_leaves_experts_without_rows(results, name):
    """The uneven batches do what they are for: some expert computes no row on some rank in some step."""
    per_expert = [
        layer["per_expert"] for rank in results for step in rank[(name, "ep-uneven")]["traffic"] for layer in step
    ]
    assert any(0 in counts for counts in per_expert)


@pytest.mark.parametrize(("name", "mode"), PARITY, ids=[f"{name}-{mode}" for name, mode in PARITY])
def test_all_to_all_moves_what_the_routing_predicts(results, name, mode):
    """Rows sent to each rank = the single-process router's choices for this rank's tokens, grouped by the rank
    that owns each expert; what a rank receives is what the others send it."""
    for result in results:
        for step, predicted in zip(result[(name, mode)]["traffic"], result[(name, mode)]["predicted"], strict=True):
            assert [layer["sent"] for layer in step] == [layer["sent"] for layer in predicted]
    for layer in range(len(results[0][(name, mode)]["traffic"][0])):
        for step in range(len(results[0][(name, mode)]["traffic"])):
            sent = [rank[(name, mode)]["traffic"][step][layer]["sent"] for rank in results]
            received = [rank[(name, mode)]["traffic"][step][layer]["received"] for rank in results]
            assert received == [list(column) for column in zip(*sent, strict=True)]


@pytest.mark.parametrize("name", FAMILIES)
def test_expert_memory_per_rank_is_a_share(results, name):
    """Measured storage of the local parameters: the experts take 1/2 of their single-process bytes; without FSDP
    every other weight is whole."""
    for rank in results:
        memory = rank[(name, "ep")]["memory"]
        assert memory["experts"] * 2 == memory["reference_experts"]
        assert memory["reference_all"] - memory["all"] == memory["reference_experts"] // 2


def test_capacity_factor_drops_the_predicted_rows(results):
    """Capacity 1: each expert takes at most ceil(rows / experts) rows from each rank; the rest are dropped, as
    counted from the single-process routing of the first MoE layer in the first step (later layers and steps see
    what the drops changed). Capacity 8 drops nothing (and matched the single process above)."""
    tight, loose = ("mixtral-8x7b", "ep+capacity1"), ("mixtral-8x7b", "ep+capacity8")
    dropped = [rank[tight]["traffic"][0][0]["dropped"] for rank in results]
    assert dropped == [rank[tight]["predicted"][0][0]["dropped"] for rank in results] and sum(dropped) > 0
    assert all(math.isfinite(rank[tight]["loss"]) for rank in results)
    assert all(layer["dropped"] == 0 for rank in results for step in rank[loose]["traffic"] for layer in step)


def test_tensor_parallel_with_ep_is_refused(results):
    assert "does not combine with tensor parallelism" in results[0][("mixtral-8x7b", "ep+tp")]["error"]


def test_checkpoint_loads_in_one_process_and_exports(results, saved, tmp_path):
    """The DCP checkpoint written under EP (experts sharded over 2 ranks, optimizer state with them) loads into a
    plain single-process model, and `export_hf` of the run directory writes the single-process reference's
    weights."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    from archspec.interop.hf_export import save_hf

    expected = torch.load(saved / "reference.pt")
    model = archspec.build(archspec.spec_from_dict(SPECS[SAVED[0]]), dtype=torch.float64)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(saved / "run" / f"step-{STEPS}"))
    model.load_state_dict(state["model"])
    assert max((model.state_dict()[n] - t).abs().max().item() for n, t in expected.items()) <= 1e-12

    exported = load_file(export_hf(saved / "run", tmp_path / "ep") / "model.safetensors")
    model.load_state_dict(expected)
    reference = load_file(save_hf(model, tmp_path / "reference", dtype=torch.float32) / "model.safetensors")
    assert exported.keys() == reference.keys()
    assert max((exported[n] - reference[n]).abs().max().item() for n in reference) <= 1e-6


FOUR_RANK_CASES = [(name, mode) for name in FAMILIES for mode in ("ep", "2d-2x2", "2d-2x2-uneven", "2d-2x2-f32")]


@pytest.mark.slow
def test_four_ranks_ep_and_ep_x_fsdp(tmp_path):
    """EP over 4 ranks (2 experts each) and EP x FSDP on a ("dp", "ep") = 2 x 2 mesh."""
    launch(parity_worker, 4, FOUR_RANK_CASES, SPECS, str(tmp_path / "results.pt"))
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    for case in FOUR_RANK_CASES:
        for rank in results:
            assert "error" not in rank[case], rank[case].get("error")
            for what, tolerance in tolerances(case[1]).items():
                assert rank[case][what] <= tolerance, (case, what, rank[case][what])
        if case[1] == "ep":
            assert all(
                rank[case]["memory"]["experts"] * 4 == rank[case]["memory"]["reference_experts"] for rank in results
            )


@pytest.mark.slow
def test_checkpoint_reshards_to_other_ep_degrees(results, saved):
    """The checkpoint written under EP 2 loads under EP 4 and under EP 2 x FSDP 2 (4 ranks)."""
    launch(reshard_worker, 4, SPECS[SAVED[0]], ["ep", "2d-2x2"], str(saved))
    differences = torch.load(saved / "reshard-4.pt")
    assert set(differences) == {"ep", "2d-2x2"}
    assert all(difference <= 1e-12 for difference in differences.values()), differences
