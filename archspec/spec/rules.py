"""Cross-field rules of a spec, each reported at the key path a user has to change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from archspec.spec.errors import SpecIssue

if TYPE_CHECKING:
    from archspec.spec.schema import Spec


def consistency_issues(spec: Spec) -> list[SpecIssue]:
    """Every rule the types alone cannot express. Runs on a spec whose fields are individually valid."""
    from archspec.spec.schema import Llama3Scaling, RopeSpec

    issues: list[SpecIssue] = []

    def problem(path: str, message: str, hint: str = "") -> None:
        issues.append(SpecIssue(tuple(path.split(".")), message, hint))

    attn = spec.attention
    if attn.head_dim is None:
        problem(
            "attention.heads",
            f"d_model ({spec.d_model}) is not divisible by heads ({attn.heads})",
            "set attention.head_dim explicitly or change heads",
        )
    if attn.kv_heads is not None and attn.heads % attn.kv_heads:
        problem(
            "attention.kv_heads",
            f"heads ({attn.heads}) must be divisible by kv_heads ({attn.kv_heads})",
            "each key/value head serves a whole group of query heads",
        )
    if attn.window_layers is not None:
        if attn.window is None:
            problem("attention.window_layers", "window_layers is set but attention.window is not", "set window")
        bad = [layer for layer in attn.window_layers if layer >= spec.n_layers]
        if bad:
            problem("attention.window_layers", f"layers {bad} do not exist (n_layers = {spec.n_layers})")

    if spec.norm.kind == "rmsnorm" and spec.norm.bias:
        problem("norm.bias", "rmsnorm has no bias", "use kind: layernorm, or drop bias")

    block = spec.block
    if block.residual_from_norm and block.kind != "pre-norm":
        problem("block.residual_from_norm", f"only meaningful for pre-norm blocks, not {block.kind}")
    if block.parallel_norms == 2 and block.kind != "parallel":
        problem("block.parallel_norms", f"only meaningful for parallel blocks, not {block.kind}")

    position = spec.position
    if isinstance(position, RopeSpec) and attn.head_dim is not None:
        rotary = int(attn.head_dim * position.fraction)
        if rotary == 0 or rotary % 2:
            problem(
                "position.fraction",
                f"head_dim {attn.head_dim} x fraction {position.fraction} gives {rotary} rotary dims; need an even number > 0",
                "rotary dims rotate in pairs",
            )
        scaling = position.scaling
        if isinstance(scaling, Llama3Scaling) and scaling.high_freq_factor <= scaling.low_freq_factor:
            problem(
                "position.scaling.high_freq_factor",
                f"must exceed low_freq_factor ({scaling.low_freq_factor})",
                "the two bound the band that is smoothly interpolated",
            )
    if attn.qk_norm and spec.norm.kind != "rmsnorm":
        problem("attention.qk_norm", "qk_norm uses RMSNorm per head; the spec's norm is layernorm")
    return issues
