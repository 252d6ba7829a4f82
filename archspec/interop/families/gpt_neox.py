"""GPT-NeoX (`gpt_neox`, Pythia): partial RoPE, LayerNorm, parallel residual, a fused query_key_value.

Matched against transformers 5.25.0 `models/gpt_neox/configuration_gpt_neox.py` and `modeling_gpt_neox.py`;
old configs give the rotary fraction as `rotary_pct` and the base as `rotary_emb_base`, old checkpoints the head
as `embed_out`.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError
from archspec.interop.families.common import (
    PLAIN_TO_HF,
    Getter,
    fused_qkv,
    hf_name,
    needs,
    plain_activation,
    qkv_blocks_to_grouped,
    qkv_grouped_to_blocks,
    read_rope,
    rope_parameters,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import RopeSpec, Spec

DEFAULTS: dict[str, Any] = dict(
    hidden_act="gelu",
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    tie_word_embeddings=False,
    use_parallel_residual=True,
    attention_bias=True,
    rope_theta=10000.0,
    partial_rotary_factor=0.25,
    bos_token_id=0,
    eos_token_id=2,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    parallel = bool(get("use_parallel_residual"))
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": get.require("hidden_size"),
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": {"heads": get.require("num_attention_heads"), "bias": bool(get("attention_bias"))},
        "position": read_rope(get),
        "norm": {"kind": "layernorm", "eps": get("layer_norm_eps")},
        "block": {"kind": "parallel", "parallel_norms": 2} if parallel else "pre-norm",
        "mlp": {
            "activation": plain_activation(get("hidden_act")),
            "d_ff": get.require("intermediate_size"),
            "bias": True,
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    needs(isinstance(spec.position, RopeSpec), "position.kind")
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.attention.heads,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": hf_name(PLAIN_TO_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_eps": spec.norm.eps,
        "use_parallel_residual": spec.block.kind == "parallel",
        "attention_bias": spec.attention.bias.q,
        "max_position_embeddings": spec.context_length,
        "rope_parameters": rope_parameters(spec, with_fraction=True),
        "tie_word_embeddings": spec.embeddings.tied,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    top = {"embed": "gpt_neox.embed_in", "final_norm": "gpt_neox.final_layer_norm", "lm_head": "lm_head"}
    layer = {
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.o": "attention.dense",
        "mlp.up": "mlp.dense_h_to_4h",
        "mlp.down": "mlp.dense_4h_to_h",
    }
    aliases = {"lm_head.weight": "embed_out.weight"}
    return KeyMap(top, "gpt_neox.layers.{i}.", layer, fused_qkv("attention"), aliases=aliases, base_prefix="gpt_neox.")


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/gptneox.py`) writes "gptneox" with query_key_value's rows regrouped as
# [q | k | v] (`common.qkv_grouped_to_blocks`), the rotated width as rope.dimension_count and use_parallel_residual.
# Its graph runs GELU as tanh from an f16 table, whatever hidden_act says (Pythia's is erf GELU).
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    head_dim = get("embedding_length") // get("attention.head_count")
    fraction = (get("rope.dimension_count") or head_dim) / head_dim
    rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base") or 10000.0)}
    return {
        "use_parallel_residual": bool(get("use_parallel_residual")),
        "layer_norm_eps": get("attention.layer_norm_epsilon"),
        "attention_bias": "blk.0.attn_qkv.bias" in tensors,
        "hidden_act": "gelu",
        "rotary_pct": fraction,
        "rope_parameters": rope | {"partial_rotary_factor": fraction},
    }


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config["hidden_act"] not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise ExportError(f"gpt_neox with {config['hidden_act']!r}: llama.cpp's gptneox runs gelu")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    fraction = config["rope_parameters"].get("partial_rotary_factor", config.get("rotary_pct", 1.0))
    return {
        "rope.dimension_count": int(fraction * head_dim),
        "use_parallel_residual": bool(config["use_parallel_residual"]),
        "attention.layer_norm_epsilon": config["layer_norm_eps"],
    }


def _regroup(to_llama_cpp: bool) -> Any:
    def fix(name: str, tensor: Any, config: dict[str, Any]) -> Any:
        if ".query_key_value." not in name:
            return tensor
        heads = config["num_attention_heads"]
        return (qkv_grouped_to_blocks if to_llama_cpp else qkv_blocks_to_grouped)(tensor, heads, heads)

    return fix


GGUF = GgufMapping(
    archs={"gptneox": "gpt_neox"},
    export_arch={"gpt_neox": "gptneox"},
    config=_gguf_config,
    metadata=_gguf_metadata,
    from_gguf=_regroup(False),
    to_gguf=_regroup(True),
)

FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    architectures={"gpt_neox": "GPTNeoXForCausalLM"},
    defaults={"gpt_neox": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
