"""Falcon (`falcon`): RoPE, LayerNorm, parallel attention and MLP, multi-query or grouped fused QKV.

Matched against transformers 5.25.0 `models/falcon/configuration_falcon.py` and `modeling_falcon.py`. Three
layouts: Falcon-7B (multi-query, one norm for the parallel branches), multi-head Falcon, and the new decoder
architecture of Falcon-40B/180B (grouped kv heads, `ln_attn` / `ln_mlp`). `alibi=True` (Falcon-RW) adds ALiBi
once, through the attention mask, after the q.k scale: slopes * key position rounded to bfloat16 (whatever the
model's dtype), divided by sqrt(head_dim); RoPE is then not applied. That is `position: {kind: alibi, scaled: true,
precision: bfloat16}`.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError
from archspec.interop.families.common import (
    BLOOM_FALCON_LAYER,
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
from archspec.spec.schema import AlibiSpec, RopeSpec, Spec

FALCON_ALIBI: dict[str, Any] = {"kind": "alibi", "scaled": True, "precision": "bfloat16"}

DEFAULTS: dict[str, Any] = dict(
    num_ln_in_parallel_attn=None,
    layer_norm_epsilon=1e-5,
    alibi=False,
    new_decoder_architecture=False,
    multi_query=True,
    parallel_attn=True,
    bias=False,
    max_position_embeddings=2048,
    ffn_hidden_size=None,
    activation="gelu",
    tie_word_embeddings=True,
    rope_theta=10000.0,
    bos_token_id=11,
    eos_token_id=11,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    hidden, heads = get.require("hidden_size"), get.require("num_attention_heads")
    new_arch = bool(get("new_decoder_architecture"))
    if new_arch:
        kv_heads = get.config.get("num_kv_heads") or heads
    else:
        kv_heads = 1 if get("multi_query") else heads
    if get("parallel_attn") or new_arch:
        norms = (get("num_ln_in_parallel_attn") or 2) if new_arch else 1
        block: dict[str, Any] = {"kind": "parallel", "parallel_norms": norms}
    else:
        block = {"kind": "pre-norm"}
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.require("num_hidden_layers"),
        "context_length": get("max_position_embeddings"),
        "attention": {"heads": heads, "kv_heads": kv_heads, "bias": bool(get("bias"))},
        "position": dict(FALCON_ALIBI) if get("alibi") else read_rope(get, fraction=1.0),
        "norm": {"kind": "layernorm", "eps": get("layer_norm_epsilon")},
        "block": block,
        "mlp": {
            "activation": plain_activation(get("activation")),
            "d_ff": get("ffn_hidden_size") or 4 * hidden,
            "bias": bool(get("bias")),
        },
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    alibi = isinstance(spec.position, AlibiSpec)
    needs(isinstance(spec.position, RopeSpec) or (alibi and spec.position.scaled), "position.kind")
    heads, kv_heads, block = spec.attention.heads, spec.kv_heads, spec.block
    old_layout = kv_heads in (1, heads) and not (block.kind == "parallel" and block.parallel_norms == 2)
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "new_decoder_architecture": not old_layout,
        "multi_query": kv_heads == 1,
        "parallel_attn": block.kind == "parallel",
        "num_ln_in_parallel_attn": None if old_layout else block.parallel_norms,
        "bias": spec.attention.bias.q,
        "alibi": alibi,
        "ffn_hidden_size": spec.mlp.d_ff,
        "activation": hf_name(PLAIN_TO_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_epsilon": spec.norm.eps,
        "max_position_embeddings": spec.context_length,
        **({} if alibi else {"rope_parameters": rope_parameters(spec)}),
        "tie_word_embeddings": spec.embeddings.tied,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    """Falcon's norms depend on its layout: two (`ln_attn`, `ln_mlp`), one shared, or pre-norm's two."""
    if spec.block.kind == "parallel" and spec.block.parallel_norms == 2:
        norms = {"attn_norm": "ln_attn", "mlp_norm": "ln_mlp"}
    elif spec.block.kind == "parallel":
        norms = {"attn_norm": "input_layernorm"}
    else:
        norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    top = {"embed": "transformer.word_embeddings", "final_norm": "transformer.ln_f", "lm_head": "lm_head"}
    layer = {**norms, **BLOOM_FALCON_LAYER}
    return KeyMap(top, "transformer.h.{i}.", layer, fused_qkv("self_attention"), base_prefix="transformer.")


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/falcon.py`) writes "falcon" with query_key_value's rows regrouped as
# [q heads | k heads | v heads] (`common.qkv_grouped_to_blocks`, tensor_data_layout "jploski"); its graph: parallel
# attention and MLP, one norm (7B) or two (the new decoder architecture: attn_norm_2), RoPE, GELU.
def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    new_arch = "blk.0.attn_norm_2.weight" in tensors
    kv_heads = get("attention.head_count_kv") or 1
    return {
        "new_decoder_architecture": new_arch,
        "num_kv_heads": kv_heads,
        "multi_query": kv_heads == 1,
        "num_ln_in_parallel_attn": 2 if new_arch else None,
        "parallel_attn": True,
        "bias": "blk.0.attn_qkv.bias" in tensors,
        "alibi": False,
        "activation": "gelu",
        "ffn_hidden_size": get("feed_forward_length"),
        "layer_norm_epsilon": get("attention.layer_norm_epsilon"),
    }


def _kv_heads(config: dict[str, Any]) -> int:
    if config.get("new_decoder_architecture"):
        return config.get("num_kv_heads") or config["num_attention_heads"]
    return 1 if config.get("multi_query") else config["num_attention_heads"]


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config.get("alibi") or not (config.get("parallel_attn") or config.get("new_decoder_architecture")):
        raise ExportError("falcon with ALiBi or a sequential block: llama.cpp's falcon is parallel with RoPE")
    if config.get("new_decoder_architecture") and (config.get("num_ln_in_parallel_attn") or 2) != 2:
        raise ExportError("falcon's new decoder architecture with one norm: llama.cpp's has two")
    if config.get("bias") or config.get("activation", "gelu") != "gelu":
        raise ExportError("falcon with biases or an activation other than gelu: llama.cpp's falcon has neither")
    hidden = config["hidden_size"]
    return {
        "attention.head_count_kv": _kv_heads(config),
        "attention.layer_norm_epsilon": config["layer_norm_epsilon"],
        "feed_forward_length": config.get("ffn_hidden_size") or 4 * hidden,
        "embedding_length": hidden,
        "tensor_data_layout": "jploski",
    }


def _regroup(to_llama_cpp: bool) -> Any:
    def fix(name: str, tensor: Any, config: dict[str, Any]) -> Any:
        if ".query_key_value." not in name:
            return tensor
        heads, kv_heads = config["num_attention_heads"], _kv_heads(config)
        return (qkv_grouped_to_blocks if to_llama_cpp else qkv_blocks_to_grouped)(tensor, heads, kv_heads)

    return fix


GGUF = GgufMapping(
    archs={"falcon": "falcon"},
    export_arch={"falcon": "falcon"},
    config=_gguf_config,
    metadata=_gguf_metadata,
    from_gguf=_regroup(False),
    to_gguf=_regroup(True),
)

FAMILY = Family(
    name="falcon",
    model_types=("falcon",),
    architectures={"falcon": "FalconForCausalLM"},
    defaults={"falcon": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    gguf=GGUF,
)
