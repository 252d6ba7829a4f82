"""spec -> Hugging Face config -> spec is the identity, for every model type archspec exports.

For each exportable `transformers` model type, Hypothesis draws a spec from what that family can express (sizes,
heads and key/value heads, RoPE theta and scaling, norm epsilon, biases, tying, sliding windows, experts and
routing, MLA ranks, T5 buckets, the CLIP tower and projector, token ids ...), writes its config with
`hf_config(spec, model_type)`, passes it through JSON (a config.json) and reads it back with `spec_from_hf`.
Identity is strict: the re-imported spec's `model_dump()` equals the original's, except `description` (a config
has none; the import writes its own). No field is normalised: the strategies below draw resolved values only
(e.g. sorted window layers, a window on a proper subset of layers), because a spec such as `window_layers: []`
builds the same model as no window at all but cannot be told apart once written as a config.

The config must also survive `transformers`' own config class (its validation and defaults: LlamaConfig refuses a
hidden size that is not a multiple of the heads, GlmConfig fills in a missing eos) and read back the same.
`hf_config(spec)` without a model type must also find a family that reads back as the same spec.
A new exportable model type fails `test_every_exportable_model_type_has_a_strategy` until it gets one here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import transformers
from hypothesis import given
from hypothesis import strategies as st

import archspec
from archspec.interop.hf_export import EXPORTABLE_MODEL_TYPES, hf_config

from .strategies import names, thetas

GATED = ("swiglu", "geglu", "geglu-tanh", "reglu")
PLAIN = ("gelu-tanh", "gelu", "relu", "silu")
SCALING_KINDS = ("none", "linear", "dynamic", "llama3", "yarn")


# ------------------------------------------------------------------------------------------ shared parts
@st.composite
def tokens(draw: st.DrawFn, vocab: int) -> dict[str, Any]:
    token = st.one_of(st.none(), st.integers(0, vocab - 1))
    eos = st.one_of(token, st.lists(st.integers(0, vocab - 1), min_size=2, max_size=3))
    return {"bos": draw(token), "eos": draw(eos), "pad": draw(token)}


@st.composite
def rope(draw: st.DrawFn, rotary: int, pairing: str = "half", fraction: float = 1.0) -> dict[str, Any]:
    """RoPE with any theta and scaling transformers' rope_parameters can say (dynamic NTK needs > 2 rotary dims)."""
    kinds = SCALING_KINDS if rotary > 2 else tuple(k for k in SCALING_KINDS if k != "dynamic")
    kind = draw(st.sampled_from(kinds))
    factor = st.floats(1.0, 16.0)
    position: dict[str, Any] = {"kind": "rope", "theta": draw(thetas), "fraction": fraction, "pairing": pairing}
    if kind in ("linear", "dynamic"):
        position["scaling"] = {"kind": kind, "factor": draw(factor)}
    elif kind == "llama3":
        low = draw(st.floats(0.5, 4.0))
        position["scaling"] = {
            "kind": "llama3",
            "factor": draw(factor),
            "low_freq_factor": low,
            "high_freq_factor": low + draw(st.floats(0.25, 8.0)),
            "original_context": draw(st.integers(1, 8192)),
        }
    elif kind == "yarn":
        yarn = {
            "kind": "yarn",
            "factor": draw(factor),
            "original_context": draw(st.integers(1, 8192)),
            "beta_fast": draw(st.floats(1.0, 64.0)),
            "beta_slow": draw(st.floats(0.25, 4.0)),
            "truncate": draw(st.booleans()),
        }
        optional = {
            "mscale": st.floats(0.5, 1.5),
            "mscale_all_dim": st.floats(0.5, 1.5),
            "attention_factor": st.floats(0.5, 2),
        }
        position["scaling"] = yarn | draw(st.fixed_dictionaries({}, optional=optional))
    return position


