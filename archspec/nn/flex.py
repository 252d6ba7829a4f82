"""FlexAttention (`torch.nn.attention.flex_attention`) for whole sequences: block masks built from the same
predicates as SDPA's masks (`archspec.nn.masks`), and score mods for ALiBi and T5's relative bias.

Taken when a model's `attn_backend` is "flex" (archspec's own models; emitted files keep the default paths):
blocks with nothing visible are skipped, so causal and windowed attention do ~half and ~window/seq of the work.
Fused only under `torch.compile`; on CPU forward-only in torch 2.13, and sequences under `FLEX_CPU_SHORTEST`
tokens keep the default paths (see `flex_block_size`).
"""

import math
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from archspec.nn.masks import causal_pattern
from archspec.nn.positions import relative_position_buckets


class FlexPattern:
    """Attention through FlexAttention: `block_mask` (None: every key, in FlexAttention's default 128-blocks, which
    the CPU kernel gets wrong for shorter sequences: pass `full_block_mask` there) and an optional `score_mod`."""

    def __init__(self, block_mask: BlockMask | None, score_mod: Callable[..., torch.Tensor] | None = None) -> None:
        self.block_mask, self.score_mod = block_mask, score_mod

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, sinks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`sinks` ([heads]): logits that join each head's softmax as one more column and are dropped. With Z the
        softmax's normaliser (exp of the log-sum-exp FlexAttention returns), the output is scaled by
        Z / (Z + exp(sink)) = sigmoid(lse - sink): exact, and no extra key."""
        # contiguous: inductor's CPU flex template reads the sizes of the buffer under a view (torch 2.13), and
        # q/k/v are views of the [batch * seq, heads * dim] projections.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = flex_attention(
            q,
            k,
            v,
            score_mod=self.score_mod,
            block_mask=self.block_mask,
            scale=scale,
            enable_gqa=k.shape[1] != q.shape[1],
            **({} if sinks is None else _LSE_REQUEST),
        )
        if sinks is None:
            return out  # type: ignore[return-value]
        out, aux = out  # type: ignore[misc]
        lse = getattr(aux, "lse", aux)
        return out * torch.sigmoid(lse - sinks.to(lse.dtype).view(1, -1, 1))[..., None].to(out.dtype)


try:  # torch >= 2.9 asks for the log-sum-exp with an AuxRequest; return_lse before that (deprecated since)
    from torch.nn.attention.flex_attention import AuxRequest

    _LSE_REQUEST: dict = {"return_aux": AuxRequest(lse=True)}
except ImportError:  # pragma: no cover (torch < 2.9)
    _LSE_REQUEST = {"return_lse": True}


FLEX_CPU_SHORTEST = 16
"""On CPU, FlexAttention serves sequences of at least this many tokens; shorter ones keep the default paths."""


def flex_block_size(queries: int, keys: int, device: torch.device) -> int:
    """FlexAttention's block size: 128, but on CPU no longer than the shorter of the two sequences.

    Inductor's CPU flex kernel (torch 2.13) returned NaN or wrong values under torch.compile for a sequence
    shorter than the block (40 tokens in 128-blocks, 8 in 16-blocks, with or without a block mask) and for
    8-blocks with a per-row (prefix) block mask; with blocks of 16 to 128 positions no longer than the
    sequences it was right in every case tried (tests/unit/test_attention_patterns.py). Hence
    `FLEX_CPU_SHORTEST`: the models do not take FlexAttention on CPU for shorter sequences.
    """
    block = 128
    if device.type == "cpu":
        while block > FLEX_CPU_SHORTEST and block > min(queries, keys):
            block //= 2
    return block


def causal_block_mask(
    queries: int,
    keys: int,
    window: int | None,
    device: torch.device,
    block: int | None = None,
    prefix_lengths: torch.Tensor | None = None,
) -> BlockMask:
    """FlexAttention block mask of causal attention (within `window` when set), queries and keys from position 0.

    The element-wise mask is `masks.causal_pattern`; which blocks need it is worked out from the block grid
    directly (no [queries, keys] evaluation): a block is skipped when no (query, key) pair in it is visible, taken
    without evaluating the mask when every pair is, and masked element-wise otherwise. `prefix_lengths` ([batch]):
    a prefix LM (GLM, whose part A is attended both ways): row b's first prefix_lengths[b] keys are visible to
    every query of the row as well, so the block mask has one row of blocks per sequence. `block`: see
    `flex_block_size`.
    """

    visible = causal_pattern(window, prefix_lengths)  # the predicate SDPA's masks are rendered from
    block = block or flex_block_size(queries, keys, device)
    q_first, q_last, kv_first, kv_last = _block_bounds(queries, keys, block, device)
    some = q_last >= kv_first
    every = q_first >= kv_last
    if window is not None:
        some = some & (q_first - kv_last < window)
        every = every & (q_last - kv_first < window)
    some, every = some[None], every[None]  # [1 or batch, query blocks, key blocks]
    if prefix_lengths is not None:
        prefix = prefix_lengths.to(device)[:, None, None]
        some, every = some | (kv_first < prefix), every | (kv_last < prefix)
    return _block_mask(some, every, visible, block, queries, keys)


def full_block_mask(queries: int, keys: int, device: torch.device, block: int | None = None) -> BlockMask:
    """FlexAttention block mask in which every query sees every key (T5's encoder); `block`: `flex_block_size`."""

    def visible(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return kv >= 0

    block = block or flex_block_size(queries, keys, device)
    q_first, _, kv_first, _ = _block_bounds(queries, keys, block, device)
    every = torch.ones(1, q_first.shape[0], kv_first.shape[1], dtype=torch.bool, device=device)
    return _block_mask(every, every, visible, block, queries, keys)


def _block_bounds(queries: int, keys: int, block: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """First and last query position of each query block ([blocks, 1]) and key position of each key block ([1, blocks])."""
    q_blocks, kv_blocks = math.ceil(queries / block), math.ceil(keys / block)
    q_first = torch.arange(q_blocks, device=device)[:, None] * block
    kv_first = torch.arange(kv_blocks, device=device)[None, :] * block
    return q_first, (q_first + block).clamp(max=queries) - 1, kv_first, (kv_first + block).clamp(max=keys) - 1


def _block_mask(
    some: torch.Tensor,
    every: torch.Tensor,
    mask_mod: Callable[..., torch.Tensor],
    block: int,
    queries: int,
    keys: int,
) -> BlockMask:
    """A BlockMask from [batch, query blocks, key blocks] grids: blocks with some visible pair, with every pair visible."""

    def ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = blocks.sum(-1, dtype=torch.int32)
        indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return count[:, None], indices[:, None]  # a head dimension of 1: every head alike

    count, indices = ordered(some & ~every)
    full_count, full_indices = ordered(every)
    return BlockMask.from_kv_blocks(
        count, indices, full_count, full_indices, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(queries, keys)
    )


def alibi_score_mod(slopes: torch.Tensor) -> Callable[..., torch.Tensor]:
    """score + slope_h * key position: ALiBi as BLOOM computes it (see `positions.alibi_bias`)."""

    def score_mod(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
    ) -> torch.Tensor:
        return score + slopes[h] * kv

    return score_mod


def softcap_score_mod(cap: float) -> Callable[..., torch.Tensor]:
    """cap * tanh(score / cap) of the scaled score, before the mask (Gemma 2)."""

    def score_mod(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
    ) -> torch.Tensor:
        return cap * torch.tanh(score / cap)

    return score_mod


def relative_bias_score_mod(
    weight: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int
) -> Callable[..., torch.Tensor]:
    """score + weight[bucket(key - query), h]: T5's relative bias computed per score from the [buckets, heads]
    table itself (inductor's CPU flex kernel only reads buffers that are inputs of the graph)."""

    def score_mod(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
    ) -> torch.Tensor:
        return score + weight[relative_position_buckets(kv - q, bidirectional, buckets, max_distance), h]

    return score_mod
