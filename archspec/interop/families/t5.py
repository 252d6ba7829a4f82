"""T5 (`t5`): an encoder-decoder with relative-position biases, RMSNorm-like layer norms and no biases.

Matched against transformers 5.25.0 `models/t5/configuration_t5.py` and `modeling_t5.py`: v1.0 (ReLU, the tied
head scaled by d_model^-0.5) and v1.1 / Flan-T5 (gated-gelu, which is gelu_new in T5, an untied unscaled head).
The relative-bias table sits in block 0's self-attention of each stack (hf_parity_map section 7).
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.families.common import (
    GATED_FROM_HF,
    PLAIN_FROM_HF,
    PLAIN_TO_HF,
    Getter,
    hf_name,
    needs,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import GATED_ACTIVATIONS, RelativeBiasSpec, Spec

DEFAULTS: dict[str, Any] = dict(
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=None,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="relu",
    n_positions=512,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
_GATED_TO_T5 = {"geglu-tanh": "gelu", "swiglu": "silu", "reglu": "relu"}  # T5's "gated-gelu" is gelu_new


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    """The head: transformers 5.x scales the decoder output iff `tie_word_embeddings` was not passed as False, and
    writes the result as `scale_decoder_outputs` (while `tie_word_embeddings` itself is always true in 5.x
    configs); 4.x configs only have `tie_word_embeddings`. A scaled head is T5 v1.0's tied head; an unscaled one
    is v1.1's separate `lm_head`.
    """
    proj = str(get("feed_forward_proj"))
    gated, act = proj.startswith("gated-"), proj.split("-")[-1]
    if gated:
        activation = "geglu-tanh" if act == "gelu" else GATED_FROM_HF.get(act)  # "gated-gelu" is gelu_new in T5
    else:
        activation = PLAIN_FROM_HF.get(act)
    if activation is None:
        raise UnsupportedConfigError(f"feed_forward_proj {proj!r} is not supported")
    scale = get.config.get("scale_decoder_outputs", get.config.get("tie_word_embeddings", True) is not False)
    layers = get("num_layers")
    start = get("decoder_start_token_id")
    return {
        "structure": "encoder-decoder",
        "vocab_size": get.require("vocab_size"),
        "d_model": get.require("d_model"),
        "n_layers": layers,
        "n_decoder_layers": get("num_decoder_layers") or layers,
        "context_length": get("n_positions"),
        "attention": {"heads": get("num_heads"), "head_dim": get("d_kv"), "bias": False, "scale": 1.0},
        "position": {
            "kind": "relative-bias",
            "buckets": get("relative_attention_num_buckets"),
            "max_distance": get("relative_attention_max_distance"),
        },
        "norm": {"kind": "rmsnorm", "eps": get("layer_norm_epsilon")},
        "block": "pre-norm",
        "mlp": {"activation": activation, "d_ff": get("d_ff"), "bias": False},
        "embeddings": {"tied": bool(scale), "scale_head": bool(scale)},
        "tokens": {"decoder_start": start if start is not None else get("pad_token_id")},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    """transformers 5.x reads a `tie_word_embeddings: false` config as v1.1's unscaled head and keeps a separate
    lm_head when its values differ from `shared` (`to_spec` reads the same key back)."""
    needs(spec.structure == "encoder-decoder", "structure")
    needs(isinstance(spec.position, RelativeBiasSpec), "position.kind")
    assert isinstance(spec.position, RelativeBiasSpec)
    activation = spec.mlp.activation
    if activation in GATED_ACTIVATIONS:
        proj = "gated-" + hf_name(_GATED_TO_T5, activation, "mlp.activation")
    else:
        proj = hf_name(PLAIN_TO_HF, activation, "mlp.activation")
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


def key_map(spec: Spec, model_type: str) -> KeyMap:
    """Every name spelled out per layer (T5's `block.{i}.layer.{k}` has no archspec counterpart of `{i}` alone).

    A 5.x model built from a config keeps `lm_head` tied to `shared` even for v1.1, so an untied head falls back to
    `shared.weight` when the checkpoint has no `lm_head.weight`; the stacks' own copies of `shared` are ignored.
    """
    gated = spec.mlp.activation in GATED_ACTIVATIONS
    ff = (
        {"mlp.gate": "DenseReluDense.wi_0", "mlp.up": "DenseReluDense.wi_1"}
        if gated
        else {"mlp.up": "DenseReluDense.wi"}
    )
    ff["mlp.down"] = "DenseReluDense.wo"
    top = {"embed": "shared", "lm_head": "lm_head"}
    for side, n_layers in (("encoder", spec.n_layers), ("decoder", spec.n_decoder_layers or spec.n_layers)):
        top[f"{side}.position_bias.table"] = f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias"
        top[f"{side}.final_norm"] = f"{side}.final_layer_norm"
        ff_index = 1 if side == "encoder" else 2
        for i in range(n_layers):
            ours, theirs = f"{side}.layers.{i}.", f"{side}.block.{i}.layer."
            top[ours + "attn_norm"] = theirs + "0.layer_norm"
            top[ours + "mlp_norm"] = f"{theirs}{ff_index}.layer_norm"
            for p in "qkvo":
                top[f"{ours}attn.{p}"] = f"{theirs}0.SelfAttention.{p}"
            for name, hf in ff.items():
                top[ours + name] = f"{theirs}{ff_index}.{hf}"
            if side == "decoder":
                top[ours + "cross_norm"] = theirs + "1.layer_norm"
                for p in "qkvo":
                    top[f"{ours}cross_attn.{p}"] = f"{theirs}1.EncDecAttention.{p}"
    return KeyMap(
        top,
        "",
        {},
        aliases={"lm_head.weight": "shared.weight"},
        ignored=frozenset({"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}),
    )


FAMILY = Family(
    name="t5",
    model_types=("t5",),
    architectures={"t5": "T5ForConditionalGeneration"},
    defaults={"t5": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="encoder-decoder",
    auto_class="AutoModelForSeq2SeqLM",
)
