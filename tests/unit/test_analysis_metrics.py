"""The analytic figures of archspec.analysis.metrics against the built model itself.

- parameters: `numel` of a meta-device build, over Hypothesis-drawn tiny specs of the whole vocabulary, over every
  spec in specs/, and against published totals of real checkpoints;
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over a real forward pass (like for like: see
  `counted_forward_flops`), and the causal key count against the model's own attention mask;
- KV-cache bytes: the tensors of `model.new_cache(...)`, including the one `generate()` allocates.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import archspec
from archspec.analysis import AnalysisError, analyse, flop_counts, kv_cache, param_counts
from archspec.analysis.metrics import DTYPE_BYTES, attended_keys
from archspec.nn.attend import AttentionPaths, MaskedAttention
from archspec.nn.positions import Context
from archspec.spec.schema import Activation, BlockSpec, NormSpec

SPECS = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml"))
BLOCK_KINDS = typing.get_args(BlockSpec.model_fields["kind"].annotation)
ACTIVATIONS = tuple(a for a in typing.get_args(Activation) if a != "clamped-swiglu")  # gpt-oss's: experts only
NORM_KINDS = typing.get_args(NormSpec.model_fields["kind"].annotation)
SCALINGS: list[dict[str, Any] | None] = [
    None,
    {"kind": "linear", "factor": 2.0},
    {"kind": "dynamic", "factor": 2.0},
    {"kind": "llama3", "factor": 8.0, "original_context": 16},
    {"kind": "yarn", "factor": 4.0, "original_context": 16},
]


# ---------------------------------------------------------------------------------------- the strategy
@st.composite
def tiny_spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid tiny spec drawn from the whole dense-decoder vocabulary (block kinds, activations and norm kinds
    are read from the schema, so a new value there is exercised here automatically)."""
    heads = draw(st.integers(1, 4))
    kv_heads = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    head_dim = 2 * draw(st.integers(1, 4))
    n_layers = draw(st.integers(1, 3))
    attention: dict[str, Any] = {
        "heads": heads,
        "kv_heads": kv_heads,
        "bias": {name: draw(st.booleans()) for name in "qkvo"},
    }
    if draw(st.booleans()):  # explicit head_dim, d_model unrelated to heads * head_dim
        attention["head_dim"] = head_dim
        d_model = draw(st.integers(1, 20))
    else:
        d_model = heads * head_dim
    if draw(st.booleans()):
        attention["window"] = draw(st.integers(1, 8))
        if draw(st.booleans()):
            attention["window_layers"] = draw(st.lists(st.integers(0, n_layers - 1), unique=True, max_size=n_layers))
    norm: dict[str, Any] = {"kind": draw(st.sampled_from(NORM_KINDS))}
    if norm["kind"] == "layernorm":
        norm["bias"] = draw(st.booleans())
    else:
        attention["qk_norm"] = draw(st.booleans())
    kind = draw(st.sampled_from(["rope", "alibi", "learned", "none"]))
    position: dict[str, Any] = {"kind": kind}
    if kind != "alibi":
        attention["sinks"] = draw(st.booleans())  # a parameter per head
    if kind == "rope":
        position["fraction"] = draw(
            st.sampled_from([f for f in (1.0, 0.5, 0.25) if int(head_dim * f) % 2 == 0 and int(head_dim * f) > 0])
        )
        position["pairing"] = draw(st.sampled_from(["half", "interleaved"]))
        rotary = int(head_dim * position["fraction"])  # dynamic NTK needs more than 2 rotary dims (a spec rule)
        position["scaling"] = draw(
            st.sampled_from([x for x in SCALINGS if rotary > 2 or not x or x["kind"] != "dynamic"])
        )
    block: dict[str, Any] = {"kind": draw(st.sampled_from(BLOCK_KINDS))}
    if block["kind"] == "parallel":
        block["parallel_norms"] = draw(st.sampled_from([1, 2]))
    if block["kind"] == "pre-norm":
        block["residual_from_norm"] = draw(st.booleans())
    return {
        "name": "tiny",
        "vocab_size": draw(st.integers(1, 40)),
        "d_model": d_model,
        "n_layers": n_layers,
        "context_length": draw(st.integers(8, 24)),
        "attention": attention,
        "position": position,
        "norm": norm,
        "block": block,
        "mlp": {
            "activation": draw(st.sampled_from(ACTIVATIONS)),
            "d_ff": draw(st.integers(1, 24)),
            "bias": draw(st.booleans()),
        },
        "embeddings": {"tied": draw(st.booleans()), "norm": draw(st.booleans())},
    }


