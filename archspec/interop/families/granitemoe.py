"""IBM Granite-MoE (`granitemoe`, Granite 3.0/3.1 1B-A400M and 3B-A800M): Granite's multipliers, every layer an MoE.

Matched against transformers 5.25.0 `models/granitemoe/configuration_granitemoe.py` and `modeling_granitemoe.py`.
The attention, norms, RoPE and the four muP multipliers are Granite's (see `granite.py`). Each layer's
feed-forward is `block_sparse_moe`: `GraniteMoeTopKRouter` takes the top-k router logits and a softmax over those k
alone, which equals the softmax over all experts renormalised over the chosen ones (`renormalize: true`, as
Mixtral); experts are SwiGLU of `intermediate_size`, stored fused as `input_linear` [experts, 2 x d_ff, d_model]
(gate rows first) and `output_linear` [experts, d_model, d_ff]; the router weight is `router.layer`. The Switch
balance loss is Mixtral's, weighted by `router_aux_loss_coef`.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.families import granite
from archspec.interop.families.common import LLAMA_LAYER, Getter, expert_count, llama_key_map, moe_section, needs
from archspec.interop.family import Family
from archspec.interop.keys import ExpertNames, KeyMap
from archspec.spec.schema import Spec

DEFAULTS: dict[str, Any] = dict(  # GraniteMoeConfig's: GraniteConfig's plus the experts
    granite.DEFAULTS,
    intermediate_size=11008,
    num_local_experts=8,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.001,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    data = granite.to_spec(get, "granite")  # mlp.d_ff: intermediate_size, which is the experts' width
    data["moe"] = {
        "experts": expert_count(get, "num_local_experts", "num_experts"),
        "top_k": get("num_experts_per_tok"),
        "router": {"renormalize": True, "aux_loss_coef": float(get("router_aux_loss_coef"))},
    }
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    moe = moe_section(spec)
    needs(moe.layers is None and not moe.dense_layers, "moe.layers")
    needs(not moe.shared_experts, "moe.shared_experts")
    router = moe.router
    needs(router.scoring == "softmax" and router.renormalize and router.groups == 1, "moe.router")
    needs(router.scale == 1.0 and not router.correction_bias and not router.jitter, "moe.router")
    needs(router.aux_loss == "token" and not router.z_loss_coef, "moe.router.aux_loss")
    needs(not spec.mlp.bias, "mlp.bias")
    config = granite.to_config(spec, "granite")
    del config["mlp_bias"]  # no field of GraniteMoeConfig: its experts have no biases
    return config | {
        "intermediate_size": moe.d_ff,
        "num_local_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "router_aux_loss_coef": router.aux_loss_coef,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    experts = ExpertNames(
        gate_up="block_sparse_moe.input_linear.weight", down="block_sparse_moe.output_linear.weight", per_expert=False
    )
    return llama_key_map(LLAMA_LAYER | {"mlp.router": "block_sparse_moe.router.layer"}, experts=experts)


FAMILY = Family(
    name="granitemoe",
    model_types=("granitemoe",),
    architectures={"granitemoe": "GraniteMoeForCausalLM"},
    defaults={"granitemoe": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
)
