"""Hunyuan dense (HunYuanDenseV1: Hunyuan-0.5B ... 7B): Llama's layout with q/k RMSNorms *after* RoPE.

Matched against transformers 5.25.0 `models/hunyuan_v1_dense/configuration_hunyuan_v1_dense.py` and
`modeling_hunyuan_v1_dense.py`:

- `HunYuanDenseV1Attention` rotates q and k, then normalises each head with `query_layernorm` / `key_layernorm`
  (RMSNorm over head_dim, one weight shared by the heads, eps rms_norm_eps): qk_norm {after_rope: true}. The
  modeling file always builds them; the hub configs' `use_qk_norm` (read by Tencent's remote code) is ignored by
  transformers, so a config that turns it off, or turns on cross-layer attention (`use_cla`, which transformers
  does not implement), is refused rather than read as something else.
- the MLP never has a bias (`mlp_bias` of the hub configs is ignored); `attention_bias` is one flag for q/k/v/o.
- NTK-alpha RoPE: `rope_type` "dynamic" *with* a truthy `alpha` becomes "ntk_alpha", a static change of the base,
  theta' = rope_theta * alpha ** (head_dim / (head_dim - 2)), evaluated in Python (float64) floats and then used as
  the default RoPE's base (`1 / theta' ** (arange(0, d, 2) / d)` in float32, as archspec's RoPE does): read as
  that theta exactly; not length-dependent (`dynamic_rope_update` leaves "ntk_alpha" alone; its `factor` is
  unused). "dynamic" without alpha is the usual length-dependent dynamic NTK.
- `head_dim` defaults to None, with which transformers 5.25 cannot build the model (`nn.Linear(hidden, heads *
  None)`); read as hidden_size / heads, as the default rotary embedding and Tencent's remote code take it.
- RMSNorm statistics in float32 (as Llama's); untied head by default.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    llama_key_map,
    llama_like,
    llama_like_config,
    needs,
    read_rope,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import QKNormSpec, RopeSpec, Spec

DEFAULTS: dict[str, dict[str, Any]] = {
    "hunyuan_v1_dense": dict(
        rms_norm_eps=1e-5,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        hidden_act="silu",
        num_key_value_heads=None,
        head_dim=None,
        rope_theta=10000.0,
        attention_bias=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
}
HUNYUAN_LAYER = LLAMA_LAYER | {"attn.q_norm": "self_attn.query_layernorm", "attn.k_norm": "self_attn.key_layernorm"}
AFTER_ROPE = QKNormSpec(after_rope=True)


# ============================================================================================ config -> spec
def _position(get: Getter, head_dim: int) -> dict[str, Any]:
    params = dict(get.config.get("rope_scaling") or {})
    params.update(get.config.get("rope_parameters") or {})
    if float(params.get("partial_rotary_factor", get.config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedConfigError("hunyuan_v1_dense with partial_rotary_factor != 1 (transformers ignores it)")
    if params.get("rope_type", params.get("type", "default")) == "dynamic" and params.get("alpha"):
        theta = params.get("rope_theta", get.config.get("rope_theta", get("rope_theta")))
        base = theta * params["alpha"] ** (head_dim / (head_dim - 2))  # as compute_ntk_alpha_rope_parameters
        return {"kind": "rope", "theta": float(base), "fraction": 1.0, "pairing": "half"}
    return read_rope(get, fraction=1.0)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    if get.config.get("use_cla"):
        raise UnsupportedConfigError("use_cla (cross-layer attention) is not implemented by transformers' hunyuan")
    if get.config.get("use_qk_norm") is False:
        raise UnsupportedConfigError("use_qk_norm false: transformers' hunyuan always applies its q/k norms")
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag}, qk_norm=True)
    data["attention"]["qk_norm"] = {"after_rope": True}
    data["mlp"]["bias"] = False
    data["position"] = _position(get, data["attention"]["head_dim"])
    return data


# ============================================================================================ spec -> config
def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn, position = spec.attention, spec.position
    needs(attn.kind == "mha", "attention.kind")
    needs(spec.layers is None, "layers")
    needs(attn.window is None, "attention.window")
    needs(attn.qk_norm == AFTER_ROPE, "attention.qk_norm")
    needs(len({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o}) == 1, "attention.bias")
    needs(not spec.mlp.bias, "mlp.bias")
    needs(isinstance(position, RopeSpec), "position.kind")
    assert isinstance(position, RopeSpec)
    needs(position.fraction == 1.0 and position.pairing == "half" and not position.block_positions, "position")
    return llama_like_config(spec) | {"attention_bias": attn.bias.q}


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(HUNYUAN_LAYER)


FAMILY = Family(
    name="hunyuan",
    model_types=("hunyuan_v1_dense",),
    architectures={"hunyuan_v1_dense": "HunYuanDenseV1ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
)
