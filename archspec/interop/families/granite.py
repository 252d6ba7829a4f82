"""IBM Granite 3.x dense (`granite`): Llama's block and names with four muP multipliers.

Matched against transformers 5.25.0 `models/granite/configuration_granite.py` and `modeling_granite.py`:

- `GraniteModel`: inputs_embeds * `embedding_multiplier` (a Python float times the embeddings: embeddings.scale as
  a number, not rounded to the dtype first).
- `GraniteDecoderLayer`: residual + sublayer(norm(x)) * `residual_multiplier` for attention and MLP alike
  (block.residual_scale).
- `GraniteAttention`: the softmax scale is `attention_multiplier` itself (attention.scale), whatever head_dim is;
  the class default is 1.0, so a config that leaves it out has scale 1 (left out of the spec only when it equals
  head_dim ** -0.5).
- `GraniteForCausalLM`: logits / `logits_scaling` (embeddings.logit_scale = 1 / logits_scaling: a multiply by the
  reciprocal, at most one float64 ulp from the division; export writes the shortest decimal whose reciprocal
  is the spec's logit_scale, so 1 / 16 goes out as 16.0).
- `GraniteRMSNorm` is Llama's (float32 statistics, cast back before the weight); RoPE rotate_half over the whole
  head; `head_dim` is no field of GraniteConfig, but a config.json's is kept and read by attention and RoPE.
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
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import Spec

# Class defaults of transformers 5.25's GraniteConfig, for keys a config.json may leave out
DEFAULTS: dict[str, Any] = dict(
    hidden_act="silu",
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    num_key_value_heads=None,  # the query head count
    rope_theta=10000.0,
    attention_bias=False,
    mlp_bias=False,
    embedding_multiplier=1.0,
    logits_scaling=1.0,
    residual_multiplier=1.0,
    attention_multiplier=1.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)


# ============================================================================================ config -> spec
def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    params = get.config.get("rope_parameters") or get.config.get("rope_scaling") or {}
    if float(params.get("partial_rotary_factor", get.config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedConfigError("granite with partial_rotary_factor != 1 (transformers applies it inconsistently)")
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})
    head_dim = data["attention"]["head_dim"]
    scale = float(get("attention_multiplier"))
    if scale != head_dim**-0.5:
        data["attention"]["scale"] = scale
    embedding = float(get("embedding_multiplier"))
    if embedding != 1.0:
        data["embeddings"]["scale"] = embedding
    data["embeddings"]["logit_scale"] = 1.0 / float(get("logits_scaling"))
    data["block"] = {"kind": "pre-norm", "residual_scale": float(get("residual_multiplier"))}
    return data


# ============================================================================================ spec -> config
def _reciprocal(value: float) -> float:
    """The shortest decimal whose reciprocal is exactly `value` (1 / value itself when none is shorter)."""
    inverse = 1.0 / value
    for digits in range(1, 18):
        candidate = float(f"{inverse:.{digits}g}")
        if 1.0 / candidate == value:
            return candidate
    return inverse


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    config = llama_like_config(spec)
    attn, block, embeddings = spec.attention, spec.block, spec.embeddings
    needs(block.kind == "pre-norm" and not block.residual_from_norm, "block")
    needs(spec.norm.kind == "rmsnorm" and not spec.norm.offset, "norm")
    needs(len({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o}) == 1, "attention.bias")
    needs(attn.qk_norm is None and attn.softcap is None and not attn.inverse_layer_scale, "attention.qk_norm")
    needs(all(spec.window_for_layer(i) is None for i in range(spec.n_layers)), "attention.window")
    needs(spec.layers is None, "layers")
    needs(embeddings.scale != "sqrt-d-model", "embeddings.scale")  # Granite's multiplier is a plain float
    needs(embeddings.logit_softcap is None and not embeddings.norm and not embeddings.scale_head, "embeddings")
    if spec.head_dim == spec.d_model // attn.heads and spec.d_model % attn.heads == 0:
        del config["head_dim"]  # no field of GraniteConfig; its modeling file reads one when present
    scale = embeddings.scale
    return config | {
        "attention_bias": attn.bias.q,
        "mlp_bias": spec.mlp.bias,
        "attention_multiplier": attn.scale if attn.scale is not None else spec.head_dim**-0.5,
        "embedding_multiplier": 1.0 if scale is None else scale,
        "residual_multiplier": block.residual_scale,
        "logits_scaling": _reciprocal(embeddings.logit_scale),
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(LLAMA_LAYER)


FAMILY = Family(
    name="granite",
    model_types=("granite",),
    architectures={"granite": "GraniteForCausalLM"},
    defaults={"granite": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
)
