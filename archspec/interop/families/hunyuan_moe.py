"""Hunyuan MoE (`hunyuan_v1_moe`, Hunyuan-A13B): Hunyuan's attention (q/k norms after RoPE, NTK-alpha RoPE) with
routed experts beside an always-on shared MLP in every layer.

Matched against transformers 5.25.0 `models/hunyuan_v1_moe/configuration_hunyuan_v1_moe.py` and
`modeling_hunyuan_v1_moe.py`. Attention and positions are exactly Hunyuan dense's (see `hunyuan.py`).
`HunYuanMoEV1Moe`: `shared_mlp(x)` (a SwiGLU of `intermediate_size`, ungated) plus the routed experts (SwiGLU of
`intermediate_size` too); `HunYuanMoEV1Gate` (`gate.wg`, a float32 weight) takes a float32 softmax over all
experts, its top `moe_topk`, renormalised. `num_experts` and `moe_topk` may be per-layer lists in Tencent's
configs: archspec reads one value for every layer and refuses lists that differ. transformers computes no balance
loss for it (`DeepseekV2ForCausalLM`'s forward).
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.families import hunyuan
from archspec.interop.families.common import Getter, llama_key_map, moe_section, needs, shared_expert_layer
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import Spec

DEFAULTS: dict[str, Any] = dict(  # HunYuanMoEV1Config's
    hunyuan.DEFAULTS["hunyuan_v1_dense"],
    vocab_size=290943,
    intermediate_size=11008,
    num_experts=1,
    moe_topk=1,
)


def _one_value(get: Getter, key: str) -> int:
    """`key` as one number for every layer (a per-layer list of one repeated value is that value)."""
    value = get(key)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise UnsupportedConfigError(f"{key} differs between layers ({value}): archspec has one value per model")
        value = value[0]
    return int(value)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    data = hunyuan.to_spec(get, "hunyuan_v1_dense")
    d_ff = data["mlp"]["d_ff"]
    data["moe"] = {
        "experts": _one_value(get, "num_experts"),
        "top_k": _one_value(get, "moe_topk"),
        "d_ff": d_ff,
        "shared_experts": 1,
        "shared_d_ff": d_ff,
        "router": {"renormalize": True, "aux_loss_coef": 0.0},
    }
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    moe = moe_section(spec)
    d_ff = spec.mlp.d_ff
    needs(moe.layers is None and not moe.dense_layers, "moe.layers")
    needs(moe.d_ff in (None, d_ff), "moe.d_ff")
    needs(moe.shared_experts == 1 and moe.shared_d_ff in (None, d_ff) and not moe.shared_gate, "moe.shared_experts")
    router = moe.router
    needs(router.scoring == "softmax" and router.renormalize and router.groups == 1, "moe.router")
    needs(router.scale == 1.0 and not router.correction_bias and not router.jitter, "moe.router")
    needs(not router.aux_loss_coef and not router.z_loss_coef, "moe.router.aux_loss_coef")
    return hunyuan.to_config(spec, "hunyuan_v1_dense") | {"num_experts": moe.experts, "moe_topk": moe.top_k}


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = hunyuan.HUNYUAN_LAYER | {"mlp.router": "mlp.gate.wg"} | shared_expert_layer("mlp.shared_mlp")
    return llama_key_map(layer)


FAMILY = Family(
    name="hunyuan_moe",
    model_types=("hunyuan_v1_moe",),
    architectures={"hunyuan_v1_moe": "HunYuanMoEV1ForCausalLM"},
    defaults={"hunyuan_v1_moe": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
)
