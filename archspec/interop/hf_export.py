"""archspec -> Hugging Face: a `config.json` and safetensors in `transformers`' names, the inverse of `hf.py`.

`save_hf(model, out_dir)` writes what `transformers` loads with no missing or unexpected keys:
`AutoModelForCausalLM.from_pretrained(out_dir)` for decoder LMs (dense: llama, mistral, qwen2, qwen3, glm, glm4,
gpt2, bloom, falcon, gpt_neox; MoE: mixtral, qwen2_moe, qwen3_moe; MLA: deepseek_v2, deepseek_v3),
`AutoModelForSeq2SeqLM` for T5 and `AutoModelForImageTextToText` for LLaVA (`auto_class` says which).

Choosing the model type. A spec does not say which `transformers` family it came from, and nothing is guessed
from its name: each family's config is written from the spec and read back with `spec_from_hf`; the first family
whose config reads back as the *same* spec is the one, so a config is only ever written when it is exact. When no
family reproduces the spec, the error names the fields that the closest family has no counterpart for.

Tensor names and fused layouts are not tabulated twice: `hf.archspec_sources` (what loading uses) says where each
archspec tensor comes from, and fused tensors (QKV, GLM's gate_up) are assembled by running its split functions
on a tensor of element indices, which gives every part's position in the fused tensor exactly. Routed experts are
written per expert (`experts.{e}.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.{e}.w1.weight`), the hub
layout that `save_pretrained` writes and `from_pretrained` fuses into 5.x's 3-D `gate_up_proj` / `down_proj`.

Memory. The files are streamed: each checkpoint tensor (a fused QKV, a transposed or dtype-cast copy) is made right
before its bytes are written and released after, so writing needs about one tensor beyond the model; `export_hf`
builds the model (or reads a run) directly in the dtype written, so there is never a float32 copy beside it.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from archspec.interop.hf import SUPPORTED_MODEL_TYPES, Source, UnsupportedConfigError, archspec_sources, spec_from_hf
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    DynamicScaling,
    LatentAttentionSpec,
    LinearScaling,
    Llama3Scaling,
    MoESpec,
    RelativeBiasSpec,
    RopeSpec,
    Spec,
    ViTSpec,
    YarnScaling,
)

__all__ = [
    "EXPORTABLE_MODEL_TYPES",
    "ExportError",
    "auto_class",
    "export_dtype",
    "export_hf",
    "hf_config",
    "hf_state_dict",
    "save_hf",
]

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class ExportError(ArchspecError):
    """A spec or model that no `transformers` model type expresses exactly."""


# =================================================================================================== config
def _rope_parameters(spec: Spec, with_fraction: bool = False) -> dict[str, Any]:
    position = spec.position
    assert isinstance(position, RopeSpec)
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": position.theta}
    if with_fraction:
        params["partial_rotary_factor"] = position.fraction
    scaling = position.scaling
    if isinstance(scaling, LinearScaling | DynamicScaling):
        params |= {"rope_type": scaling.kind, "factor": scaling.factor}
    elif isinstance(scaling, Llama3Scaling):
        params |= {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_context,
        }
    elif isinstance(scaling, YarnScaling):
        params |= {
            "rope_type": "yarn",
            "factor": scaling.factor,
            "original_max_position_embeddings": scaling.original_context,
            "beta_fast": scaling.beta_fast,
            "beta_slow": scaling.beta_slow,
            "truncate": scaling.truncate,
        }
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(scaling, key) is not None:
                params[key] = getattr(scaling, key)
    return params


def _needs(condition: bool, field: str) -> None:
    """Early exit for a family that obviously cannot express the spec (the round trip would catch it too)."""
    if not condition:
        raise _NoCounterpart(field)


class _NoCounterpart(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _hf_name(table: dict[str, str], value: str, field: str) -> str:
    if value not in table:
        raise _NoCounterpart(field)
    return table[value]


_GATED_HF = {"swiglu": "silu", "geglu": "gelu", "geglu-tanh": "gelu_pytorch_tanh", "reglu": "relu"}
_PLAIN_HF = {"gelu-tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _tokens(spec: Spec) -> dict[str, Any]:
    return {"bos_token_id": spec.tokens.bos, "eos_token_id": spec.tokens.eos, "pad_token_id": spec.tokens.pad}


def _llama(spec: Spec, model_type: str) -> dict[str, Any]:
    _needs(spec.attention.kind == "mha", "attention.kind")
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    _needs(spec.mlp.activation in GATED_ACTIVATIONS, "mlp.activation")
    attn = spec.attention
    # LlamaConfig refuses hidden_size % num_attention_heads != 0 even with an explicit head_dim
    _needs(model_type != "llama" or spec.d_model % attn.heads == 0, "d_model")
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": _GATED_HF[spec.mlp.activation],
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "rope_parameters": _rope_parameters(spec, with_fraction=model_type in ("glm", "glm4")),
    }
    if model_type in ("llama", "qwen3", "glm", "glm4"):
        config["attention_bias"] = attn.bias.q
    if model_type == "llama":
        config["mlp_bias"] = spec.mlp.bias
    if model_type == "mistral":
        config["sliding_window"] = attn.window
    if model_type in ("qwen2", "qwen3"):
        windows = [spec.window_for_layer(i) for i in range(spec.n_layers)]
        sliding = [i for i, w in enumerate(windows) if w is not None]
        config["use_sliding_window"] = bool(sliding)
        config["sliding_window"] = attn.window
        config["max_window_layers"] = sliding[0] if sliding else spec.n_layers
        config["layer_types"] = ["sliding_attention" if w is not None else "full_attention" for w in windows]
    return config


def _gpt2(spec: Spec, model_type: str) -> dict[str, Any]:
    attn = spec.attention
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "n_embd": spec.d_model,
        "n_layer": spec.n_layers,
        "n_head": attn.heads,
        "n_positions": spec.context_length,
        "n_inner": spec.mlp.d_ff,
        "activation_function": _hf_name(_PLAIN_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_epsilon": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "scale_attn_weights": attn.scale is None,
        "resid_pdrop": 0.0,  # archspec has no dropout
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
    return config


def _bloom(spec: Spec, model_type: str) -> dict[str, Any]:
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


def _falcon(spec: Spec, model_type: str) -> dict[str, Any]:
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    heads, kv_heads, block = spec.attention.heads, spec.kv_heads, spec.block
    old_layout = kv_heads in (1, heads) and not (block.kind == "parallel" and block.parallel_norms == 2)
    config: dict[str, Any] = {
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
        "alibi": False,
        "ffn_hidden_size": spec.mlp.d_ff,
        "activation": _hf_name(_PLAIN_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_epsilon": spec.norm.eps,
        "max_position_embeddings": spec.context_length,
        "rope_parameters": _rope_parameters(spec),
        "tie_word_embeddings": spec.embeddings.tied,
    }
    return config


def _gpt_neox(spec: Spec, model_type: str) -> dict[str, Any]:
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.attention.heads,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": _hf_name(_PLAIN_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_eps": spec.norm.eps,
        "use_parallel_residual": spec.block.kind == "parallel",
        "attention_bias": spec.attention.bias.q,
        "max_position_embeddings": spec.context_length,
        "rope_parameters": _rope_parameters(spec, with_fraction=True),
        "tie_word_embeddings": spec.embeddings.tied,
    }


def _moe_common(spec: Spec) -> MoESpec:
    _needs(spec.attention.kind == "mha", "attention.kind")
    moe = spec.moe
    _needs(moe is not None, "moe")
    assert moe is not None
    return moe


def _mixtral(spec: Spec, model_type: str) -> dict[str, Any]:
    """Mistral's attention, every layer a softmax top-k MoE renormalised, experts as wide as intermediate_size."""
    moe = _moe_common(spec)
    _needs(not moe.shared_experts, "moe.shared_experts")
    config = _llama(spec, "mistral")
    config |= {
        "intermediate_size": moe.d_ff,
        "num_local_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "router_aux_loss_coef": moe.router.aux_loss_coef,
        "router_jitter_noise": moe.router.jitter,
    }
    return config