def numel(model: torch.nn.Module | None) -> int:
    """Parameters of a module (none when the model has no such part: None)."""
    if model is None:
        return 0
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


# ------------------------------------------------------------------------------------------ parameters
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_spec_dicts())
def test_parameters_equal_numel_of_a_meta_build(data: dict[str, Any]) -> None:
    spec = archspec.spec_from_dict(data)
    counts = param_counts(spec)
    model = archspec.build(spec, device="meta")
    assert counts.total == numel(model)
    assert counts.active == counts.total  # dense: every parameter is used by every token
    # the parts add up to the same modules the compiler built
    assert counts.token_embedding == model.embed.weight.numel()
    assert counts.head == (0 if spec.embeddings.tied else model.lm_head.weight.numel())
    assert counts.final_norm == numel(model.final_norm)
    assert counts.embedding_norm == numel(model.embed_norm)
    for layer, block in zip(counts.layers, model.layers, strict=True):
        assert layer.attention == numel(block.attn)
        assert layer.mlp == numel(block.mlp)
        assert layer.total == numel(block)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_parameters_of_every_spec_in_specs_dir(path: Path) -> None:
    spec = archspec.load_spec(path)
    assert param_counts(spec).total == numel(archspec.build(spec, device="meta"))
    figures = analyse(spec)
    assert figures.flops.forward_per_token > figures.flops.matmul_per_token > 0
    assert figures.kv.bytes_per_token > 0


LLAMA3_8B: dict[str, Any] = {
    "name": "llama3-8b",
    "vocab_size": 128256,
    "d_model": 4096,
    "n_layers": 32,
    "context_length": 8192,
    "attention": {"heads": 32, "kv_heads": 8},
    "position": {"kind": "rope", "theta": 500000.0},
    "norm": "rmsnorm",
    "mlp": {"activation": "swiglu", "d_ff": 14336},
}
LLAMA3_405B: dict[str, Any] = {
    **LLAMA3_8B,
    "name": "llama3-405b",
    "d_model": 16384,
    "n_layers": 126,
    "attention": {"heads": 128, "kv_heads": 8},
    "mlp": {"activation": "swiglu", "d_ff": 53248},
}
GPT2: dict[str, Any] = {
    "name": "gpt2",
    "vocab_size": 50257,
    "d_model": 768,
    "n_layers": 12,
    "context_length": 1024,
    "attention": {"heads": 12, "bias": True},
    "position": "learned",
    "norm": "layernorm",
    "mlp": {"activation": "gelu-tanh", "d_ff": 3072, "bias": True},
    "embeddings": {"tied": True},
}


@pytest.mark.parametrize(
    ("data", "published"),
    [
        (LLAMA3_8B, 8_030_261_248),  # Meta-Llama-3-8B: model.num_parameters() in transformers
        (LLAMA3_405B, 405_853_388_800),  # Llama-3.1-405B model card / num_parameters()
        (GPT2, 124_439_808),  # gpt2: GPT2LMHeadModel.num_parameters(), tied head counted once
    ],
    ids=["llama3-8b", "llama3-405b", "gpt2"],
)
def test_parameters_match_published_totals(data: dict[str, Any], published: int) -> None:
    assert param_counts(archspec.spec_from_dict(data)).total == published


