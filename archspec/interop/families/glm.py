"""GLM and GLM-4 (`glm`, `glm4`): Llama's keys with interleaved partial RoPE and a fused gate_up_proj.

Matched against transformers 5.25.0 `models/glm/configuration_glm.py`, `modeling_glm.py` and `models/glm4/`:
GLM-4 adds sandwich norms (`post_self_attn_layernorm`, `post_mlp_layernorm`); `partial_rotary_factor` is written
inside `rope_parameters`. transformers' GLMs are causal: archspec's prefix-bidirectional `structure: glm` has no
counterpart here.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    llama_key_map,
    llama_like,
    llama_like_config,
    read_rope,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import Spec

_GLM_DEFAULTS: dict[str, Any] = dict(
    num_key_value_heads=2,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=131072,
    rms_norm_eps=1.5625e-07,
    tie_word_embeddings=False,
    attention_bias=True,
    rope_theta=10000.0,
    partial_rotary_factor=0.5,
    pad_token_id=151329,
    eos_token_id=[151329, 151336, 151338],
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": False})
    data["position"] = read_rope(get, pairing="interleaved")
    data["block"] = "sandwich" if model_type == "glm4" else "pre-norm"
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    return llama_like_config(spec, rope_fraction=True) | {"attention_bias": spec.attention.bias.q}


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = {k: v for k, v in LLAMA_LAYER.items() if k not in ("mlp.gate", "mlp.up")}
    layer |= {"attn_out_norm": "post_self_attn_layernorm", "mlp_out_norm": "post_mlp_layernorm"}
    fused = {"mlp.gate": ("mlp.gate_up_proj", "gate"), "mlp.up": ("mlp.gate_up_proj", "up")}
    return llama_key_map(layer, fused=fused)


FAMILY = Family(
    name="glm",
    model_types=("glm", "glm4"),
    architectures={"glm": "GlmForCausalLM", "glm4": "Glm4ForCausalLM"},
    defaults={"glm": _GLM_DEFAULTS, "glm4": _GLM_DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
)
