"""gpt-oss (`gpt_oss`, gpt-oss-20b and -120b): GQA with attention sinks and biases, sliding and full layers
alternating, every layer an MoE of clamped-SwiGLU experts with biases behind a biased router.

Matched against transformers 5.25.0 `models/gpt_oss/configuration_gpt_oss.py` and `modeling_gpt_oss.py`:

- `GptOssAttention`: q/k/v/o biases (`attention_bias`), RoPE in halves (YaRN by default: factor 32 over 4096
  positions, beta 32 / 1, `truncate: false`), and `sinks` ([heads]): `eager_attention_forward` appends each head's
  sink logit as a softmax column and drops it (archspec: `attention.sinks`). `layer_types` alternate
  sliding (window `sliding_window`, 128) and full attention, sliding first.
- `GptOssTopKRouter`: logits with a bias, the top-k logits, a softmax over those k alone: the softmax over all
  experts renormalised over the chosen ones (`router: {renormalize: true, bias: true}`).
- `GptOssExperts`: `gate_up_proj` [experts, d_model, 2 x d_ff] with gate and up *interleaved* in its last dim
  (gate = [..., ::2], up = [..., 1::2]) and multiplied as x @ W (transposed against nn.Linear), `down_proj`
  [experts, d_ff, d_model], a bias on each ([experts, 2 x d_ff], [experts, d_model]); the unit is
  (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g), g = min(gate, limit) (`swiglu_limit`, `swiglu_alpha`):
  `mlp.activation: clamped-swiglu` with `moe.bias`.
- `GptOssRMSNorm` is OLMo 2's (the weight multiplied before the cast back: equal in float32 and float64);
  untied head; the balance loss is Mixtral's (`router_aux_loss_coef`), over the chosen experts, which are the
  top-k of its softmax too.

Released checkpoints store the experts in MXFP4 (`*_blocks`, `*_scales`), which transformers dequantises on load;
archspec reads and writes the unquantised layout transformers saves.
"""

from __future__ import annotations

from typing import Any

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
    moe_section,
    needs,
    read_layer_types,
    read_rope,
    single_window,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap, Source
from archspec.spec.schema import RopeSpec, Spec

DEFAULTS: dict[str, Any] = dict(  # GptOssConfig's (gpt-oss-20b's shape)
    num_hidden_layers=36,
    num_local_experts=128,
    vocab_size=201088,
    hidden_size=2880,
    intermediate_size=2880,
    head_dim=64,
    num_attention_heads=64,
    num_key_value_heads=8,
    sliding_window=128,
    tie_word_embeddings=False,
    hidden_act="silu",
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=150000.0,
    num_experts_per_tok=4,
    swiglu_alpha=1.702,
    swiglu_limit=7.0,
    router_aux_loss_coef=0.001,
    attention_bias=True,
)
_YARN = {  # GptOssConfig's rope_parameters when a config has none
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    if not (get.config.get("rope_parameters") or get.config.get("rope_scaling")):
        get = Getter({**get.config, "rope_parameters": {**_YARN, "rope_theta": get("rope_theta")}}, get.defaults)
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})
    data["attention"]["sinks"] = True
    data["position"] = read_rope(get, fraction=1.0)
    data["mlp"] |= {
        "activation": "clamped-swiglu",
        "limit": float(get("swiglu_limit")),
        "alpha": float(get("swiglu_alpha")),
    }
    data["moe"] = {
        "experts": get("num_local_experts"),
        "top_k": get("num_experts_per_tok"),
        "bias": True,
        "router": {"renormalize": True, "bias": True, "aux_loss_coef": float(get("router_aux_loss_coef"))},
    }
    n_layers, window = data["n_layers"], get("sliding_window")
    types = read_layer_types(get, n_layers, lambda i: SLIDING if (i + 1) % 2 else FULL)
    if window is None:
        types = [FULL] * n_layers
    if len(set(types)) == 1:
        if types[0] == SLIDING:
            data["attention"]["window"] = window
        return data
    names = ["sliding" if t == SLIDING else "full" for t in types]
    data["layers"] = layers_section({"sliding": {"window": window}, "full": {}}, names)
    return data


def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    moe = moe_section(spec)
    attn, mlp = spec.attention, spec.mlp
    bias = attn.bias  # type: ignore[union-attr]
    needs(bias.q == bias.k == bias.v == bias.o, "attention.bias")
    needs(attn.sinks and attn.qk_norm is None and attn.softcap is None, "attention.sinks")  # type: ignore[union-attr]
    needs(spec.layers is None or all(kind.position is None for kind in spec.layers.kinds.values()), "layers")
    position = spec.position
    needs(isinstance(position, RopeSpec) and position.fraction == 1.0 and position.pairing == "half", "position")
    needs(mlp.activation == "clamped-swiglu" and moe.bias and moe.d_ff == mlp.d_ff, "mlp.activation")
    router = moe.router
    needs(router.scoring == "softmax" and router.renormalize and router.bias and router.groups == 1, "moe.router")
    needs(router.scale == 1.0 and not router.correction_bias and not router.jitter, "moe.router")
    needs(router.aux_loss == "token" and not router.z_loss_coef, "moe.router.aux_loss")
    # hidden_act is "silu", which GptOssExperts never reads (its unit is the clamped SwiGLU)
    plain = mlp.model_copy(update={"activation": "swiglu", "limit": None, "alpha": None})
    config = llama_like_config(spec.model_copy(update={"mlp": plain}))
    return config | {
        "attention_bias": bias.q,
        "num_local_experts": moe.experts,
        "num_experts_per_tok": moe.top_k,
        "swiglu_limit": mlp.limit,
        "swiglu_alpha": mlp.alpha,
        "router_aux_loss_coef": router.aux_loss_coef,
        "sliding_window": single_window(spec),
        "layer_types": layer_types_of(spec),
    }


def _interleaved(name: str, index: int, transpose: bool) -> Source:
    """Gate (index 0) or up (1) of gpt-oss's fused gate_up tensors: every other column of the last dim."""
    return Source(name, split=lambda t: t[..., index::2], transpose=transpose, fuse_dim=-1)


def key_map(spec: Spec, model_type: str) -> KeyMap:
    layer = LLAMA_LAYER | {"attn": "self_attn", "mlp.router": "mlp.router"}
    experts = "mlp.experts."
    return llama_key_map(
        layer,
        sources={
            "mlp.experts.gate": lambda at: _interleaved(f"{at}{experts}gate_up_proj", 0, True),
            "mlp.experts.up": lambda at: _interleaved(f"{at}{experts}gate_up_proj", 1, True),
            "mlp.experts.down": lambda at: Source(f"{at}{experts}down_proj", transpose=True),
            "mlp.experts.gate_bias": lambda at: _interleaved(f"{at}{experts}gate_up_proj_bias", 0, False),
            "mlp.experts.up_bias": lambda at: _interleaved(f"{at}{experts}gate_up_proj_bias", 1, False),
            "mlp.experts.down_bias": lambda at: Source(f"{at}{experts}down_proj_bias"),
        },
    )


FAMILY = Family(
    name="gpt_oss",
    model_types=("gpt_oss",),
    architectures={"gpt_oss": "GptOssForCausalLM"},
    defaults={"gpt_oss": DEFAULTS},
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="moe",
)
