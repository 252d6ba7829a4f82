"""Which keys a query may see, as small predicates that compose: causal, sliding window, prefix (GLM).

A predicate has FlexAttention's `mask_mod` signature, `(batch, head, query, key) -> bool`, on index tensors that
broadcast: `render` evaluates it over a [batch, 1, queries, keys] grid for SDPA, and the same function is a
FlexAttention mask_mod. Positions are absolute (the key at cache slot j has position j).
"""

from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import and_masks, or_masks

from archspec.nn.positions import Context, positions_from_mask

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (b, h, q, kv) -> seen


def causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """A query sees itself and the keys before it."""
    return kv <= q


def sliding_window(window: int) -> MaskMod:
    """A query sees the keys less than `window` positions back: itself and the window - 1 before (Mistral)."""

    def within(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return q - kv < window

    return within


def prefix(lengths: torch.Tensor, key_mask: torch.Tensor | None = None) -> MaskMod:  # emit-if: prefix_lm
    """Row b's first lengths[b] tokens are seen by every query of the row (GLM's bidirectional part A); with a
    padding mask ([rows, keys]) counted from the row's first token, not its first slot."""
    positions = None if key_mask is None else positions_from_mask(key_mask)

    def in_prefix(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (kv if positions is None else positions[b, kv]) < lengths[b]

    return in_prefix


def padding(key_mask: torch.Tensor) -> MaskMod:  # emit-if: !encoder_decoder
    """Row b's padded keys (key_mask[b, kv] False) are hidden; a query still sees its own slot, so that a padded
    query's softmax has a key (its output is never read)."""

    def real(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return key_mask[b, kv] | (kv == q)

    return real


def same_document(documents: torch.Tensor) -> MaskMod:  # emit-if: !encoder_decoder
    """Packed rows: a query sees only the keys of its own document (documents[b, slot]: the document index)."""

    def same(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return documents[b, q] == documents[b, kv]

    return same


def causal_pattern(window: int | None = None, prefix_lengths: torch.Tensor | None = None) -> MaskMod:
    """Causal attention, within `window` when set, plus each row's prefix when `prefix_lengths` is given."""
    mod = causal if window is None else and_masks(causal, sliding_window(window))
    if prefix_lengths is not None:  # emit-if: prefix_lm
        mod = or_masks(mod, prefix(prefix_lengths))
    return mod


def render(mod: MaskMod, context: Context, start: int = 0, end: int | None = None) -> torch.Tensor:
    """The predicate over the call's [rows or 1, 1, queries, keys] grid: SDPA's boolean mask (True: may attend);
    `start`, `end`: of the queries start .. end - 1 only."""
    device = context.positions.device
    b = torch.arange(context.rows, device=device)[:, None, None, None]
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    q = context.positions[start:end][None, None, :, None]
    kv = torch.arange(context.keys, device=device)[None, None, None, :]
    visible = mod(b, h, q, kv)  # batch 1 unless a predicate reads the row; 4-D: CPU SDPA is slow with 2-D masks
    return visible.expand(visible.shape[0], 1, q.shape[2], context.keys)


def additive_mask(allowed: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask plus an optional float bias ([heads, q, k]) as one float mask for SDPA (-inf where masked)."""
    masked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
    return masked if bias is None else bias.to(dtype) + masked
