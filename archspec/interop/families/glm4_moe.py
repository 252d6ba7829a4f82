"""GLM-4.5 and GLM-4.5-Air (`glm4_moe`): GLM-4's attention with DeepSeek-V3's router, shared expert and dense start.

Matched against transformers 5.25.0 `models/glm4_moe/configuration_glm4_moe.py` and `modeling_glm4_moe.py`. The
attention is grouped-query with q/k/v biases and no output bias (`attention_bias`), an optional per-head RMSNorm of
q and k before RoPE (`use_qk_norm`, one weight shared by the heads), and RoPE over the first half of each head in
halves (GPT-NeoX's `apply_rotary_pos_emb`, `partial_rotary_factor` 0.5), unlike GLM-4's interleaved pairs. The
feed-forward is DeepSeek-V3's: a sigmoid router with a score-correction bias, groups ranked by their top-2 sum,
`routed_scaling_factor`, `n_shared_experts` shared experts as one MLP, and layer i dense iff
i < `first_k_dense_replace`. transformers computes no balance loss for it. The multi-token-prediction layers of the
released checkpoints (`model.layers.{num_hidden_layers}.*`) are not part of the model and are not read.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    expert_count,
    llama_key_map,
    llama_like,
    llama_like_config,
    moe_section,
    needs,
    read_rope,
    shared_expert_layer,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import QKNormSpec, RopeSpec, Spec

DEFAULTS: dict[str, Any] = dict(  # Glm4MoeConfig's defaults (GLM-4.5-Air's shape)
    vocab_size=151552,
    hidden_size=4096,
    intermediate_size=10944,
    num_hidden_layers=46,
    num_attention_heads=96,
    num_key_value_heads=8,
    hidden_act="silu",
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    partial_rotary_factor=0.5,
    attention_bias=False,
    moe_intermediate_size=1408,
    num_experts_per_tok=8,
    n_shared_experts=1,
    n_routed_experts=128,
    routed_scaling_factor=1.0,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,
    norm_topk_prob=True,
    use_qk_norm=False,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": False}, qk_norm=bool(get("use_qk_norm")))
    data["position"] = read_rope(get)
    groups = get("n_group") or 1
    data["moe"] = {
        "experts": expert_count(get, "n_routed_experts", "num_local_experts"),
        "top_k": get("num_experts_per_tok"),
        "d_ff": get("moe_intermediate_size"),
        "shared_experts": get("n_shared_experts") or 0,
        # layer i is dense iff i < first_k_dense_replace, which may exceed the layer count
        "dense_layers": min(get("first_k_dense_replace") or 0, data["n_layers"]),
        "router": {
            "scoring": "sigmoid",
            "renormalize": bool(get("norm_topk_prob")),
            "groups": groups,
            "top_groups": get("topk_group") or groups,
            "group_score": "top2-sum",
            "correction_bias": True,
            "scale": float(get("routed_scaling_factor")),
            "aux_loss_coef": 0.0,
        },
    }
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    moe = moe_section(spec)
    attn = spec.attention
    bias = attn.bias  # type: ignore[union-attr]
    needs(bias.q == bias.k == bias.v and not bias.o, "attention.bias")
    needs(isinstance(spec.position, RopeSpec) and spec.position.pairing == "half", "position.pairing")
    qk_norm = attn.qk_norm  # type: ignore[union-attr]
    needs(qk_norm is None or qk_norm == QKNormSpec(), "attention.qk_norm")
    needs(spec.attention.window is None, "attention.window")  # type: ignore[union-attr]
    needs(moe.layers is None, "moe.layers")
    needs(moe.shared_experts > 0 and moe.shared_d_ff in (None, moe.d_ff) and not moe.shared_gate, "moe.shared_experts")
    router = moe.router
    needs(router.scoring == "sigmoid" and router.correction_bias, "moe.router.scoring")
    needs(router.group_score == "top2-sum" or router.groups == 1, "moe.router.group_score")
    return llama_like_config(spec, rope_fraction=True) | {
        "attention_bias": bias.q,
        "use_qk_norm": qk_norm is not None,
        "n_routed_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.d_ff,
        "n_shared_experts": moe.shared_experts,
        "first_k_dense_replace": moe.dense_layers,
        "n_group": router.groups,
        "topk_group": router.top_groups,
        "norm_topk_prob": router.renormalize,
        "routed_scaling_factor": router.scale,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = LLAMA_LAYER | {"mlp.router": "mlp.gate"} | shared_expert_layer("mlp.shared_experts")
    return llama_key_map(layer, params={"mlp.router.correction_bias": "e_score_correction_bias"})


FAMILY = Family(
    name="glm4_moe",
    model_types=("glm4_moe",),
    architectures={"glm4_moe": "Glm4MoeForCausalLM"},
    defaults={"glm4_moe": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
)