def _qwen_moe(spec: Spec, model_type: str) -> dict[str, Any]:
    """Qwen2-MoE (gated shared expert, q/k/v bias) and Qwen3-MoE (qk-norm, no shared expert). A layer is sparse
    iff it is not in mlp_only_layers (decoder_sparse_step 1 keeps that the only rule)."""
    moe = _moe_common(spec)
    shared = model_type == "qwen2_moe"
    if shared:
        _needs(moe.shared_experts == 1 and moe.shared_gate, "moe.shared_experts")
    else:
        _needs(not moe.shared_experts, "moe.shared_experts")
    _needs(spec.attention.window is None, "attention.window")  # type: ignore[union-attr]
    config = _llama(spec, "qwen2" if shared else "qwen3")
    for key in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
        config.pop(key, None)
    if shared:
        config.pop("attention_bias", None)
        config["qkv_bias"] = spec.attention.bias.q  # type: ignore[union-attr]
        config["shared_expert_intermediate_size"] = moe.shared_d_ff
    config |= {
        "num_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.d_ff,
        "norm_topk_prob": moe.router.renormalize,
        "router_aux_loss_coef": moe.router.aux_loss_coef,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [layer for layer in range(spec.n_layers) if not spec.is_moe_layer(layer)],
    }
    return config


