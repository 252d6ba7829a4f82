"""Phi-3 and Phi-4-mini (`phi3`): Llama's block with a fused qkv_proj and gate_up_proj, partial RoPE, LongRoPE.

Matched against transformers 5.25.0 `models/phi3/configuration_phi3.py`, `modeling_phi3.py` and
`modeling_rope_utils.py` (`_compute_longrope_parameters`, `dynamic_rope_update`):

- `qkv_proj` rows: all query heads, then the key heads, then the value heads (heads x head_dim, kv x head_dim,
  kv x head_dim); `gate_up_proj` rows: gate, then up (`chunk(2)` of its output, `up * act(gate)`). No biases.
- `partial_rotary_factor` (Phi-4-mini: 0.75) rotates the first int(head_dim x factor) dims of each head, rotate_half
  pairing within them; the rest pass through.
- RoPE types: default or longrope (4.x's `su` and, in Phi3Config, `yarn` mean longrope; nothing else is accepted
  by Phi3Config). The top-level `original_max_position_embeddings` (class default 4096) wins over the one in
  `rope_parameters` (`standardize_rope_params`). The short factors apply while the largest position id + 1 is at
  most original_max_position_embeddings, the long ones past it (archspec: while a call's keys fit).
- `sliding_window`, when set, masks every layer. `embd_pdrop` is never used; `resid_pdrop` and `attention_dropout`
  act in training only.

Generation: Phi3ForCausalLM.prepare_inputs_for_generation drops the cache once the sequence reaches
original_max_position_embeddings + 1 with a cache of at most that length, and re-encodes everything (with the long
factors). archspec's cached generate keeps the keys it cached with the short factors; without a cache
(`use_cache=False`) each step re-encodes, as transformers does past the switch.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError, UnsupportedConfigError
from archspec.interop.families.common import (
    LLAMA_LAYER,
    Getter,
    llama_key_map,
    llama_like,
    llama_like_config,
    needs,
    read_rope,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap, Split, split_rows
from archspec.spec.schema import LongRopeScaling, Spec

# Class defaults of transformers 5.25's Phi3Config, for keys a config.json may leave out
DEFAULTS: dict[str, Any] = dict(
    num_key_value_heads=None,  # the query head count
    hidden_act="silu",
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    partial_rotary_factor=1.0,
    bos_token_id=1,
    eos_token_id=32000,
    pad_token_id=32000,
    sliding_window=None,
)

_LONGROPE_NAMES = ("longrope", "su", "yarn")  # Phi3Config.convert_rope_params_to_dict: su and yarn are longrope


def _rope_params(get: Getter) -> dict[str, Any]:
    params = dict(get.config.get("rope_scaling") or {})
    params.update(get.config.get("rope_parameters") or {})
    return params


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    params = _rope_params(get)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", *_LONGROPE_NAMES):
        raise UnsupportedConfigError(f"phi3: rope_type {rope_type!r} is not supported (Phi3Config: default, longrope)")
    config = dict(get.config)
    if rope_type in _LONGROPE_NAMES:
        # the top-level original_max_position_embeddings (or the class default) wins over rope_parameters'
        params |= {"rope_type": "longrope", "original_max_position_embeddings": get("original_max_position_embeddings")}
        config |= {"rope_parameters": params, "rope_scaling": None}
    data = llama_like(get, bias={"q": False, "k": False, "v": False, "o": False})
    data["position"] = read_rope(Getter(config, get.defaults))
    if get("sliding_window") is not None:
        data["attention"]["window"] = get("sliding_window")
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    config = llama_like_config(spec, rope_fraction=True)
    attn = spec.attention
    if spec.head_dim == spec.d_model // attn.heads:
        del config["head_dim"]  # no field of Phi3Config; its modeling file reads one when present
    windows = {spec.window_for_layer(i) for i in range(spec.n_layers)}
    needs(len(windows) == 1, "attention.window_layers")  # one window on every layer, or none
    config["sliding_window"] = windows.pop()
    scaling = spec.position.scaling  # type: ignore[union-attr]
    needs(scaling is None or isinstance(scaling, LongRopeScaling), "position.scaling")
    if isinstance(scaling, LongRopeScaling):
        # Phi3Config checks the factor counts against hidden_size // num_attention_heads, not head_dim
        needs(spec.head_dim == spec.d_model // attn.heads, "attention.head_dim")
        config["original_max_position_embeddings"] = scaling.original_context
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    fused = {f"attn.{part}": ("self_attn.qkv_proj", part) for part in "qkv"}
    fused |= {f"mlp.{part}": ("mlp.gate_up_proj", part) for part in ("gate", "up")}
    layer = {key: name for key, name in LLAMA_LAYER.items() if key not in fused}
    return llama_key_map(layer, fused=fused)


def fused_part(spec: Spec, part: str) -> Split:
    """qkv_proj rows [q heads | k heads | v heads] (not grouped per kv head); gate_up_proj as every family's."""
    if part in ("gate", "up"):
        return split_rows(spec, part)
    q_rows, kv_rows = spec.attention.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    start = {"q": 0, "k": q_rows, "v": q_rows + kv_rows}[part]
    stop = start + (q_rows if part == "q" else kv_rows)
    return lambda t: t[start:stop]


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/phi.py`, Phi3MiniModel) keeps qkv_proj and gate_up_proj fused (attn_qkv,
# ffn_up), writes the rotated width as rope.dimension_count and sliding_window = 0 for "none". LongRoPE's factors
# become rope_factors_long / rope_factors_short tensors, which archspec does not map (refused both ways).
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    if "rope_factors_long.weight" in tensors:
        raise UnsupportedConfigError(
            "phi3 with rope_factors_long / rope_factors_short tensors (LongRoPE) is not mapped"
        )
    config: dict[str, Any] = {"sliding_window": get("attention.sliding_window") or None}
    heads, rotated = get("attention.head_count"), get("rope.dimension_count")
    head_dim = get("attention.key_length") or get("embedding_length") // heads
    if rotated is not None and rotated != head_dim:
        config["partial_rotary_factor"] = rotated / head_dim
    return config


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config["rope_parameters"].get("rope_type", "default") != "default":
        raise ExportError(
            "phi3 with LongRoPE: its factors would be rope_factors_* tensors, which archspec does not write"
        )
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    fraction = config["rope_parameters"].get("partial_rotary_factor", 1.0)
    return {"rope.dimension_count": int(head_dim * fraction), "attention.sliding_window": config["sliding_window"] or 0}


GGUF = GgufMapping(archs={"phi3": "phi3"}, export_arch={"phi3": "phi3"}, config=_gguf_config, metadata=_gguf_metadata)

FAMILY = Family(
    name="phi3",
    model_types=("phi3",),
    architectures={"phi3": "Phi3ForCausalLM"},
    defaults={"phi3": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    fused_part=fused_part,
    gguf=GGUF,
)
