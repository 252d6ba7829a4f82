"""Multi-head attention with any number of key/value heads (MHA, GQA, MQA), through PyTorch's SDPA.

GQA (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245): query head h reads key/value head
h // (heads / kv_heads). SDPA's `enable_gqa` does that without materialising repeated K/V.

Patterns that SDPA can only take as a [queries, keys] tensor have paths without one, chosen by the model for a
whole sequence (queries = keys = positions 0 .. seq-1) and handed to the layers in the mask's place, as a
callable `pattern(q, k, v, scale)`:

* `ToeplitzBias`: a bias that depends on key - query only (ALiBi, T5's relative bias, with -inf for causal or
  window masking) is a [heads, 2 seq - 1] table; SDPA reads it through a zero-copy [heads, seq, seq] view
  (queries reversed). O(heads x seq) memory, the mask stays in cache: ~2x faster than a materialised bias on CPU at 4096.
* `ChunkedWindow`: a sliding window as one SDPA call over chunks of queries, each reading an overlapping span of
  the keys (an `unfold` view) under one small mask shared by every chunk. Work ~ seq x window instead of seq^2 / 2.
* `FlexPattern`: FlexAttention (`torch.nn.attention.flex_attention`) with a block mask (causal, sliding window,
  GLM's per-row prefixes: blocks with nothing visible are skipped) and a score_mod (ALiBi, T5's bucketed bias).
  The model's `attn_backend="flex"`; fused only under `torch.compile`, and forward-only on CPU.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from archspec.nn.cache import LayerKVCache
from archspec.nn.norms import RMSNorm
from archspec.nn.positions import relative_position_buckets
from archspec.nn.rope import apply_rotary


class Attention(nn.Module):
    """q/k/v projections -> optional per-head qk RMSNorm -> RoPE -> SDPA -> output projection.

    `mask` is None for plain causal attention with the queries at the end of the keys: SDPA's is_causal fast path
    for a sequence attending to itself, and no mask at all for one query (a decoding step sees every key). Else a
    boolean or additive mask broadcastable to [batch, heads, queries, keys] (sliding windows, ALiBi, caches).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        bias: tuple[bool, bool, bool, bool] = (False, False, False, False),
        qk_norm_eps: float | None = None,
        scale: float | None = None,
        rope_interleaved: bool = False,
    ) -> None:
        super().__init__()
        q_bias, k_bias, v_bias, o_bias = bias
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.rope_interleaved = rope_interleaved
        self.q = nn.Linear(d_model, heads * head_dim, bias=q_bias)
        self.k = nn.Linear(d_model, kv_heads * head_dim, bias=k_bias)
        self.v = nn.Linear(d_model, kv_heads * head_dim, bias=v_bias)
        self.o = nn.Linear(heads * head_dim, d_model, bias=o_bias)
        self.q_norm: nn.Module | None = None
        self.k_norm: nn.Module | None = None
        if qk_norm_eps is not None:  # emit-if: qk_norm
            self.q_norm = RMSNorm(head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """An empty static cache for this layer's keys and values."""
        return LayerKVCache(batch, self.kv_heads, max_len, self.head_dim, dtype, device)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        # -1, not self.heads: under tensor parallelism each rank holds only its share of the heads.
        q = self.q(x).view(batch, seq, -1, self.head_dim)
        k = self.k(x).view(batch, seq, -1, self.head_dim)
        v = self.v(x).view(batch, seq, -1, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # emit-if: qk_norm
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:  # emit-if: rope
            cos, sin = rope
            q = apply_rotary(q, cos, sin, self.rope_interleaved)
            k = apply_rotary(k, cos, sin, self.rope_interleaved)
        if cache is not None and positions is not None:
            k, v = cache.update(positions, k, v)
        if _is_pattern(mask):  # a pattern that computes attention itself (ChunkedWindow, FlexPattern)
            return self.o(mask(q, k, v, self.scale).transpose(1, 2).reshape(batch, seq, -1))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and _several_queries(seq),
            scale=self.scale,
            enable_gqa=self.kv_heads != self.heads,
        )
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


def _is_pattern(mask: object) -> bool:
    """A mask that computes attention itself (ToeplitzBias, ChunkedWindow, FlexPattern), not a tensor (an fx Proxy
    standing for a mask tensor is callable too)."""
    return callable(mask) and not isinstance(mask, torch.Tensor | torch.fx.Proxy)


def _several_queries(seq: int) -> bool:
    """Whether a mask-free call is causal: a one-token decoding step (no mask either) sees every key. An fx trace
    (a Proxy length) is only ever of the no-cache forward, where mask-free means causal. A function, not an
    expression: seq is a SymInt when compiled dynamic, and `and` on it would be a graph break."""
    if isinstance(seq, torch.fx.Proxy):
        return True
    return True if seq > 1 else False  # noqa: SIM210 (an `if`, which dynamo specialises, not bool(SymInt))


class ToeplitzBias:
    """Attention of a whole sequence with an additive bias that depends on key - query only.

    `table` [heads, 2 seq - 1] holds the bias of distance key - query at index key - query + seq - 1 (-inf where
    masked). With the queries in reverse order, q' = seq - 1 - q, the bias of (q', k) is table[q' + k]: a Hankel
    pattern, which a view with strides (1, 1) over the table expresses without copying. SDPA's CPU kernel reads
    the mask through its strides, so the [heads, seq, seq] bias is never built; each query row is computed as
    with the materialised bias (the keys keep their order), and the rows are put back in order.

    `causal` (keys after the query are -inf in the table) with an optional `window`: the queries go in chunks of
    `chunk`, each over the keys it can see only (from chunk start - window + 1, or 0, to chunk end), so the hidden
    half of the score matrix is not computed. Each chunk is an ordinary SDPA call: differentiable.
    """

    def __init__(self, table: torch.Tensor, causal: bool = False, window: int | None = None, chunk: int = 384) -> None:
        self.table = table.contiguous()
        self.causal, self.window, self.chunk = causal, window, chunk

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        heads, width = self.table.shape
        seq = q.shape[2]
        gqa = k.shape[1] != q.shape[1]
        # One call over every key when compiling (a loop over chunks would make the graph depend on the length).
        chunked = self.causal and not torch.compiler.is_compiling()
        outs = []
        for start in range(0, seq, self.chunk) if chunked else [0]:
            end = min(start + self.chunk, seq) if chunked else seq
            first = max(0, start - self.window + 1) if chunked and self.window is not None else 0
            # bias of reversed query q' (query end - 1 - q') and key first + j: table[seq - end + first + q' + j]
            bias = self.table.as_strided(
                (1, heads, end - start, end - first), (heads * width, width, 1, 1), seq - end + first
            )
            out = F.scaled_dot_product_attention(
                q[:, :, start:end].flip(2),
                k[:, :, first:end],
                v[:, :, first:end],
                attn_mask=bias,
                scale=scale,
                enable_gqa=gqa,
            )
            outs.append(out.flip(2))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def distance_table(bias: torch.Tensor, causal: bool, window: int | None = None) -> torch.Tensor:
    """A [heads, 2 seq - 1] bias by distance (index key - query + seq - 1) with -inf where causal attention
    (within `window` when set) hides the key."""
    seq = (bias.shape[-1] + 1) // 2
    distance = torch.arange(1 - seq, seq, device=bias.device)
    hidden = distance > 0 if causal else torch.zeros_like(distance, dtype=torch.bool)
    if window is not None:
        hidden = hidden | (distance <= -window)
    return bias.masked_fill(hidden, float("-inf"))


class ChunkedWindow:
    """Causal sliding-window attention of a whole sequence (queries = keys = positions 0 .. seq-1), work ~ seq x
    window instead of seq^2 / 2, and no [seq, seq] mask.

    The first `window` queries see every earlier key: one causal SDPA call. Later queries go in chunks of `chunk`:
    the chunk starting at s sees keys s - window + 1 .. s + chunk - 1, and its query j sees keys j .. j + window - 1
    of that span. The pattern depends on key - query only, so one [chunk, chunk + window - 1] mask serves every
    chunk, and the overlapping key spans are one `unfold` view of the keys with the chunks as heads: a single SDPA
    call covers them all without copying a key. Differentiable (SDPA and unfold have gradients). Query heads that
    share a key/value head (GQA) are stacked along the queries of their chunk, so each key is read once per group.

    `chunk` trades wasted scores (chunk - 1 per query) against per-chunk overhead; by default 64 queries for
    inference and 256 with gradients (measured on CPU at window 1024: the backward pays more per chunk).
    """

    def __init__(self, window: int, chunk: int | None = None) -> None:
        if window < 1:
            raise ValueError(f"ChunkedWindow needs a window of at least 1 key, got {window}")
        self.window, self.chunk = window, chunk

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        seq, window = q.shape[2], self.window
        head = min(window, seq)
        parts = [
            F.scaled_dot_product_attention(
                q[:, :, :head],
                k[:, :, :head],
                v[:, :, :head],
                is_causal=True,
                scale=scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )
        ]
        chunk = self.chunk or max(16, min(256, window // 4) if q.requires_grad else min(64, window // 16))
        full = (seq - head) // chunk
        if full:
            parts.append(self._chunks(q, k, v, scale, head, chunk, full))
        if head + full * chunk < seq:
            parts.append(self._chunks(q, k, v, scale, head + full * chunk, seq - head - full * chunk, 1))
        return torch.cat(parts, dim=2)

    def _chunks(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: int, chunk: int, count: int
    ) -> torch.Tensor:
        """Queries start .. start + count * chunk (start >= window) in `count` chunks of `chunk`."""
        batch, heads, _, dim = q.shape
        kv_heads, span = k.shape[1], chunk + self.window - 1
        group = heads // kv_heads
        first = start - self.window + 1  # the oldest key of the first chunk

        def spans(x: torch.Tensor) -> torch.Tensor:  # [b, kv_heads, seq, d] -> [b * kv_heads, count, span, d], a view
            x = x[:, :, first : first + (count - 1) * chunk + span].reshape(batch * kv_heads, -1, dim)
            return x.unfold(1, span, chunk).transpose(-1, -2)

        # [b, kv_heads * group, count * chunk, d] -> [b * kv_heads, count, group * chunk, d]: a chunk's queries of
        # the heads that read the same keys, one after the other
        queries = q[:, :, start : start + count * chunk].reshape(batch, kv_heads, group, count, chunk, dim)
        queries = queries.permute(0, 1, 3, 2, 4, 5).reshape(batch * kv_heads, count, group * chunk, dim)
        query = torch.arange(chunk, device=q.device)[:, None]
        key = torch.arange(span, device=q.device)
        visible = (key >= query) & (key < query + self.window)
        out = F.scaled_dot_product_attention(
            queries, spans(k), spans(v), attn_mask=visible.repeat(group, 1), scale=scale
        )
        out = out.reshape(batch, kv_heads, count, group, chunk, dim).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, heads, count * chunk, dim)


class FlexPattern:
    """Attention through FlexAttention: `block_mask` (None: every key, in FlexAttention's default 128-blocks, which
    the CPU kernel gets wrong for shorter sequences: pass `full_block_mask` there) and an optional `score_mod`."""

    def __init__(self, block_mask: BlockMask | None, score_mod: Callable[..., torch.Tensor] | None = None) -> None:
        self.block_mask, self.score_mod = block_mask, score_mod

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
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
        )
        return out  # type: ignore[return-value]


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

    Built from the block grid directly: a block is skipped when no (query, key) pair in it is visible, taken
    without evaluating the mask when every pair is, and masked element-wise otherwise. `prefix_lengths` ([batch]):
    a prefix LM (GLM, whose part A is attended both ways): row b's first prefix_lengths[b] keys are visible to
    every query of the row as well, so the block mask has one row of blocks per sequence. `block`: see
    `flex_block_size`.
    """

    def visible(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        allowed = q >= kv
        if window is not None:
            allowed = allowed & (q - kv < window)
        if prefix_lengths is not None:  # emit-if: prefix_lm
            allowed = allowed | (kv < prefix_lengths[b])
        return allowed

    block = block or flex_block_size(queries, keys, device)
    q_first, q_last, kv_first, kv_last = _block_bounds(queries, keys, block, device)
    some = q_last >= kv_first
    every = q_first >= kv_last
    if window is not None:
        some = some & (q_first - kv_last < window)
        every = every & (q_last - kv_first < window)
    some, every = some[None], every[None]  # [1 or batch, query blocks, key blocks]
    if prefix_lengths is not None:  # emit-if: prefix_lm
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