@st.composite
def base(draw: st.DrawFn, norm: str, head_dim: str) -> dict[str, Any]:
    """Sizes, heads, norm epsilon, tying and tokens. head_dim: "derived" (d_model = heads * head_dim), "free" (the
    family writes head_dim: any d_model) or "free, d_model % heads = 0" (LlamaConfig checks that even so)."""
    heads = draw(st.integers(1, 4))
    width = 2 * draw(st.integers(1, 4))
    vocab = draw(st.integers(2, 40))
    d_model = heads * width
    if head_dim != "derived" and draw(st.booleans()):
        d_model = draw(st.integers(1, 32)) if head_dim == "free" else heads * draw(st.integers(1, 8))
    data: dict[str, Any] = {
        "name": draw(names),
        "vocab_size": vocab,
        "d_model": d_model,
        "n_layers": draw(st.integers(1, 4)),
        "context_length": draw(st.integers(1, 4096)),
        "attention": {"heads": heads, "kv_heads": heads, "head_dim": width},
        "norm": {"kind": norm, "eps": draw(st.sampled_from([1e-5, 1e-6, 1e-12, 0.1]))},
        "embeddings": {"tied": draw(st.booleans())},
        "tokens": draw(tokens(vocab)),
    }
    return data


def kv_heads(heads: int) -> st.SearchStrategy[int]:
    return st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0])


def layer_subsets(n_layers: int) -> st.SearchStrategy[list[int]]:
    """A sorted, non-empty, proper subset of the layers (all layers is written as None)."""
    return st.lists(st.integers(0, n_layers - 1), min_size=1, max_size=n_layers - 1, unique=True).map(sorted)


def flags(*projections: str) -> st.SearchStrategy[dict[str, bool]]:
    """One config flag: the same bias on `projections`, none on the others."""
    return st.booleans().map(lambda flag: {name: flag and name in projections for name in "qkvo"})