def test_hand_counted_tiny_spec() -> None:
    """d 8, 2 heads of 4, 1 kv head, vocab 10, one layer, SwiGLU 16, RMSNorm, untied, RoPE; counted by hand."""
    spec = archspec.spec_from_dict(
        {
            "name": "hand",
            "vocab_size": 10,
            "d_model": 8,
            "n_layers": 1,
            "context_length": 16,
            "attention": {"heads": 2, "kv_heads": 1},
            "position": "rope",
            "mlp": {"activation": "swiglu", "d_ff": 16},
        }
    )
    p = param_counts(spec)
    assert (p.token_embedding, p.head, p.position_embedding) == (80, 80, 0)
    assert p.layers[0].attention == 64 + 32 + 32 + 64  # q 8x8, k 8x4, v 8x4, o 8x8
    assert p.layers[0].mlp == 3 * 8 * 16
    assert p.layers[0].norms == 2 * 8
    assert p.final_norm == 8
    assert p.total == 760
    # at L = 4, no window: queries see 1 + 2 + 3 + 4 = 10 keys; 4 * heads 2 * head_dim 4 FLOPs per (query, key)
    f = flop_counts(spec, 4)
    assert f.matmul_per_token == 2 * (192 + 384 + 80)
    assert f.attention_per_sequence == 4 * 2 * 4 * 10
    assert f.forward_per_sequence == 1312 * 4 + 320
    assert f.forward_per_token == 1392
    assert f.train_per_token == 3 * 1392
    # one layer, one kv head of 4, key and value, float32
    assert kv_cache(spec, 4, 1, "float32").bytes_per_token == 2 * 1 * 1 * 4 * 4
    assert kv_cache(spec, 4, 3, "bf16").bytes_total == 2 * 4 * 2 * 4 * 3


# ------------------------------------------------------------------------------------------------ FLOPs
def _cpu_flash_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def counted_forward_flops(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """FlopCounterMode's total for one forward pass over the whole sequence, through the masked path: explicit
    positions over a static cache of exactly that many slots (the compiled decode step's path), where SDPA runs over
    every (query, key) pair. The eager no-cache forward on CPU skips, by design, the pairs a sliding window hides
    (`ChunkedWindow`), which no analytic convention here counts.

    FlopCounterMode counts aten mm/addmm/bmm (2 FLOPs per multiply-add, bias adds of addmm not counted) and SDPA
    with `sdpa_flop_count`, which is the full square: 4 * heads * head_dim * queries * keys, whatever the mask
    or `is_causal`, with GQA counted at the query-head count. On the CPU, PyTorch 2.13 runs causal and
    boolean-masked SDPA as `_scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode has no formula
    for (it would count 0), so it is registered here with the same SDPA formula. Float masks (ALiBi) take the
    math path, whose two bmm calls FlopCounterMode counts directly, again as the full square.

    So it equals `flop_counts(spec, L, count="full").forward_per_sequence * batch`: the same matmul term as the
    default "causal" convention, and attention over every (query, key) pair instead of the visible ones.
    """
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_sdpa}
    batch, length = input_ids.shape
    cache = model.new_cache(batch, length)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(input_ids, cache=cache, positions=torch.arange(length))
    return counter.get_total_flops()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_spec_dicts(), st.integers(1, 8), st.integers(1, 2))
def test_forward_flops_match_flop_counter(data: dict[str, Any], length: int, batch: int) -> None:
    spec = archspec.spec_from_dict(data)
    model = archspec.build(spec).eval()
    ids = torch.randint(0, spec.vocab_size, (batch, length))
    counted = counted_forward_flops(model, ids)
    assert counted == flop_counts(spec, length, count="full").forward_per_sequence * batch


def test_full_count_exceeds_causal_count_by_the_masked_pairs() -> None:
    spec = archspec.spec_from_dict(
        {**LLAMA3_8B, "n_layers": 2, "attention": {"heads": 32, "kv_heads": 8, "window": 100}}
    )
    causal, full = flop_counts(spec, 1000), flop_counts(spec, 1000, count="full")
    assert causal.matmul_per_token == full.matmul_per_token
    per_pair = 4 * 32 * 128 * 2  # two layers
    visible = 100 * 101 // 2 + 900 * 100
    assert full.attention_per_sequence - causal.attention_per_sequence == per_pair * (1000 * 1000 - visible)


@pytest.mark.parametrize("window", [None, 1, 2, 5, 7, 8, 30])
@pytest.mark.parametrize("length", [1, 2, 7, 8, 9])
def test_causal_keys_are_the_pairs_the_model_mask_allows(window: int | None, length: int) -> None:
    # the mask the model's attention paths give a layer with this window (the masked path of a compiled step)
    (attend,) = AttentionPaths(windows=(window,))(Context(torch.arange(length), length, at_end=False))
    assert isinstance(attend, MaskedAttention)
    allowed = attend.mask
    assert allowed.dtype == torch.bool and allowed.shape == (1, 1, length, length)
    assert attended_keys(length, window) == int(allowed.sum())
    assert attended_keys(length, window, "full") == length * length


