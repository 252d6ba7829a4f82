"""Mixtral (`mixtral`): Mistral's attention, every layer a softmax top-k MoE renormalised over the chosen experts.

Matched against transformers 5.25.0 `models/mixtral/configuration_mixtral.py` and `modeling_mixtral.py`. Hub
checkpoints name the experts `block_sparse_moe.experts.{e}.w1 / w3 / w2` (gate / up / down); 5.x's own files say
`mlp.` for `block_sparse_moe.` and fuse the experts into `gate_up_proj` / `down_proj` (both are read).
"""

from __future__ import annotations

from typing import Any

from archspec.interop.families import llama
from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    expert_count,
    llama_key_map,
    moe_section,
    needs,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import ExpertNames, KeyMap
from archspec.spec.schema import Spec

DEFAULTS: dict[str, Any] = dict(
    llama.DEFAULTS["mistral"],
    sliding_window=None,
    rms_norm_eps=1e-5,
    rope_theta=1e6,
    num_experts_per_tok=2,
    num_local_experts=8,
    router_aux_loss_coef=0.001,
    router_jitter_noise=0.0,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    data = llama.to_spec(get, "mistral")
    data["moe"] = {
        "experts": expert_count(get, "num_local_experts", "num_experts"),
        "top_k": get("num_experts_per_tok"),
        "router": {
            "renormalize": True,
            "jitter": float(get("router_jitter_noise") or 0.0),
            "aux_loss_coef": float(get("router_aux_loss_coef")),
        },
    }
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    """Mistral's config, the experts as wide as intermediate_size."""
    moe = moe_section(spec)
    needs(not moe.shared_experts, "moe.shared_experts")
    config = llama.to_config(spec, "mistral")
    config |= {
        "intermediate_size": moe.d_ff,
        "num_local_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "router_aux_loss_coef": moe.router.aux_loss_coef,
        "router_jitter_noise": moe.router.jitter,
    }
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(
        LLAMA_LAYER | {"mlp.router": "block_sparse_moe.gate"},
        aliases={"block_sparse_moe.": "mlp."},
        experts=ExpertNames("block_sparse_moe.experts", {"gate": "w1", "up": "w3", "down": "w2"}),
    )


# ============================================================================================ GGUF
# llama.cpp's converter writes Mixtral as "llama" with expert_count and the experts stacked (ffn_*_exps); Q/K rows
# permuted as Llama's. Reading such a file is the llama family's (`llama.GGUF.config` turns it into a mixtral
# config); writing is here.
GGUF = GgufMapping(
    archs={},
    export_arch={"mixtral": "llama"},
    config=lambda get, tensors, model_type: {},
    metadata=llama.gguf_metadata,
    from_gguf=llama.from_llama_cpp_rows,
    to_gguf=llama.to_llama_cpp_rows,
)

FAMILY = Family(
    name="mixtral",
    model_types=("mixtral",),
    architectures={"mixtral": "MixtralForCausalLM"},
    defaults={"mixtral": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
    gguf=GGUF,
)
