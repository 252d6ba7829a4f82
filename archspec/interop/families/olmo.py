"""OLMo 2 and OLMo 3: a norm on each sublayer's output only (x + norm(f(x))), RMSNorm over the whole q and k
projections, SwiGLU, RoPE; OLMo 3 adds sliding-window layers and RoPE per layer type.

Matched against transformers 5.25.0 `models/{olmo2,olmo3}/configuration_*.py` and `modeling_*.py`:

- the decoder layer has no input norms: attention -> `post_attention_layernorm` -> residual add, MLP ->
  `post_feedforward_layernorm` -> residual add (archspec's output-norm block); final `model.norm`.
- `q_norm` is an RMSNorm of width num_attention_heads * head_dim and `k_norm` of num_key_value_heads * head_dim,
  applied to the q_proj / k_proj outputs before the view into heads and before RoPE (qk_norm over: projection),
  with the same `rms_norm_eps` as the block norms.
- `attention_bias` is one flag for q, k, v *and* o; the MLP never has a bias (there is no `mlp_bias` key).
- the config classes have no `head_dim` field, but the attention and the rotary embedding read
  `getattr(config, "head_dim", ...)`, so a config.json that carries one is honoured; else hidden_size // heads.
- OLMo 3: `layer_types` (default: three sliding then one full, `(i + 1) % 4`), one `sliding_window` (4096);
  5.x nests `rope_parameters` per layer type. A 4.x config's `rope_theta` / `rope_scaling` go to the full
  layers only (`Olmo3Config.convert_rope_params_to_dict`): its `kwargs.pop("rope_theta", ...)` is evaluated for
  the full layers first, so the sliding layers get `default_theta` (500000), not `rope_theta`, unless their own
  nested entry says otherwise. This reader follows 5.25; 4.x used `rope_theta` on both (the published OLMo 3
  configs have rope_theta 500000, where the two agree). A flat (un-nested) 5.x `rope_parameters` is ignored by
  `Olmo3Config`; it is refused here rather than silently dropped.

Not expressible (bfloat16/float16 rounding only; float32 and float64 agree exactly): `Olmo2RMSNorm` /
`Olmo3RMSNorm` return `(w * x_f32).to(dtype)`, i.e. the weight multiply happens in float32 before the cast,
where archspec's RMSNorm casts first (LLaMA's order); and OLMo's rotary embedding keeps cos/sin in float32
(`q * cos` computed in float32, cast back after the rotation), where archspec casts cos/sin to the model dtype.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError, UnsupportedConfigError
from archspec.interop.families.common import (
    FULL,
    LLAMA_LAYER,
    SLIDING,
    Getter,
    layer_types_of,
    layers_section,
    llama_key_map,
    llama_like,
    llama_like_config,
    needs,
    read_layer_types,
    read_rope,
    rope_parameters,
    single_window,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import NoPositionSpec, QKNormSpec, RopeSpec, Spec

_SHARED = dict(
    num_key_value_heads=None,
    hidden_act="silu",
    max_position_embeddings=2048,
    pad_token_id=1,
    bos_token_id=None,
    eos_token_id=50279,
    tie_word_embeddings=False,
    attention_bias=False,
    rms_norm_eps=1e-5,
)
OLMO3_DEFAULT_THETA = 500000.0  # Olmo3Config.default_theta
DEFAULTS: dict[str, dict[str, Any]] = {
    "olmo2": dict(_SHARED, rope_theta=10000.0),
    "olmo3": dict(_SHARED, rope_theta=OLMO3_DEFAULT_THETA, sliding_window=4096),
}

# The checkpoint names of a block with only output norms (OLMo 2 / 3, EXAONE 4): no input_layernorm, and
# post_attention_layernorm is the attention's *output* norm
OUTPUT_NORM_LAYER = {
    **{key: name for key, name in LLAMA_LAYER.items() if key not in ("attn_norm", "mlp_norm")},
    "attn_out_norm": "post_attention_layernorm",
    "mlp_out_norm": "post_feedforward_layernorm",
}


# ============================================================================================ config -> spec
def _rope_of(get: Getter, layer_type: str) -> dict[str, Any]:
    """OLMo 3's RoPE of one layer type, as Olmo3Config.convert_rope_params_to_dict resolves it (module docstring)."""
    params = dict(get.config.get("rope_parameters") or {})
    flat = sorted(set(params) - {SLIDING, FULL})
    if flat:
        raise UnsupportedConfigError(
            f"olmo3 rope_parameters must be nested per layer type ({SLIDING}, {FULL}); got the keys {flat}, "
            "which Olmo3Config ignores"
        )
    own = dict(params.get(layer_type) or {"rope_type": "default"})
    if layer_type == FULL:
        own.update(get.config.get("rope_scaling") or {})
        own.setdefault("rope_theta", get.config.get("rope_theta", OLMO3_DEFAULT_THETA))
    else:
        own.setdefault("rope_theta", OLMO3_DEFAULT_THETA)
    config = {k: v for k, v in get.config.items() if k not in ("rope_parameters", "rope_scaling", "rope_theta")}
    return read_rope(Getter(config | {"rope_parameters": own}, get.defaults), fraction=1.0)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})
    data["attention"]["qk_norm"] = {"over": "projection"}
    data["block"] = "output-norm"
    data["mlp"]["bias"] = False  # Olmo2MLP / Olmo3MLP: never a bias, whatever mlp_bias says
    if model_type == "olmo2":
        return data
    n_layers = data["n_layers"]
    types = read_layer_types(get, n_layers, lambda i: SLIDING if (i + 1) % 4 else FULL)
    window = get("sliding_window")
    if window is None:  # no window: every layer is full attention
        types = [FULL] * n_layers
    ropes = {layer_type: _rope_of(get, layer_type) for layer_type in (FULL, SLIDING)}
    if len(set(types)) == 1:
        data["position"] = ropes[types[0]]
        if types[0] == SLIDING:
            data["attention"]["window"] = window
        return data
    data["position"] = ropes[FULL]
    sliding: dict[str, Any] = {"window": window}
    if ropes[SLIDING] != ropes[FULL]:
        sliding["position"] = ropes[SLIDING]
    names = ["sliding" if t == SLIDING else "full" for t in types]
    data["layers"] = layers_section({"sliding": sliding, "full": {}}, names)
    return data


