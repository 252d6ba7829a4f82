"""Cohere (Command-R, Command R+) and Cohere 2 (Command R7B, Command A): one shared LayerNorm for parallel
attention and MLP, GPT-J's interleaved RoPE, a logit multiplier.

Matched against transformers 5.25.0 `models/cohere/{configuration,modeling}_cohere.py` and
`models/cohere2/{configuration,modeling}_cohere2.py`:

- `CohereLayerNorm` / `Cohere2LayerNorm`: (x - mean) / sqrt(var + eps) * w in float32, cast back after the weight;
  its `bias` argument is ignored (no bias tensor): norm layernorm with bias false, eps `layer_norm_eps`.
- `CohereDecoderLayer`: x + attn(n(x)) + mlp(n(x)) with the one `input_layernorm` (block parallel, parallel_norms 1);
  gated MLP `down(act(gate x) * up x)`, no MLP bias; `attention_bias` on q, k, v and o alike.
- RoPE: `rotate_half` pairs dims (2k, 2k + 1) (`x[..., ::2]`, `x[..., 1::2]`) and the rotary embedding repeats each
  frequency with `repeat_interleave(freqs, 2)`: pairing interleaved, over the whole head (`partial_rotary_factor`
  is never read by the default RoPE). `apply_rotary_pos_emb` rotates q and k in float32 and casts back.
- `CohereForCausalLM`: logits = lm_head(x) * `logit_scale` (embeddings.logit_scale); tied head by default.
- Cohere: `use_qk_norm` adds `CohereLayerNorm((heads, head_dim))` on q and `((kv_heads, head_dim))` on k, before
  RoPE, normalising each head's vector over head_dim with each head's own weight (qk_norm {per_head_weights: true}).
  `head_dim` is no field of CohereConfig, but a config.json's is kept and read by attention and RoPE alike.
  The class's default RoPE base is 500000 (`default_theta`), not 10000.
- Cohere 2: no qk norm; `head_dim` is forced to hidden_size // num_attention_heads (a config.json's is ignored);
  `layer_types` (default: `sliding_window_pattern`, 4, i.e. three sliding layers then one full) decide both the
  mask and the positions: a layer rotates q and k only when its attention has a sliding window, so the full
  (global) layers have no positions at all (the layers kind `full` with position none). `sliding_window` null
  is refused: Cohere2Model builds a sliding-window mask for every config and transformers then raises.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError, UnsupportedConfigError
from archspec.interop.families.common import (
    FULL,
    GATED_FROM_HF,
    GATED_TO_HF,
    LLAMA_LAYER,
    SLIDING,
    Getter,
    hf_name,
    layer_types_of,
    layers_section,
    llama_key_map,
    needs,
    read_layer_types,
    read_rope,
    rope_parameters,
    single_window,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import NoPositionSpec, RopeSpec, Spec

_SHARED = dict(
    hidden_act="silu",
    max_position_embeddings=8192,
    layer_norm_eps=1e-5,
    tie_word_embeddings=True,
    attention_bias=False,
    logit_scale=0.0625,
    num_key_value_heads=None,  # the query head count
    pad_token_id=0,
    bos_token_id=5,
    eos_token_id=255001,
)
# Class defaults of transformers 5.25's CohereConfig and Cohere2Config, for keys a config.json may leave out
DEFAULTS: dict[str, dict[str, Any]] = {
    "cohere": dict(_SHARED, rope_theta=500000.0, use_qk_norm=False),
    "cohere2": dict(_SHARED, rope_theta=10000.0, sliding_window=4096),
}
# one norm before the parallel attention and MLP: Llama's names without post_attention_layernorm
PARALLEL_LAYER = {key: name for key, name in LLAMA_LAYER.items() if key != "mlp_norm"}


# ============================================================================================ config -> spec
def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    heads, hidden, n_layers = (get.require(k) for k in ("num_attention_heads", "hidden_size", "num_hidden_layers"))
    if model_type == "cohere":
        head_dim = get.config.get("head_dim") or hidden // heads
    else:
        head_dim = hidden // heads  # Cohere2Config.__post_init__ overwrites any head_dim
    activation = get("hidden_act")
    if activation not in GATED_FROM_HF:
        raise UnsupportedConfigError(f"hidden_act {activation!r} is not supported for a gated MLP")
    logit_scale = get("logit_scale")
    if logit_scale is None:
        raise UnsupportedConfigError("logit_scale null (CohereForCausalLM multiplies the logits by it)")
    flag = bool(get("attention_bias"))
    attention: dict[str, Any] = {
        "heads": heads,
        "kv_heads": get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "bias": {"q": flag, "k": flag, "v": flag, "o": flag},
    }
    data: dict[str, Any] = {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": n_layers,
        "context_length": get("max_position_embeddings"),
        "attention": attention,
        "position": read_rope(get, fraction=1.0, pairing="interleaved"),
        "norm": {"kind": "layernorm", "eps": get("layer_norm_eps"), "bias": False},
        "block": {"kind": "parallel", "parallel_norms": 1},
        "mlp": {"activation": GATED_FROM_HF[activation], "d_ff": get.require("intermediate_size")},
        "embeddings": {"tied": bool(get("tie_word_embeddings")), "logit_scale": float(logit_scale)},
    }
    if model_type == "cohere":
        if get("use_qk_norm"):
            attention["qk_norm"] = {"per_head_weights": True}
        return data
    window = get("sliding_window")
    if window is None:
        raise UnsupportedConfigError(
            "cohere2 with sliding_window null: transformers builds a sliding-window mask for every Cohere2 model and "
            "refuses it"
        )
    period = get.config.get("sliding_window_pattern", 4)  # 4.x's key, which Cohere2Config still reads
    types = read_layer_types(get, n_layers, lambda i: SLIDING if (i + 1) % period else FULL)
    if all(t == SLIDING for t in types):  # every layer slides and rotates
        attention["window"] = window
    elif all(t == FULL for t in types):  # no layer slides, so none rotates
        data["position"] = {"kind": "none"}
    else:
        kinds = {"sliding": {"window": window}, "full": {"position": {"kind": "none"}}}
        data["layers"] = layers_section(kinds, ["sliding" if t == SLIDING else "full" for t in types])
    return data


# ============================================================================================ spec -> config
def _rope(spec: Spec) -> RopeSpec | None:
    """The one interleaved RoPE the rotating layers share (None when no layer rotates)."""
    found: RopeSpec | None = None
    for layer in range(spec.n_layers):
        position = spec.position_for_layer(layer)
        if isinstance(position, NoPositionSpec):
            continue
        needs(isinstance(position, RopeSpec), "position.kind")
        assert isinstance(position, RopeSpec)
        needs(position.pairing == "interleaved" and position.fraction == 1.0, "position")
        needs(not position.block_positions, "position.block_positions")
        needs(found is None or position == found, "layers.kinds.position")
        found = position
    return found


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn, norm, embeddings, block = spec.attention, spec.norm, spec.embeddings, spec.block
    needs(attn.kind == "mha", "attention.kind")
    needs(norm.kind == "layernorm" and not norm.bias, "norm")
    needs(block.kind == "parallel" and block.parallel_norms == 1, "block")
    needs(not spec.mlp.bias, "mlp.bias")
    needs(len({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o}) == 1, "attention.bias")
    needs(attn.scale is None and attn.softcap is None and not attn.inverse_layer_scale, "attention.scale")
    needs(embeddings.scale is None and embeddings.logit_softcap is None, "embeddings.scale")
    needs(not embeddings.norm and not embeddings.scale_head, "embeddings.norm")
    rope = _rope(spec)
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": hf_name(GATED_TO_HF, spec.mlp.activation, "mlp.activation"),
        "max_position_embeddings": spec.context_length,
        "layer_norm_eps": norm.eps,
        "attention_bias": attn.bias.q,
        "logit_scale": embeddings.logit_scale,
        "tie_word_embeddings": embeddings.tied,
    }
    if rope is not None:
        config["rope_parameters"] = rope_parameters(spec.model_copy(update={"position": rope}))
    if model_type == "cohere":
        needs(rope is not None and isinstance(spec.position, RopeSpec) and spec.layers is None, "position")
        needs(all(spec.window_for_layer(i) is None for i in range(spec.n_layers)), "attention.window")
        qk_norm = attn.qk_norm
        needs(qk_norm is None or (qk_norm.over == "head" and qk_norm.per_head_weights and not qk_norm.after_rope),
              "attention.qk_norm")  # fmt: skip
        config["use_qk_norm"] = qk_norm is not None
        return config
    needs(attn.qk_norm is None, "attention.qk_norm")
    needs(spec.d_model % attn.heads == 0 and spec.head_dim == spec.d_model // attn.heads, "attention.head_dim")
    types = layer_types_of(spec)
    for layer, layer_type in enumerate(types):  # the sliding layers rotate, the full ones have no positions
        rotates = isinstance(spec.position_for_layer(layer), RopeSpec)
        needs(rotates == (layer_type == SLIDING), "layers.kinds.position")
    window = single_window(spec)
    # every Cohere2 model builds a sliding-window mask: with no sliding layer the window is never applied
    config["sliding_window"] = window if window is not None else DEFAULTS["cohere2"]["sliding_window"]
    config["layer_types"] = types
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(PARALLEL_LAYER)


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/command_r.py`) writes Cohere as "command-r" and Cohere2 as "cohere2", with HF's
# names and rows (Cohere's RoPE already pairs adjacent dims, as llama.cpp's), `logit_scale` and LayerNorm's eps.
# cohere2: a window on three layers of four, the fourth without positions (HF's default layer_types).
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "layer_norm_eps": get("attention.layer_norm_epsilon"),
        "logit_scale": get("logit_scale"),
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "hidden_act": "silu",
    }
    if model_type == "cohere":
        return config | {"use_qk_norm": "blk.0.attn_q_norm.weight" in tensors}
    return config | {"sliding_window": get("attention.sliding_window")}


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config["hidden_act"] != "silu" or config["attention_bias"]:
        raise ExportError(f"{model_type} other than SwiGLU without biases: llama.cpp's has exactly that")
    data: dict[str, Any] = {
        "attention.layer_norm_epsilon": config["layer_norm_eps"],
        "logit_scale": config["logit_scale"],
    }
    if model_type == "cohere2":
        expected = [
            "full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(config["num_hidden_layers"])
        ]
        if config["layer_types"] != expected:
            raise ExportError("cohere2 whose layer pattern is not three sliding layers then a full one: llama.cpp's is")
        data["attention.sliding_window"] = config["sliding_window"]
        data["rope.dimension_count"] = config["head_dim"]
    return data


GGUF = GgufMapping(
    archs={"command-r": "cohere", "cohere2": "cohere2"},
    export_arch={"cohere": "command-r", "cohere2": "cohere2"},
    config=_gguf_config,
    metadata=_gguf_metadata,
)

FAMILY = Family(
    name="cohere",
    model_types=("cohere", "cohere2"),
    architectures={"cohere": "CohereForCausalLM", "cohere2": "Cohere2ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
