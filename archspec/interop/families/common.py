"""What several families share: the config getter, RoPE / token / llama-like readers and writers, activation names.

Both directions sit side by side so that a reader and its writer are checked against each other by eye (export
checks them by reading every config it writes back). RoPE fields: 5.x's `rope_parameters` and 4.x's
`rope_theta` / `rope_scaling` / `rotary_pct`, as transformers 5.25.0 `modeling_rope_utils.py` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archspec.interop.errors import NoCounterpart, UnsupportedConfigError
from archspec.interop.keys import KeyMap
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    DynamicScaling,
    LinearScaling,
    Llama3Scaling,
    LongRopeScaling,
    MoESpec,
    RopeSpec,
    Spec,
    YarnScaling,
)

# transformers activation name -> archspec's, for gated MLPs and plain ones ...
GATED_FROM_HF = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_pytorch_tanh": "geglu-tanh",
    "gelu_new": "geglu-tanh",
    "relu": "reglu",
}
PLAIN_FROM_HF = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu-tanh",
    "gelu_pytorch_tanh": "gelu-tanh",
    "gelu_fast": "gelu-tanh",
    "relu": "relu",
}
# ... and the names export writes for archspec's
GATED_TO_HF = {"swiglu": "silu", "geglu": "gelu", "geglu-tanh": "gelu_pytorch_tanh", "reglu": "relu"}
PLAIN_TO_HF = {"gelu-tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}

# The checkpoint names of Llama's modeling file, which most decoder families copy
LLAMA_TOP = {"embed": "model.embed_tokens", "final_norm": "model.norm", "lm_head": "lm_head"}
LLAMA_LAYER = {
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
# ... and those of BLOOM's, which Falcon's copies
BLOOM_FALCON_LAYER = {
    "attn.o": "self_attention.dense",
    "mlp.up": "mlp.dense_h_to_4h",
    "mlp.down": "mlp.dense_4h_to_h",
}


def llama_key_map(layer: dict[str, str], **options: Any) -> KeyMap:
    """A key map of Llama's top-level names and layer prefix, with `layer`'s names in each layer."""
    return KeyMap(LLAMA_TOP, "model.layers.{i}.", layer, base_prefix="model.", **options)


def fused_qkv(module: str) -> dict[str, tuple[str, str]]:
    """q, k and v as parts of one `{module}.query_key_value` (BLOOM, Falcon, GPT-NeoX)."""
    return {f"attn.{part}": (f"{module}.query_key_value", part) for part in "qkv"}


def shared_expert_layer(module: str) -> dict[str, str]:
    """The shared expert's gate / up / down under `module` (Qwen2-MoE's shared_expert, DeepSeek's shared_experts)."""
    return {f"mlp.shared.{part}": f"{module}.{part}_proj" for part in ("gate", "up", "down")}


# ============================================================================================ config -> spec
@dataclass
class Getter:
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


def token_ids(bos: Any, eos: Any, pad: Any) -> dict[str, Any]:
    """The `tokens` section: each id an int, a list of ints (several eos ids) or None."""

    def one(value: Any) -> Any:
        return value if value is None or isinstance(value, int) else list(value)

    return {"bos": one(bos), "eos": one(eos), "pad": one(pad)}


def read_tokens(get: Getter) -> dict[str, Any]:
    return token_ids(get("bos_token_id"), get("eos_token_id"), get("pad_token_id"))


def plain_activation(activation: str) -> str:
    """archspec's name of a plain (ungated) MLP activation."""
    if activation not in PLAIN_FROM_HF:
        raise UnsupportedConfigError(f"activation {activation!r} is not supported")
    return PLAIN_FROM_HF[activation]


def read_rope(get: Getter, fraction: float | None = None, pairing: str = "half") -> dict[str, Any]:
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
    elif rope_type in ("longrope", "su"):  # "su": 4.x's name of LongRoPE
        position["scaling"] = read_longrope(params, max_positions, original)
    else:
        raise UnsupportedConfigError(
            f"rope_type {rope_type!r} is not supported (default, linear, dynamic, llama3, yarn, longrope)"
        )
    return position


