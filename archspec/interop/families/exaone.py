"""EXAONE 4.0: OLMo 2's output-norm block with Qwen3's per-head q/k norms, and hybrid attention whose global
layers have no positions at all (NoPE).

Matched against transformers 5.25.0 `models/exaone4/configuration_exaone4.py` and `modeling_exaone4.py`:

- the decoder layer has no input norms: attention -> `post_attention_layernorm` -> residual add, MLP ->
  `post_feedforward_layernorm` -> residual add (archspec's output-norm block, OLMo 2's names); final `model.norm`.
- `q_norm` / `k_norm` are RMSNorms of width head_dim applied to each head after the view and before RoPE
  (qk_norm: true), with `rms_norm_eps`. No projection or MLP has a bias (no config key).
- `Exaone4Attention` rotates q and k only when `sliding_window is None or` the layer is "sliding_attention": with
  a window, the full-attention (global) layers are NoPE; without one, every layer is RoPE and full attention (the
  5.25 model fails on a sliding layer without a window, so `layer_types` cannot mean anything else there).
- `layer_types` default: `sliding_window_pattern` (int, 4) makes layer i sliding unless (i + 1) % pattern == 0,
  i.e. "LLLG"; 4.x-era configs may spell the pattern as a string of L (local) and G (global), which
  `Exaone4Config` 5.25 cannot take without `layer_types` (a TypeError): read here as pattern[i % len].
- `num_key_value_heads` defaults to 32, not to the head count; tied head off by default.
- RoPE: plain `rope_parameters` (or 4.x rope_theta / rope_scaling), llama3 scaling in the published configs;
  the same table for every RoPE layer.

The spec: kinds `sliding` (the window, the spec's RoPE) and `global` (position: none) when both occur; one kind
needs no layers section.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.families.common import (
    FULL,
    SLIDING,
    Getter,
    layer_types_of,
    layers_section,
    llama_key_map,
    llama_like,
    llama_like_config,
    needs,
    read_layer_types,
    single_window,
)
from archspec.interop.families.olmo import OUTPUT_NORM_LAYER
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import NoPositionSpec, QKNormSpec, RopeSpec, Spec

DEFAULTS: dict[str, dict[str, Any]] = {
    "exaone4": dict(
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        sliding_window=4096,
        sliding_window_pattern=4,
    )
}
NO_POSITION = {"kind": "none"}


# ============================================================================================ config -> spec
def _default_layer_types(get: Getter, n_layers: int) -> list[str]:
    pattern = get("sliding_window_pattern")
    if isinstance(pattern, str):
        if not pattern or set(pattern) - {"L", "G"}:
            raise UnsupportedConfigError(f"sliding_window_pattern {pattern!r}: only L (local) and G (global)")
        return [SLIDING if pattern[i % len(pattern)] == "L" else FULL for i in range(n_layers)]
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern <= 0:
        raise UnsupportedConfigError(f"sliding_window_pattern {pattern!r} without layer_types is not supported")
    return [SLIDING if (i + 1) % pattern else FULL for i in range(n_layers)]


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    data = llama_like(get, bias={"q": False, "k": False, "v": False, "o": False}, qk_norm=True)
    data["block"] = "output-norm"
    data["mlp"]["bias"] = False
    window = get("sliding_window")
    if window is None:  # RoPE and full attention on every layer
        return data
    n_layers = data["n_layers"]
    if get.config.get("layer_types"):
        types = read_layer_types(get, n_layers, lambda i: FULL)
    else:
        types = _default_layer_types(get, n_layers)
    if set(types) == {SLIDING}:
        data["attention"]["window"] = window
        return data
    if set(types) == {FULL}:  # every layer global: NoPE throughout
        data["position"] = NO_POSITION
        return data
    names = ["sliding" if t == SLIDING else "global" for t in types]
    data["layers"] = layers_section({"sliding": {"window": window}, "global": {"position": NO_POSITION}}, names)
    return data


# ============================================================================================ spec -> config
def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn, norm, embeddings = spec.attention, spec.norm, spec.embeddings
    needs(attn.kind == "mha", "attention.kind")
    needs(spec.block.kind == "output-norm", "block.kind")
    needs(norm.kind == "rmsnorm" and not norm.offset, "norm")
    needs(attn.qk_norm == QKNormSpec(), "attention.qk_norm")
    needs(not (attn.bias.q or attn.bias.k or attn.bias.v or attn.bias.o), "attention.bias")
    needs(not spec.mlp.bias, "mlp.bias")
    needs(attn.scale is None and attn.softcap is None, "attention.scale")
    needs(embeddings.scale is None and embeddings.logit_scale == 1.0, "embeddings.scale")
    needs(embeddings.logit_softcap is None, "embeddings.logit_softcap")
    types = layer_types_of(spec)
    positions = [spec.position_for_layer(i) for i in range(spec.n_layers)]
    ropes = {p.model_dump_json() for p in positions if isinstance(p, RopeSpec)}
    needs(all(isinstance(p, RopeSpec | NoPositionSpec) for p in positions) and len(ropes) <= 1, "position")
    rope = next((p for p in positions if isinstance(p, RopeSpec)), None)
    needs(rope is None or (rope.fraction == 1.0 and rope.pairing == "half"), "position")
    nope = [isinstance(p, NoPositionSpec) for p in positions]
    if not any(nope):  # RoPE everywhere: no window at all (every layer full), or every layer sliding
        needs(len(set(types)) == 1, "layers.kinds.position")
        window = single_window(spec)
    else:  # a window; the sliding layers rotate, the global ones do not
        needs(all(is_nope == (t == FULL) for is_nope, t in zip(nope, types, strict=True)), "layers.kinds.position")
        window = single_window(spec) or DEFAULTS[model_type]["sliding_window"]
    config = llama_like_config(spec.model_copy(update={"position": rope or RopeSpec(kind="rope")}))
    return config | {"sliding_window": window, "layer_types": types}


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(OUTPUT_NORM_LAYER)


FAMILY = Family(
    name="exaone",
    model_types=("exaone4",),
    architectures={"exaone4": "Exaone4ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
)