# ============================================================================================ spec -> config
def _rope_of_layer(spec: Spec, layer: int) -> dict[str, Any]:
    position = spec.position_for_layer(layer)
    needs(isinstance(position, RopeSpec) and position.fraction == 1.0 and position.pairing == "half", "position")
    return rope_parameters(spec.model_copy(update={"position": position}))


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn, norm, embeddings = spec.attention, spec.norm, spec.embeddings
    needs(attn.kind == "mha", "attention.kind")
    needs(spec.block.kind == "output-norm", "block.kind")
    needs(norm.kind == "rmsnorm" and not norm.offset, "norm")
    needs(attn.qk_norm == QKNormSpec(over="projection"), "attention.qk_norm")
    needs(len({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o}) == 1, "attention.bias")
    needs(not spec.mlp.bias, "mlp.bias")
    needs(attn.scale is None and attn.softcap is None, "attention.scale")
    needs(embeddings.scale is None and embeddings.logit_scale == 1.0, "embeddings.scale")
    needs(embeddings.logit_softcap is None, "embeddings.logit_softcap")
    needs(not any(isinstance(spec.position_for_layer(i), NoPositionSpec) for i in range(spec.n_layers)), "position")
    if model_type == "olmo2":
        needs(spec.layers is None and attn.window is None, "attention.window")
        return llama_like_config(spec) | {"rope_parameters": _rope_of_layer(spec, 0), "attention_bias": attn.bias.q}
    config = llama_like_config(spec.model_copy(update={"position": spec.position_for_layer(0)}))
    types = layer_types_of(spec)
    ropes = {t: _rope_of_layer(spec, types.index(t)) for t in (SLIDING, FULL) if t in types}
    config |= {
        "attention_bias": attn.bias.q,
        "layer_types": types,
        # Olmo3Model builds the sliding mask whatever the layer types: without sliding layers, the class default
        "sliding_window": single_window(spec) or DEFAULTS["olmo3"]["sliding_window"],
        "rope_parameters": {SLIDING: ropes.get(SLIDING, ropes.get(FULL)), FULL: ropes.get(FULL, ropes.get(SLIDING))},
    }
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(OUTPUT_NORM_LAYER)


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/olmo.py`) writes OLMo 2 as "olmo2" with HF's names and rows (NeoX-style RoPE,
# no permutation): output norms after attention and MLP, q/k norms over the whole projection. OLMo 3's sliding
# layers (sliding_window_pattern) are not mapped here.
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    if get("attention.sliding_window") is not None:
        raise UnsupportedConfigError("olmo2 with olmo2.attention.sliding_window (OLMo 3's pattern) is not mapped")
    return {"attention_bias": "blk.0.attn_q.bias" in tensors}


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if model_type != "olmo2" or config.get("attention_bias"):
        raise ExportError(f"{model_type}: only OLMo 2 without biases is written as GGUF")
    return {}


GGUF = GgufMapping(
    archs={"olmo2": "olmo2"}, export_arch={"olmo2": "olmo2"}, config=_gguf_config, metadata=_gguf_metadata
)

FAMILY = Family(
    name="olmo",
    model_types=("olmo2", "olmo3"),
    architectures={"olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
