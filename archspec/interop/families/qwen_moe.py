"""Qwen2-MoE and Qwen3-MoE (`qwen2_moe`, `qwen3_moe`): Qwen's attention with routed experts on the sparse layers.

Matched against transformers 5.25.0 `models/qwen2_moe/configuration_qwen2_moe.py`, `modeling_qwen2_moe.py` and
`models/qwen3_moe/`. Qwen2-MoE has q/k/v biases (`qkv_bias`) and one shared expert behind a sigmoid gate, and slides
every other layer below `max_window_layers`; Qwen3-MoE has qk-norm, no shared expert, and slides every layer.
A layer is sparse iff it is not in `mlp_only_layers` and (layer + 1) % `decoder_sparse_step` == 0.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError
from archspec.interop.families import llama
from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    expert_count,
    llama_key_map,
    llama_like,
    llama_like_config,
    moe_section,
    needs,
    shared_expert_layer,
    sliding_layers,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import Spec

DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_moe": dict(
        llama.DEFAULTS["qwen2"],
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
    ),
    "qwen3_moe": dict(  # no head_dim (hidden_size // heads), no max_window_layers: unlike qwen3
        {k: v for k, v in llama.DEFAULTS["qwen3"].items() if k not in ("head_dim", "max_window_layers")},
        num_key_value_heads=4,
        decoder_sparse_step=1,
        moe_intermediate_size=768,
        num_experts_per_tok=8,
        num_experts=128,
        norm_topk_prob=False,
        router_aux_loss_coef=0.001,
        mlp_only_layers=[],
    ),
}


def _sparse_layers(get: Getter, n_layers: int) -> list[int] | None:
    """The sparse layers (None: all of them)."""
    step, dense = get("decoder_sparse_step") or 1, set(get("mlp_only_layers") or [])
    layers = [layer for layer in range(n_layers) if layer not in dense and (layer + 1) % step == 0]
    return None if len(layers) == n_layers else layers


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    shared = model_type == "qwen2_moe"
    if shared:  # Qwen2-MoE slides every other layer (0, 2, 4, ...) below max_window_layers
        flag = bool(get("qkv_bias"))
        data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": False})
        sliding_layers(get, data, lambda layer: layer % 2 == 0 and layer < get("max_window_layers"))
    else:  # Qwen3-MoE has no layer_types: every layer slides
        flag = bool(get("attention_bias"))
        data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag}, qk_norm=True)
        sliding_layers(get, data, lambda layer: True)
    moe: dict[str, Any] = {
        "experts": expert_count(get, "num_experts", "num_local_experts"),
        "top_k": get("num_experts_per_tok"),
        "d_ff": get("moe_intermediate_size"),
        "layers": _sparse_layers(get, data["n_layers"]),
        "router": {"renormalize": bool(get("norm_topk_prob")), "aux_loss_coef": float(get("router_aux_loss_coef"))},
    }
    if shared and get("shared_expert_intermediate_size"):
        moe |= {"shared_experts": 1, "shared_d_ff": get("shared_expert_intermediate_size"), "shared_gate": True}
    data["moe"] = moe
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    """No window keys: a spec with windows is refused (decoder_sparse_step 1 keeps mlp_only_layers the only rule)."""
    moe = moe_section(spec)
    shared = model_type == "qwen2_moe"
    if shared:
        needs(moe.shared_experts == 1 and moe.shared_gate, "moe.shared_experts")
    else:
        needs(not moe.shared_experts, "moe.shared_experts")
    needs(spec.attention.window is None, "attention.window")  # type: ignore[union-attr]
    config = llama_like_config(spec)
    if shared:
        config["qkv_bias"] = spec.attention.bias.q  # type: ignore[union-attr]
        config["shared_expert_intermediate_size"] = moe.shared_d_ff
    else:
        config["attention_bias"] = spec.attention.bias.q  # type: ignore[union-attr]
    config |= {
        "num_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.d_ff,
        "norm_topk_prob": moe.router.renormalize,
        "router_aux_loss_coef": moe.router.aux_loss_coef,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [layer for layer in range(spec.n_layers) if not spec.is_moe_layer(layer)],
    }
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = LLAMA_LAYER | {"mlp.router": "mlp.gate"}
    if model_type == "qwen2_moe":
        layer |= {"mlp.shared_gate": "mlp.shared_expert_gate"} | shared_expert_layer("mlp.shared_expert")
    return llama_key_map(layer)


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/qwen.py`) writes "qwen2moe" / "qwen3moe" with the routed experts stacked
# (ffn_{gate,up,down}_exps), Qwen2-MoE's shared expert and its sigmoid gate (ffn_*_shexp, ffn_gate_inp_shexp). Its
# graphs put experts on every layer and renormalise the top-k weights for qwen3moe only (not for qwen2moe).
_RENORMALIZE = {"qwen2_moe": False, "qwen3_moe": True}


def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    bias = "blk.0.attn_q.bias" in tensors
    config = {
        "moe_intermediate_size": get("expert_feed_forward_length"),
        "norm_topk_prob": _RENORMALIZE[model_type],
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "qkv_bias" if model_type == "qwen2_moe" else "attention_bias": bias,
    }
    if model_type == "qwen2_moe":
        config["shared_expert_intermediate_size"] = get("expert_shared_feed_forward_length")
    return config


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config["norm_topk_prob"] != _RENORMALIZE[model_type]:
        raise ExportError(f"{model_type} with norm_topk_prob = {config['norm_topk_prob']}: llama.cpp's is fixed")
    if config["mlp_only_layers"]:
        raise ExportError(f"{model_type} with dense layers (mlp_only_layers): llama.cpp's has experts on every layer")
    data = {"expert_feed_forward_length": config["moe_intermediate_size"]}
    if model_type == "qwen2_moe":
        data["expert_shared_feed_forward_length"] = config["shared_expert_intermediate_size"]
    return data


GGUF = GgufMapping(
    archs={"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"},
    export_arch={"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"},
    config=_gguf_config,
    metadata=_gguf_metadata,
)

FAMILY = Family(
    name="qwen_moe",
    model_types=("qwen2_moe", "qwen3_moe"),
    architectures={"qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
    gguf=GGUF,
)
