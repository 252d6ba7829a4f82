"""ERNIE 4.5 MoE (`ernie4_5_moe`, ERNIE-4.5-21B-A3B and 300B-A47B): ERNIE 4.5's attention with softmax-routed experts
whose selection is shifted by a correction bias, shared experts, and MoE on a range of layers.

Matched against transformers 5.25.0 `models/ernie4_5_moe/configuration_ernie4_5_moe.py` and
`modeling_ernie4_5_moe.py`. Attention, RoPE (interleaved pairs) and `use_bias` are ERNIE 4.5's (see `ernie.py`).
`Ernie4_5_MoeTopKRouter`: a float32 softmax over all experts; the top `moe_k` of the softmax plus
`moe_statics.e_score_correction_bias` (stored as `mlp.moe_statics.`, [1, experts]) are chosen, weighted by their unbiased softmax
renormalised with the sum clamped at `moe_norm_min` (1e-12; archspec adds 1e-20 to the sum instead, which no sum
of softmax probabilities can tell apart). `moe_num_shared_experts` shared experts form one SwiGLU of that many times
`moe_intermediate_size`. Layer i is an MoE iff (i + 1) % `moe_layer_interval` == 0 and `moe_layer_start_index`
<= i <= `moe_layer_end_index` (-1: the last layer); else a dense SwiGLU of `intermediate_size`. The balance loss
is Mixtral's `load_balancing_loss_func` (the softmax's top-k: `aux_loss_counts: softmax-top-k`). With `use_bias`
the shared experts carry biases, which archspec's shared experts do not have: such configs are refused.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.families import ernie
from archspec.interop.families.common import LLAMA_LAYER, Getter, llama_key_map, moe_section, needs, shared_expert_layer
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap, Source
from archspec.spec.schema import Spec

DEFAULTS: dict[str, Any] = dict(  # Ernie4_5_MoeConfig's
    ernie.DEFAULTS["ernie4_5"],
    vocab_size=103424,
    hidden_size=2560,
    intermediate_size=12288,
    num_hidden_layers=28,
    num_attention_heads=20,
    num_key_value_heads=4,
    head_dim=None,
    moe_intermediate_size=1536,
    moe_k=6,
    moe_num_experts=64,
    moe_num_shared_experts=2,
    moe_layer_start_index=1,
    moe_layer_end_index=-1,
    moe_layer_interval=1,
    router_aux_loss_coef=0.001,
)


def _moe_layers(n_layers: int, start: int, end: int, interval: int) -> list[int]:
    """The MoE layers as `Ernie4_5_MoeDecoderLayer` picks them."""
    end = n_layers - 1 if end == -1 else end
    return [i for i in range(n_layers) if (i + 1) % interval == 0 and start <= i <= end]


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    if get("use_bias") and get("moe_num_shared_experts"):
        raise UnsupportedConfigError("ernie4_5_moe with use_bias and shared experts (biased shared experts)")
    data = ernie.to_spec(get, "ernie4_5")
    n_layers = data["n_layers"]
    layers = _moe_layers(n_layers, get("moe_layer_start_index"), get("moe_layer_end_index"), get("moe_layer_interval"))
    moe: dict[str, Any] = {
        "experts": get("moe_num_experts"),
        "top_k": get("moe_k"),
        "d_ff": get("moe_intermediate_size"),
        "shared_experts": get("moe_num_shared_experts") or 0,
        "router": {
            "correction_bias": True,
            "aux_loss_coef": float(get("router_aux_loss_coef")),
            "aux_loss_counts": "softmax-top-k",
        },
    }
    first = layers[0] if layers else n_layers
    if layers == list(range(first, n_layers)):
        moe["dense_layers"] = first  # the usual shape: a dense start, then every layer
    else:
        moe["layers"] = layers
    data["moe"] = moe
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    moe = moe_section(spec)
    needs(not (spec.mlp.bias and moe.shared_experts), "mlp.bias")
    needs(moe.shared_d_ff in (None, moe.d_ff) and not moe.shared_gate, "moe.shared_experts")
    router = moe.router
    needs(router.scoring == "softmax" and router.renormalize and router.correction_bias, "moe.router.correction_bias")
    needs(router.groups == 1 and router.scale == 1.0 and not router.jitter, "moe.router")
    needs(router.aux_loss == "token" and router.aux_loss_counts == "softmax-top-k", "moe.router.aux_loss_counts")
    needs(not router.z_loss_coef, "moe.router.z_loss_coef")
    n_layers = spec.n_layers
    layers = [i for i in range(n_layers) if spec.is_moe_layer(i)]
    start, end, interval = n_layers, n_layers - 1, 1  # no MoE layer
    if layers:
        start, end = layers[0], layers[-1]
        intervals = [k for k in range(1, n_layers + 1) if _moe_layers(n_layers, start, end, k) == layers]
        needs(bool(intervals), "moe.layers")  # not a start, an end and an interval
        interval = intervals[0]
    return ernie.to_config(spec, "ernie4_5") | {
        "moe_num_experts": moe.experts,
        "moe_k": moe.top_k,
        "moe_intermediate_size": moe.d_ff,
        "moe_num_shared_experts": moe.shared_experts,
        "moe_layer_start_index": start,
        "moe_layer_end_index": end,
        "moe_layer_interval": interval,
        "router_aux_loss_coef": router.aux_loss_coef,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = LLAMA_LAYER | {"mlp.router": "mlp.gate"} | shared_expert_layer("mlp.shared_experts")
    return llama_key_map(
        layer,
        sources={
            "mlp.router.correction_bias": lambda layer: Source(
                f"{layer}mlp.moe_statics.e_score_correction_bias", leading_ones=1
            )
        },
    )


FAMILY = Family(
    name="ernie_moe",
    model_types=("ernie4_5_moe",),
    architectures={"ernie4_5_moe": "Ernie4_5_MoeForCausalLM"},
    defaults={"ernie4_5_moe": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
)
