"""StarCoder2 (`starcoder2`): LayerNorm with bias, a plain biased MLP (`c_fc` / `c_proj`), biased GQA, RoPE, one
sliding window on every layer.

Matched against transformers 5.25.0 `models/starcoder2/configuration_starcoder2.py` and `modeling_starcoder2.py`:
`use_bias` puts a bias on q, k, v, o, c_fc and c_proj (never on lm_head); both norms and the final norm are
`nn.LayerNorm(eps=norm_epsilon)`; `sliding_window`, when set, masks every layer (`create_sliding_window_causal_mask`
for the whole stack, the same window passed to each attention). `embedding_dropout`, `residual_dropout` and
`attention_dropout` act in training only (`training=self.training`): nothing of them in the spec.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError
from archspec.interop.families.common import (
    PLAIN_TO_HF,
    Getter,
    hf_name,
    llama_key_map,
    needs,
    plain_activation,
    read_rope,
    rope_parameters,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import GATED_ACTIVATIONS, RopeSpec, Spec

# Class defaults of transformers 5.25's Starcoder2Config, for keys a config.json may leave out
DEFAULTS: dict[str, Any] = dict(
    num_key_value_heads=2,
    hidden_act="gelu_pytorch_tanh",
    max_position_embeddings=4096,
    norm_epsilon=1e-5,
    bos_token_id=50256,
    eos_token_id=50256,
    sliding_window=None,
    use_bias=True,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)

# PLAIN_TO_HF writes gelu_new for gelu-tanh; StarCoder2's own name is gelu_pytorch_tanh (the same function)
_TO_HF = PLAIN_TO_HF | {"gelu-tanh": "gelu_pytorch_tanh"}


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    heads = get.require("num_attention_heads")
    hidden = get.require("hidden_size")
    bias = bool(get("use_bias"))
    attention: dict[str, Any] = {
        "heads": heads,
        "kv_heads": get("num_key_value_heads") or heads,
        "head_dim": get.config.get("head_dim") or hidden // heads,
        "bias": bias,
    }
    if get("sliding_window") is not None:
        attention["window"] = get("sliding_window")
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": attention,
        # the default rope of this modeling file rotates the whole head (it reads no partial_rotary_factor)
        "position": read_rope(get, fraction=1.0),
        "norm": {"kind": "layernorm", "eps": get("norm_epsilon")},
        "block": "pre-norm",
        "mlp": {
            "activation": plain_activation(get("hidden_act")),
            "d_ff": get.require("intermediate_size"),
            "bias": bias,
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn = spec.attention
    needs(attn.kind == "mha", "attention.kind")
    needs(isinstance(spec.position, RopeSpec), "position.kind")
    needs(spec.mlp.activation not in GATED_ACTIVATIONS, "mlp.activation")
    needs(spec.norm.kind == "layernorm" and bool(spec.norm.bias), "norm")
    needs({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o} == {spec.mlp.bias}, "attention.bias")  # one use_bias
    windows = {spec.window_for_layer(i) for i in range(spec.n_layers)}
    needs(len(windows) == 1, "attention.window_layers")  # one window on every layer, or none
    config = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": spec.kv_heads,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": hf_name(_TO_HF, spec.mlp.activation, "mlp.activation"),
        "norm_epsilon": spec.norm.eps,
        "use_bias": spec.mlp.bias,
        "sliding_window": windows.pop(),
        "max_position_embeddings": spec.context_length,
        "rope_parameters": rope_parameters(spec),
        "tie_word_embeddings": spec.embeddings.tied,
    }
    if spec.head_dim != spec.d_model // attn.heads:  # no field of the config class; the modeling file reads it
        config["head_dim"] = spec.head_dim
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = {
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.q": "self_attn.q_proj",
        "attn.k": "self_attn.k_proj",
        "attn.v": "self_attn.v_proj",
        "attn.o": "self_attn.o_proj",
        "mlp.up": "mlp.c_fc",
        "mlp.down": "mlp.c_proj",
    }
    return llama_key_map(layer)


# ============================================================================================ GGUF
# llama.cpp's converter writes architecture "starcoder2" with HF's names and rows (NeoX-style RoPE, no permutation);
# its graph: LayerNorm, GELU (tanh), biases on every projection, no sliding window.
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    return {
        "norm_epsilon": get("attention.layer_norm_epsilon"),
        "use_bias": "blk.0.attn_q.bias" in tensors,
        "hidden_act": "gelu_pytorch_tanh",
        "sliding_window": None,
    }


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config["hidden_act"] != "gelu_pytorch_tanh":
        raise ExportError(f"starcoder2 with {config['hidden_act']!r}: llama.cpp's starcoder2 runs gelu (tanh)")
    if config["sliding_window"] is not None and config["sliding_window"] < config["max_position_embeddings"]:
        raise ExportError("starcoder2 with a sliding window: llama.cpp's starcoder2 attends to every position")
    if not config["use_bias"]:
        raise ExportError("starcoder2 without biases: llama.cpp's starcoder2 requires them")
    return {"attention.layer_norm_epsilon": config["norm_epsilon"]}


GGUF = GgufMapping(
    archs={"starcoder2": "starcoder2"},
    export_arch={"starcoder2": "starcoder2"},
    config=_gguf_config,
    metadata=_gguf_metadata,
)

FAMILY = Family(
    name="starcoder2",
    model_types=("starcoder2",),
    architectures={"starcoder2": "Starcoder2ForCausalLM"},
    defaults={"starcoder2": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
