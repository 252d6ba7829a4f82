"""Attention masks as boolean tensors (True = may attend), built once per forward and shared by the layers."""

import torch


def causal_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """[queries, keys] mask: key j is visible to query i iff j <= i, and i - j < window when a window is set.

    A window of w lets a query see itself and the w - 1 keys before it (Mistral's convention).
    """
    distance = query_positions[:, None] - key_positions[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed = allowed & (distance < window)
    return allowed


def additive_mask(allowed: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask plus an optional float bias ([heads, q, k]) as one float mask for SDPA (-inf where masked)."""
    masked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
    return masked if bias is None else bias.to(dtype) + masked


def prefix_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, prefix_lengths: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """[batch, 1, queries, keys] mask of a prefix LM (GLM): key j is visible to query i iff j <= i or j < prefix.

    The first `prefix_lengths[b]` tokens of row b (part A) see each other in both directions; later tokens (part B)
    see part A and the part-B tokens up to themselves. Prefix length 0 is the causal mask.
    """
    in_prefix = key_positions[None, :] < prefix_lengths[:, None]
    return (causal_mask(query_positions, key_positions, window)[None] | in_prefix[:, None, :])[:, None]