def read_longrope(params: dict[str, Any], max_positions: int, original: int) -> dict[str, Any]:
    """LongRoPE's scaling section, as `_compute_longrope_parameters` reads it: an explicit `factor` only sets the
    default attention factor (archspec derives it from context_length / original_context), so it is kept as that
    attention factor."""
    for key in ("short_factor", "long_factor"):
        if not isinstance(params.get(key), list):
            raise UnsupportedConfigError(f"rope_type 'longrope' needs a list {key!r} in rope_parameters")
    scaling: dict[str, Any] = {
        "kind": "longrope",
        "short_factor": [float(f) for f in params["short_factor"]],
        "long_factor": [float(f) for f in params["long_factor"]],
        "original_context": int(original),
    }
    attention_factor, factor = params.get("attention_factor"), params.get("factor")
    if attention_factor is None and factor is not None and float(factor) != max_positions / original:
        factor = float(factor)
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    if attention_factor is not None:
        scaling["attention_factor"] = float(attention_factor)
    return scaling


def llama_like(get: Getter, *, bias: dict[str, bool], qk_norm: bool = False) -> dict[str, Any]:
    """The spec data of Llama's config keys, which the Mistral, Qwen, GLM and MoE families share."""
    heads = get.require("num_attention_heads")
    hidden = get.require("hidden_size")
    activation = get("hidden_act")
    if activation not in GATED_FROM_HF:
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
        "position": read_rope(get, fraction=1.0),
        "norm": {"kind": "rmsnorm", "eps": get("rms_norm_eps")},
        "block": "pre-norm",
        "mlp": {
            "activation": GATED_FROM_HF[activation],
            "d_ff": get.require("intermediate_size"),
            "bias": bool(get("mlp_bias", False)),
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def sliding_layers(get: Getter, data: dict[str, Any], default_layers: Callable[[int], bool]) -> None:
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


def expert_count(get: Getter, *names: str) -> Any:
    """The routed-expert count under whichever of its names this config uses."""
    for name in names:
        if get.config.get(name) is not None:
            return get.config[name]
    return get(names[0])


# ============================================================================================ spec -> config
def needs(condition: bool, field: str) -> None:
    """Early exit for a family that obviously cannot express the spec (the round trip would catch it too)."""
    if not condition:
        raise NoCounterpart(field)


def hf_name(table: dict[str, str], value: str, field: str) -> str:
    """`table[value]`, or `NoCounterpart(field)` when the family has no name for it."""
    if value not in table:
        raise NoCounterpart(field)
    return table[value]


def rope_parameters(spec: Spec, with_fraction: bool = False) -> dict[str, Any]:
    """5.x `rope_parameters` of a RoPE spec (`partial_rotary_factor` only for the families that read it there)."""
    position = spec.position
    assert isinstance(position, RopeSpec)
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": position.theta}
    if with_fraction:
        params["partial_rotary_factor"] = position.fraction
    scaling = position.scaling
    if isinstance(scaling, LinearScaling | DynamicScaling):
        params |= {"rope_type": scaling.kind, "factor": scaling.factor}
    elif isinstance(scaling, Llama3Scaling):
        params |= {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_context,
        }
    elif isinstance(scaling, YarnScaling):
        params |= {
            "rope_type": "yarn",
            "factor": scaling.factor,
            "original_max_position_embeddings": scaling.original_context,
            "beta_fast": scaling.beta_fast,
            "beta_slow": scaling.beta_slow,
            "truncate": scaling.truncate,
        }
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(scaling, key) is not None:
                params[key] = getattr(scaling, key)
    elif isinstance(scaling, LongRopeScaling):
        params |= {
            "rope_type": "longrope",
            "short_factor": list(scaling.short_factor),
            "long_factor": list(scaling.long_factor),
            "original_max_position_embeddings": scaling.original_context,
        }
        if scaling.attention_factor is not None:
            params["attention_factor"] = scaling.attention_factor
    return params


def llama_like_config(spec: Spec, *, rope_fraction: bool = False) -> dict[str, Any]:
    """Llama's config keys of a spec (the inverse of `llama_like`); each family adds its own."""
    needs(spec.attention.kind == "mha", "attention.kind")
    needs(isinstance(spec.position, RopeSpec), "position.kind")
    needs(spec.mlp.activation in GATED_ACTIVATIONS, "mlp.activation")
    attn = spec.attention
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": GATED_TO_HF[spec.mlp.activation],
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "rope_parameters": rope_parameters(spec, with_fraction=rope_fraction),
    }


