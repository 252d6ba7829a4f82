"""`archspec plan`: the serving KV cache against the tensors `new_cache` allocates for every spec, the sharding
against the tensor-parallel plan `parallelize` applies, the JSON keys, and errors as one readable line.

The training-memory model is checked against measured peaks in `test_planner_measured.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import archspec
from archspec.analysis.metrics import AnalysisError
from archspec.analysis.planner import DEVICES, Setup, plan_memory
from archspec.cli import app

SPECS = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))
CONTEXT = 256  # longer than gpt-oss's windows (128), shorter than every other spec's


def _cache_bytes(cache: object) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def _capped_cache_bytes(model: torch.nn.Module, cache: object, context: int) -> int:
    """The bytes of `cache` (of `context` positions) with each sliding layer's tensors cut to its window, which
    the built attention paths give (a rolling buffer of the window is all such a layer needs)."""
    windows = getattr(getattr(model, "attention", None), "windows", None) or [None] * len(cache.layers)
    return sum(
        t.numel() * t.element_size() * min(context, window or context) // context
        for layer, window in zip(cache.layers, windows, strict=True)
        for t in (layer.keys, layer.values)
    )


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_serving_kv_cache_is_the_bytes_new_cache_allocates(path: Path) -> None:
    """bf16 weights on the meta device (nothing allocated); the cache of 3 sequences of CONTEXT positions. An
    encoder-decoder also caches the cross keys/values of CONTEXT source tokens: one [batch, kv_heads, source,
    head_dim] pair per decoder layer, the shape of its self-attention cache."""
    spec = archspec.load_spec(path)
    model = archspec.build(spec, device="meta", dtype=torch.bfloat16)
    cache = model.new_cache(3, CONTEXT)
    stored = _capped_cache_bytes(model, cache, CONTEXT)  # gpt-oss's 128-token windows are shorter than CONTEXT
    if spec.structure == "encoder-decoder":
        stored *= 2
    plan = plan_memory(spec, mode="serve", batch=3, seq=CONTEXT, dtype="bf16")
    assert plan.memory.kv_cache == stored
    weights = sum(p.numel() for p in model.parameters()) * 2
    assert plan.memory.parameters == weights
    assert plan.memory.total == weights + stored


@pytest.mark.parametrize("name", ["mistral-7b", "gemma-2-9b", "gemma-3-27b", "olmo-3-1025-7b"])
def test_windows_cap_the_kv_cache_per_sliding_layer(name: str) -> None:
    """Past the window, a sliding layer needs only its window (a rolling buffer); the static cache that
    `new_cache` allocates keeps every position, so the plan is that cache with each sliding layer's tensors cut to
    its window (the built attention paths say which layers slide)."""
    spec = archspec.load_spec(Path(SPECS[0].parent / f"{name}.yaml"))
    model = archspec.build(spec, device="meta", dtype=torch.bfloat16)
    context = 32768
    cache = model.new_cache(1, context)
    capped = _capped_cache_bytes(model, cache, context)
    plan = plan_memory(spec, mode="serve", batch=1, seq=context)
    assert plan.memory.kv_cache == capped < _cache_bytes(cache)


def test_tensor_parallel_divides_what_the_tp_plan_splits() -> None:
    """llama3-8b at TP 4: q, k, v, o, gate, up, down, the embedding and the head split (Megatron's plan), the
    norms replicated. Closed form from the spec's shapes, not from the planner."""
    spec = archspec.load_spec(SPECS[0].parent / "llama3-8b.yaml")
    d, layers, vocab, ff, kv = 4096, 32, 128256, 14336, 1024
    split = layers * (2 * d * d + 2 * d * kv + 3 * d * ff) + 2 * vocab * d
    norms = (2 * layers + 1) * d
    plan = plan_memory(spec, batch=1, seq=1024, tp=4)
    assert plan.memory.parameters == (split // 4 + norms) * 2
    fsdp = plan_memory(spec, batch=1, seq=1024, tp=4, fsdp=2)
    assert fsdp.memory.parameters == -(-(split // 4 + norms) // 2) * 2
    assert fsdp.setup.gpus == 8


def test_a_model_that_does_not_fit_gets_the_smallest_change_that_does() -> None:
    spec = archspec.load_spec(SPECS[0].parent / "llama3-8b.yaml")
    plan = plan_memory(spec, batch=1, seq=8192, device=DEVICES["h100"])
    assert not plan.fits and plan.suggestion is not None and plan.suggestion.startswith("--fsdp")
    ranks = int(plan.suggestion.split()[1])
    assert plan_memory(spec, batch=1, seq=8192, fsdp=ranks).fits
    assert not plan_memory(spec, batch=1, seq=8192, fsdp=ranks // 2).fits


def test_bounds_follow_from_flops_and_bytes() -> None:
    """Training: peak / (6 x active parameters + attention) per token; decoding: bandwidth / bytes per step."""
    spec = archspec.load_spec(SPECS[0].parent / "llama3-8b.yaml")
    train = plan_memory(spec, batch=1, seq=4096)
    flops = archspec.analysis.flop_counts(spec, 4096).train_per_token
    assert train.bounds.train_tokens_per_s == pytest.approx(989e12 / flops)
    assert train.mfu(train.bounds.train_tokens_per_s / 2) == pytest.approx(0.5)
    serve = plan_memory(spec, mode="serve", batch=1, seq=4096)
    weights = 8030261248 * 2
    kv = 32 * 2 * 8 * 128 * 2 * 4096
    assert serve.bounds.decode_tokens_per_s_batch1 == pytest.approx(3350e9 / (weights + kv))


RUNNER = CliRunner()


def test_json_has_the_stable_keys() -> None:
    result = RUNNER.invoke(app, ["plan", str(SPECS[0].parent / "mistral-7b.yaml"), "--batch", "2", "--seq", "4096",
                                 "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document["memory"]) == {
        "parameters", "gradients", "optimizer", "activations", "logits", "transient", "kv_cache", "total",
    }  # fmt: skip
    assert isinstance(document["fits"], bool)
    assert {"train_tokens_per_s", "decode_tokens_per_s", "prefill_s"} <= set(document["bounds"])
    assert all(isinstance(value, int) for value in document["memory"].values())


def test_several_specs_side_by_side_and_the_window_caps_mistral() -> None:
    llama, mistral = SPECS[0].parent / "llama3-8b.yaml", SPECS[0].parent / "mistral-7b.yaml"
    result = RUNNER.invoke(app, ["plan", str(llama), str(mistral), "--serve", "--seq", "32768", "--format", "json"])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.output)
    assert first["memory"]["kv_cache"] == 8 * second["memory"]["kv_cache"]  # 32768 positions vs a 4096 window


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tp", "3"], "not divisible by 3"),
        (["--device", "tpu"], "unknown device"),
        (["--batch", "0"], "batch must be at least 1"),
        (["--dtype", "fp7"], "unknown dtype"),
        (["--checkpointing", "some"], "checkpointing must be"),
    ],
)
def test_bad_input_is_one_readable_line(arguments: list[str], message: str) -> None:
    result = RUNNER.invoke(app, ["plan", str(SPECS[0].parent / "llama3-8b.yaml"), *arguments])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_setup_rejects_more_ranks_than_gpus_divide() -> None:
    spec = archspec.load_spec(SPECS[0].parent / "llama3-8b.yaml")
    with pytest.raises(AnalysisError, match="do not divide"):
        plan_memory(spec, Setup(gpus=6, fsdp=4))


def test_diff_puts_the_plans_side_by_side() -> None:
    """`diff --plan serve` at 32k: Mistral's 4096-token window caps its cache at an eighth of Llama 3's (both
    have 8 kv heads of 128 over 32 layers), the same figure `archspec plan A B` gives."""
    llama, mistral = SPECS[0].parent / "llama3-8b.yaml", SPECS[0].parent / "mistral-7b.yaml"
    result = RUNNER.invoke(app, ["diff", str(llama), str(mistral), "--plan", "serve", "--context", "32768",
                                 "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)["plans"]
    assert [plan["memory"]["kv_cache"] for plan in plans] == [32 * 2 * 8 * 128 * 2 * n for n in (32768, 4096)]
    table = RUNNER.invoke(app, ["diff", str(llama), str(mistral), "--plan", "serve", "--context", "32768"])
    assert "plans side by side" in table.output and "512 MiB" in table.output
    bad = RUNNER.invoke(app, ["diff", str(llama), str(mistral), "--plan", "sometimes"])
    assert bad.exit_code == 1 and "--plan takes train or serve" in bad.output


def test_measured_throughput_gives_its_mfu() -> None:
    """torchtitan's published Llama 3 8B run (64 A100s, FSDP2, batch 1, seq 8192): 2,973 tokens/s per GPU. MFU =
    tokens/s x training FLOPs per token / peak; FLOPs per token from the independent closed form 6 x (weights of
    every matmul: 7,504,924,672 = all parameters but the embedding and the 65 norms) + 6 x causal attention."""
    spec = SPECS[0].parent / "llama3-8b.yaml"
    result = RUNNER.invoke(app, ["plan", str(spec), "--seq", "8192", "--fsdp", "64", "--device", "a100",
                                 "--measured", "190272", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    matmuls = 8030261248 - 128256 * 4096 - 65 * 4096
    attention = 2 * 32 * 128 * (8192 + 1) * 32  # 4 h d K / L with K = L (L + 1) / 2, per layer
    flops = 6 * matmuls + 3 * attention
    assert json.loads(result.output)["bounds"]["mfu_of_measured"] == pytest.approx(190272 * flops / (64 * 312e12))


def test_the_table_shows_the_verdict_and_the_smallest_change() -> None:
    spec = str(SPECS[0].parent / "llama3-8b.yaml")
    result = RUNNER.invoke(app, ["plan", spec, "--seq", "8192", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| does not fit |" in result.output and "smallest change that fits: --fsdp" in result.output
    rich = RUNNER.invoke(app, ["plan", spec, "--seq", "8192"])  # the default: a Rich table
    assert rich.exit_code == 0 and "peak (total)" in rich.output


def test_plot_without_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    gpt2 = str(SPECS[0].parent / "gpt2.yaml")
    result = RUNNER.invoke(app, ["plan", gpt2, "--seq", "512", "--plot", str(tmp_path / "m.png")])
    assert result.exit_code == 1 and "matplotlib" in result.output


def test_plot_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "m.png"
    result = RUNNER.invoke(app, ["plan", str(SPECS[0].parent / "gpt2.yaml"), "--seq", "1024", "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serving_that_does_not_fit_suggests_tensor_parallelism() -> None:
    """llama3-70b in bf16 (141 GB of weights) with 4 x 32k tokens of cache (40 GiB) on 80 GiB: TP 2 leaves each
    rank half of both (90.5 GiB, too much), TP 4 a quarter (45 GiB)."""
    spec = archspec.load_spec(SPECS[0].parent / "llama3-70b.yaml")
    plan = plan_memory(spec, mode="serve", batch=4, seq=32768)
    assert not plan.fits and plan.suggestion == "--tp 4 (4 GPUs)"
    assert plan_memory(spec, mode="serve", batch=4, seq=32768, tp=4).fits
    assert not plan_memory(spec, mode="serve", batch=4, seq=32768, tp=2).fits


def test_selective_checkpointing_wraps_every_other_block_and_keeps_the_gradients() -> None:
    """`every=2` checkpoints blocks 0, 2, ... (what the plan's `selective` counts); gradients are unchanged."""
    from archspec.distributed import ParallelismError, blocks, enable_activation_checkpointing

    spec = archspec.spec_from_dict(
        dict(
            name="t",
            vocab_size=32,
            d_model=16,
            n_layers=4,
            context_length=16,
            attention={"heads": 2},
            position="rope",
            norm="rmsnorm",
            mlp={"activation": "swiglu", "d_ff": 24},
        )  # fmt: skip
    )
    torch.manual_seed(0)
    plain, selective = archspec.build(spec, dtype=torch.float64), archspec.build(spec, dtype=torch.float64)
    selective.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(selective, every=2)
    assert [getattr(b, "_archspec_checkpointed", False) for b in blocks(selective)] == [True, False, True, False]
    ids = torch.randint(0, 32, (2, 9))
    for model in (plain, selective):
        model(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), selective.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12, msg=name)
    with pytest.raises(ParallelismError, match="at least 1"):
        enable_activation_checkpointing(plain, every=0)