def _deepseek(spec: Spec, model_type: str) -> dict[str, Any]:
    """DeepSeek-V2 (softmax router, greedy or group-limited) and V3 (sigmoid router with a correction bias).

    RoPE: archspec rotates the rope dims as stored, in the spec's pairing, which is what transformers does for V2
    (complex pairs) and V3 (rope_interleave: interleaved pairs, else halves); no permutation either way.
    """
    attn = spec.attention
    _needs(isinstance(attn, LatentAttentionSpec), "attention.kind")
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    _needs(spec.mlp.activation in GATED_ACTIVATIONS, "mlp.activation")
    # DeepseekV2Config refuses hidden_size % num_attention_heads != 0 (V3's does not check it)
    _needs(model_type != "deepseek_v2" or spec.d_model % attn.heads == 0, "d_model")
    moe = spec.moe
    _needs(moe is not None, "moe")
    assert isinstance(attn, LatentAttentionSpec) and moe is not None and isinstance(spec.position, RopeSpec)
    _needs(moe.layers is None, "moe.layers")
    # transformers always builds the shared-expert MLP (n_shared_experts x moe_intermediate_size wide): with none,
    # its zero-width weights would be missing from the checkpoint
    _needs(moe.shared_experts > 0, "moe.shared_experts")
    router = moe.router
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": attn.heads,
        "q_lora_rank": attn.q_rank,
        "kv_lora_rank": attn.kv_rank,
        "qk_nope_head_dim": attn.nope_dim,
        "qk_rope_head_dim": attn.rope_dim,
        "v_head_dim": attn.v_dim,
        "attention_bias": attn.bias,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": _GATED_HF[spec.mlp.activation],
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "rope_parameters": _rope_parameters(spec),
        "n_routed_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.d_ff,
        "n_shared_experts": moe.shared_experts,
        "first_k_dense_replace": moe.dense_layers,
        "routed_scaling_factor": router.scale,
        # DeepSeek's own config.json keys for the balance loss (transformers keeps them but computes no aux loss)
        "aux_loss_alpha": router.aux_loss_coef,
        "seq_aux": router.aux_loss == "sequence",
    }
    grouped = router.groups > 1
    if model_type == "deepseek_v2":
        config |= {
            "topk_method": "group_limited_greedy" if grouped else "greedy",
            "n_group": router.groups if grouped else None,
            "topk_group": router.top_groups if grouped else None,
        }
    else:
        config |= {
            "n_group": router.groups,
            "topk_group": router.top_groups,
            "norm_topk_prob": router.renormalize,
            "rope_interleave": spec.position.pairing == "interleaved",
        }
    return config


