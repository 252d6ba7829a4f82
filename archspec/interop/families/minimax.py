"""MiniMax-M2 (`minimax_m2`): GQA with RMSNorms over the whole q and k projections and partial RoPE, every layer a
sigmoid-scored MoE whose selection is shifted by a learned bias.

Matched against transformers 5.25.0 `models/minimax_m2/configuration_minimax_m2.py` and `modeling_minimax_m2.py`.
`MiniMaxM2Attention` (FlexOlmo's): `q_norm` / `k_norm` are RMSNorms of the q_proj / k_proj outputs (heads x
head_dim wide, OLMo 2's qk_norm over: projection) before the view into heads and before RoPE; no biases. RoPE is
GLM-4.5's: the first `partial_rotary_factor` of each head (the hub config's `rotary_dim` / head_dim) in halves.
`MiniMaxM2TopKRouter`: sigmoid of the router logits (float32), the top-k of those plus `e_score_correction_bias`,
weighted by the unbiased sigmoid scores renormalised over the chosen ones; no groups, no scale. Checkpoint names
are Mixtral's (`block_sparse_moe.gate`, `experts.{e}.w1 / w3 / w2`). The balance loss is Mixtral's
`load_balancing_loss_func`, which counts the top-k of the *softmax* of the logits, not the experts chosen: read as
`aux_loss_counts: softmax-top-k`.
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
)
from archspec.interop.family import Family
from archspec.interop.keys import ExpertNames, KeyMap, Source
from archspec.spec.schema import QKNormSpec, RopeSpec, Spec

DEFAULTS: dict[str, Any] = dict(  # MiniMaxM2Config's (MiniMax-M2's shape)
    vocab_size=200064,
    hidden_size=3072,
    intermediate_size=1536,
    num_hidden_layers=62,
    num_attention_heads=48,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=196608,
    rms_norm_eps=1e-6,
    bos_token_id=200034,
    eos_token_id=200020,
    tie_word_embeddings=False,
    num_experts_per_tok=8,
    num_local_experts=256,
    router_aux_loss_coef=0.001,
    router_jitter_noise=0.0,
    rope_theta=5000000.0,
    partial_rotary_factor=1.0,
)
PROJECTION = QKNormSpec(over="projection")


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    data = llama_like(get, bias={"q": False, "k": False, "v": False, "o": False})
    data["attention"]["qk_norm"] = {"over": "projection"}
    fraction = None
    if get.config.get("rotary_dim") is not None:  # the hub config's key; 5.x stores partial_rotary_factor
        fraction = get.config["rotary_dim"] / data["attention"]["head_dim"]
    data["position"] = read_rope(get, fraction=fraction)
    data["moe"] = {
        "experts": expert_count(get, "num_local_experts", "num_experts"),
        "top_k": get("num_experts_per_tok"),
        "router": {
            "scoring": "sigmoid",
            "renormalize": True,
            "correction_bias": True,
            "jitter": float(get("router_jitter_noise") or 0.0),
            "aux_loss_coef": float(get("router_aux_loss_coef")),
            "aux_loss_counts": "softmax-top-k",
        },
    }
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    moe = moe_section(spec)
    attn = spec.attention
    bias = attn.bias  # type: ignore[union-attr]
    needs(not (bias.q or bias.k or bias.v or bias.o), "attention.bias")
    needs(attn.qk_norm == PROJECTION, "attention.qk_norm")  # type: ignore[union-attr]
    needs(attn.window is None, "attention.window")  # type: ignore[union-attr]
    needs(isinstance(spec.position, RopeSpec) and spec.position.pairing == "half", "position.pairing")
    needs(not spec.mlp.bias, "mlp.bias")
    needs(moe.layers is None and not moe.dense_layers, "moe.layers")
    needs(not moe.shared_experts, "moe.shared_experts")
    router = moe.router
    needs(router.scoring == "sigmoid" and router.correction_bias and router.renormalize, "moe.router.scoring")
    needs(router.groups == 1 and router.scale == 1.0, "moe.router.groups")
    needs(router.aux_loss == "token" and router.aux_loss_counts == "softmax-top-k", "moe.router.aux_loss_counts")
    needs(not router.z_loss_coef, "moe.router.z_loss_coef")
    return llama_like_config(spec, rope_fraction=True) | {
        "intermediate_size": moe.d_ff,
        "num_local_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "router_aux_loss_coef": router.aux_loss_coef,
        "router_jitter_noise": router.jitter,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = LLAMA_LAYER | {"mlp.router": "block_sparse_moe.gate"}
    return llama_key_map(
        layer,
        aliases={"block_sparse_moe.": "mlp."},
        experts=ExpertNames("block_sparse_moe.experts", {"gate": "w1", "up": "w3", "down": "w2"}),
        sources={
            "mlp.router.correction_bias": lambda layer: Source(f"{layer}block_sparse_moe.e_score_correction_bias")
        },
    )


FAMILY = Family(
    name="minimax",
    model_types=("minimax_m2",),
    architectures={"minimax_m2": "MiniMaxM2ForCausalLM"},
    defaults={"minimax_m2": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
)
