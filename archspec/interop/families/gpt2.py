"""GPT-2 (`gpt2`): learned positions, LayerNorm, plain MLP, and Conv1D weights stored [in, out].

Matched against transformers 5.25.0 `models/gpt2/configuration_gpt2.py` and `modeling_gpt2.py`: `c_attn` fuses
q | k | v along its last dim (Conv1D), so its parts are column blocks, and every Conv1D weight is transposed.
`scale_attn_by_inverse_layer_idx` divides layer i's q.k scale by i + 1 (`attention.inverse_layer_scale`).
`reorder_and_upcast_attn` is read and dropped: transformers applies it only on its eager path, where it computes
the same scores in float32 with the scale folded into the matmul (a rounding difference, not a different model).
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import ExportError
from archspec.interop.families.common import PLAIN_TO_HF, Getter, hf_name, plain_activation
from archspec.interop.family import Family, GgufMapping
from archspec.interop.keys import KeyMap, Split, split_rows
from archspec.spec.schema import Spec

DEFAULTS: dict[str, Any] = dict(
    n_positions=1024,
    n_inner=None,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    reorder_and_upcast_attn=False,
    bos_token_id=50256,
    eos_token_id=50256,
)


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    hidden, heads = get.require("n_embd"), get.require("n_head")
    activation = get("activation_function")
    return {
        "vocab_size": get.require("vocab_size"),
        "d_model": hidden,
        "n_layers": get.require("n_layer"),
        "context_length": get("n_positions"),
        "attention": {
            "heads": heads,
            "bias": True,
            **({} if get("scale_attn_weights") else {"scale": 1.0}),
            **({"inverse_layer_scale": True} if get("scale_attn_by_inverse_layer_idx") else {}),
        },
        "position": "learned",
        "norm": {"kind": "layernorm", "eps": get("layer_norm_epsilon")},
        "block": "pre-norm",
        "mlp": {"activation": plain_activation(activation), "d_ff": get("n_inner") or 4 * hidden, "bias": True},
        "embeddings": {"tied": bool(get("tie_word_embeddings"))},
    }


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn = spec.attention
    return {
        "vocab_size": spec.vocab_size,
        "n_embd": spec.d_model,
        "n_layer": spec.n_layers,
        "n_head": attn.heads,
        "n_positions": spec.context_length,
        "n_inner": spec.mlp.d_ff,
        "activation_function": hf_name(PLAIN_TO_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_epsilon": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "scale_attn_weights": attn.scale is None,
        "scale_attn_by_inverse_layer_idx": attn.inverse_layer_scale,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,  # archspec has no dropout
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return KeyMap(
        {
            "embed": "transformer.wte",
            "pos_embed": "transformer.wpe",
            "final_norm": "transformer.ln_f",
            "lm_head": "lm_head",
        },
        "transformer.h.{i}.",
        {
            "attn_norm": "ln_1",
            "mlp_norm": "ln_2",
            "attn.o": "attn.c_proj",
            "mlp.up": "mlp.c_fc",
            "mlp.down": "mlp.c_proj",
        },
        {"attn.q": ("attn.c_attn", "q"), "attn.k": ("attn.c_attn", "k"), "attn.v": ("attn.c_attn", "v")},
        conv1d=frozenset({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
        base_prefix="transformer.",
    )


def fused_part(spec: Spec, part: str) -> Split:
    """Conv1D weight [in, 3H] or bias [3H]: [q | k | v] along the last dim (gate / up as every family's)."""
    if part in ("gate", "up"):
        return split_rows(spec, part)
    index = "qkv".index(part)
    return lambda t: t.chunk(3, dim=-1)[index]


# ============================================================================================ GGUF
# llama.cpp's converter (`conversion/gpt2.py`) writes architecture "gpt2" with every Conv1D weight transposed to
# [out, in]; its graph has GELU (tanh), LayerNorm, learned positions and the standard 1/sqrt(d) score scale only.
_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


def _gguf_config(get: Any, tensors: set[str], model_type: str) -> dict[str, Any]:
    return {
        "n_layer": get("block_count"),
        "n_embd": get("embedding_length"),
        "n_head": get("attention.head_count"),
        "n_positions": get("context_length"),
        "n_inner": get("feed_forward_length"),
        "layer_norm_epsilon": get("attention.layer_norm_epsilon"),
    }


def _gguf_metadata(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    if config["activation_function"] != "gelu_new":
        raise ExportError(f"gpt2 with activation {config['activation_function']!r}: llama.cpp's gpt2 runs gelu (tanh)")
    if not config["scale_attn_weights"] or config["scale_attn_by_inverse_layer_idx"]:
        raise ExportError("gpt2 with a score scale other than 1/sqrt(head_dim): llama.cpp's gpt2 has none")
    return {
        "block_count": config["n_layer"],
        "context_length": config["n_positions"],
        "embedding_length": config["n_embd"],
        "feed_forward_length": config["n_inner"],
        "attention.head_count": config["n_head"],
        "attention.layer_norm_epsilon": config["layer_norm_epsilon"],
    }


def _transposed(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    """Conv1D [in, out] <-> llama.cpp's [out, in] (its own inverse)."""
    return tensor.t() if name.endswith(_CONV1D) and tensor.ndim == 2 else tensor


GGUF = GgufMapping(
    archs={"gpt2": "gpt2"},
    export_arch={"gpt2": "gpt2"},
    config=_gguf_config,
    metadata=_gguf_metadata,
    from_gguf=_transposed,
    to_gguf=_transposed,
)

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    architectures={"gpt2": "GPT2LMHeadModel"},
    defaults={"gpt2": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
    fused_part=fused_part,
    gguf=GGUF,
)
