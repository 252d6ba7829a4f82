"""Hugging Face interop: `config.json` -> Spec, and checkpoint tensors -> archspec's uniform state-dict names.

Everything peculiar to a `transformers` checkpoint lives here and nowhere else: per-family config keys and their
class defaults, legacy RoPE fields (`rope_theta` / `rope_scaling` of 4.x next to 5.x's `rope_parameters`), key
names, fused-QKV layouts and GPT-2's Conv1D transposes. Matched against transformers 5.23.0
(`models/<family>/configuration_<family>.py`, `modeling_<family>.py`, `modeling_rope_utils.py`); see
/shared/reference/hf_parity_map.md for the formulas.

archspec itself does not need `transformers`: configs are read as JSON and tensors with safetensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archspec.interop.checkpoint import CheckpointReader
from archspec.spec.errors import ArchspecError, WeightLoadError
from archspec.spec.loader import spec_from_dict
from archspec.spec.schema import NAME_PATTERN, Spec

SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gpt2",
    "bloom",
    "falcon",
    "glm",
    "glm4",
    "gpt_neox",
    "t5",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "llava",
)

# Class defaults of the transformers 5.25 config classes, for keys a config.json may leave out: each family's own
# (tests/parity/test_hf_config_defaults.py imports every class's defaults written out and left out, and compares).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "mistral": dict(
        rms_norm_eps=1e-6,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        hidden_act="silu",
        num_key_value_heads=8,
        sliding_window=4096,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "qwen2": dict(
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        hidden_act="silu",
        num_key_value_heads=32,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
        rope_theta=10000.0,
    ),
    "qwen3": dict(
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        hidden_act="silu",
        num_key_value_heads=32,
        head_dim=128,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
        rope_theta=10000.0,
    ),
    "gpt2": dict(
        n_positions=1024,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        bos_token_id=50256,
        eos_token_id=50256,
    ),
    "bloom": dict(
        layer_norm_epsilon=1e-5,
        apply_residual_connection_post_layernorm=False,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        seq_length=2048,
    ),
    "falcon": dict(
        num_ln_in_parallel_attn=None,
        layer_norm_epsilon=1e-5,
        alibi=False,
        new_decoder_architecture=False,
        multi_query=True,
        parallel_attn=True,
        bias=False,
        max_position_embeddings=2048,
        ffn_hidden_size=None,
        activation="gelu",
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=11,
        eos_token_id=11,
    ),
    "gpt_neox": dict(
        hidden_act="gelu",
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
        use_parallel_residual=True,
        attention_bias=True,
        rope_theta=10000.0,
        partial_rotary_factor=0.25,
        bos_token_id=0,
        eos_token_id=2,
    ),
    "glm": dict(
        num_key_value_heads=2,
        head_dim=128,
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=1.5625e-07,
        tie_word_embeddings=False,
        attention_bias=True,
        rope_theta=10000.0,
        partial_rotary_factor=0.5,
        pad_token_id=151329,
        eos_token_id=[151329, 151336, 151338],
    ),
}
_DEFAULTS["glm4"] = _DEFAULTS["glm"]
_DEFAULTS["mixtral"] = dict(
    _DEFAULTS["mistral"],
    sliding_window=None,
    rms_norm_eps=1e-5,
    rope_theta=1e6,
    num_experts_per_tok=2,
    num_local_experts=8,
    router_aux_loss_coef=0.001,
    router_jitter_noise=0.0,
)
_DEFAULTS["qwen2_moe"] = dict(
    _DEFAULTS["qwen2"],
    num_key_value_heads=16,
    decoder_sparse_step=1,
    moe_intermediate_size=1408,
    shared_expert_intermediate_size=5632,
    num_experts_per_tok=4,
    num_experts=60,
    norm_topk_prob=False,
    router_aux_loss_coef=0.001,
    mlp_only_layers=[],
    qkv_bias=True,
)
_DEFAULTS["qwen3_moe"] = dict(  # no head_dim (hidden_size // heads), no max_window_layers: unlike qwen3
    {k: v for k, v in _DEFAULTS["qwen3"].items() if k not in ("head_dim", "max_window_layers")},
    num_key_value_heads=4,
    decoder_sparse_step=1,
    moe_intermediate_size=768,
    num_experts_per_tok=8,
    num_experts=128,
    norm_topk_prob=False,
    router_aux_loss_coef=0.001,
    mlp_only_layers=[],
)
_DEFAULTS["deepseek_v2"] = dict(
    rms_norm_eps=1e-6,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    hidden_act="silu",
    attention_bias=False,
    rope_theta=10000.0,
    first_k_dense_replace=0,
    kv_lora_rank=512,
    q_lora_rank=1536,
    n_group=None,
    n_routed_experts=64,
    n_shared_experts=2,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    routed_scaling_factor=1.0,
    topk_group=None,
    topk_method="greedy",
    v_head_dim=128,
    num_experts_per_tok=None,
    moe_intermediate_size=1407,
    bos_token_id=1,
    eos_token_id=2,
)
_DEFAULTS["deepseek_v3"] = dict(
    _DEFAULTS["deepseek_v2"],
    n_shared_experts=1,
    n_routed_experts=256,
    routed_scaling_factor=2.5,
    n_group=8,
    topk_group=4,
    num_experts_per_tok=8,
    first_k_dense_replace=3,
    norm_topk_prob=True,
    max_position_embeddings=4096,
    moe_intermediate_size=2048,
    rope_interleave=True,
    bos_token_id=0,
    eos_token_id=1,
)

_GATED = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_pytorch_tanh": "geglu-tanh",
    "gelu_new": "geglu-tanh",
    "relu": "reglu",
}
_PLAIN = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu-tanh",
    "gelu_pytorch_tanh": "gelu-tanh",
    "gelu_fast": "gelu-tanh",
    "relu": "relu",
}


class UnsupportedConfigError(ArchspecError):
    """A config.json whose model type or options archspec cannot express exactly."""


# ============================================================================================ config -> spec
def read_hf_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The config dict of a model directory (its config.json), a config.json path, or a dict."""
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise ArchspecError(f"{path}: no config.json here (expected a Hugging Face model directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArchspecError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def spec_from_hf(source: str | Path | dict[str, Any], name: str | None = None) -> Spec:
    """The spec of a Hugging Face model directory (config.json) or config dict.

    Reads both the 5.x `rope_parameters` field and the 4.x `rope_theta` / `rope_scaling` fields.
    """
    config = read_hf_config(source)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    get = _Getter(config, _DEFAULTS[model_type])
    data = _CONVERTERS[model_type](get)
    data["name"] = name or _spec_name(source, config)
    data["description"] = f"imported from a transformers '{model_type}' config"
    data["tokens"] = _in_vocabulary({**_tokens(get), **data.get("tokens", {})}, data["vocab_size"])
    return spec_from_dict(data, source=str(source) if not isinstance(source, dict) else "<hf config>")


def _in_vocabulary(tokens: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The token ids a model of `vocab_size` rows can produce: the config classes' default ids (GLM's 151329, ...)
    stay in tiny test configs whose vocabulary is far smaller, where no token can ever have them."""
    kept: dict[str, Any] = {}
    for key, value in tokens.items():
        if isinstance(value, list):
            inside = [token for token in value if token < vocab_size]
            kept[key] = inside or None
        else:
            kept[key] = value if value is None or value < vocab_size else None
    return kept


@dataclass
class _Getter:
    """config[key], falling back to the config class default; `require` raises a clear error when absent."""

    config: dict[str, Any]
    defaults: dict[str, Any]

    def __call__(self, key: str, default: Any = None) -> Any:
        if key in self.config:
            return self.config[key]
        return self.defaults.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.config:
            raise UnsupportedConfigError(f"config.json has no {key!r}")
        return self.config[key]


def _spec_name(source: Any, config: dict[str, Any]) -> str:
    raw = (
        config.get("_name_or_path")
        or (Path(source).name if not isinstance(source, dict) else "")
        or config["model_type"]
    )
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(raw).split("/")[-1]).strip("-._")
    return cleaned if re.match(NAME_PATTERN, cleaned or "") else f"{config['model_type']}-import"


def _tokens(get: _Getter) -> dict[str, Any]:
    def one(value: Any) -> Any:
        return value if value is None or isinstance(value, int) else list(value)

    return {"bos": one(get("bos_token_id")), "eos": one(get("eos_token_id")), "pad": one(get("pad_token_id"))}


def _rope(get: _Getter, fraction: float | None = None, pairing: str = "half") -> dict[str, Any]:
    """The `position` section from 5.x rope_parameters or 4.x rope_theta / rope_scaling / rotary_pct."""
    params = dict(get.config.get("rope_scaling") or {})
    params.update(get.config.get("rope_parameters") or {})
    theta = params.get("rope_theta", get.config.get("rope_theta", get.config.get("rotary_emb_base", get("rope_theta"))))
    if fraction is None:
        fraction = params.get(
            "partial_rotary_factor",
            get.config.get("partial_rotary_factor", get.config.get("rotary_pct", get("partial_rotary_factor", 1.0))),
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    position: dict[str, Any] = {"kind": "rope", "theta": float(theta), "fraction": float(fraction), "pairing": pairing}
    max_positions = get("max_position_embeddings")
    original = params.get(
        "original_max_position_embeddings", get.config.get("original_max_position_embeddings", max_positions)
    )
    if rope_type == "default":
        pass
    elif rope_type in ("linear", "dynamic"):
        position["scaling"] = {"kind": rope_type, "factor": float(params["factor"])}
    elif rope_type == "llama3":
        position["scaling"] = {
            "kind": "llama3",
            "factor": float(params["factor"]),
            "low_freq_factor": float(params["low_freq_factor"]),
            "high_freq_factor": float(params["high_freq_factor"]),
            "original_context": int(original),
        }
    elif rope_type == "yarn":
        factor = params.get("factor") or max_positions / original
        scaling: dict[str, Any] = {"kind": "yarn", "factor": float(factor), "original_context": int(original)}
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if params.get(key) is not None:
                scaling[key] = float(params[key])
        scaling["beta_fast"] = float(params.get("beta_fast") or 32)
        scaling["beta_slow"] = float(params.get("beta_slow") or 1)
        scaling["truncate"] = bool(params.get("truncate", True))
        position["scaling"] = scaling
    else:
        raise UnsupportedConfigError(
            f"rope_type {rope_type!r} is not supported (default, linear, dynamic, llama3, yarn)"
        )
    return position


def _llama_like(get: _Getter, *, bias: dict[str, bool], qk_norm: bool = False) -> dict[str, Any]:
    heads = get.require("num_attention_heads")
    hidden = get.require("hidden_size")
    activation = get("hidden_act")
    if activation not in _GATED:
        raise UnsupportedConfigError(f"hidden_act {activation!r} is not supported for a gated MLP")
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": {
            "heads": heads,
            "kv_heads": get("num_key_value_heads") or heads,
            "head_dim": get.config.get("head_dim") or get.defaults.get("head_dim") or hidden // heads,
            "bias": bias,
            "qk_norm": qk_norm,
        },
        "position": _rope(get, fraction=1.0),
        "norm": {"kind": "rmsnorm", "eps": get("rms_norm_eps")},
        "block": "pre-norm",
        "mlp": {
            "activation": _GATED[activation],
            "d_ff": get.require("intermediate_size"),
            "bias": bool(get("mlp_bias", False)),
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def _sliding_layers(get: _Getter, data: dict[str, Any], default_layers: Callable[[int], bool]) -> None:
    """The Qwen families' windows, as their 5.25 config classes resolve them: `sliding_window` only when
    `use_sliding_window` (else no layer slides, whatever `layer_types` says), on the layers `layer_types` marks
    "sliding_attention", or, without `layer_types`, on the layers `default_layers(index)` picks (the family's rule
    of `max_window_layers`)."""
    window = get("sliding_window") if get("use_sliding_window") else None
    if not window:
        return
    n_layers = data["n_layers"]
    layer_types = get.config.get("layer_types")
    if layer_types:
        layers = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
    else:
        layers = [i for i in range(n_layers) if default_layers(i)]
    if layers:
        data["attention"]["window"] = window
        if len(layers) < n_layers:
            data["attention"]["window_layers"] = layers


def _from_llama(get: _Getter) -> dict[str, Any]:
    params = get.config.get("rope_parameters") or get.config.get("rope_scaling") or {}
    if float(params.get("partial_rotary_factor", get.config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedConfigError("llama with partial_rotary_factor != 1 (transformers applies it inconsistently)")
    flag = bool(get("attention_bias"))
    return _llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})


def _from_mistral(get: _Getter) -> dict[str, Any]:
    data = _llama_like(get, bias={"q": False, "k": False, "v": False, "o": False})
    if get("sliding_window") is not None:
        data["attention"]["window"] = get("sliding_window")
    return data


def _from_qwen2(get: _Getter) -> dict[str, Any]:
    data = _llama_like(get, bias={"q": True, "k": True, "v": True, "o": False})
    _sliding_layers(get, data, lambda layer: layer >= get("max_window_layers"))
    return data


def _from_qwen3(get: _Getter) -> dict[str, Any]:
    flag = bool(get("attention_bias"))
    data = _llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag}, qk_norm=True)
    _sliding_layers(get, data, lambda layer: layer >= get("max_window_layers"))
    return data


def _from_glm(get: _Getter, sandwich: bool = False) -> dict[str, Any]:
    flag = bool(get("attention_bias"))
    data = _llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": False})
    data["position"] = _rope(get, pairing="interleaved")
    data["block"] = "sandwich" if sandwich else "pre-norm"
    return data


def _from_gpt2(get: _Getter) -> dict[str, Any]:
    if get("scale_attn_by_inverse_layer_idx"):
        raise UnsupportedConfigError("gpt2 with scale_attn_by_inverse_layer_idx is not supported")
    hidden, heads = get.require("n_embd"), get.require("n_head")
    activation = get("activation_function")
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.require("n_layer"),
        "context_length": get("n_positions"),
        "attention": {"heads": heads, "bias": True, **({} if get("scale_attn_weights") else {"scale": 1.0})},
        "position": "learned",
        "norm": {"kind": "layernorm", "eps": get("layer_norm_epsilon")},
        "block": "pre-norm",
        "mlp": {"activation": _plain(activation), "d_ff": get("n_inner") or 4 * hidden, "bias": True},
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def _from_bloom(get: _Getter) -> dict[str, Any]:
    hidden = get.config.get("hidden_size") or get.require("n_embed")
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.config.get("n_layer") or get.require("num_hidden_layers"),
        "context_length": get("seq_length"),
        "attention": {"heads": get.config.get("n_head") or get.require("num_attention_heads"), "bias": True},
        "position": "alibi",
        "norm": {"kind": "layernorm", "eps": get("layer_norm_epsilon")},
        "block": {"kind": "pre-norm", "residual_from_norm": bool(get("apply_residual_connection_post_layernorm"))},
        "mlp": {"activation": "gelu-tanh", "d_ff": 4 * hidden, "bias": True},
        "embeddings": {"tied": bool(get("tie_word_embeddings")), "norm": True},
    }


def _from_falcon(get: _Getter) -> dict[str, Any]:
    if get("alibi"):
        raise UnsupportedConfigError(
            "falcon with alibi=True (falcon-rw) is not supported: its eager path counts ALiBi twice"
        )
    hidden, heads = get.require("hidden_size"), get.require("num_attention_heads")
    new_arch = bool(get("new_decoder_architecture"))
    if new_arch:
        kv_heads = get.config.get("num_kv_heads") or heads
    else:
        kv_heads = 1 if get("multi_query") else heads
    if get("parallel_attn") or new_arch:
        norms = (get("num_ln_in_parallel_attn") or 2) if new_arch else 1
        block: dict[str, Any] = {"kind": "parallel", "parallel_norms": norms}
    else:
        block = {"kind": "pre-norm"}
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": {"heads": heads, "kv_heads": kv_heads, "bias": bool(get("bias"))},
        "position": _rope(get, fraction=1.0),
        "norm": {"kind": "layernorm", "eps": get("layer_norm_epsilon")},
        "block": block,
        "mlp": {
            "activation": _plain(get("activation")),
            "d_ff": get("ffn_hidden_size") or 4 * hidden,
            "bias": bool(get("bias")),
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def _from_gpt_neox(get: _Getter) -> dict[str, Any]:
    parallel = bool(get("use_parallel_residual"))
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": get.require("hidden_size"),
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": {"heads": get.require("num_attention_heads"), "bias": bool(get("attention_bias"))},
        "position": _rope(get),
        "norm": {"kind": "layernorm", "eps": get("layer_norm_eps")},
        "block": {"kind": "parallel", "parallel_norms": 2} if parallel else "pre-norm",
        "mlp": {"activation": _plain(get("hidden_act")), "d_ff": get.require("intermediate_size"), "bias": True},
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def _experts(get: _Getter, *names: str) -> Any:
    """The routed-expert count under whichever of its names this config uses."""
    for name in names:
        if get.config.get(name) is not None:
            return get.config[name]
    return get(names[0])


def _from_mixtral(get: _Getter) -> dict[str, Any]:
    data = _from_mistral(get)
    data["moe"] = {
        "experts": _experts(get, "num_local_experts", "num_experts"),
        "top_k": get("num_experts_per_tok"),
        "router": {
            "renormalize": True,
            "jitter": float(get("router_jitter_noise") or 0.0),
            "aux_loss_coef": float(get("router_aux_loss_coef")),
        },
    }
    return data


def _qwen_moe_layers(get: _Getter, n_layers: int) -> list[int] | None:
    """Qwen-MoE: layer l is sparse iff l is not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0."""
    step, dense = get("decoder_sparse_step") or 1, set(get("mlp_only_layers") or [])
    layers = [layer for layer in range(n_layers) if layer not in dense and (layer + 1) % step == 0]
    return None if len(layers) == n_layers else layers


def _from_qwen_moe(get: _Getter, shared: bool) -> dict[str, Any]:
    if shared:  # Qwen2-MoE slides every other layer (0, 2, 4, ...) below max_window_layers
        flag = bool(get("qkv_bias"))
        data = _llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": False})
        _sliding_layers(get, data, lambda layer: layer % 2 == 0 and layer < get("max_window_layers"))
    else:  # Qwen3-MoE has no layer_types: every layer slides
        flag = bool(get("attention_bias"))
        data = _llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag}, qk_norm=True)
        _sliding_layers(get, data, lambda layer: True)
    moe: dict[str, Any] = {
        "experts": _experts(get, "num_experts", "num_local_experts"),
        "top_k": get("num_experts_per_tok"),
        "d_ff": get("moe_intermediate_size"),
        "layers": _qwen_moe_layers(get, data["n_layers"]),
        "router": {"renormalize": bool(get("norm_topk_prob")), "aux_loss_coef": float(get("router_aux_loss_coef"))},
    }
    if shared and get("shared_expert_intermediate_size"):
        moe |= {"shared_experts": 1, "shared_d_ff": get("shared_expert_intermediate_size"), "shared_gate": True}
    data["moe"] = moe
    return data


def _from_deepseek(get: _Getter, version: int) -> dict[str, Any]:
    heads = get.require("num_attention_heads")
    rope_dim = get("qk_rope_head_dim")
    pairing = "interleaved" if version == 2 or get("rope_interleave") else "half"
    position = _rope(get, fraction=1.0, pairing=pairing)
    groups = get("n_group") or 1
    if version == 2:
        greedy = get("topk_method") == "greedy"
        router = {
            "scoring": "softmax",
            "renormalize": False,
            "groups": 1 if greedy else groups,
            "top_groups": 1 if greedy else get("topk_group"),
            "group_score": "max",
        }
    else:
        router = {
            "scoring": "sigmoid",
            "renormalize": bool(get("norm_topk_prob")),
            "groups": groups,
            "top_groups": get("topk_group") or groups,
            "group_score": "top2-sum",
            "correction_bias": True,
        }
    router["scale"] = float(get("routed_scaling_factor"))
    # DeepSeek's own balance-loss keys (transformers keeps them in the config but computes no aux loss)
    router["aux_loss_coef"] = float(get.config.get("aux_loss_alpha") or 0.0)
    router["aux_loss"] = "sequence" if get.config.get("seq_aux") else "token"
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": get.require("hidden_size"),
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": {
            "kind": "mla",
            "heads": heads,
            "q_rank": get("q_lora_rank"),
            "kv_rank": get("kv_lora_rank"),
            "nope_dim": get("qk_nope_head_dim"),
            "rope_dim": rope_dim,
            "v_dim": get("v_head_dim"),
            "bias": bool(get("attention_bias")),
        },
        "position": position,
        "norm": {"kind": "rmsnorm", "eps": get("rms_norm_eps")},
        "block": "pre-norm",
        "mlp": {"activation": _GATED[get("hidden_act")], "d_ff": get.require("intermediate_size")},
        "moe": {
            "experts": _experts(get, "n_routed_experts", "num_experts", "num_local_experts"),
            "top_k": get("num_experts_per_tok"),
            "d_ff": get("moe_intermediate_size"),
            "shared_experts": get("n_shared_experts") or 0,
            # transformers builds layer i dense iff i < first_k_dense_replace, which may exceed the layer count
            "dense_layers": min(get("first_k_dense_replace") or 0, get.require("num_hidden_layers")),
            "router": router,
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def _plain(activation: str) -> str:
    if activation not in _PLAIN:
        raise UnsupportedConfigError(f"activation {activation!r} is not supported")
    return _PLAIN[activation]


_CONVERTERS: dict[str, Callable[[_Getter], dict[str, Any]]] = {
    "llama": _from_llama,
    "mistral": _from_mistral,
    "qwen2": _from_qwen2,
    "qwen3": _from_qwen3,
    "gpt2": _from_gpt2,
    "bloom": _from_bloom,
    "falcon": _from_falcon,
    "gpt_neox": _from_gpt_neox,
    "glm": _from_glm,
    "glm4": lambda get: _from_glm(get, sandwich=True),
    "mixtral": _from_mixtral,
    "qwen2_moe": lambda get: _from_qwen_moe(get, shared=True),
    "qwen3_moe": lambda get: _from_qwen_moe(get, shared=False),
    "deepseek_v2": lambda get: _from_deepseek(get, version=2),
    "deepseek_v3": lambda get: _from_deepseek(get, version=3),
}


# ============================================================================================ weights
@dataclass(frozen=True)
class Source:
    """Where one archspec tensor comes from: an HF tensor name, optionally a part of a fused tensor."""

    name: str
    split: Callable[[torch.Tensor], torch.Tensor] | None = None
    transpose: bool = False  # GPT-2 Conv1D stores [in, out]
    stack: tuple[str, ...] = ()  # per-expert tensors stacked into one [experts, ...] tensor (`name` is the first)
    alternative: Source | None = None  # another layout of the same tensor (5.x fused experts vs hub per-expert)


@dataclass
class KeyMap:
    """A family's names: archspec module path -> HF module path, per model and per layer (`{i}`)."""

    top: dict[str, str]
    layer_prefix: str
    layer: dict[str, str]
    fused: dict[str, tuple[str, str]] = field(default_factory=dict)  # archspec module -> (hf module, part)
    conv1d: frozenset[str] = frozenset()
    aliases: dict[str, str] = field(default_factory=dict)  # alternative HF names found in real checkpoints


_LLAMA_LAYER = {
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}
_LLAMA_TOP = {"embed": "model.embed_tokens", "final_norm": "model.norm", "lm_head": "lm_head"}
_FALCON_BLOOM_LAYER = {
    "attn.o": "self_attention.dense",
    "mlp.up": "mlp.dense_h_to_4h",
    "mlp.down": "mlp.dense_4h_to_h",
}
_QKV = {"attn.q": ("query_key_value", "q"), "attn.k": ("query_key_value", "k"), "attn.v": ("query_key_value", "v")}


_MLA_LAYER = {
    "attn.q": "self_attn.q_proj",
    "attn.q_down": "self_attn.q_a_proj",
    "attn.q_latent_norm": "self_attn.q_a_layernorm",
    "attn.q_up": "self_attn.q_b_proj",
    "attn.kv_down": "self_attn.kv_a_proj_with_mqa",
    "attn.kv_latent_norm": "self_attn.kv_a_layernorm",
    "attn.kv_up": "self_attn.kv_b_proj",
}
_SHARED = {"mlp.shared.gate": "gate_proj", "mlp.shared.up": "up_proj", "mlp.shared.down": "down_proj"}
_MOE_LAYER: dict[str, dict[str, str]] = {
    "mixtral": {"mlp.router": "block_sparse_moe.gate"},
    "qwen2_moe": {"mlp.router": "mlp.gate", "mlp.shared_gate": "mlp.shared_expert_gate"}
    | {k: f"mlp.shared_expert.{v}" for k, v in _SHARED.items()},
    "qwen3_moe": {"mlp.router": "mlp.gate"},
    "deepseek_v2": {"mlp.router": "mlp.gate"} | {k: f"mlp.shared_experts.{v}" for k, v in _SHARED.items()},
    "deepseek_v3": {"mlp.router": "mlp.gate"} | {k: f"mlp.shared_experts.{v}" for k, v in _SHARED.items()},
}
_MOE_FAMILIES = tuple(_MOE_LAYER)
# Per-expert hub names (experts.{e}.<name>.weight) of gate, up and down; Mixtral's are w1, w3, w2.
_EXPERT_NAMES = {"mixtral": ("block_sparse_moe.experts", {"gate": "w1", "up": "w3", "down": "w2"})}
_DEFAULT_EXPERT_NAMES = ("mlp.experts", {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"})


def _expert_source(model_type: str, spec: Spec, prefix: str, part: str) -> Source:
    """Stacked per-expert tensors (hub layout), or transformers 5.x's fused gate_up_proj / down_proj."""
    assert spec.moe is not None
    module, names = _EXPERT_NAMES.get(model_type, _DEFAULT_EXPERT_NAMES)
    stacked = tuple(f"{prefix}{module}.{e}.{names[part]}.weight" for e in range(spec.moe.experts))
    if part == "down":
        fused = Source(f"{prefix}mlp.experts.down_proj")
    else:
        fused = Source(
            f"{prefix}mlp.experts.gate_up_proj", split=lambda t: t.chunk(2, dim=1)[0 if part == "gate" else 1]
        )
    return Source(stacked[0], stack=stacked, alternative=fused)


def key_map(model_type: str, spec: Spec) -> KeyMap:
    """The names of one family's checkpoint, given the spec (Falcon's norms depend on its layout)."""
    if model_type == "t5":
        return _t5_key_map(spec)
    if model_type == "llava":
        return _llava("llava_key_map")(spec)
    if model_type in ("llama", "mistral", "qwen2", "qwen3"):
        return KeyMap(_LLAMA_TOP, "model.layers.{i}.", _LLAMA_LAYER)
    if model_type in _MOE_FAMILIES:
        layer = dict(_LLAMA_LAYER)
        if model_type.startswith("deepseek"):
            layer |= _MLA_LAYER
        layer |= _MOE_LAYER[model_type]
        return KeyMap(_LLAMA_TOP, "model.layers.{i}.", layer, aliases={"block_sparse_moe.": "mlp."})
    if model_type in ("glm", "glm4"):
        layer = {k: v for k, v in _LLAMA_LAYER.items() if k not in ("mlp.gate", "mlp.up")}
        layer |= {"attn_out_norm": "post_self_attn_layernorm", "mlp_out_norm": "post_mlp_layernorm"}
        fused = {"mlp.gate": ("mlp.gate_up_proj", "gate"), "mlp.up": ("mlp.gate_up_proj", "up")}
        return KeyMap(_LLAMA_TOP, "model.layers.{i}.", layer, fused)
    if model_type == "gpt2":
        return KeyMap(
            {
                "embed": "transformer.wte",
                "pos_embed": "transformer.wpe",
                "final_norm": "transformer.ln_f",
                "lm_head": "lm_head",
            },
            "transformer.h.{i}.",
            {
                "attn_norm": "ln_1",
                "mlp_norm": "ln_2",
                "attn.o": "attn.c_proj",
                "mlp.up": "mlp.c_fc",
                "mlp.down": "mlp.c_proj",
            },
            {"attn.q": ("attn.c_attn", "q"), "attn.k": ("attn.c_attn", "k"), "attn.v": ("attn.c_attn", "v")},
            conv1d=frozenset({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
        )
    if model_type == "bloom":
        layer = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", **_FALCON_BLOOM_LAYER}
        top = {
            "embed": "transformer.word_embeddings",
            "embed_norm": "transformer.word_embeddings_layernorm",
            "final_norm": "transformer.ln_f",
            "lm_head": "lm_head",
        }
        return KeyMap(top, "transformer.h.{i}.", layer, {k: ("self_attention." + m, p) for k, (m, p) in _QKV.items()})
    if model_type == "falcon":
        if spec.block.kind == "parallel" and spec.block.parallel_norms == 2:
            norms = {"attn_norm": "ln_attn", "mlp_norm": "ln_mlp"}
        elif spec.block.kind == "parallel":
            norms = {"attn_norm": "input_layernorm"}
        else:
            norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
        top = {"embed": "transformer.word_embeddings", "final_norm": "transformer.ln_f", "lm_head": "lm_head"}
        fused = {k: ("self_attention." + m, p) for k, (m, p) in _QKV.items()}
        return KeyMap(top, "transformer.h.{i}.", {**norms, **_FALCON_BLOOM_LAYER}, fused)
    if model_type == "gpt_neox":
        top = {"embed": "gpt_neox.embed_in", "final_norm": "gpt_neox.final_layer_norm", "lm_head": "lm_head"}
        layer = {
            "attn_norm": "input_layernorm",
            "mlp_norm": "post_attention_layernorm",
            "attn.o": "attention.dense",
            "mlp.up": "mlp.dense_h_to_4h",
            "mlp.down": "mlp.dense_4h_to_h",
        }
        fused = {k: ("attention." + m, p) for k, (m, p) in _QKV.items()}
        return KeyMap(top, "gpt_neox.layers.{i}.", layer, fused, aliases={"lm_head.weight": "embed_out.weight"})
    raise UnsupportedConfigError(f"model_type {model_type!r} has no weight map")


def fused_part(model_type: str, spec: Spec, part: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to cut one part (q, k, v, gate, up) out of a fused tensor (weight [out, in] or bias [out])."""
    if part in ("gate", "up"):  # GLM gate_up_proj: rows [0:I] gate, [I:2I] up
        return lambda t: t.chunk(2, dim=0)[0 if part == "gate" else 1]
    index = "qkv".index(part)
    if model_type == "gpt2":  # Conv1D weight [in, 3H] or bias [3H]: [q | k | v] along the last dim
        return lambda t: t.chunk(3, dim=-1)[index]
    heads, kv_heads, head_dim = spec.attention.heads, spec.kv_heads, spec.head_dim
    group = heads // kv_heads

    def grouped(t: torch.Tensor) -> torch.Tensor:
        """Rows as [kv_heads, group + 2, head_dim]: each group's query heads, then its key, then its value.

        One layout serves them all: BLOOM / NeoX / multi-head Falcon ([heads, 3, head_dim], group = 1), Falcon-7B
        multi-query ([q_0 .. q_{h-1}, k, v], kv_heads = 1) and Falcon-40B's new architecture.
        """
        rows = t.reshape(kv_heads, group + 2, head_dim, *t.shape[1:])
        picked = rows[:, :group] if part == "q" else rows[:, group + index - 1]
        return picked.reshape(-1, *t.shape[1:])

    return grouped


def archspec_sources(model_type: str, spec: Spec, archspec_keys: list[str]) -> dict[str, Source]:
    """For each archspec state-dict key, the HF tensor it comes from."""
    names = key_map(model_type, spec)
    sources: dict[str, Source] = {}
    for key in archspec_keys:
        module, _, param = key.rpartition(".")
        layer_match = re.fullmatch(r"layers\.(\d+)\.(.+)", module)
        if layer_match:
            prefix, inner = names.layer_prefix.format(i=layer_match.group(1)), layer_match.group(2)
            table = names.layer
        else:
            prefix, inner, table = "", module, names.top
        if layer_match and inner == "mlp.experts":
            sources[key] = _expert_source(model_type, spec, prefix, param)
        elif inner == "mlp.router" and param == "correction_bias":
            sources[key] = Source(f"{prefix}{table[inner]}.e_score_correction_bias")
        elif inner in table:
            hf_module = table[inner]
            sources[key] = Source(
                f"{prefix}{hf_module}.{param}", transpose=hf_module in names.conv1d and param == "weight"
            )
        elif inner in names.fused:
            hf_module, part = names.fused[inner]
            split = fused_part(model_type, spec, part)
            transpose = hf_module in names.conv1d and param == "weight"
            sources[key] = Source(f"{prefix}{hf_module}.{param}", split, transpose)
    return sources


@dataclass
class _Planned:
    """One archspec tensor's checkpoint source, resolved to checkpoint names."""

    key: str
    source: Source
    names: list[str]

    def shape(self, reader: CheckpointReader) -> tuple[int, ...]:
        """The shape this source yields, computed on the meta device from the header shapes alone."""
        shapes = [reader.shape(name) for name in self.names]
        if self.source.stack:
            tensor = torch.empty((len(shapes), *shapes[0]), device="meta")
        else:
            tensor = torch.empty(shapes[0], device="meta")
        return tuple(self._transform(tensor).shape)

    def load(self, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        if self.source.stack:
            return self._transform(torch.stack([read(name) for name in self.names]))
        return self._transform(read(self.names[0]))

    def _transform(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.source.split is not None:
            tensor = self.source.split(tensor)
        return tensor.t() if self.source.transpose else tensor


def load_hf_weights(model: nn.Module, directory: str | Path, model_type: str | None = None) -> nn.Module:
    """Load a Hugging Face checkpoint into a model built by `archspec.build`.

    Strict: every model tensor must be found with the right shape and every checkpoint tensor used, else
    `WeightLoadError` names them all. Shapes are checked from the safetensors headers *before* anything is read or
    written, so a checkpoint that does not fit leaves the model untouched. Data is then streamed shard by shard
    (peak memory: the model plus about one shard), with a progress bar for multi-shard checkpoints. Works on a
    meta-device model too (tensors are then assigned, not copied).
    """
    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise WeightLoadError("this model has no .spec: build it with archspec.build(spec)")
    model_type = model_type or read_hf_config(directory).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise WeightLoadError(f"{directory}: model_type {model_type!r} is not supported")
    reader = CheckpointReader(directory)
    names = key_map(model_type, spec)  # type: ignore[arg-type]
    expected = model.state_dict()
    tied = spec.embeddings.tied
    wanted = [k for k in expected if not (tied and k == "lm_head.weight")]
    sources = archspec_sources(model_type, spec, wanted)  # type: ignore[arg-type]
    available = reader.names()

    plan: list[_Planned] = []
    used: set[str] = set()
    missing, mismatched = [], []
    for key in wanted:
        source = sources.get(key)
        found = _find(source, available, names.aliases)
        if source is None or found is None:
            missing.append(f"{key} (from {source.name if source else '?'})")
            continue
        planned = _Planned(key, *found)
        used.update(planned.names)
        shape = planned.shape(reader)
        if shape != tuple(expected[key].shape):
            mismatched.append(
                f"{key}: checkpoint {planned.names[0]} gives {shape}, model has {tuple(expected[key].shape)}"
            )
            continue
        plan.append(planned)
    if tied:
        head = _resolve(names.top["lm_head"] + ".weight", available, names.aliases)
        if head is not None:
            embed_name = sources["embed.weight"].name
            if embed_name in available and not torch.equal(reader.get(head), reader.get(embed_name)):
                mismatched.append(
                    f"lm_head.weight: the spec ties embeddings but the checkpoint's {head} differs from {embed_name}"
                )
            used.add(head)
    unexpected = sorted(available - used - {n for n in available if _ignorable(n)})
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    if mismatched:
        problems.append("wrong shape: " + "; ".join(mismatched))
    if problems:
        raise WeightLoadError(f"{directory}: checkpoint does not fit the spec '{spec.name}': " + " | ".join(problems))

    on_meta = any(t.is_meta for t in expected.values())
    _stream(model, plan, reader, expected, assign=on_meta)
    if on_meta:
        from archspec.compiler import materialize_buffers

        materialize_buffers(model, device="cpu")
    if tied:
        model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    return model


def _stream(
    model: nn.Module, plan: list[_Planned], reader: CheckpointReader, expected: dict[str, torch.Tensor], assign: bool
) -> None:
    """Copy (or assign) every planned tensor, one checkpoint file at a time; only that file's tensors are held."""
    from rich.progress import Progress

    by_file = sorted(plan, key=lambda p: str(reader.files[p.names[0]]))
    files = sorted({str(reader.files[p.names[0]]) for p in plan})
    held: dict[str, torch.Tensor] = {}
    current = None
    with Progress(transient=True, disable=len(files) < 2) as progress:
        task = progress.add_task(f"loading {len(files)} shards", total=len(by_file))
        for planned in by_file:
            file = str(reader.files[planned.names[0]])
            if file != current:
                held.clear()  # a fused tensor is reused by q, k and v: keep only the current file's
                current = file

            def read(name: str) -> torch.Tensor:
                if name not in held:
                    held[name] = reader.get(name)
                return held[name]

            target = expected[planned.key]
            _put(model, planned.key, planned.load(read).to(target.dtype).contiguous(), assign)
            progress.advance(task)


def _put(model: nn.Module, key: str, tensor: torch.Tensor, assign: bool) -> None:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, attr)
    if not assign:
        with torch.no_grad():
            old.copy_(tensor)
    elif isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor


def _find(source: Source | None, available: set[str], aliases: dict[str, str]) -> tuple[Source, list[str]] | None:
    """The first layout of `source` whose tensors are all in the checkpoint, with their checkpoint names."""
    while source is not None:
        wanted = source.stack or (source.name,)
        resolved = [_resolve(name, available, aliases) for name in wanted]
        if all(resolved):
            return source, resolved  # type: ignore[return-value]
        source = source.alternative
    return None


def _resolve(name: str, available: set[str], aliases: dict[str, str]) -> str | None:
    """The checkpoint's name for `name`: itself, a known alias, or without the base-model prefix (old hub files)."""
    for candidate in _candidates(name, aliases):
        if candidate in available:
            return candidate
    return None


def _candidates(name: str, aliases: dict[str, str]) -> Iterator[str]:
    yield name
    if name in aliases:
        yield aliases[name]
    for old, new in aliases.items():
        if old.endswith(".") and old in name:
            yield name.replace(old, new)
    for prefix in ("transformer.", "model.", "gpt_neox."):
        if name.startswith(prefix):
            yield name[len(prefix) :]


def _ignorable(name: str) -> bool:
    """Buffers some checkpoints carry that hold no learned weights (rotary tables, GPT-2's causal masks)."""
    if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):  # T5's copies of shared.weight
        return True
    return name.endswith(("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias"))


# ============================================================================================ T5
_DEFAULTS["t5"] = dict(
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=None,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="relu",
    n_positions=512,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def _from_t5(get: _Getter) -> dict[str, Any]:
    """T5 v1.0 (ReLU, tied head scaled by d_model^-0.5) and v1.1 / Flan-T5 (gated-gelu = gelu_new, untied head).

    The head: transformers 5.x scales the decoder output iff `tie_word_embeddings` was not passed as False, and
    writes the result as `scale_decoder_outputs` (while `tie_word_embeddings` itself is always true in 5.x
    configs); 4.x configs only have `tie_word_embeddings`. A scaled head is T5 v1.0's tied head; an unscaled one
    is v1.1's separate `lm_head`.
    """
    proj = str(get("feed_forward_proj"))
    gated, act = proj.startswith("gated-"), proj.split("-")[-1]
    if gated:
        activation = "geglu-tanh" if act == "gelu" else _GATED.get(act)  # "gated-gelu" is gelu_new in T5
    else:
        activation = _PLAIN.get(act)
    if activation is None:
        raise UnsupportedConfigError(f"feed_forward_proj {proj!r} is not supported")
    scale = get.config.get("scale_decoder_outputs", get.config.get("tie_word_embeddings", True) is not False)
    layers = get("num_layers")
    start = get("decoder_start_token_id")
    return {
        "structure": "encoder-decoder",
        "vocab_size": get.require("vocab_size"),
        "d_model": get.require("d_model"),
        "n_layers": layers,
        "n_decoder_layers": get("num_decoder_layers") or layers,
        "context_length": get("n_positions"),
        "attention": {"heads": get("num_heads"), "head_dim": get("d_kv"), "bias": False, "scale": 1.0},
        "position": {
            "kind": "relative-bias",
            "buckets": get("relative_attention_num_buckets"),
            "max_distance": get("relative_attention_max_distance"),
        },
        "norm": {"kind": "rmsnorm", "eps": get("layer_norm_epsilon")},
        "block": "pre-norm",
        "mlp": {"activation": activation, "d_ff": get("d_ff"), "bias": False},
        "embeddings": {"tied": bool(scale), "scale_head": bool(scale)},
        "tokens": {"decoder_start": start if start is not None else get("pad_token_id")},
    }


_CONVERTERS["t5"] = _from_t5


def _t5_key_map(spec: Spec) -> KeyMap:
    """T5 names (hf_parity_map section 7). The relative-bias table sits in block 0's self-attention of each stack;
    a 5.x model built from a config keeps `lm_head` tied to `shared` even for v1.1, so an untied head falls back
    to `shared.weight` when the checkpoint has no `lm_head.weight`."""
    gated = spec.mlp.activation in ("swiglu", "geglu", "geglu-tanh", "reglu")
    ff = (
        {"mlp.gate": "DenseReluDense.wi_0", "mlp.up": "DenseReluDense.wi_1"}
        if gated
        else {"mlp.up": "DenseReluDense.wi"}
    )
    ff["mlp.down"] = "DenseReluDense.wo"
    top = {"embed": "shared", "lm_head": "lm_head"}
    for side, n_layers in (("encoder", spec.n_layers), ("decoder", spec.n_decoder_layers or spec.n_layers)):
        top[f"{side}.position_bias.table"] = f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias"
        top[f"{side}.final_norm"] = f"{side}.final_layer_norm"
        ff_index = 1 if side == "encoder" else 2
        for i in range(n_layers):
            ours, theirs = f"{side}.layers.{i}.", f"{side}.block.{i}.layer."
            top[ours + "attn_norm"] = theirs + "0.layer_norm"
            top[ours + "mlp_norm"] = f"{theirs}{ff_index}.layer_norm"
            for p in "qkvo":
                top[f"{ours}attn.{p}"] = f"{theirs}0.SelfAttention.{p}"
            for name, hf in ff.items():
                top[ours + name] = f"{theirs}{ff_index}.{hf}"
            if side == "decoder":
                top[ours + "cross_norm"] = theirs + "1.layer_norm"
                for p in "qkvo":
                    top[f"{ours}cross_attn.{p}"] = f"{theirs}1.EncDecAttention.{p}"
    return KeyMap(top, "", {}, aliases={"lm_head.weight": "shared.weight"})


# ============================================================================================ LLaVA
def _llava(name: str) -> Any:
    """A function of archspec.interop.hf_llava (LLaVA's config and names), imported on first use: it imports this module."""
    from archspec.interop import hf_llava

    return getattr(hf_llava, name)


_DEFAULTS["llava"] = {}  # hf_llava reads LlavaConfig's defaults itself
_CONVERTERS["llava"] = lambda get: _llava("llava_spec_data")(get)
