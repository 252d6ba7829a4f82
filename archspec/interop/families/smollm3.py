"""SmolLM3: Llama's layout with NoPE layers (every `no_rope_layer_interval`-th layer attends without RoPE).

Matched against transformers 5.25.0 `models/smollm3/configuration_smollm3.py` and `modeling_smollm3.py`:

- `no_rope_layers[i] == 1` means layer i *uses* RoPE (`SmolLM3Attention.use_rope`), 0 a NoPE layer; without the
  list the config class builds `int((i + 1) % no_rope_layer_interval != 0)`: layers 3, 7, 11, ... are NoPE. The
  list may be longer than the stack (the docstring says "at least"): its first `num_hidden_layers` entries count.
  NoPE layers are a layers-section kind whose position is `none`.
- windows: without `layer_types` the config class marks "sliding_attention" the NoPE layers only, and only when
  `use_sliding_window` and `sliding_window` are set. The sliding mask is built from `layer_types` and
  `sliding_window` alone (`create_sliding_window_causal_mask`, used by eager, sdpa and flex attention and by the
  cache), so explicit `layer_types` with sliding entries slide under those backends even with `use_sliding_window`
  false (only flash attention reads `use_sliding_window`, through the module's `sliding_window`): read as the
  mask says; export writes `use_sliding_window` true whenever a layer slides, so every backend agrees.
- the class has no `head_dim` field, but an explicit one in config.json is kept as an attribute and used by the
  attention and rotary modules (`getattr(config, "head_dim", ...)`); default hidden_size / heads.
- `default_theta` 2e6 (the class default when rope_parameters / rope_theta are absent); tied head by default;
  one `attention_bias` flag for q/k/v/o, `mlp_bias` for the MLP; RMSNorm statistics in float32 (as Llama's).
- RoPE types other than default read `partial_rotary_factor` in `modeling_rope_utils` while the default one does
  not: a fraction other than 1 is refused, as for Llama.
"""

from __future__ import annotations

from typing import Any

from archspec.interop.errors import UnsupportedConfigError
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
    needs,
    read_layer_types,
    single_window,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap
from archspec.spec.schema import NoPositionSpec, RopeSpec, Spec

DEFAULTS: dict[str, dict[str, Any]] = {
    "smollm3": dict(
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        hidden_act="silu",
        num_key_value_heads=4,
        rope_theta=2000000.0,
        use_sliding_window=False,
        sliding_window=None,
        no_rope_layer_interval=4,
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=128004,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
}


# ============================================================================================ config -> spec
def _uses_rope(get: Getter, n_layers: int) -> list[bool]:
    """Per layer: RoPE (True) or NoPE, from `no_rope_layers` or the config class's rule of the interval."""
    listed = get.config.get("no_rope_layers")
    if listed is None:
        interval = get("no_rope_layer_interval")
        return [(index + 1) % interval != 0 for index in range(n_layers)]
    if len(listed) < n_layers:
        raise UnsupportedConfigError(f"no_rope_layers has {len(listed)} entries for {n_layers} layers")
    return [bool(flag) for flag in listed[:n_layers]]


def to_spec(get: Getter, model_type: str) -> dict[str, Any]:
    params = get.config.get("rope_parameters") or get.config.get("rope_scaling") or {}
    if float(params.get("partial_rotary_factor", get.config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UnsupportedConfigError("smollm3 with partial_rotary_factor != 1 (transformers applies it inconsistently)")
    flag = bool(get("attention_bias"))
    data = llama_like(get, bias={"q": flag, "k": flag, "v": flag, "o": flag})
    n_layers = data["n_layers"]
    rope = _uses_rope(get, n_layers)
    use_window = bool(get("use_sliding_window")) and get("sliding_window") is not None
    types = read_layer_types(get, n_layers, lambda i: SLIDING if use_window and not rope[i] else FULL)
    window = get("sliding_window")
    if SLIDING in types and window is None:
        raise UnsupportedConfigError("layer_types has sliding_attention layers but sliding_window is not set")
    layers = [(rope[i], types[i] == SLIDING) for i in range(n_layers)]
    if len(set(layers)) == 1:  # all alike: no layers section
        uses_rope, slides = layers[0]
        if not uses_rope:
            data["position"] = {"kind": "none"}
        if slides:
            data["attention"]["window"] = window
        return data
    kinds: dict[str, dict[str, Any]] = {}
    for uses_rope, slides in dict.fromkeys(layers):
        kind: dict[str, Any] = {"window": window} if slides else {}
        if not uses_rope:
            kind["position"] = {"kind": "none"}
        kinds[_kind_name(uses_rope, slides)] = kind
    data["layers"] = layers_section(kinds, [_kind_name(*layer) for layer in layers])
    return data


def _kind_name(uses_rope: bool, slides: bool) -> str:
    return ("rope" if uses_rope else "nope") + ("-sliding" if slides else "")


# ============================================================================================ spec -> config
def to_config(spec: Spec, model_type: str) -> dict[str, Any]:
    attn = spec.attention
    needs(attn.kind == "mha", "attention.kind")
    needs(attn.qk_norm is None, "attention.qk_norm")
    needs(len({attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o}) == 1, "attention.bias")
    positions = [spec.position_for_layer(i) for i in range(spec.n_layers)]
    needs(all(isinstance(p, RopeSpec | NoPositionSpec) for p in positions), "position.kind")
    ropes = [p for p in positions if isinstance(p, RopeSpec)]
    needs(all(p == ropes[0] for p in ropes), "layers.kinds.position")  # one rotary embedding for every layer
    rope = ropes[0] if ropes else RopeSpec(kind="rope", theta=DEFAULTS["smollm3"]["rope_theta"])
    needs(rope.fraction == 1.0 and rope.pairing == "half" and not rope.block_positions, "position")
    config = llama_like_config(spec.model_copy(update={"position": rope}))
    window = single_window(spec)
    config |= {
        "attention_bias": attn.bias.q,
        "mlp_bias": spec.mlp.bias,
        "no_rope_layers": [int(isinstance(p, RopeSpec)) for p in positions],
        "use_sliding_window": window is not None,
        "sliding_window": window,
        "layer_types": layer_types_of(spec),
    }
    return config


def key_map(spec: Spec, model_type: str) -> KeyMap:
    return llama_key_map(LLAMA_LAYER)


FAMILY = Family(
    name="smollm3",
    model_types=("smollm3",),
    architectures={"smollm3": "SmolLM3ForCausalLM"},
    defaults=DEFAULTS,
    to_spec=to_spec,
    to_config=to_config,
    key_map=key_map,
    kind="dense",
)
