"""Where a call's queries are (`Context`), and the position schemes that are not rotary: ALiBi, T5's relative bias."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Rope = Callable[[torch.Tensor], torch.Tensor]  # turns q or k [batch, heads, queries, head_dim] by their positions


@dataclass
class Context:
    """One call as every layer sees it: `rows` sequences' queries at cache slots `positions` over the keys in slots
    0 .. keys - 1; padded or packed rows add `key_mask` (False: padding), `documents` and their `position_ids`."""

    positions: torch.Tensor
    keys: int
    at_end: bool = True  # False: a compiled decoding step reads its whole static cache  # emit-if: library
    rows: int = 1
    dtype: torch.dtype = torch.float32  # the activations' (of RoPE tables and biases)  # emit-if: rope|distance_bias
    rope: Rope | None = None  # emit-if: rope
    prefix_lengths: torch.Tensor | None = None  # [rows]: GLM's bidirectional prefixes  # emit-if: prefix_lm
    key_mask: torch.Tensor | None = None  # [rows, keys] bool  # emit-if: !encoder_decoder
    documents: torch.Tensor | None = None  # [rows, keys]  # emit-if: !encoder_decoder
    position_ids: torch.Tensor | None = None  # emit-if: !encoder_decoder


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:  # emit-if: !encoder_decoder
    """[rows, n] positions of a padding mask (1: token): each row counts its tokens from 0, pads at 0 (as
    transformers' generate and BLOOM's ALiBi do)."""
    mask = mask.long()
    return (mask.cumsum(-1) - 1) * mask


def packed_documents(position_ids: torch.Tensor) -> torch.Tensor | None:  # emit-if: !encoder_decoder
    """[rows, seq] document of each token where positions restart (not the previous + 1: as transformers detects
    packing); None when every row is one document (checked eagerly; a compiled graph always gets them)."""
    first = position_ids[:, :1] - 1
    documents = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    if not torch.compiler.is_compiling() and not bool(documents[:, -1].any()):
        return None
    return documents


def alibi_slopes(heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022, https://arxiv.org/abs/2108.12409).

    For p = 2^floor(log2 heads): slopes b^1 .. b^p with b = 2^(-8/p). Head counts that are not powers of two
    take the odd powers 1, 3, 5, ... of 2^(-4/p) for the remaining heads (BLOOM's convention).
    """
    closest = 2 ** math.floor(math.log2(heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base**power for power in range(1, closest + 1)]
    if closest != heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base**power for power in range(1, 2 * (heads - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32, device="cpu")


def alibi_bias(slopes: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """bias[h, j] = slope_h * j, broadcast over queries: [heads, 1, keys] ([rows, heads, 1, keys] for key positions
    [rows, keys]).

    Softmax is shift-invariant per query row, so slope * j equals the paper's slope * (j - i); using the key
    position alone is what BLOOM computes, which keeps the logits bit-comparable.
    """
    return slopes[:, None, None] * key_positions[..., None, None, :].float()


def alibi_by_distance(slopes: torch.Tensor, seq: int) -> torch.Tensor:
    """[heads, 2 seq - 1] ALiBi bias by distance d = key - query (index d + seq - 1): slope_h * d, the paper's form.

    Per query row it differs from `alibi_bias` (slope_h * key) by a constant, which softmax ignores.
    """
    distance = torch.arange(1 - seq, seq, device=slopes.device, dtype=torch.float32)
    return slopes[:, None].float() * distance[None, :]


class Alibi(torch.nn.Module):
    """ALiBi's bias as a model computes it: slope_h * key position, added to the scaled scores (BLOOM). Falcon-RW
    rounds the product to bfloat16 (`bfloat16`, as it was trained) and divides it by sqrt(head_dim) (`divisor`):
    its bias joins q.k before the softmax scale."""

    def __init__(
        self,
        slopes: torch.Tensor,
        divisor: float = 1.0,
        bfloat16: bool = False,  # emit-if: alibi_bfloat16
    ) -> None:
        super().__init__()
        self.register_buffer("slopes", slopes.to(torch.get_default_device()), persistent=False)
        self.divisor = divisor
        self.bfloat16 = bfloat16  # emit-if: alibi_bfloat16

    def by_key(self, keys: int, dtype: torch.dtype, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[heads, 1, keys] in `dtype`: the bias of keys 0 .. keys - 1 for every query; with a padding mask
        ([rows, keys]) [rows, heads, 1, keys] by each row's own token positions."""
        positions = torch.arange(keys, device=self.slopes.device)
        if key_mask is not None:
            positions = positions_from_mask(key_mask)
        if self.bfloat16:  # emit-when: alibi_bfloat16
            product = self.slopes.bfloat16()[:, None, None] * positions[..., None, None, :]  # bf16 x int64: bf16
            return product.to(dtype) / self.divisor
        return alibi_bias(self.slopes, positions).to(dtype) / self.divisor

    def by_distance(self, seq: int, dtype: torch.dtype) -> torch.Tensor | None:
        """[heads, 2 seq - 1] in `dtype` by distance key - query (`alibi_by_distance`); None where rounding makes
        the bias depend on the key position itself (bfloat16 products)."""
        if self.bfloat16:  # emit-if: alibi_bfloat16
            return None
        return alibi_by_distance(self.slopes, seq).to(dtype) / self.divisor


def relative_position_buckets(
    relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each relative distance `relative = key - query` (Raffel et al. 2020, section 2.1).

    Bidirectional (encoder): half the buckets are for keys after the query. Causal (decoder): only
    n = max(query - key, 0) counts (later keys fall in bucket 0 and are masked anyway). Distances below
    me = buckets / 2 get a bucket each; larger ones share logarithmically wider buckets up to `max_distance`:
    me + trunc(ln(n / me) / ln(max_distance / me) * (buckets - me)), capped at buckets - 1.
    """
    offset = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        offset = (relative > 0).to(torch.long) * buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    max_exact = buckets // 2
    scaled = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (buckets - max_exact)
    large = (max_exact + scaled.to(torch.long)).clamp(max=buckets - 1)
    return offset + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(torch.nn.Module):
    """T5's learned bias per head and distance bucket, added to the attention scores: [heads, queries, keys].

    `table`: [buckets, heads]. One table per stack; the bias it gives is computed once per forward and shared by
    every layer of the stack.
    """

    def __init__(self, table: torch.nn.Embedding, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = table.num_embeddings, max_distance, bidirectional
        self.table = table

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        relative = key_positions[None, :] - query_positions[:, None]
        bucket = relative_position_buckets(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.table(bucket).permute(2, 0, 1)

    def by_distance(self, queries: int, keys: int) -> torch.Tensor:
        """The same bias indexed by distance, [heads, queries + keys - 1]: entry key - query + queries - 1 holds the
        bias of queries at 0 .. queries-1 and keys at 0 .. keys-1. O(heads x seq) instead of [heads, q, k]."""
        relative = torch.arange(1 - queries, keys, device=self.table.weight.device)
        bucket = relative_position_buckets(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.table(bucket).T
