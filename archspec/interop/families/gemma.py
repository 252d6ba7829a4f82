"""Gemma, Gemma 2 and Gemma 3 (text): RMSNorm with a (1 + w) weight, embeddings scaled by sqrt(d_model), GeGLU.

Matched against transformers 5.25.0 `models/{gemma,gemma2,gemma3}/configuration_*.py` and `modeling_*.py`:

- all three: `GemmaRMSNorm` computes x / rms(x) * (1 + w) in float32 and casts after the multiply (norm.offset);
  the embedding is multiplied by `hidden_size ** 0.5` held as a float32 tensor cast to the weights' dtype
  (embeddings.scale: sqrt-d-model); tied head by default. Gemma's `hidden_act: gelu` is turned into the tanh
  approximation by its config class (a legacy value of the releases); Gemma 2 and 3 read `hidden_activation`.
- Gemma 2 and 3: norms before *and* after each sublayer (input_layernorm / post_attention_layernorm,
  pre_feedforward_layernorm / post_feedforward_layernorm): archspec's sandwich block, the same layout as GLM-4's;
  the softmax scale is `query_pre_attn_scalar ** -0.5`; `layer_types` alternate sliding and full attention
  (default: Gemma 2 every other layer, Gemma 3 five sliding then one full, `sliding_window_pattern`).
- Gemma 2: scores soft-capped by `attn_logit_softcapping` (eager attention only in transformers), the logits by
  `final_logit_softcapping`.
- Gemma 3: per-head q/k norms (the same (1 + w) RMSNorm), and RoPE per layer type: `rope_parameters` nested as
  {sliding_attention: ..., full_attention: ...} in 5.x, `rope_local_base_freq` / `rope_theta` / `rope_scaling`
  (the full layers') in 4.x. `attn_logit_softcapping` is stored but never applied, so it is not read.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError, UnsupportedConfigError
from archspec.interop.families.common import (
    FULL,
    GATED_FROM_HF,
    GATED_TO_HF,
    LLAMA_LAYER,
    SLIDING,
    Getter,
    hf_name,
    layer_types_of,
    layers_section,
    llama_key_map,
    needs,
    read_layer_types,
    read_rope,
    read_tokens,
    rope_parameters,
    single_window,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import NoPositionSpec, RopeSpec, Spec

_SHARED = dict(
    vocab_size=256000,
    head_dim=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    attention_bias=False,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)
DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": dict(
        _SHARED,
        hidden_act="gelu_pytorch_tanh",
        num_key_value_heads=16,
        max_position_embeddings=8192,
        rope_theta=10000.0,
    ),
    "gemma2": dict(
        _SHARED,
        hidden_activation="gelu_pytorch_tanh",
        num_key_value_heads=4,
        max_position_embeddings=8192,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        rope_theta=10000.0,
    ),
    "gemma3_text": dict(
        _SHARED,
        vocab_size=262208,
        hidden_activation="gelu_pytorch_tanh",
        num_key_value_heads=4,
        max_position_embeddings=131072,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=None,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
    ),
}
SANDWICH_LAYER = {
    **LLAMA_LAYER,
    "attn_out_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_out_norm": "post_feedforward_layernorm",
}


# ============================================================================================ config -> spec
def _activation(get: Getter, model_type: str) -> str:
    if model_type == "gemma":
        name = get("hidden_act")
        name = "gelu_pytorch_tanh" if name == "gelu" else name  # GemmaConfig's own correction
    else:
        name = get("hidden_activation")
    if name not in GATED_FROM_HF:
        raise UnsupportedConfigError(f"hidden activation {name!r} is not supported for a gated MLP")
    return GATED_FROM_HF[name]


def _rope_of(get: Getter, layer_type: str) -> dict[str, Any]:
    """Gemma 3's RoPE of one layer type: 5.x nested rope_parameters, or 4.x's keys."""
    params = get.config.get("rope_parameters") or {}
    if layer_type in params:
        own = dict(params[layer_type])
    elif layer_type == SLIDING:
        own = {"rope_type": "default", "rope_theta": get("rope_local_base_freq")}
    else:
        own = dict(get.config.get("rope_scaling") or {"rope_type": "default"})
        own.setdefault("rope_theta", get("rope_theta"))
    config = {k: v for k, v in get.config.items() if k not in ("rope_parameters", "rope_scaling", "rope_theta")}
    return read_rope(Getter(config | {"rope_parameters": own}, get.defaults), fraction=1.0)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    if get("use_bidirectional_attention"):
        raise UnsupportedConfigError("use_bidirectional_attention (Gemma's encoder use) is not supported")
    heads, hidden, n_layers = (get.require(k) for k in ("num_attention_heads", "hidden_size", "num_hidden_layers"))
    head_dim = get("head_dim") or hidden // heads
    flag = bool(get("attention_bias"))
    attention: dict[str, Any] = {
        "heads": heads,
        "kv_heads": get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "bias": {"q": flag, "k": flag, "v": flag, "o": flag},
    }
    data: dict[str, Any] = {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": n_layers,
        "context_length": get("max_position_embeddings"),
        "attention": attention,
        "position": read_rope(get, fraction=1.0),
        "norm": {"kind": "rmsnorm", "eps": get("rms_norm_eps"), "offset": True},
        "block": "pre-norm" if model_type == "gemma" else "sandwich",
        "mlp": {"activation": _activation(get, model_type), "d_ff": get.require("intermediate_size")},
        "embeddings": {"tied": bool(get("tie_word_embeddings")), "scale": "sqrt-d-model"},
        "tokens": read_tokens(get),
    }
    if model_type == "gemma":
        return data
    scalar = get("query_pre_attn_scalar")
    if scalar != head_dim:
        attention["scale"] = float(scalar) ** -0.5
    if get("final_logit_softcapping") is not None:
        data["embeddings"]["logit_softcap"] = float(get("final_logit_softcapping"))
    if model_type == "gemma2" and get("attn_logit_softcapping") is not None:
        attention["softcap"] = float(get("attn_logit_softcapping"))
    if model_type == "gemma3_text":
        attention["qk_norm"] = True
    period = 2 if model_type == "gemma2" else get.config.get("sliding_window_pattern", 6)
    types = read_layer_types(get, n_layers, lambda i: SLIDING if (i + 1) % period else FULL)
    window = get("sliding_window")
    ropes = {FULL: data["position"], SLIDING: data["position"]}
    if model_type == "gemma3_text":
        ropes = {layer_type: _rope_of(get, layer_type) for layer_type in (FULL, SLIDING)}
    if window is None:  # no window: every layer is full attention
        types = [FULL] * n_layers
    if len(set(types)) == 1:  # all alike: no layers section
        data["position"] = ropes[types[0]]
        if types[0] == SLIDING:
            attention["window"] = window
        return data
    data["position"] = ropes[FULL]
    sliding: dict[str, Any] = {"window": window}
    if ropes[SLIDING] != ropes[FULL]:
        sliding["position"] = ropes[SLIDING]
    data["layers"] = layers_section(
        {"sliding": sliding, "full": {}}, ["sliding" if t == SLIDING else "full" for t in types]
    )
    return data


# ============================================================================================ spec -> config
def _rope_of_layer(spec: Spec, layer: int) -> dict[str, Any]:
    position = spec.position_for_layer(layer)
    needs(isinstance(position, RopeSpec) and position.fraction == 1.0 and position.pairing == "half", "position")
    return rope_parameters(spec.model_copy(update={"position": position}))


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn, norm, embeddings = spec.attention, spec.norm, spec.embeddings
    needs(attn.kind == "mha", "attention.kind")
    needs(norm.kind == "rmsnorm" and norm.offset, "norm")
    needs(embeddings.scale == "sqrt-d-model", "embeddings.scale")
    needs(not any(isinstance(spec.position_for_layer(i), NoPositionSpec) for i in range(spec.n_layers)), "position")
    needs(spec.d_model % attn.heads == 0, "d_model")  # the Gemma config classes refuse it, head_dim or not
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.mlp.d_ff,
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": norm.eps,
        "attention_bias": attn.bias.q,
        "tie_word_embeddings": embeddings.tied,
    }
    activation = hf_name(GATED_TO_HF, spec.mlp.activation, "mlp.activation")
    if model_type == "gemma":
        return config | {"hidden_act": activation, "rope_parameters": _rope_of_layer(spec, 0)}
    scale = attn.scale if attn.scale is not None else spec.head_dim**-0.5
    scalar = scale**-2
    config |= {
        "hidden_activation": activation,
        "query_pre_attn_scalar": round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar,
        "final_logit_softcapping": embeddings.logit_softcap,
        "sliding_window": single_window(spec),
        "layer_types": layer_types_of(spec),
    }
    if model_type == "gemma2":
        config["attn_logit_softcapping"] = attn.softcap
        config["rope_parameters"] = _rope_of_layer(spec, 0)
        return config
    types = config["layer_types"]
    ropes = {t: _rope_of_layer(spec, types.index(t)) for t in (SLIDING, FULL) if t in types}
    config["rope_parameters"] = {
        SLIDING: ropes.get(SLIDING, ropes.get(FULL)),
        FULL: ropes.get(FULL, ropes.get(SLIDING)),
    }
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(LLAMA_LAYER if model_type == "gemma" else SANDWICH_LAYER)


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/gemma.py`) writes "gemma" and "gemma2" with every RMSNorm weight stored as
# 1 + w (HF keeps w and adds the 1 in the norm). Its gemma2 graph: GELU (tanh), softcaps from
# attn_logit_softcapping / final_logit_softcapping, a window on even layers (pattern 2, as HF's default layer_types),
# and scores scaled by 1/sqrt(head_dim), 1/sqrt(d_model / heads) for the 46-layer 27B.
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    config: dict[str, Any] = {"attention_bias": "blk.0.attn_q.bias" in tensors}
    if model_type == "gemma":
        return config | {"hidden_act": "gelu_pytorch_tanh"}
    if model_type == "gemma3_text":
        return config | _gemma3_config(get)
    return config | {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _llama_cpp_scalar(
            get("block_count"), get("embedding_length"), get("attention.head_count"), get("attention.key_length")
        ),
        "attn_logit_softcapping": get("attn_logit_softcapping"),
        "final_logit_softcapping": get("final_logit_softcapping"),
        "sliding_window": get("attention.sliding_window"),
    }


def _llama_cpp_scalar(layers: int, hidden: int, heads: int, head_dim: int | None, big: int = 46) -> int:
    """The query_pre_attn_scalar llama.cpp uses: head_dim, or d_model / heads for the 27B (`big` layers)."""
    return hidden // heads if layers == big else head_dim or hidden // heads


# gemma3: llama.cpp's window on five layers of six (HF's default layer_types), rope.freq_base for the full layers
# (with their linear scaling) and rope.freq_base_swa for the sliding ones, q/k norms stored as 1 + w too.
_GEMMA3_BIG = 62


def _gemma3_config(get: Any) -> dict[str, Any]:
    full = {"rope_type": "default", "rope_theta": float(get("rope.freq_base") or 1_000_000.0)}
    if get("rope.scaling.type") == "linear":
        full |= {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif get("rope.scaling.type") not in (None, "none"):
        raise UnsupportedConfigError(f"gemma3.rope.scaling.type = {get('rope.scaling.type')!r} is not mapped")
    local = {"rope_type": "default", "rope_theta": float(get("rope.freq_base_swa") or full["rope_theta"])}
    layers = get("block_count")
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _llama_cpp_scalar(
            layers, get("embedding_length"), get("attention.head_count"), get("attention.key_length"), _GEMMA3_BIG
        ),
        "final_logit_softcapping": get("final_logit_softcapping"),
        "attn_logit_softcapping": None,
        "sliding_window": get("attention.sliding_window") or None,
        "layer_types": [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(layers)],
        "rope_parameters": {FULL: full, SLIDING: local},
    }


def _gemma3_metadata(config: dict[str, Any]) -> dict[str, Any]:
    layers, hidden, heads = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
    if config["query_pre_attn_scalar"] != _llama_cpp_scalar(layers, hidden, heads, config["head_dim"], _GEMMA3_BIG):
        raise ExportError("gemma3 with a score scale other than llama.cpp's (1/sqrt(head_dim))")
    if config["sliding_window"] is None or config["layer_types"] != [
        FULL if (i + 1) % 6 == 0 else SLIDING for i in range(layers)
    ]:
        raise ExportError("gemma3 without a window on five layers of six: llama.cpp's gemma3 has that pattern")
    full, local = config["rope_parameters"][FULL], config["rope_parameters"][SLIDING]
    if local.get("rope_type", "default") != "default" or full.get("rope_type", "default") not in ("default", "linear"):
        raise ExportError("gemma3 with a rope scaling other than linear on the full layers: not mapped to GGUF")
    data: dict[str, Any] = {
        "rope.freq_base": float(full["rope_theta"]),
        "rope.freq_base_swa": float(local["rope_theta"]),
        "attention.sliding_window": config["sliding_window"],
    }
    if full.get("rope_type") == "linear":
        data |= {"rope.scaling.type": "linear", "rope.scaling.factor": float(full["factor"])}
    if config.get("final_logit_softcapping") is not None:
        data["final_logit_softcapping"] = float(config["final_logit_softcapping"])
    return data


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    activation = config.get("hidden_act") or config.get("hidden_activation")
    if activation != "gelu_pytorch_tanh":
        raise ExportError(f"{model_type} with {activation!r}: llama.cpp's {model_type} runs gelu (tanh)")
    if config["attention_bias"]:
        raise ExportError(f"{model_type} with attention biases: llama.cpp's {model_type} has none")
    if model_type == "gemma":
        return {}
    if model_type == "gemma3_text":
        return _gemma3_metadata(config)
    layers, hidden, heads = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
    if config["query_pre_attn_scalar"] != _llama_cpp_scalar(layers, hidden, heads, config["head_dim"]):
        raise ExportError("gemma2 with a score scale other than llama.cpp's (1/sqrt(head_dim))")
    expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if config["sliding_window"] is None or config["layer_types"] != expected:
        raise ExportError("gemma2 without a window on exactly the even layers: llama.cpp's gemma2 has that pattern")
    if config["attn_logit_softcapping"] is None or config["final_logit_softcapping"] is None:
        raise ExportError("gemma2 without both softcaps: llama.cpp's gemma2 applies both")
    return {
        "attn_logit_softcapping": float(config["attn_logit_softcapping"]),
        "final_logit_softcapping": float(config["final_logit_softcapping"]),
        "attention.sliding_window": config["sliding_window"],
    }


def _norm_plus_one(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    return tensor + 1 if name.endswith("norm.weight") else tensor


def _norm_minus_one(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    return tensor - 1 if name.endswith("norm.weight") else tensor


GGUF = GgufMapping(
    archs={"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"},
    export_arch={"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"},
    config=_gguf_config,
    metadata=_gguf_metadata,
    from_gguf=_norm_minus_one,
    to_gguf=_norm_plus_one,
)

FAMILY = Family(
    name="gemma",
    model_types=("gemma", "gemma2", "gemma3_text"),
    architectures={"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