# ----------------------------------------------------------------------------------------- the families
@st.composite
def llama_like(draw: st.DrawFn, model_type: str) -> dict[str, Any]:
    """llama, mistral, qwen2, qwen3, glm, glm4: RMSNorm, RoPE, a gated MLP, GQA, explicit head_dim."""
    data = draw(base("rmsnorm", "free, d_model % heads = 0" if model_type == "llama" else "free"))
    attention = data["attention"]
    attention["kv_heads"] = draw(kv_heads(attention["heads"]))
    head_dim, n_layers = attention["head_dim"], data["n_layers"]
    glm = model_type in ("glm", "glm4")
    if glm:  # GlmConfig replaces eos_token_id None by GLM-4's three ids: a GLM config always has an eos
        data["tokens"]["eos"] = draw(
            st.one_of(
                st.integers(0, data["vocab_size"] - 1),
                st.lists(st.integers(0, data["vocab_size"] - 1), min_size=2, max_size=3),
            )
        )
        rotary = 2 * draw(st.integers(1, head_dim // 2))
        data["position"] = draw(rope(rotary, pairing="interleaved", fraction=rotary / head_dim))
        attention["bias"] = draw(flags("q", "k", "v"))
    else:
        data["position"] = draw(rope(head_dim))
        attention["bias"] = draw(
            {
                "llama": flags("q", "k", "v", "o"),  # attention_bias
                "mistral": flags(),  # never
                "qwen2": st.just({"q": True, "k": True, "v": True, "o": False}),  # always q/k/v
                "qwen3": flags("q", "k", "v", "o"),
            }[model_type]
        )
    attention["qk_norm"] = model_type == "qwen3"
    if model_type == "mistral" and draw(st.booleans()):
        attention["window"] = draw(st.integers(1, 4096))
    if model_type in ("qwen2", "qwen3") and draw(st.booleans()):
        attention["window"] = draw(st.integers(1, 4096))
        if n_layers > 1 and draw(st.booleans()):
            attention["window_layers"] = draw(layer_subsets(n_layers))
    data["block"] = "sandwich" if model_type == "glm4" else "pre-norm"
    mlp_bias = model_type == "llama" and draw(st.booleans())
    data["mlp"] = {"activation": draw(st.sampled_from(GATED)), "d_ff": draw(st.integers(1, 64)), "bias": mlp_bias}
    return data


@st.composite
def gpt2(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(base("layernorm", "derived"))
    data["attention"]["bias"] = True
    if draw(st.booleans()):
        data["attention"]["scale"] = 1.0  # scale_attn_weights: false
    data["position"] = "learned"
    data["block"] = "pre-norm"
    data["mlp"] = {"activation": draw(st.sampled_from(PLAIN)), "d_ff": draw(st.integers(1, 64)), "bias": True}
    return data


@st.composite
def bloom(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(base("layernorm", "derived"))
    data["attention"]["bias"] = True
    data["position"] = "alibi"
    data["block"] = {"kind": "pre-norm", "residual_from_norm": draw(st.booleans())}
    data["mlp"] = {"activation": "gelu-tanh", "d_ff": 4 * data["d_model"], "bias": True}
    data["embeddings"]["norm"] = True
    return data


@st.composite
def falcon(draw: st.DrawFn) -> dict[str, Any]:
    """Falcon: pre-norm (7B's old layout: MHA or MQA), or parallel with one norm (7B) or two (40B, any GQA)."""
    data = draw(base("layernorm", "derived"))
    attention = data["attention"]
    block = draw(st.sampled_from(["pre-norm", "parallel-1", "parallel-2"]))
    if block == "pre-norm":
        attention["kv_heads"] = draw(st.sampled_from(sorted({1, attention["heads"]})))
        data["block"] = "pre-norm"
    else:
        attention["kv_heads"] = draw(kv_heads(attention["heads"]))
        data["block"] = {"kind": "parallel", "parallel_norms": int(block[-1])}
    bias = draw(st.booleans())
    attention["bias"] = bias
    data["position"] = draw(rope(attention["head_dim"]))
    data["mlp"] = {"activation": draw(st.sampled_from(PLAIN)), "d_ff": draw(st.integers(1, 64)), "bias": bias}
    return data


@st.composite
def gpt_neox(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(base("layernorm", "derived"))
    head_dim = data["attention"]["head_dim"]
    rotary = 2 * draw(st.integers(1, head_dim // 2))
    data["attention"]["bias"] = draw(st.booleans())
    data["position"] = draw(rope(rotary, fraction=rotary / head_dim))
    data["block"] = draw(st.sampled_from(["pre-norm", {"kind": "parallel", "parallel_norms": 2}]))
    data["mlp"] = {"activation": draw(st.sampled_from(PLAIN)), "d_ff": draw(st.integers(1, 64)), "bias": True}
    return data


@st.composite
def qwen_moe_layers(draw: st.DrawFn, n_layers: int) -> dict[str, Any]:
    """Qwen-MoE's sparse layers as archspec writes them back: all (None) or an explicit sorted list."""
    layers = draw(st.one_of(st.none(), st.lists(st.integers(0, n_layers - 1), max_size=n_layers - 1, unique=True)))
    return {} if layers is None else {"layers": sorted(layers)}


@st.composite
def moe_family(draw: st.DrawFn, model_type: str) -> dict[str, Any]:
    """mixtral (every layer, renormalised softmax top-k, jitter), qwen2_moe (gated shared expert, sparse layers),
    qwen3_moe (qk-norm, sparse layers, no shared expert)."""
    text = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}[model_type]
    data = draw(llama_like(text))
    if model_type != "mixtral":  # Qwen-MoE configs have no sliding window archspec reads
        data["attention"].pop("window", None)
        data["attention"].pop("window_layers", None)
    if model_type == "qwen2_moe":
        data["attention"]["bias"] = draw(flags("q", "k", "v"))  # qkv_bias
    experts = draw(st.integers(1, 8))
    router: dict[str, Any] = {"aux_loss_coef": draw(st.floats(0.0, 1.0))}
    moe: dict[str, Any] = {"experts": experts, "top_k": draw(st.integers(1, experts)), "router": router}
    if model_type == "mixtral":
        moe["d_ff"] = data["mlp"]["d_ff"]  # one intermediate_size for the experts (there is no dense MLP)
        router["jitter"] = draw(st.floats(0.0, 0.5))
    else:
        moe["d_ff"] = draw(st.integers(1, 32))
        router["renormalize"] = draw(st.booleans())
        moe |= draw(qwen_moe_layers(data["n_layers"]))
    if model_type == "qwen2_moe":
        moe |= {"shared_experts": 1, "shared_d_ff": draw(st.integers(1, 32)), "shared_gate": True}
    data["moe"] = moe
    return data


@st.composite
def deepseek(draw: st.DrawFn, model_type: str) -> dict[str, Any]:
    """DeepSeek-V2 (softmax, greedy or group-limited by the best expert) and V3 (sigmoid, correction bias,
    groups scored by their best two): MLA with or without q-LoRA, YaRN with mscale, shared experts, dense layers."""
    vocab = draw(st.integers(2, 40))
    n_layers = draw(st.integers(1, 4))
    rope_dim = 2 * draw(st.integers(1, 4))
    attention: dict[str, Any] = {
        "kind": "mla",
        "heads": draw(st.integers(1, 4)),
        "q_rank": draw(st.one_of(st.none(), st.integers(1, 32))),
        "kv_rank": draw(st.integers(1, 32)),
        "nope_dim": draw(st.integers(1, 16)),
        "rope_dim": rope_dim,
        "v_dim": draw(st.integers(1, 16)),
        "bias": draw(st.booleans()),
    }
    v3 = model_type == "deepseek_v3"
    pairing = draw(st.sampled_from(["half", "interleaved"])) if v3 else "interleaved"
    groups = draw(st.integers(1, 4))
    per_group = draw(st.integers(2 if v3 and groups > 1 else 1, 4))
    experts = groups * per_group
    top_groups = draw(st.integers(1, groups))
    router: dict[str, Any] = {
        "scoring": "sigmoid" if v3 else "softmax",
        "renormalize": draw(st.booleans()) if v3 else False,
        "scale": draw(st.floats(0.25, 4.0)),
        "groups": groups,
        "top_groups": top_groups,
        "group_score": "top2-sum" if v3 else "max",
        "correction_bias": v3,
    }
    return {
        "name": draw(names),
        "vocab_size": vocab,
        # DeepseekV2Config checks hidden_size % num_attention_heads = 0 (MLA's widths do not depend on it)
        "d_model": attention["heads"] * draw(st.integers(1, 8)) if not v3 else draw(st.integers(1, 32)),
        "n_layers": n_layers,
        "context_length": draw(st.integers(1, 4096)),
        "attention": attention,
        "position": draw(rope(rope_dim, pairing=pairing)),
        "norm": {"kind": "rmsnorm", "eps": draw(st.sampled_from([1e-5, 1e-6, 0.1]))},
        "block": "pre-norm",
        "mlp": {"activation": draw(st.sampled_from(GATED)), "d_ff": draw(st.integers(1, 64))},
        "moe": {
            "experts": experts,
            "top_k": draw(st.integers(1, top_groups * per_group)),
            "d_ff": draw(st.integers(1, 32)),
            "shared_experts": draw(st.integers(1, 2)),  # transformers always builds the shared MLP
            "dense_layers": draw(st.integers(0, n_layers)),
            "router": router,
        },
        "embeddings": {"tied": draw(st.booleans())},
        "tokens": draw(tokens(vocab)),
    }


@st.composite
def t5(draw: st.DrawFn) -> dict[str, Any]:
    """T5 v1.0 (tied head scaled by d_model^-0.5) and v1.1 (untied, unscaled); gated or plain feed-forward."""
    data = draw(base("rmsnorm", "free"))
    data["attention"] |= {"bias": False, "scale": 1.0}
    buckets = draw(st.integers(4, 64))
    scaled = draw(st.booleans())
    data |= {
        "structure": "encoder-decoder",
        "n_decoder_layers": draw(st.integers(1, 4)),
        "position": {
            "kind": "relative-bias",
            "buckets": buckets,
            "max_distance": draw(st.integers(buckets // 2 + 1, 256)),
        },
        "block": "pre-norm",
        "mlp": {
            "activation": draw(st.sampled_from(("geglu-tanh", "swiglu", "reglu", *PLAIN))),
            "d_ff": draw(st.integers(1, 64)),
        },
        "embeddings": {"tied": scaled, "scale_head": scaled},
    }
    data["tokens"]["decoder_start"] = draw(st.integers(0, data["vocab_size"] - 1))
    return data


@st.composite
def llava(draw: st.DrawFn) -> dict[str, Any]:
    """A llama / mistral / qwen2 text model with a CLIP tower (hidden state(s) read, class token kept or dropped)
    and LLaVA's two-layer projector."""
    data = draw(llama_like(draw(st.sampled_from(["llama", "mistral", "qwen2"]))))
    depth, heads, patch = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
    layer = st.integers(-(depth + 1), depth)
    activations = ("quick-gelu", *PLAIN)
    data["vision"] = {
        "tower": {
            "kind": "vit",
            "image_size": patch * draw(st.integers(1, 4)),
            "patch_size": patch,
            "channels": draw(st.integers(1, 3)),
            "width": heads * draw(st.integers(1, 8)),
            "depth": depth,
            "heads": heads,
            "d_ff": draw(st.integers(1, 64)),
            "activation": draw(st.sampled_from(activations)),
            "norm_eps": draw(st.sampled_from([1e-5, 1e-6])),
        },
        "feature_layer": draw(st.one_of(layer, st.lists(layer, min_size=1, max_size=3))),
        "feature_select": draw(st.sampled_from(["patches", "all"])),
        "projector": {
            "kind": "mlp",
            "depth": 2,
            "activation": draw(st.sampled_from(activations)),
            "bias": draw(st.booleans()),
        },
        "image_token": draw(st.integers(0, data["vocab_size"] - 1)),
    }
    return data


def as_imported(config: transformers.PretrainedConfig, name: str) -> dict[str, Any]:
    """The spec data of a config as import reads it from the config.json transformers writes."""
    return archspec.spec_from_hf(json.loads(config.to_json_string()), name=name).model_dump(mode="json")


@st.composite
def imported(draw: st.DrawFn, model_type: str) -> dict[str, Any]:
    """Today's dense families: a tiny config of the family's own config class, its sizes drawn and every other
    key the class default, as import reads it (the part of the spec space the family's reader produces)."""
    heads = draw(st.integers(1, 4))
    head_dim = 2 * draw(st.integers(1, 4))
    sizes = dict(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=heads * head_dim,
        num_hidden_layers=draw(st.integers(1, 5)),
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        head_dim=head_dim,
        intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        sliding_window=draw(st.integers(1, 8)),
        tie_word_embeddings=draw(st.booleans()),
    )
    config = transformers.CONFIG_MAPPING[model_type](**sizes)
    return as_imported(config, draw(names))


@st.composite
def glm4_moe(draw: st.DrawFn) -> dict[str, Any]:
    """GLM-4.5: a tiny Glm4MoeConfig with its sizes and options drawn (q/k/v biases, qk-norm, DeepSeek-V3's router
    with groups, shared experts and a dense start), as import reads it."""
    heads = draw(st.integers(1, 4))
    n_layers = draw(st.integers(1, 4))
    groups = draw(st.integers(1, 3))
    per_group = draw(st.integers(2 if groups > 1 else 1, 3))  # a group's score is its best two
    top_groups = draw(st.integers(1, groups))
    config = transformers.Glm4MoeConfig(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=draw(st.integers(1, 32)),
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        head_dim=4 * draw(st.integers(1, 4)),  # partial_rotary_factor 0.5 of it must be even
        intermediate_size=draw(st.integers(1, 32)),
        moe_intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        attention_bias=draw(st.booleans()),
        use_qk_norm=draw(st.booleans()),
        n_routed_experts=groups * per_group,
        n_shared_experts=draw(st.integers(1, 2)),
        num_experts_per_tok=draw(st.integers(1, top_groups * per_group)),
        first_k_dense_replace=draw(st.integers(0, n_layers)),
        n_group=groups,
        topk_group=top_groups,
        norm_topk_prob=draw(st.booleans()),
        routed_scaling_factor=draw(st.floats(0.25, 4.0)),
        tie_word_embeddings=draw(st.booleans()),
    )
    return as_imported(config, draw(names))


@st.composite
def granitemoe(draw: st.DrawFn) -> dict[str, Any]:
    """Granite-MoE: a tiny GraniteMoeConfig, its sizes, expert counts and the four multipliers drawn."""
    heads = draw(st.integers(1, 4))
    experts = draw(st.integers(1, 6))
    multiplier = st.floats(0.125, 8.0)
    config = transformers.GraniteMoeConfig(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=heads * 2 * draw(st.integers(1, 4)),
        num_hidden_layers=draw(st.integers(1, 4)),
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        attention_bias=draw(st.booleans()),
        num_local_experts=experts,
        num_experts_per_tok=draw(st.integers(1, experts)),
        router_aux_loss_coef=draw(st.floats(0.0, 1.0)),
        embedding_multiplier=draw(multiplier),
        residual_multiplier=draw(multiplier),
        attention_multiplier=draw(multiplier),
        logits_scaling=draw(multiplier),
        tie_word_embeddings=draw(st.booleans()),
    )
    return as_imported(config, draw(names))


@st.composite
def hunyuan_moe(draw: st.DrawFn) -> dict[str, Any]:
    """Hunyuan-MoE: a tiny HunYuanMoEV1Config, its sizes, experts and NTK-alpha RoPE drawn."""
    heads = draw(st.integers(1, 4))
    experts = draw(st.integers(1, 6))
    alpha = draw(st.one_of(st.none(), st.floats(1.0, 1000.0)))
    rope = {"rope_type": "default", "rope_theta": 1e4} if alpha is None else {}
    if alpha is not None:
        rope = {"rope_type": "dynamic", "rope_theta": 1e4, "alpha": alpha, "factor": 1.0}
    config = transformers.HunYuanMoEV1Config(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=draw(st.integers(1, 32)),
        num_hidden_layers=draw(st.integers(1, 4)),
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        head_dim=2 * draw(st.integers(2, 4)),
        intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        attention_bias=draw(st.booleans()),
        num_experts=experts,
        moe_topk=draw(st.integers(1, experts)),
        rope_parameters=rope,
        tie_word_embeddings=draw(st.booleans()),
    )
    return as_imported(config, draw(names))


@st.composite
def minimax_m2(draw: st.DrawFn) -> dict[str, Any]:
    """MiniMax-M2: a tiny MiniMaxM2Config, its sizes, experts, rotary width and router options drawn."""
    heads = draw(st.integers(1, 4))
    head_dim = 2 * draw(st.integers(1, 4))
    experts = draw(st.integers(1, 6))
    config = transformers.MiniMaxM2Config(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=draw(st.integers(1, 32)),
        num_hidden_layers=draw(st.integers(1, 4)),
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        head_dim=head_dim,
        rotary_dim=2 * draw(st.integers(1, head_dim // 2)),
        intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        num_local_experts=experts,
        num_experts_per_tok=draw(st.integers(1, experts)),
        router_aux_loss_coef=draw(st.floats(0.0, 1.0)),
        router_jitter_noise=draw(st.floats(0.0, 0.5)),
        tie_word_embeddings=draw(st.booleans()),
    )
    return as_imported(config, draw(names))


@st.composite
def ernie_moe(draw: st.DrawFn) -> dict[str, Any]:
    """ERNIE 4.5 MoE: a tiny Ernie4_5_MoeConfig, its sizes, experts and MoE layer range drawn."""
    heads = draw(st.integers(1, 4))
    n_layers = draw(st.integers(1, 5))
    experts = draw(st.integers(1, 6))
    start = draw(st.integers(0, n_layers))
    config = transformers.Ernie4_5_MoeConfig(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=draw(st.integers(1, 32)),
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        head_dim=2 * draw(st.integers(1, 4)),
        intermediate_size=draw(st.integers(1, 32)),
        moe_intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        moe_num_experts=experts,
        moe_k=draw(st.integers(1, experts)),
        moe_num_shared_experts=draw(st.integers(0, 2)),
        moe_layer_start_index=start,
        moe_layer_end_index=draw(st.integers(start, n_layers)) if start < n_layers else -1,
        moe_layer_interval=draw(st.integers(1, 3)),
        router_aux_loss_coef=draw(st.floats(0.0, 1.0)),
        tie_word_embeddings=draw(st.booleans()),
    )
    return as_imported(config, draw(names))


@st.composite
def gpt_oss(draw: st.DrawFn) -> dict[str, Any]:
    """gpt-oss: a tiny GptOssConfig, its sizes, experts, clamp, window and layer types drawn."""
    heads = draw(st.integers(1, 4))
    n_layers = draw(st.integers(1, 4))
    experts = draw(st.integers(1, 6))
    config = transformers.GptOssConfig(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=draw(st.integers(1, 32)),
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=draw(kv_heads(heads)),
        head_dim=2 * draw(st.integers(1, 4)),
        intermediate_size=draw(st.integers(1, 32)),
        max_position_embeddings=64,
        attention_bias=draw(st.booleans()),
        num_local_experts=experts,
        num_experts_per_tok=draw(st.integers(1, experts)),
        sliding_window=draw(st.integers(1, 8)),
        layer_types=draw(
            st.lists(st.sampled_from(["sliding_attention", "full_attention"]), min_size=n_layers, max_size=n_layers)
        ),  # fmt: skip
        swiglu_limit=draw(st.floats(0.1, 10.0)),
        swiglu_alpha=draw(st.floats(0.5, 2.0)),
        router_aux_loss_coef=draw(st.floats(0.0, 1.0)),
        tie_word_embeddings=draw(st.booleans()),
    )
    return as_imported(config, draw(names))


MODERN_DENSE = ("gemma", "gemma2", "gemma3_text", "phi3", "starcoder2", "olmo2", "olmo3", "exaone4", "cohere",
                "cohere2", "granite", "smollm3", "ernie4_5", "hunyuan_v1_dense")  # fmt: skip

FAMILY_SPECS: dict[str, Any] = {
    **{t: (lambda t=t: llama_like(t)) for t in ("llama", "mistral", "qwen2", "qwen3", "glm", "glm4")},
    "gpt2": gpt2,
    "bloom": bloom,
    "falcon": falcon,
    "gpt_neox": gpt_neox,
    **{t: (lambda t=t: moe_family(t)) for t in ("mixtral", "qwen2_moe", "qwen3_moe")},
    **{t: (lambda t=t: deepseek(t)) for t in ("deepseek_v2", "deepseek_v3")},
    "glm4_moe": glm4_moe,
    "granitemoe": granitemoe,
    "hunyuan_v1_moe": hunyuan_moe,
    "minimax_m2": minimax_m2,
    "ernie4_5_moe": ernie_moe,
    "gpt_oss": gpt_oss,
    "t5": t5,
    "llava": llava,
    **{t: (lambda t=t: imported(t)) for t in MODERN_DENSE},
}
"""model type -> a strategy of spec dicts that the family expresses, every free parameter drawn."""
FAMILIES = [t for t in FAMILY_SPECS if t in EXPORTABLE_MODEL_TYPES]


def test_every_exportable_model_type_has_a_strategy():
    assert set(EXPORTABLE_MODEL_TYPES) <= set(FAMILY_SPECS), set(EXPORTABLE_MODEL_TYPES) - set(FAMILY_SPECS)


def same_spec(back: archspec.Spec, spec: archspec.Spec) -> None:
    assert back.model_dump() == {**spec.model_dump(), "description": back.description}


def through_transformers(config: dict[str, Any]) -> dict[str, Any]:
    """The config as `transformers` loads it (its config class: defaults, validation) and saves it again."""
    options = {key: value for key, value in config.items() if key != "model_type"}
    return json.loads(transformers.AutoConfig.for_model(config["model_type"], **options).to_json_string())


@pytest.mark.parametrize("model_type", FAMILIES)
@given(data=st.data())
def test_spec_to_hf_config_to_spec_is_identity(model_type, data):
    spec = archspec.spec_from_dict(data.draw(FAMILY_SPECS[model_type](), label="spec"))
    config = hf_config(spec, model_type)
    assert config["model_type"] == model_type
    same_spec(archspec.spec_from_hf(json.loads(json.dumps(config)), name=spec.name), spec)  # config.json
    same_spec(archspec.spec_from_hf(through_transformers(config), name=spec.name), spec)
    chosen = hf_config(spec)  # without a model type: the first family that reads back exactly
    same_spec(archspec.spec_from_hf(json.loads(json.dumps(chosen)), name=spec.name), spec)
    same_spec(archspec.spec_from_hf(through_transformers(chosen), name=spec.name), spec)