def test_training_flops_are_three_forward_passes() -> None:
    f = flop_counts(archspec.spec_from_dict(LLAMA3_8B), 8192)
    assert f.train_per_token == 3 * f.forward_per_token


def test_window_layers_only_cap_their_layers() -> None:
    data = {
        **LLAMA3_8B,
        "n_layers": 4,
        "attention": {"heads": 32, "kv_heads": 8, "window": 64, "window_layers": [1, 3]},
    }
    spec = archspec.spec_from_dict(data)
    length, per_pair = 256, 4 * 32 * 128
    expected = per_pair * (2 * (256 * 257 // 2) + 2 * (64 * 65 // 2 + (256 - 64) * 64))
    assert flop_counts(spec, length).attention_per_sequence == expected


# --------------------------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float8_e4m3fn"])
@settings(max_examples=25, deadline=None)
@given(data=tiny_spec_dicts(), batch=st.integers(1, 3), max_len=st.integers(1, 8))
def test_kv_bytes_match_new_cache_tensors(dtype: str, data: dict[str, Any], batch: int, max_len: int) -> None:
    spec = archspec.spec_from_dict(data)
    model = archspec.build(spec, device="meta")
    cache = model.new_cache(batch, max_len, dtype=getattr(torch, dtype))
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    figures = kv_cache(spec, max_len, batch, dtype)
    assert figures.bytes_total == allocated
    assert figures.bytes_per_token * max_len * batch == allocated
    assert DTYPE_BYTES[dtype] == torch.empty(0, dtype=getattr(torch, dtype)).element_size()


def test_windowed_kv_bytes_cap_sliding_layers_at_their_window() -> None:
    """Gemma 3's pattern (5 sliding, 1 full) over 7 layers, window 64 at context 256: the 6 sliding layers hold 64
    positions, the full ones 256; NoPE layers are counted like any layer (they cache keys too)."""
    data = {
        **LLAMA3_8B,
        "n_layers": 7,
        "attention": {"heads": 32, "kv_heads": 8},
        "layers": {
            "kinds": {"sliding": {"window": 64}, "full": {"position": "none"}},
            "pattern": ["sliding"] * 5 + ["full"],
        },
    }
    figures = kv_cache(archspec.spec_from_dict(data), 256, 2, "bfloat16")
    per_layer_position = 2 * 8 * 128 * 2  # k + v, 8 kv heads of 128, bfloat16
    assert figures.bytes_windowed == 2 * per_layer_position * (6 * 64 + 1 * 256)
    assert figures.bytes_total == 2 * per_layer_position * 7 * 256  # what the static cache allocates


def test_kv_bytes_match_the_cache_generate_uses() -> None:
    spec = archspec.spec_from_dict(
        {
            **GPT2,
            "vocab_size": 50,
            "d_model": 24,
            "n_layers": 3,
            "attention": {"heads": 6, "kv_heads": 2},
            "mlp": {"activation": "gelu", "d_ff": 32},
        }
    )
    model = archspec.build(spec)
    caches = []
    original = model.new_cache

    def spy(*args: Any, **kwargs: Any) -> Any:
        caches.append(original(*args, **kwargs))
        return caches[-1]

    model.new_cache = spy  # type: ignore[method-assign]
    model.generate(torch.randint(0, 50, (2, 5)), max_new_tokens=3)
    (cache,) = caches
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert allocated == kv_cache(spec, 8, 2, "float32").bytes_total  # 2 rows of 5 + 3 positions
    assert kv_cache(spec, 8, 2, "float32").bytes_per_token == 2 * 3 * 2 * 4 * 4  # k+v, 3 layers, 2 kv heads of 4


def test_gqa_and_mqa_shrink_the_cache_by_the_head_ratio() -> None:
    mha = {**LLAMA3_8B, "attention": {"heads": 32, "kv_heads": 32}}
    gqa, mqa = LLAMA3_8B, {**LLAMA3_8B, "attention": {"heads": 32, "kv_heads": 1}}
    per_token = [kv_cache(archspec.spec_from_dict(d)).bytes_per_token for d in (mha, gqa, mqa)]
    assert per_token == [2 * 32 * 32 * 128 * 2, 2 * 32 * 8 * 128 * 2, 2 * 32 * 1 * 128 * 2]


# ------------------------------------------------------------------------------------------- errors, speed
def test_bad_requests_are_analysis_errors() -> None:
    spec = archspec.spec_from_dict(GPT2)
    with pytest.raises(AnalysisError, match="unknown dtype"):
        kv_cache(spec, dtype="float13")
    with pytest.raises(AnalysisError, match="learned position table"):
        flop_counts(spec, 2048)
    with pytest.raises(AnalysisError, match="context must be"):
        analyse(spec, context=0)
    with pytest.raises(AnalysisError, match="batch"):
        analyse(spec, batch=0)
    assert isinstance(AnalysisError("x"), archspec.ArchspecError)


def test_llama3_405b_is_analysed_from_its_plan_alone() -> None:
    """No weights exist (the figures come from the plan), so the largest specs cost nothing to analyse."""
    spec = archspec.spec_from_dict(LLAMA3_405B)
    figures = analyse(spec, context=131072, batch=8)
    assert figures.params.total == 405_853_388_800
    assert figures.kv.bytes_per_token == 2 * 126 * 8 * 128 * 2


# ------------------------------------------------------------------------------- MoE, MLA and T5 figures
def _grouped_linear_flops(x_shape: Any, weight_shape: Any, offsets_shape: Any, *args: Any, **kwargs: Any) -> int:
    """archspec's expert matmul: each of the rows (token, slot) times one [out, in] expert matrix."""
    return 2 * x_shape[0] * weight_shape[1] * weight_shape[2]


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2-lite", "mixtral-8x7b", "qwen1.5-moe-a2.7b"])
def test_moe_and_mla_flops_match_flop_counter(name: str) -> None:
    """Routed experts counted top_k per token (the active parameters), MLA with its kv up-projection per token."""
    from tiny import shrink

    spec = shrink(archspec.load_spec(SPECS[0].parent / f"{name}.yaml"))
    model = archspec.build(spec).eval()
    ids = torch.randint(0, spec.vocab_size, (2, 9))
    mapping = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_sdpa,
        torch.ops.archspec.grouped_linear: _grouped_linear_flops,
    }
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(ids)
    assert counter.get_total_flops() == flop_counts(spec, 9, count="full").forward_per_sequence * 2


@pytest.mark.parametrize("name", ["deepseek-v3", "t5-base"])
def test_mla_and_encoder_decoder_kv_bytes_match_the_cache(name: str) -> None:
    from tiny import shrink

    spec = shrink(archspec.load_spec(SPECS[0].parent / f"{name}.yaml"))
    model = archspec.build(spec)
    cache = model.new_cache(1, 16)
    layers = [layer for layer in cache.layers if layer.keys.shape[2] == 16]
    stored = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    if spec.structure == "encoder-decoder":  # the cross-attention K/V of 16 source tokens as well
        stored *= 2
    assert kv_cache(spec, 16, 1, "float32").bytes_per_token * 16 == stored


@pytest.mark.parametrize(
    "vision",
    [
        {"feature_layer": -1, "projector": "mlp"},
        {"feature_layer": [1, -2], "feature_select": "all", "projector": "linear"},
        {"feature_layer": 0, "projector": {"kind": "mlp", "depth": 3}, "pooling": {"tokens": 4}},
    ],
    ids=["last-layer", "two-layers-with-class-token", "embeddings-pooled"],
)
def test_vision_flops_per_image_match_flop_counter(vision: dict[str, Any]) -> None:
    """Tower (only the blocks up to the deepest layer read) + projector, against FlopCounterMode over
    `image_tokens` for three images; the class token and feature_select change the counts on both sides."""
    text = dict(
        name="tiny-vlm", vocab_size=64, d_model=32, n_layers=1, context_length=64,
        attention={"heads": 4, "kv_heads": 2}, position="rope", norm="rmsnorm", mlp={"activation": "swiglu", "d_ff": 48},
    )  # fmt: skip
    tower = dict(kind="vit", image_size=28, patch_size=7, width=16, depth=3, heads=2, d_ff=24)
    spec = archspec.spec_from_dict({**text, "vision": {"tower": tower, "image_token": 63, **vision}})
    model = archspec.build(spec).eval()
    pixels = torch.randn(3, 3, 28, 28)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model.image_tokens(pixel_values=pixels)
    expected = flop_counts(spec).vision_per_image
    assert expected > 0 and counter.get_total_flops() == 3 * expected