def _t5(spec: Spec, model_type: str) -> dict[str, Any]:
    """T5 v1.0 (tied head scaled by d_model^-0.5) and v1.1 (untied, unscaled). transformers 5.x reads a
    `tie_word_embeddings: false` config as v1.1's unscaled head and keeps a separate lm_head when its values differ
    from `shared` (hf.py's `_from_t5` reads the same key back)."""
    _needs(spec.structure == "encoder-decoder", "structure")
    _needs(isinstance(spec.position, RelativeBiasSpec), "position.kind")
    assert isinstance(spec.position, RelativeBiasSpec)
    activation = spec.mlp.activation
    if activation in GATED_ACTIVATIONS:
        proj = "gated-" + _hf_name(_T5_GATED_HF, activation, "mlp.activation")
    else:
        proj = _hf_name(_PLAIN_HF, activation, "mlp.activation")
    return {
        "vocab_size": spec.vocab_size,
        "d_model": spec.d_model,
        "d_kv": spec.head_dim,
        "d_ff": spec.mlp.d_ff,
        "num_layers": spec.n_layers,
        "num_decoder_layers": spec.n_decoder_layers,
        "num_heads": spec.attention.heads,
        "relative_attention_num_buckets": spec.position.buckets,
        "relative_attention_max_distance": spec.position.max_distance,
        "layer_norm_epsilon": spec.norm.eps,
        "feed_forward_proj": proj,
        "n_positions": spec.context_length,
        "tie_word_embeddings": spec.embeddings.scale_head,
        "is_encoder_decoder": True,
        "dropout_rate": 0.0,  # archspec has no dropout
        "decoder_start_token_id": spec.tokens.decoder_start,
    }


_T5_GATED_HF = {"geglu-tanh": "gelu", "swiglu": "silu", "reglu": "relu"}  # T5's "gated-gelu" is gelu_new
_VISION_HF = {**_PLAIN_HF, "quick-gelu": "quick_gelu"}


def _llava(spec: Spec, model_type: str) -> dict[str, Any]:
    """LLaVA: a llama / mistral / qwen2 text config (the first that reads back as the text part), a CLIP vision
    config and the projector / splice keys."""
    from archspec.interop.hf_llava import TEXT_MODEL_TYPES

    vision = spec.vision
    _needs(vision is not None, "vision")
    assert vision is not None
    _needs(isinstance(vision.tower, ViTSpec), "vision.tower.kind")
    _needs(vision.pooling is None, "vision.pooling")
    _needs(vision.projector.kind == "mlp" and vision.projector.depth == 2, "vision.projector")
    tower = vision.tower
    assert isinstance(tower, ViTSpec)
    text_spec = spec.model_copy(update={"vision": None})
    text_config = None
    for text_type in TEXT_MODEL_TYPES:
        try:
            candidate = _candidate_config(text_spec, text_type)
            if not _differences(text_spec, spec_from_hf(candidate, name=spec.name)):
                text_config = candidate
                break
        except (_NoCounterpart, ArchspecError, AttributeError, KeyError, TypeError, ValueError):
            continue
    if text_config is None:  # the read-back of the whole config names what the text model lacks
        text_config = _candidate_config(text_spec, TEXT_MODEL_TYPES[0])
    text_config.pop("architectures", None)
    return {
        "text_config": text_config,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": tower.width,
            "intermediate_size": tower.d_ff,
            "num_hidden_layers": tower.depth,
            "num_attention_heads": tower.heads,
            "num_channels": tower.channels,
            "image_size": tower.image_size,
            "patch_size": tower.patch_size,
            "hidden_act": _hf_name(_VISION_HF, tower.activation, "vision.tower.activation"),
            "layer_norm_eps": tower.norm_eps,
        },
        "image_token_index": vision.image_token,
        "image_seq_length": vision.tokens_per_image,
        "projector_hidden_act": _hf_name(_VISION_HF, vision.projector.activation, "vision.projector.activation"),
        "multimodal_projector_bias": vision.projector.bias,
        "vision_feature_layer": vision.feature_layer,
        "vision_feature_select_strategy": "default" if vision.feature_select == "patches" else "full",
        "tie_word_embeddings": spec.embeddings.tied,
    }


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "glm": "GlmForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bloom": "BloomForCausalLM",
    "falcon": "FalconForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
}
_WRITERS = {
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
    "qwen3": _llama,
    "glm": _llama,
    "glm4": _llama,
    "gpt2": _gpt2,
    "bloom": _bloom,
    "falcon": _falcon,
    "gpt_neox": _gpt_neox,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "t5": _t5,
    "llava": _llava,
}
EXPORTABLE_MODEL_TYPES = tuple(t for t in _WRITERS if t in SUPPORTED_MODEL_TYPES)
DENSE_MODEL_TYPES = EXPORTABLE_MODEL_TYPES[:10]
MOE_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")
MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")