def moe_section(spec: Spec) -> MoESpec:
    """The `moe` section of a spec that Mixtral or Qwen-MoE (standard attention, routed experts) may express."""
    needs(spec.attention.kind == "mha", "attention.kind")
    moe = spec.moe
    needs(moe is not None, "moe")
    assert moe is not None
    return moe


# ============================================================================================ layers that differ
SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types entries


def compact_pattern(names: list[str]) -> dict[str, Any]:
    """The `layers` pattern of each layer's kind name: the repeating pattern plus exceptions that says it in the
    fewest entries (Gemma 3's 62 layers: 5 x sliding, full, repeated; a lone different last layer: an exception)."""
    best: tuple[tuple[int, int], list[str], dict[str, list[int]]] | None = None
    for period in range(1, len(names) + 1):
        pattern = names[:period]
        exceptions: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            if name != pattern[index % period]:
                exceptions.setdefault(name, []).append(index)
        listed = sum(map(len, exceptions.values()))
        cost = (period + listed, listed)  # on a tie, the pattern without exceptions
        if best is None or cost < best[0]:
            best = (cost, pattern, exceptions)
    assert best is not None
    data: dict[str, Any] = {"pattern": best[1]}
    if best[2]:
        data["exceptions"] = best[2]
    return data


def layers_section(kinds: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The spec's `layers` section: `kinds` (name -> window / position) and each layer's kind, compacted; only
    the kinds some layer uses."""
    used = {name: kind for name, kind in kinds.items() if name in names}
    return {"kinds": used, **compact_pattern(names)}


def read_layer_types(get: Getter, n_layers: int, default: Callable[[int], str]) -> list[str]:
    """transformers' `layer_types` ("sliding_attention" / "full_attention" per layer), or the family's rule."""
    layer_types = get.config.get("layer_types")
    if layer_types:
        if len(layer_types) != n_layers:
            raise UnsupportedConfigError(f"layer_types has {len(layer_types)} entries for {n_layers} layers")
        unknown = set(layer_types) - {SLIDING, FULL}
        if unknown:
            raise UnsupportedConfigError(f"layer_types {sorted(unknown)} are not supported ({SLIDING}, {FULL})")
        return list(layer_types)
    return [default(index) for index in range(n_layers)]


def layer_types_of(spec: Spec) -> list[str]:
    """Each layer's transformers layer type: sliding where the spec's layer has a window."""
    return [SLIDING if spec.window_for_layer(i) is not None else FULL for i in range(spec.n_layers)]


def single_window(spec: Spec) -> int | None:
    """The one window the sliding layers share (transformers has one `sliding_window`), None without one."""
    windows = {spec.window_for_layer(i) for i in range(spec.n_layers)} - {None}
    needs(len(windows) <= 1, "layers.kinds.window")
    return windows.pop() if windows else None


# ============================================================================================ GGUF
def qkv_grouped_to_blocks(tensor: Any, heads: int, kv_heads: int) -> Any:
    """A fused QKV's rows from HF's grouped layout ([kv_heads, group + 2, head_dim]: each group's queries, its key,
    its value; BLOOM, GPT-NeoX and Falcon) to llama.cpp's ([q heads | k heads | v heads]), as its converter does."""
    import torch

    group, rest = heads // kv_heads, tuple(tensor.shape[1:])
    rows = tensor.reshape(kv_heads, group + 2, -1, *rest)
    parts = (rows[:, :group], rows[:, group], rows[:, group + 1])
    return torch.cat([part.reshape(-1, *rest) for part in parts]).reshape(tensor.shape)


def qkv_blocks_to_grouped(tensor: Any, heads: int, kv_heads: int) -> Any:
    """The inverse of `qkv_grouped_to_blocks`."""
    import torch

    group, rest = heads // kv_heads, tuple(tensor.shape[1:])
    head_dim = tensor.shape[0] // (heads + 2 * kv_heads)
    q, k, v = tensor.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
    shaped = [q.reshape(kv_heads, group, head_dim, *rest)]
    shaped += [part.reshape(kv_heads, 1, head_dim, *rest) for part in (k, v)]
    return torch.cat(shaped, dim=1).reshape(tensor.shape)
