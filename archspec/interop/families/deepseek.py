"""DeepSeek-V2 and V3 (`deepseek_v2`, `deepseek_v3`): latent attention (MLA), shared and routed experts.

Matched against transformers 5.25.0 `models/deepseek_v2/configuration_deepseek_v2.py`, `modeling_deepseek_v2.py`
and `models/deepseek_v3/`. V2: a softmax router, greedy or group-limited (`topk_method`), RoPE on complex pairs.
V3: a sigmoid router with a score-correction bias (`e_score_correction_bias`), groups ranked by their top-2 sum,
`rope_interleave`. Layer i is dense iff i < `first_k_dense_replace`.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.families.common import (
    GATED_FROM_HF,
    GATED_TO_HF,
    LLAMA_LAYER,
    Getter,
    expert_count,
    llama_key_map,
    needs,
    read_rope,
    rope_parameters,
    shared_expert_layer,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import GATED_ACTIVATIONS, LatentAttentionSpec, RopeSpec, Spec

_V2_DEFAULTS: dict[str, Any] = dict(
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
DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v2": _V2_DEFAULTS,
    "deepseek_v3": dict(
        _V2_DEFAULTS,
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
    ),
}

_MLA_LAYER = {
    "attn.q": "self_attn.q_proj",
    "attn.q_down": "self_attn.q_a_proj",
    "attn.q_latent_norm": "self_attn.q_a_layernorm",
    "attn.q_up": "self_attn.q_b_proj",
    "attn.kv_down": "self_attn.kv_a_proj_with_mqa",
    "attn.kv_latent_norm": "self_attn.kv_a_layernorm",
    "attn.kv_up": "self_attn.kv_b_proj",
}


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    v2 = model_type == "deepseek_v2"
    heads = get.require("num_attention_heads")
    rope_dim = get("qk_rope_head_dim")
    pairing = "interleaved" if v2 or get("rope_interleave") else "half"
    position = read_rope(get, fraction=1.0, pairing=pairing)
    groups = get("n_group") or 1
    if v2:
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
        "mlp": {"activation": GATED_FROM_HF[get("hidden_act")], "d_ff": get.require("intermediate_size")},
        "moe": {
            "experts": expert_count(get, "n_routed_experts", "num_experts", "num_local_experts"),
            "top_k": get("num_experts_per_tok"),
            "d_ff": get("moe_intermediate_size"),
            "shared_experts": get("n_shared_experts") or 0,
            # transformers builds layer i dense iff i < first_k_dense_replace, which may exceed the layer count
            "dense_layers": min(get("first_k_dense_replace") or 0, get.require("num_hidden_layers")),
            "router": router,
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    """RoPE: archspec rotates the rope dims as stored, in the spec's pairing, which is what transformers does for V2
    (complex pairs) and V3 (rope_interleave: interleaved pairs, else halves); no permutation either way."""
    attn = spec.attention
    needs(isinstance(attn, LatentAttentionSpec), "attention.kind")
    needs(isinstance(spec.position, RopeSpec), "position.kind")
    needs(spec.mlp.activation in GATED_ACTIVATIONS, "mlp.activation")
    # DeepseekV2Config refuses hidden_size % num_attention_heads != 0 (V3's does not check it)
    needs(model_type != "deepseek_v2" or spec.d_model % attn.heads == 0, "d_model")
    moe = spec.moe
    needs(moe is not None, "moe")
    assert isinstance(attn, LatentAttentionSpec) and moe is not None and isinstance(spec.position, RopeSpec)
    needs(moe.layers is None, "moe.layers")
    # transformers always builds the shared-expert MLP (n_shared_experts x moe_intermediate_size wide): with none,
    # its zero-width weights would be missing from the checkpoint
    needs(moe.shared_experts > 0, "moe.shared_experts")
    router = moe.router
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": attn.heads,
        "q_lora_rank": attn.q_rank,
        "kv_lora_rank": attn.kv_rank,
        "qk_nope_head_dim": attn.nope_dim,
        "qk_rope_head_dim": attn.rope_dim,
        "v_head_dim": attn.v_dim,
        "attention_bias": attn.bias,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": GATED_TO_HF[spec.mlp.activation],
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "rope_parameters": rope_parameters(spec),
        "n_routed_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.d_ff,
        "n_shared_experts": moe.shared_experts,
        "first_k_dense_replace": moe.dense_layers,
        "routed_scaling_factor": router.scale,
        # DeepSeek's own config.json keys for the balance loss (transformers keeps them but computes no aux loss)
        "aux_loss_alpha": router.aux_loss_coef,
        "seq_aux": router.aux_loss == "sequence",
    }
    grouped = router.groups > 1
    if model_type == "deepseek_v2":
        config |= {
            "topk_method": "group_limited_greedy" if grouped else "greedy",
            "n_group": router.groups if grouped else None,
            "topk_group": router.top_groups if grouped else None,
        }
    else:
        config |= {
            "n_group": router.groups,
            "topk_group": router.top_groups,
            "norm_topk_prob": router.renormalize,
            "rope_interleave": spec.position.pairing == "interleaved",
        }
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = LLAMA_LAYER | _MLA_LAYER | {"mlp.router": "mlp.gate"} | shared_expert_layer("mlp.shared_experts")
    return llama_key_map(layer, params={"mlp.router.correction_bias": "e_score_correction_bias"})


FAMILY = Family(
    name="deepseek",
    model_types=("deepseek_v2", "deepseek_v3"),
    architectures={"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="mla",
)