def auto_class(model_type: str) -> str:
    """The `transformers` auto class whose `from_pretrained` loads an exported `model_type` directory."""
    return {"t5": "AutoModelForSeq2SeqLM", "llava": "AutoModelForImageTextToText"}.get(
        model_type, "AutoModelForCausalLM"
    )


def _families(spec: Spec) -> tuple[str, ...]:
    """The model types that could express the spec's kind of model (each is then checked by reading it back)."""
    if spec.structure == "encoder-decoder":
        return ("t5",)
    if spec.vision is not None:
        return ("llava",)
    if spec.attention.kind == "mla":
        return MLA_MODEL_TYPES
    if spec.moe is not None:
        return MOE_MODEL_TYPES
    return DENSE_MODEL_TYPES


def _candidate_config(spec: Spec, model_type: str) -> dict[str, Any]:
    config = {"model_type": model_type, "architectures": [_ARCHITECTURES[model_type]]}
    config |= _WRITERS[model_type](spec, model_type)
    config |= _tokens(spec)
    return config


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): data}


def _differences(spec: Spec, other: Spec) -> list[str]:
    ours, theirs = _flatten(spec.model_dump(mode="json")), _flatten(other.model_dump(mode="json"))
    skip = {"name", "description"}
    return sorted(k for k in ours.keys() | theirs.keys() if k not in skip and ours.get(k) != theirs.get(k))


def hf_config(spec: Spec, model_type: str | None = None) -> dict[str, Any]:
    """The `config.json` of the `transformers` model type that expresses `spec` exactly (or of `model_type`).

    Raises `ExportError` naming the spec fields that have no counterpart when none does.
    """
    if model_type is not None and model_type not in _WRITERS:
        raise ExportError(
            f"model_type {model_type!r} cannot be exported; exportable: {', '.join(EXPORTABLE_MODEL_TYPES)}"
        )
    if spec.structure == "glm":
        raise ExportError(
            f"spec '{spec.name}': structure = 'glm' (a prefix-bidirectional LM) has no counterpart in the model "
            f"types save_hf writes ({', '.join(EXPORTABLE_MODEL_TYPES)}): transformers' glm/glm4 are causal"
        )
    candidates = (model_type,) if model_type else _families(spec)
    misses: list[tuple[int, str, list[str]]] = []
    for candidate in candidates:
        try:
            config = _candidate_config(spec, candidate)
            back = spec_from_hf(config, name=spec.name)
        except _NoCounterpart as miss:  # ranked after families that got as far as the round trip
            misses.append((100, candidate, [miss.field]))
            continue
        except (UnsupportedConfigError, ArchspecError, AttributeError, KeyError, TypeError, ValueError) as exc:
            misses.append((1000, candidate, [str(exc)]))
            continue
        differences = _differences(spec, back)
        if not differences:
            return config
        misses.append((len(differences), candidate, differences))
    count, closest, fields = min(misses, key=lambda miss: miss[0])
    detail = "; ".join(
        f"{field} = {_value(spec, field)!r}" if field in _flatten(spec.model_dump(mode="json")) else field
        for field in fields
    )
    where = f"model_type {closest!r}" if model_type else f"the closest, {closest!r},"
    raise ExportError(
        f"spec '{spec.name}' has no exact transformers counterpart: {where} has none for {detail}"
        + ("" if model_type else f" (tried {', '.join(candidates)})")
    )


def _value(spec: Spec, field: str) -> Any:
    return _flatten(spec.model_dump(mode="json")).get(field)


