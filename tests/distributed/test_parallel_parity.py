"""FSDP2, tensor parallelism and both together reproduce the single-process model on 2 CPU processes (gloo).

Reference: the same model (same seed) run in one process on the whole batch. FSDP ranks each take half the
batch (FSDP2 averages gradients, the loss is the mean of the two halves' means); TP ranks take the whole batch.
Tolerance 1e-5 on the loss and on every parameter's full gradient.
"""

from __future__ import annotations

import pytest
import torch
from launch import launch
from tiny import distinct_tiny_specs
from workers import suite_worker


def tiny_specs() -> dict[str, dict]:
    """Every distinct tiny architecture of specs/ (text-only), router losses off: a balancing loss is not a mean
    over tokens, so half-batch ranks would differ from the full batch by design, not by a bug."""
    specs = {}
    for name, spec in distinct_tiny_specs().items():
        data = spec.model_dump(mode="json")
        if data.get("vision"):
            continue
        if data.get("moe"):
            data["moe"]["router"].update(aux_loss_coef=0.0, z_loss_coef=0.0, jitter=0.0)
        specs[name] = data
    return specs


TOLERANCE = 1e-5
WORLD = 2
SPECS = tiny_specs()
ALL = sorted(SPECS)


def _norms_span_heads(attention: dict) -> bool:
    """q/k norms over the whole projection (OLMo 2) or with a weight per head (Cohere): TP refuses them."""
    qk_norm = attention.get("qk_norm") or {}
    return qk_norm.get("over") == "projection" or bool(qk_norm.get("per_head_weights"))


SINKS = [name for name in ALL if SPECS[name]["attention"].get("sinks")]  # gpt-oss: TP refuses them (for now)
TP_SPLITTABLE = [
    name
    for name in ALL
    if SPECS[name]["attention"].get("kv_heads", 2) % WORLD == 0
    and not _norms_span_heads(SPECS[name]["attention"])
    and name not in SINKS
]
MQA = [name for name in ALL if SPECS[name]["attention"].get("kv_heads", 2) % WORLD]
# T5's relative-bias tables are split by heads; MLA's rope key gradient is summed over the ranks
SPLIT_BIAS_OR_SHARED_KEY = [
    name for name in ALL if SPECS[name]["structure"] == "encoder-decoder" or SPECS[name]["attention"]["kind"] == "mla"
]

CASES = (
    [(name, "fsdp") for name in ALL]
    + [(name, "tp") for name in TP_SPLITTABLE]
    + [(name, "fsdp+ac") for name in ("llama3-70b", "gpt2", "bloom-176b")]
    + [(name, "tp+ac") for name in ("llama3-70b", "deepseek-v3")]
    + [(name, "fsdp+compile") for name in ("llama3-70b",)]
    + [(name, "tp+compile") for name in ("llama3-70b", "t5-base", "deepseek-v3")]
    + [(name, "2d-1x2") for name in ("llama3-70b", "gpt2")]
    + [(name, "2d-2x1") for name in ("llama3-70b",)]
    + [(name, "2d-1x2") for name in ("mixtral-8x7b", "qwen1.5-moe-a2.7b")]
    + [(name, "2d-1x2") for name in ("t5-base", "deepseek-v2-lite")]
    + [(name, "tp") for name in MQA + SINKS]
)
GENERATE = [(name, "tp-generate") for name in ("llama3-70b", "t5-base", "deepseek-v3", "deepseek-v2-lite")]
RESUME = [("llama3-70b", "fsdp"), ("llama3-70b", "tp")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One launch for every case: spawning processes costs seconds, the tiny models milliseconds."""
    out = tmp_path_factory.mktemp("parity") / "results.pt"
    launch(suite_worker, WORLD, CASES + GENERATE, SPECS, RESUME, str(out))
    return torch.load(out)


PARITY = [case for case in CASES if case[0] not in MQA + SINKS or case[1] != "tp"]


@pytest.mark.parametrize(("name", "mode"), PARITY, ids=[f"{name}-{mode}" for name, mode in PARITY])
def test_parallel_matches_single_process(results, name, mode):
    result = results[(name, mode)]
    assert "error" not in result, result.get("error")
    assert result["loss"] <= TOLERANCE
    assert result["grad"] <= TOLERANCE


def test_t5_and_mla_are_tensor_parallel():
    """The cases above include TP (and 2-D) runs of T5 (relative-bias tables split by heads) and MLA (shared rope
    key's gradient all-reduced): nothing is refused any more."""
    assert SPLIT_BIAS_OR_SHARED_KEY and set(SPLIT_BIAS_OR_SHARED_KEY) <= set(TP_SPLITTABLE)


@pytest.mark.parametrize("name", MQA)
def test_tp_refuses_heads_that_do_not_split(results, name):
    error = results[(name, "tp")].get("error", "")
    assert "kv_heads = 1 is not divisible by 2" in error


@pytest.mark.parametrize(("name", "mode"), GENERATE, ids=[name for name, _ in GENERATE])
def test_tp_generate_matches_single_process(results, name, mode):
    """Each rank's KV cache holds its own heads (MLA: the replicated latent); greedy tokens are unchanged."""
    result = results[(name, mode)]
    assert "error" not in result, result.get("error")
    assert result["equal"]


@pytest.mark.parametrize(("name", "mode"), RESUME, ids=[f"{name}-{mode}" for name, mode in RESUME])
def test_checkpoint_resume_reproduces_the_next_steps_exactly(results, name, mode):
    """torch.distributed.checkpoint save -> load into a model with other weights -> the same losses, bit for bit."""
    losses = results[("resume", name, mode)]
    assert losses["resumed"] == losses["expected"]


@pytest.mark.parametrize("name", SINKS)
def test_tp_refuses_attention_sinks(results, name):
    """A logit per head that TP would have to split with the heads: refused with a message, FSDP serves them."""
    assert "attention sinks" in results[(name, "tp")].get("error", "")
