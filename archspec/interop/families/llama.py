"""Llama, Mistral, Qwen2 and Qwen3: pre-norm RMSNorm decoders with a gated MLP, RoPE and Llama's checkpoint names.

Matched against transformers 5.25.0 `models/{llama,mistral,qwen2,qwen3}/configuration_*.py` and `modeling_*.py`.
The four differ only in which projections carry a bias, Qwen3's qk-norm and their windows: Mistral one
`sliding_window` on every layer, the Qwen families theirs per layer (`common.sliding_layers`).
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError, UnsupportedConfigError
from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    llama_key_map,
    llama_like,
    llama_like_config,
    needs,
    sliding_layers,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import Spec

# Class defaults of the transformers 5.25 config classes, for keys a config.json may leave out
# (tests/parity/test_hf_config_defaults.py imports every class's defaults written out and left out, and compares).
DEFAULTS: dict[str, dict[str, Any]] = {
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
}


# ============================================================================================ config -> spec
def _from_llama(get: Getter) -> dict[str, Any]:
    params = get.config.get("rope_parameters") or get.config.get("rope_scaling") or {}
    if float(params.get("partial_rotary_factor", get.config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedConfigError("llama with partial_rotary_factor != 1 (transformers applies it inconsistently)")
    flag = bool(get("attention_bias"))
    return llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})


def _from_mistral(get: Getter) -> dict[str, Any]:
    data = llama_like(get, bias={"q": False, "k": False, "v": False, "o": False})
    if get("sliding_window") is not None:
        data["attention"]["window"] = get("sliding_window")
    return data


def _from_qwen2(get: Getter) -> dict[str, Any]:
    data = llama_like(get, bias={"q": True, "k": True, "v": True, "o": False})
    sliding_layers(get, data, lambda layer: layer >= get("max_window_layers"))
    return data


def _from_qwen3(get: Getter) -> dict[str, Any]:
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag}, qk_norm=True)
    sliding_layers(get, data, lambda layer: layer >= get("max_window_layers"))
    return data


_READERS = {"llama": _from_llama, "mistral": _from_mistral, "qwen2": _from_qwen2, "qwen3": _from_qwen3}


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    return _READERS[model_type](get)


# ============================================================================================ spec -> config
def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    config = llama_like_config(spec)
    attn = spec.attention
    if model_type == "llama":
        # LlamaConfig refuses hidden_size % num_attention_heads != 0 even with an explicit head_dim
        needs(spec.d_model % attn.heads == 0, "d_model")
        config |= {"attention_bias": attn.bias.q, "mlp_bias": spec.mlp.bias}
    elif model_type == "mistral":
        config["sliding_window"] = attn.window
    else:
        if model_type == "qwen3":
            config["attention_bias"] = attn.bias.q
        windows = [spec.window_for_layer(i) for i in range(spec.n_layers)]
        sliding = [i for i, w in enumerate(windows) if w is not None]
        config["use_sliding_window"] = bool(sliding)
        config["sliding_window"] = attn.window
        config["max_window_layers"] = sliding[0] if sliding else spec.n_layers
        config["layer_types"] = ["sliding_attention" if w is not None else "full_attention" for w in windows]
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(LLAMA_LAYER)


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/llama.py`, `qwen.py`) writes Llama and Mistral as architecture "llama", with
# the rows of q_proj / k_proj (weights and biases) permuted per head from HF's rotate-half RoPE layout to llama.cpp's
# interleaved one; Qwen2 / Qwen3 keep HF's rows (llama.cpp runs them with NeoX-style RoPE).
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if get("attention.key_length") is None and get("rope.dimension_count") is not None:
        config["head_dim"] = get("rope.dimension_count")  # older files: only the rotated width, all of a head here
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    window = get("attention.sliding_window")
    if model_type == "llama" and get("expert_count"):  # Mixtral, as "llama" with experts (families/mixtral.py)
        config |= {
            "model_type": "mixtral",
            "num_local_experts": get("expert_count"),
            "num_experts_per_tok": get("expert_used_count"),
            "sliding_window": window,
        }
    elif model_type == "llama" and window is not None:  # Mistral, as "llama" with a window
        config |= {"model_type": "mistral", "sliding_window": window}
    return config


def gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if model_type in ("qwen2", "qwen3") and config.get("use_sliding_window"):
        raise ExportError(f"{model_type} with sliding-window layers: llama.cpp's {model_type} reads no window key")
    if model_type not in ("llama", "mistral", "mixtral"):
        return {}
    data = {"rope.dimension_count": config["head_dim"]}
    if model_type == "mixtral":
        data["expert_count"] = config["num_local_experts"]
    if model_type in ("mistral", "mixtral") and config.get("sliding_window") is not None:
        data["attention.sliding_window"] = config["sliding_window"]
    return data


def _permuted_heads(name: str, config: dict[str, Any]) -> int | None:
    """The head count the converter permutes this tensor's rows by (None: not permuted)."""
    if config["model_type"] not in ("llama", "mistral", "mixtral"):
        return None
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return config["num_attention_heads"]
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return config.get("num_key_value_heads") or config["num_attention_heads"]
    return None


def to_llama_cpp_rows(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    """Each head's rows [first halves, second halves] -> interleaved pairs (the converter's `permute`)."""
    heads = _permuted_heads(name, config)
    if heads is None:
        return tensor
    return (
        tensor.reshape(heads, 2, tensor.shape[0] // heads // 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)
    )


def from_llama_cpp_rows(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    """The inverse of `to_llama_cpp_rows`: interleaved pairs back to each head's two halves."""
    heads = _permuted_heads(name, config)
    if heads is None:
        return tensor
    return (
        tensor.reshape(heads, tensor.shape[0] // heads // 2, 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)
    )


GGUF = GgufMapping(
    archs={"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"},
    export_arch={"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"},
    config=_gguf_config,
    metadata=gguf_metadata,
    from_gguf=from_llama_cpp_rows,
    to_gguf=to_llama_cpp_rows,
)

FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    architectures={
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
    },
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