# ================================================================================================== weights
class _Lazy(NamedTuple):
    """One checkpoint tensor, described by its shape and dtype (for the safetensors header) and made only when it is
    written: a fused QKV, a transposed or dtype-cast copy exists only while it is being written."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def hf_state_dict(model: nn.Module, model_type: str) -> dict[str, torch.Tensor]:
    """The model's tensors under `model_type`'s checkpoint names, fused tensors assembled (the inverse of
    `load_hf_weights`; a tied head is left out, as `transformers` writes it)."""
    return {name: lazy.make() for name, lazy in _hf_tensors(model, model_type).items()}


def _hf_tensors(model: nn.Module, model_type: str, dtype: torch.dtype | None = None) -> dict[str, _Lazy]:
    """`hf_state_dict`'s tensors, not made yet: each in `dtype` (floating-point ones; None: the model's), contiguous."""
    spec: Spec = model.spec  # type: ignore[assignment]
    state = model.state_dict()
    keys = [k for k in state if not (spec.embeddings.tied and k == "lm_head.weight")]
    sources = archspec_sources(model_type, spec, keys)
    unplaced = [k for k in keys if k not in sources]
    if unplaced:
        raise ExportError(f"model_type {model_type!r} has no tensor for: {', '.join(unplaced)}")

    def target(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    tensors: dict[str, _Lazy] = {}
    fused: dict[str, list[tuple[Source, torch.Tensor]]] = defaultdict(list)
    for key in keys:
        source, tensor = sources[key], state[key].detach()
        if source.stack:
            for index, name in enumerate(source.stack):
                part = tensor[index]
                tensors[name] = _Lazy(tuple(part.shape), target(part), partial(_plain, part, False, target(part)))
        elif source.split is not None:
            fused[source.name].append((source, tensor))
        else:
            shape = tuple(tensor.t().shape if source.transpose else tensor.shape)
            make = partial(_plain, tensor, source.transpose, target(tensor))
            tensors[source.name] = _Lazy(shape, target(tensor), make)
    for name, parts in fused.items():
        kind = target(parts[0][1])
        tensors[name] = _Lazy(_fused_shape(name, parts), kind, partial(_fuse, name, parts, kind))
    return tensors


def _plain(tensor: torch.Tensor, transpose: bool, dtype: torch.dtype) -> torch.Tensor:
    """The tensor (transposed) in `dtype`, contiguous: itself when it already is, else one copy."""
    tensor = tensor.t() if transpose else tensor
    if tensor.dtype == dtype and tensor.is_contiguous():
        return tensor
    made = torch.empty(tensor.shape, dtype=dtype, device=tensor.device)  # one copy, cast and laid out at once
    return made.copy_(tensor)


def _fused_shape(name: str, parts: list[tuple[Source, torch.Tensor]]) -> tuple[int, ...]:
    """The shape of a fused tensor, each part's place checked on the meta device (before anything is written)."""
    first_source, _ = parts[0]
    transpose = first_source.transpose
    shapes = [tuple(t.t().shape) if transpose else tuple(t.shape) for _, t in parts]
    dim = len(shapes[0]) - 1 if transpose else 0
    fused_shape = list(shapes[0])
    fused_shape[dim] = sum(shape[dim] for shape in shapes)
    meta = torch.empty(fused_shape, device="meta")
    for source, tensor in parts:
        assert source.split is not None
        positions = source.split(meta)
        if (positions.t() if source.transpose else positions).shape != tensor.shape:
            raise ExportError(f"{name}: a part of shape {tuple(tensor.shape)} does not fit the fused layout")
    return tuple(fused_shape)


