"""Hypothesis strategies: tiny *valid* specs across the whole vocabulary, their parts, and random weights.

`spec_dicts()` draws a plain dict (as a user would write it, shorthands included) that `archspec.spec_from_dict`
accepts; `specs()` validates it. Keyword arguments narrow the draw for properties that hold only for some
variants (e.g. `positions=("rope",)`, `dynamic_rope=False`). Sizes are tiny so a forward pass takes milliseconds;
every size is drawn, so Hypothesis shrinks a failure to the smallest spec that still fails.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from hypothesis import assume
from hypothesis import strategies as st

import archspec

POSITIONS = ("rope", "alibi", "learned", "none")
SCALINGS = ("none", "linear", "dynamic", "llama3", "yarn")
STATIC_SCALINGS = ("none", "linear", "llama3", "yarn")  # a fixed frequency table whatever the sequence length
BLOCKS = ("pre-norm", "post-norm", "parallel", "sandwich")
ACTIVATIONS = ("relu", "gelu", "gelu-tanh", "silu", "swiglu", "geglu", "geglu-tanh", "reglu")
NORMS = ("rmsnorm", "layernorm")

# theta below ~2 is a degenerate RoPE (see the README's findings: theta = 1 breaks YaRN, tiny theta overflows)
thetas = st.one_of(st.just(10000.0), st.floats(2.0, 1e6, allow_nan=False, allow_infinity=False))
factors = st.floats(1.0, 16.0, allow_nan=False, allow_infinity=False)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def rope_scaling(draw: st.DrawFn, kinds: tuple[str, ...] = SCALINGS) -> dict[str, Any] | str | None:
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "linear":
        return {"kind": "linear", "factor": draw(factors)}
    if kind == "dynamic":
        return {"kind": "dynamic", "factor": draw(factors)}
    if kind == "llama3":
        low = draw(st.floats(0.5, 4.0))
        return {
            "kind": "llama3",
            "factor": draw(factors),
            "low_freq_factor": low,
            "high_freq_factor": low + draw(st.floats(0.25, 8.0)),
            "original_context": draw(st.integers(1, 8192)),
        }
    yarn: dict[str, Any] = {
        "kind": "yarn",
        "factor": draw(factors),
        "original_context": draw(st.integers(1, 8192)),
        "truncate": draw(st.booleans()),
    }
    if draw(st.booleans()):
        yarn["beta_fast"] = draw(st.floats(1.0, 64.0))
        yarn["beta_slow"] = draw(st.floats(0.25, 4.0))
    temperature = draw(st.sampled_from(["default", "explicit", "deepseek"]))
    if temperature == "explicit":
        yarn["attention_factor"] = draw(st.floats(0.5, 2.0))
    elif temperature == "deepseek":
        yarn["mscale"] = draw(st.floats(0.5, 1.5))
        yarn["mscale_all_dim"] = draw(st.floats(0.5, 1.5))
    return yarn


@st.composite
def rope_position(draw: st.DrawFn, head_dim: int, scalings: tuple[str, ...] = SCALINGS) -> dict[str, Any]:
    """RoPE with a rotary width that is even and > 0: `fraction` is drawn as rotary_dim / head_dim."""
    rotary = draw(st.integers(1, head_dim // 2)) * 2
    fraction = rotary / head_dim
    assume(int(head_dim * fraction) == rotary)  # float rounding of the fraction must give back the same width
    position: dict[str, Any] = {
        "kind": "rope",
        "theta": draw(thetas),
        "pairing": draw(st.sampled_from(["half", "interleaved"])),
    }
    if fraction != 1.0 or draw(st.booleans()):
        position["fraction"] = fraction
    scaling = draw(rope_scaling(scalings if rotary > 2 else tuple(k for k in scalings if k != "dynamic")))
    if scaling is not None:  # dynamic NTK needs more than 2 rotary dims (a spec rule)
        position["scaling"] = scaling
    return position


@st.composite
def spec_dicts(
    draw: st.DrawFn,
    *,
    positions: tuple[str, ...] = POSITIONS,
    scalings: tuple[str, ...] = SCALINGS,
    blocks: tuple[str, ...] = BLOCKS,
    max_layers: int = 3,
    min_context: int = 1,
    window: bool | None = None,
    windowed_layers: str = "any",
) -> dict[str, Any]:
    """A valid spec as plain data.

    window: None draws with or without a sliding window, True always, False never. windowed_layers: "any" may
    restrict the window to some layers, "all" windows every layer.
    """
    heads = draw(st.integers(1, 4))
    kv_heads = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    position_kind = draw(st.sampled_from(positions))
    rope = position_kind == "rope"
    explicit_head_dim = draw(st.booleans())
    if explicit_head_dim:
        head_dim = draw(st.integers(2 if rope else 1, 8))
        d_model = draw(st.integers(2, 16))
    else:
        head_dim = draw(st.integers(1, 4)) * 2 if rope else draw(st.integers(1, 6))
        d_model = heads * head_dim
    n_layers = draw(st.integers(1, max_layers))
    norm_kind = draw(st.sampled_from(NORMS))

    attention: dict[str, Any] = {"heads": heads}
    if kv_heads != heads or draw(st.booleans()):
        attention["kv_heads"] = kv_heads
    if explicit_head_dim:
        attention["head_dim"] = head_dim
    bias = draw(st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={k: st.booleans() for k in "qkvo"})))
    if bias is not False:
        attention["bias"] = bias
    if norm_kind == "rmsnorm" and draw(st.booleans()):
        attention["qk_norm"] = True
    use_window = draw(st.booleans()) if window is None else window
    if use_window:
        attention["window"] = draw(st.integers(1, 8))
        if windowed_layers == "any" and draw(st.booleans()):
            attention["window_layers"] = draw(st.lists(st.integers(0, n_layers - 1), max_size=n_layers, unique=True))
    if draw(st.booleans()):
        attention["scale"] = draw(st.floats(0.05, 2.0))

    if rope:
        position: dict[str, Any] | str = draw(rope_position(head_dim, scalings))
    else:
        position = draw(st.sampled_from([position_kind, {"kind": position_kind}]))  # shorthand or full

    norm: dict[str, Any] | str = {"kind": norm_kind, "eps": draw(st.sampled_from([1e-5, 1e-6, 1e-12, 0.1]))}
    if norm_kind == "layernorm":
        norm["bias"] = draw(st.booleans())
    if draw(st.booleans()) and (norm_kind == "rmsnorm" or norm["bias"]):
        norm = norm_kind  # shorthand: default eps (and bias for layernorm)

    block_kind = draw(st.sampled_from(blocks))
    block: dict[str, Any] | str = {"kind": block_kind}
    if block_kind == "parallel":
        block["parallel_norms"] = draw(st.sampled_from([1, 2]))
    if block_kind == "pre-norm":
        block["residual_from_norm"] = draw(st.booleans())
    if block == {"kind": block_kind} and draw(st.booleans()):
        block = block_kind

    spec: dict[str, Any] = {
        "name": draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,12}\Z")),
        "vocab_size": draw(st.integers(2, 40)),
        "d_model": d_model,
        "n_layers": n_layers,
        "context_length": draw(st.integers(max(min_context, 1), max(min_context, 1) + 64)),
        "attention": attention,
        "position": position,
        "norm": norm,
        "block": block,
        "mlp": {
            "activation": draw(st.sampled_from(ACTIVATIONS)),
            "d_ff": draw(st.integers(1, 16)),
            "bias": draw(st.booleans()),
        },
        "embeddings": {"tied": draw(st.booleans()), "norm": draw(st.booleans())},
    }
    if draw(st.booleans()):
        spec["description"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        spec["tokens"] = draw(st.fixed_dictionaries({}, optional={k: st.integers(0, 1) for k in ("bos", "eos", "pad")}))
    return spec


def specs(**options: Any) -> st.SearchStrategy[archspec.Spec]:
    """Validated specs; see `spec_dicts` for the options."""
    return spec_dicts(**options).map(archspec.spec_from_dict)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with O(1)-scale noise, so no default init (zeros, ones, std 0.02) hides a mistake.

    Matrices get std 1/sqrt(fan_in) (activations stay O(1) through the layers), embeddings std 1, norm weights
    1 + N(0, 0.1^2), biases N(0, 0.1^2).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
            if param.ndim == 2 and "embed" not in name:
                param.copy_(noise / math.sqrt(param.shape[1]))
            elif param.ndim == 2:
                param.copy_(noise)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return model


def build64(spec: archspec.Spec, seed: int) -> torch.nn.Module:
    """The spec's model in float64 with random O(1) weights, in eval mode."""
    return randomize_(archspec.build(spec, dtype=torch.float64), seed).eval()


def token_ids(vocab_size: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=generator)


def scaled(default: int) -> int:
    """Examples for a property that is slow per example: `default` under ci/dev, 10x under thorough."""
    return default * 10 if os.environ.get("ARCHSPEC_HYPOTHESIS_PROFILE") == "thorough" else default
