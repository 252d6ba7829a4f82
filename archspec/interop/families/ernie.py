"""ERNIE 4.5 (dense, e.g. ERNIE-4.5-0.3B): Llama's layout with interleaved RoPE pairs and one `use_bias` flag.

Matched against transformers 5.25.0 `models/ernie4_5/configuration_ernie4_5.py` and `modeling_ernie4_5.py`:

- RoPE pairs dims (2k, 2k + 1) (GLM's `rotate_half` on x[..., 0::2] / x[..., 1::2], with cos / sin of the first
  half repeated-interleaved): pairing interleaved, over the whole head (the default RoPE has no partial factor;
  other RoPE types that would read `partial_rotary_factor` are refused with a fraction other than 1).
- `use_bias` puts a bias on q, k, v, o *and* the MLP's gate / up / down.
- `head_dim` defaults to 128 (not hidden_size / heads: 0.3B has 16 heads of 128 over hidden 1024); an explicit
  null means hidden_size / heads (the config class's `__post_init__`). Tied head by default.
- precision trap: the rotary tables are *not* cast to the model's dtype, and `apply_rotary_pos_emb` rotates
  `q.float()` / `k.float()` in float32 and casts the result back. In float32 that is the usual computation; in
  a float64 model the `.float()` rounds q and k to float32 (the parity tests lift it); in bfloat16 / float16
  transformers rotates in float32 and rounds once, where archspec rotates in the model's dtype: equal in float32
  and float64, not bit-identical in half precision (archspec has no "rotate in float32" option).
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
from archspec.spec.schema import RopeSpec, Spec

DEFAULTS: dict[str, dict[str, Any]] = {
    "ernie4_5": dict(
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        hidden_act="silu",
        num_key_value_heads=2,
        head_dim=128,
        rope_theta=500000.0,
        use_bias=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


# ============================================================================================ config -> spec
def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    params = get.config.get("rope_parameters") or get.config.get("rope_scaling") or {}
    if float(params.get("partial_rotary_factor", get.config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedConfigError(
            "ernie4_5 with partial_rotary_factor != 1 (transformers applies it inconsistently)"
        )
    flag = bool(get("use_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})
    data["attention"]["head_dim"] = get("head_dim") or data["d_model"] // data["attention"]["heads"]
    data["position"] = read_rope(get, fraction=1.0, pairing="interleaved")
    data["mlp"]["bias"] = flag
    return data


# ============================================================================================ spec -> config
def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn, position = spec.attention, spec.position
    needs(attn.kind == "mha", "attention.kind")
    needs(spec.layers is None, "layers")
    needs(attn.window is None, "attention.window")
    needs(attn.qk_norm is None, "attention.qk_norm")
    needs(len({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o, spec.mlp.bias}) == 1, "attention.bias")
    needs(isinstance(position, RopeSpec) and position.pairing == "interleaved", "position.pairing")
    assert isinstance(position, RopeSpec)
    needs(position.fraction == 1.0 and not position.block_positions, "position")
    return llama_like_config(spec) | {"use_bias": attn.bias.q}


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(LLAMA_LAYER)


FAMILY = Family(
    name="ernie",
    model_types=("ernie4_5",),
    architectures={"ernie4_5": "Ernie4_5ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
)