def _fuse(name: str, parts: list[tuple[Source, torch.Tensor]], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Assemble a fused tensor from its parts by running each part's split on the fused tensor's element indices."""
    first_source, first = parts[0]
    fused_shape = list(_fused_shape(name, parts))
    numel = int(torch.Size(fused_shape).numel())
    index = torch.arange(numel, dtype=torch.int32 if numel < 2**31 else torch.int64).reshape(fused_shape)
    flat = torch.empty(numel, dtype=dtype or first.dtype, device=first.device)
    covered = torch.zeros(numel, dtype=torch.bool)
    for source, tensor in parts:
        assert source.split is not None
        positions = source.split(index)
        if source.transpose:
            positions = positions.t()
        if positions.shape != tensor.shape:
            raise ExportError(f"{name}: a part of shape {tuple(tensor.shape)} does not fit the fused layout")
        flat[positions.reshape(-1)] = tensor.reshape(-1).to(flat.dtype)
        covered[positions.reshape(-1)] = True
    if not bool(covered.all()):
        raise ExportError(f"{name}: the parts do not cover the fused tensor")
    return flat.reshape(fused_shape)


# ===================================================================================================== files
def save_hf(
    model: nn.Module,
    out_dir: str | Path,
    *,
    model_type: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors` (or shards `model-0000i-of-0000n.safetensors` plus
    `model.safetensors.index.json` above `max_shard_bytes`) that `transformers` loads as this model.

    `model` is a model built by `archspec.build` (plain, not sharded: gather FSDP/TP models first, e.g. with
    `torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)`). `dtype` casts the
    floating-point tensors (None: as they are); config.json's "dtype" says what was written. Tensors are made one at
    a time, right before they are written, and released after (a fused QKV, a transposed or cast copy): memory above
    the model's own is about its largest tensor, never a second copy of the model. Returns out_dir.
    """
    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise ExportError("this model has no .spec: build it with archspec.build(spec)")
    config = hf_config(spec, model_type)
    tensors = _hf_tensors(model, config["model_type"], dtype)
    kinds = {v.dtype for v in tensors.values() if v.dtype.is_floating_point}
    config["dtype"] = str(next(iter(kinds))).removeprefix("torch.") if len(kinds) == 1 else "float32"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _write_safetensors(tensors, out, max_shard_bytes)
    return out


def _write_safetensors(tensors: dict[str, _Lazy], out: Path, max_shard_bytes: int) -> None:
    for stale in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    total = sum(t.nbytes for t in tensors.values())
    if total <= max_shard_bytes:
        _write_file(out / "model.safetensors", tensors)
        return
    shards: list[dict[str, _Lazy]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _write_file(out / file, shard)
        weight_map |= dict.fromkeys(shard, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_file(path: Path, tensors: dict[str, _Lazy]) -> None:
    """One safetensors file, streamed: the header from the shapes, then each tensor made, written and released
    (`safetensors.torch.save_file` would hold the bytes of the whole file at once)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, lazy in tensors.items():
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[lazy.dtype],
            "shape": list(lazy.shape),
            "data_offsets": [offset, offset + lazy.nbytes],
        }
        offset += lazy.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name, lazy in tensors.items():
            tensor = lazy.make().cpu()
            if tuple(tensor.shape) != lazy.shape or tensor.dtype != lazy.dtype or not tensor.is_contiguous():
                raise ExportError(
                    f"{name}: made as {tuple(tensor.shape)} {tensor.dtype}, not {lazy.shape} {lazy.dtype}"
                )
            if tensor.numel():
                file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor


# ====================================================================================================== export
EXPORT_DTYPES = ("float32", "float16", "bfloat16")


def export_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name `export_hf` writes: float32, float16, bfloat16 or an alias (fp32, bf16, half, ...,
    `archspec.analysis.metrics`' names); anything else is an `ExportError` naming them."""
    from archspec.analysis.metrics import DTYPE_ALIASES, AnalysisError, canonical_dtype

    name = str(dtype)
    try:
        canonical = canonical_dtype(name)
    except AnalysisError:
        canonical = None
    if canonical not in EXPORT_DTYPES:
        aliases = ", ".join(alias for alias, target in DTYPE_ALIASES.items() if target in EXPORT_DTYPES)
        raise ExportError(f"dtype {name!r} cannot be exported: use {', '.join(EXPORT_DTYPES)} (or {aliases})")
    return getattr(torch, canonical)


def export_hf(
    spec_or_dir: str | Path | Spec,
    out: str | Path,
    *,
    model_type: str | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> Path:
    """What `archspec export-hf SPEC|DIR -o OUT [--dtype D]` runs.

    - a `Spec` or a spec YAML file: the freshly initialised model of that spec (a starting point for training
      with `transformers`);
    - a directory: one written by `examples/train.py` (`spec.yaml` and DCP checkpoints `step-*/`; the newest is
      exported) or one with `spec.yaml` and `model.safetensors` in archspec's own names.

    `dtype` (a torch dtype or a name: "bfloat16", "bf16", "fp16", ...; None: float32) is the dtype the model is
    built in and written in; there is never a float32 copy next to it. Random weights are `archspec.build(spec,
    dtype=dtype)`'s: the same initialisation (N(0, 0.02) matrices and embeddings, zero biases, unit norms,
    DeepNorm's Xavier init), drawn directly in `dtype`: the same seed gives `build(spec, dtype=dtype)`'s values
    (float32: `build(spec)`'s), not those of a float32 build cast to `dtype`. A run directory is read into an uninitialised model in `dtype`, one checkpoint tensor at a time (DCP
    casts a float32 checkpoint into the model's tensors as it reads them). `save_hf` then writes tensor by tensor:
    peak memory is the checkpoint's size plus about its largest tensor (`benchmarks/export_memory.py`).
    """
    from archspec.compiler import build
    from archspec.spec.loader import load_spec

    target = export_dtype(dtype) if dtype is not None else torch.float32

    def checked_build(spec: Spec, device: str | None = None) -> nn.Module:
        hf_config(spec, model_type)  # refuse before allocating: a spec without counterpart may be 671B parameters
        return build(spec, device=device, dtype=target)

    def save(model: nn.Module) -> Path:
        return save_hf(model, out, model_type=model_type, dtype=target, **options)

    if isinstance(spec_or_dir, Spec):
        return save(checked_build(spec_or_dir))
    path = Path(spec_or_dir)
    if not path.is_dir():
        return save(checked_build(load_spec(path)))
    if not (path / "spec.yaml").is_file():
        raise ExportError(f"{path}: no spec.yaml here (expected a directory written by examples/train.py)")
    steps = sorted((p for p in path.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]))
    weights = path / "model.safetensors"
    if not steps and not weights.is_file():
        raise ExportError(f"{path}: no step-*/ checkpoint and no model.safetensors")
    model = _uninitialised(checked_build(load_spec(path / "spec.yaml"), device="meta"))
    if steps:
        import torch.distributed.checkpoint as dcp

        state = {"model": _largest_first(model.state_dict())}
        with warnings.catch_warnings():  # a single-process load is what is meant here: nothing for the user to do
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(steps[-1]))
        model.load_state_dict(state["model"])
    else:
        _load_safetensors(model, weights)
    return save(model)


def _largest_first(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state in the order to read it: an uninitialised tensor's pages take no memory until written, so reading
    the largest first puts the biggest read buffer (a whole float32 tensor) where little of the model is resident."""
    return dict(sorted(state.items(), key=lambda item: -item[1].numel()))


def _uninitialised(model: nn.Module) -> nn.Module:
    """A meta-device model given uninitialised CPU tensors (every one is then read from a checkpoint), the tied head
    tied again and the computed buffers (RoPE frequencies, ALiBi slopes) computed."""
    from archspec.compiler import materialize_buffers

    model.to_empty(device="cpu")
    if model.spec.embeddings.tied:  # type: ignore[union-attr]
        model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    materialize_buffers(model, "cpu")  # type: ignore[arg-type]
    return model


def _load_safetensors(model: nn.Module, file: Path) -> None:
    """Fill every tensor of `model` from a safetensors file in archspec's names, one tensor at a time, cast to the
    model's dtype; the names and shapes are checked from the header first."""
    from safetensors import safe_open

    state = model.state_dict()
    tied = model.spec.embeddings.tied  # type: ignore[union-attr]
    with safe_open(str(file), framework="pt") as reader:
        names = set(reader.keys())
        wanted = {k: k for k in state if not (tied and k == "lm_head.weight")}
        if tied and "embed.weight" not in names and "lm_head.weight" in names:
            wanted["embed.weight"] = "lm_head.weight"  # a save that kept the head's name for the shared tensor
        missing = sorted(k for k, name in wanted.items() if name not in names)
        unexpected = sorted(names - set(state))
        wrong = sorted(
            f"{k} {tuple(reader.get_slice(name).get_shape())} (model: {tuple(state[k].shape)})"
            for k, name in wanted.items()
            if name in names and tuple(reader.get_slice(name).get_shape()) != tuple(state[k].shape)
        )
        found = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong}
        problems = [f"{label}: {', '.join(keys)}" for label, keys in found.items() if keys]
        if problems:
            raise ExportError(f"{file} does not fit spec '{model.spec.name}': " + "; ".join(problems))  # type: ignore[union-attr]
        with torch.no_grad():
            for key in _largest_first({k: state[k] for k in wanted}):
                state[key].copy_(reader.get_tensor(wanted[key]))
