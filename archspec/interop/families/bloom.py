"""BLOOM (`bloom`): ALiBi, LayerNorm after the embeddings, a fused query_key_value of [heads, 3, head_dim] rows.

Matched against transformers 5.25.0 `models/bloom/configuration_bloom.py` and `modeling_bloom.py`; the config
accepts the old names `n_embed` (hidden_size), `n_layer` and `n_head`.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError
from archspec.interop.families.common import (
    BLOOM_FALCON_LAYER,
    Getter,
    fused_qkv,
    qkv_blocks_to_grouped,
    qkv_grouped_to_blocks,
)
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap
from archspec.spec.schema import Spec

DEFAULTS: dict[str, Any] = dict(
    layer_norm_epsilon=1e-5,
    apply_residual_connection_post_layernorm=False,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    seq_length=2048,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    hidden = get.config.get("hidden_size") or get.require("n_embed")
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.config.get("n_layer") or get.require("num_hidden_layers"),
        "context_length": get("seq_length"),
        "attention": {"heads": get.config.get("n_head") or get.require("num_attention_heads"), "bias": True},
        "position": "alibi",
        "norm": {"kind": "layernorm", "eps": get("layer_norm_epsilon")},
        "block": {"kind": "pre-norm", "residual_from_norm": bool(get("apply_residual_connection_post_layernorm"))},
        "mlp": {"activation": "gelu-tanh", "d_ff": 4 * hidden, "bias": True},
        "embeddings": {"tied": bool(get("tie_word_embeddings")), "norm": True},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "n_layer": spec.n_layers,
        "n_head": spec.attention.heads,
        "seq_length": spec.context_length,
        "layer_norm_epsilon": spec.norm.eps,
        "apply_residual_connection_post_layernorm": spec.block.residual_from_norm,
        "tie_word_embeddings": spec.embeddings.tied,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", **BLOOM_FALCON_LAYER}
    top = {
        "embed": "transformer.word_embeddings",
        "embed_norm": "transformer.word_embeddings_layernorm",
        "final_norm": "transformer.ln_f",
        "lm_head": "lm_head",
    }
    return KeyMap(top, "transformer.h.{i}.", layer, fused_qkv("self_attention"), base_prefix="transformer.")


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/bloom.py`) writes "bloom" with query_key_value's rows regrouped as [q | k | v]
# (`common.qkv_grouped_to_blocks`); its graph: ALiBi, the embedding LayerNorm, GELU (tanh).
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    return {
        "n_embed": get("embedding_length"),
        "layer_norm_epsilon": get("attention.layer_norm_epsilon"),
        "seq_length": get("context_length"),
        "apply_residual_connection_post_layernorm": False,
    }


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config.get("apply_residual_connection_post_layernorm"):
        raise ExportError("bloom with the residual taken after the norm: llama.cpp's bloom has none")
    return {
        "embedding_length": config["hidden_size"],
        "block_count": config["n_layer"],
        "attention.head_count": config["n_head"],
        "attention.head_count_kv": config["n_head"],
        "feed_forward_length": 4 * config["hidden_size"],
        "context_length": config["seq_length"],
        "attention.layer_norm_epsilon": config["layer_norm_epsilon"],
    }


def _regroup(to_llama_cpp: bool) -> Any:
    def fix(name: str, tensor: Any, config: dict[str, Any]) -> Any:
        if ".query_key_value." not in name:
            return tensor
        heads = config.get("n_head") or config["num_attention_heads"]
        return (qkv_grouped_to_blocks if to_llama_cpp else qkv_blocks_to_grouped)(tensor, heads, heads)

    return fix


GGUF = GgufMapping(
    archs={"bloom": "bloom"},
    export_arch={"bloom": "bloom"},
    config=_gguf_config,
    metadata=_gguf_metadata,
    from_gguf=_regroup(False),
    to_gguf=_regroup(True),
)

FAMILY = Family(
    name="bloom",
    model_types=("bloom",),
    architectures={"bloom": "BloomForCausalLM"},
    defaults={"bloom": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
