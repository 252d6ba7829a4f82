"""t5-small: a stand-alone PyTorch model emitted by archspec from its spec. Generated: do not edit by hand.

| name | structure | layers | d_model | attention | position | norm | block | mlp | embeddings |
|---|---|---|---|---|---|---|---|---|---|
| t5-small | encoder-decoder | 6 encoder + 6 decoder | 512 | MHA, 8 heads / 8 kv, head_dim 64, scale 1.0 | relative-bias, 32 buckets, max distance 128 | rmsnorm, eps 1e-06 | pre-norm | relu, d_ff 2048 | tied, head input scaled by 1/sqrt(d_model) |

Imports only torch and the standard library. The components below are copied from `archspec.nn` (only those
this spec uses); the glue at the end wires them into `T5Small` as `archspec.build(spec)` does, so
state-dict names and numerics are the same as the archspec model's:

    model = T5Small()  # random weights; then load a state dict saved from archspec.build(spec):
    model.load_state_dict(torch.load("t5_small.pt"))
    logits = model(input_ids, decoder_input_ids=decoder_input_ids).logits
    tokens = model.generate(input_ids, max_new_tokens=20)  # decoder tokens, the start token first
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

CONFIG = {
    "name": "t5-small",
    "description": "T5-small v1.0 (60M; ReLU FF, tied head scaled by d_model^-0.5); numbers from config.json of google-t5/t5-small.",
    "structure": "encoder-decoder",
    "vocab_size": 32128,
    "d_model": 512,
    "n_layers": 6,
    "n_decoder_layers": 6,
    "context_length": 512,
    "attention": {
        "kind": "mha",
        "heads": 8,
        "kv_heads": 8,
        "head_dim": 64,
        "bias": {"q": False, "k": False, "v": False, "o": False},
        "qk_norm": False,
        "scale": 1.0,
    },
    "position": {"kind": "relative-bias", "buckets": 32, "max_distance": 128},
    "norm": {"kind": "rmsnorm", "eps": 1e-06, "bias": False},
    "block": {"kind": "pre-norm", "parallel_norms": 1, "residual_from_norm": False},
    "mlp": {"activation": "relu", "d_ff": 2048, "bias": False},
    "embeddings": {"tied": True, "norm": False, "scale_head": True},
    "tokens": {"eos": 1, "pad": 0, "decoder_start": 0},
}
"""The resolved spec this file was emitted from (`archspec.spec_from_dict(CONFIG)` gives the spec back)."""


# ----------------------------------------------------------------------------------- copied from archspec/nn/cache.py
class LayerKVCache:
    """Keys and values of one attention layer: [batch, kv_heads, max_len, head_dim] each."""

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        value_dim: int | None = None,
    ) -> None:
        self.keys = torch.zeros(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros(batch, kv_heads, max_len, value_dim or head_dim, dtype=dtype, device=device)
        self.visible: int | None = None  # set by the model per call: slots `update` returns (None: all)

    def update(
        self, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values at `positions` ([seq]) and return the first `visible` slots (default all).

        When the new keys are all that is visible (a prompt's first chunk), they are returned as they are: the
        same numbers as the slots just written, without attention reading them back through a strided view.
        """
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        if self.visible is None:
            return self.keys, self.values
        if self.visible == keys.shape[2]:
            return keys, values
        return self.keys[:, :, : self.visible], self.values[:, :, : self.visible]


class KVCache:
    """The caches of every layer plus how many positions have been written."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.layers = layers
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.layers[0].keys.shape[2]


# ----------------------------------------------------------------------------------- copied from archspec/nn/norms.py
class RMSNorm(nn.Module):
    """y = w * (x / sqrt(mean(x^2) + eps)), normalised in float32 (float64 inputs in float64) and cast back *before*
    the weight multiply.

    That cast order is LLaMA's and T5's (and what their half-precision checkpoints were trained with), which is
    why this is not `torch.nn.RMSNorm`. Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least: float64 is not rounded
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(x.dtype)


# ------------------------------------------------------------------------------- copied from archspec/nn/positions.py
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

    One table per stack; the bias it gives is computed once per forward and shared by every layer of the stack.
    """

    def __init__(self, heads: int, buckets: int, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = buckets, max_distance, bidirectional
        self.table = torch.nn.Embedding(buckets, heads)

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


# ------------------------------------------------------------------------------- copied from archspec/nn/attention.py
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
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
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
        return allowed

    block = block or flex_block_size(queries, keys, device)
    q_first, q_last, kv_first, kv_last = _block_bounds(queries, keys, block, device)
    some = q_last >= kv_first
    every = q_first >= kv_last
    if window is not None:
        some = some & (q_first - kv_last < window)
        every = every & (q_last - kv_first < window)
    some, every = some[None], every[None]  # [1 or batch, query blocks, key blocks]
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


# ---------------------------------------------------------------------------------- copied from archspec/nn/blocks.py
Rope = tuple[torch.Tensor, torch.Tensor] | None


class PreNormBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); `residual_from_norm` adds to the normed input instead (BLOOM)."""

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        attn_out_norm: nn.Module | None = None,
        mlp_out_norm: nn.Module | None = None,
        residual_from_norm: bool = False,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.attn_out_norm = attn_out_norm or nn.Identity()
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.mlp_out_norm = mlp_out_norm or nn.Identity()
        self.residual_from_norm = residual_from_norm

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        x = (h if self.residual_from_norm else x) + self.attn_out_norm(self.attn(h, rope, mask, cache, positions))
        h = self.mlp_norm(x)
        return (h if self.residual_from_norm else x) + self.mlp_out_norm(self.mlp(h))


# -------------------------------------------------------------------------------- copied from archspec/nn/generate.py
@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int = 20,
    *,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    model_kwargs: dict[str, object] | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each row of `input_ids` ([batch, seq]) and return [batch, seq + n].

    Rows that produced `eos_token_id` are padded with `pad_token_id` (or eos) afterwards, and decoding stops
    early once every row has finished, as `transformers`' generate does. `use_cache=False` recomputes the whole
    sequence at each step (the reference the cache is tested against). `model_kwargs` go to every forward call
    (GLM's `prefix_lengths`). `compile=True` runs the decode steps through one `torch.compile`d step
    (CUDA graphs on GPU) that takes the position as a tensor, with a static cache kept on the model for reuse.
    """
    model_kwargs = model_kwargs or {}
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    batch, seq = input_ids.shape
    total = seq + max_new_tokens
    context_length = getattr(model, "context_length", None)
    if context_length is not None and getattr(model, "pos_embed", None) is not None and total > context_length:
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds the learned position table ({context_length})")
    stop = torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), device=input_ids.device
    )
    pad = pad_token_id if pad_token_id is not None else (int(stop[0]) if len(stop) else 0)
    step_fn = _compiled_step(model, input_ids.device) if compile and use_cache else None
    if step_fn is not None:
        cache = _reusable_cache(model, batch, total)
    else:
        cache = model.new_cache(batch, total) if use_cache else None  # type: ignore[operator]
    tokens = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    # Only the last position's logits are needed (`logits_to_keep=1`): the head is not run over the whole prompt.
    logits = model(input_ids, cache=cache, logits_to_keep=1, **model_kwargs).logits[:, -1]
    for step in range(max_new_tokens):
        next_token = _pick(logits, do_sample, temperature, top_k, top_p, generator)
        if len(stop):
            next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
            finished = finished | torch.isin(next_token, stop)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
        if step == max_new_tokens - 1 or (len(stop) and bool(finished.all())):
            break
        step_input = next_token[:, None] if cache is not None else tokens
        if step_fn is not None and cache is not None:
            positions = torch.full((1,), cache.length, dtype=torch.long, device=input_ids.device)
            logits = step_fn(model, step_input, cache, positions, model_kwargs)
            cache.length += 1
        else:
            logits = model(step_input, cache=cache, logits_to_keep=1, **model_kwargs).logits[:, -1]
    return tokens


def _decode_step(
    model: torch.nn.Module,
    token: torch.Tensor,
    cache: KVCache,
    positions: torch.Tensor,
    model_kwargs: dict[str, object],
) -> torch.Tensor:
    return model(token, cache=cache, positions=positions, logits_to_keep=1, **model_kwargs).logits[:, -1]


_COMPILED_STEPS: dict[str, object] = {}


def _compiled_step(model: torch.nn.Module, device: torch.device):  # noqa: ANN202
    """The compiled decode step (one per compile mode), or None for models whose forward needs the sequence
    length as a number (dynamic NTK RoPE) and so cannot take positions as a tensor."""
    rotary = getattr(model, "rotary", None)
    if getattr(rotary, "dynamic_ntk", None) is not None or not hasattr(model, "new_cache"):
        return None
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _COMPILED_STEPS:
        _COMPILED_STEPS[mode] = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED_STEPS[mode]


def _reusable_cache(model: torch.nn.Module, batch: int, total: int) -> KVCache:
    """A static cache for compiled decoding, kept on the model and reused by calls of the same shape.

    Its tensors get fixed addresses (what CUDA graphs replay against), so reuse avoids a recompile per call.
    Stale slots need no clearing: slot t is written at position t before any query can attend to it.
    """
    caches: dict[tuple[int, int], KVCache] = model.__dict__.setdefault("_decode_caches", {})
    cache = caches.get((batch, total))
    if cache is None:
        cache = model.new_cache(batch, total)  # type: ignore[operator]
        for layer in cache.layers:
            for tensor in vars(layer).values():
                if isinstance(tensor, torch.Tensor):
                    torch._dynamo.mark_static_address(tensor)
        caches[(batch, total)] = cache
    cache.length = 0
    return cache


def _pick(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------- copied from archspec/nn/masks.py
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


# ---------------------------------------------------------------------------------- copied from archspec/nn/models.py
@dataclass
class LMOutput:
    """What a forward pass returns: logits [batch, seq, vocab], and the loss when labels were given.

    For MoE models the router losses are reported separately and added to `loss` with their coefficients.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None


# ------------------------------------------------------------------------- copied from archspec/nn/encoder_decoder.py
@dataclass
class EncoderDecoderOutput(LMOutput):
    """Decoder logits [batch, target, vocab], the loss when labels were given, and the encoder output."""

    encoder_output: torch.Tensor | None = None


class CrossAttention(Attention):
    """Attention of decoder positions over the encoder output: queries from x, keys/values from the encoder.

    The keys/values depend only on the encoder output, so generation projects them once (`project_kv`) and
    reuses them at every step. No positions, no causal mask: only the encoder's padding mask, if any.
    """

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output: [batch, kv_heads, source, head_dim] each."""
        batch, source, _ = memory.shape
        k = self.k(memory).view(batch, source, -1, self.head_dim).transpose(1, 2)
        v = self.v(memory).view(batch, source, -1, self.head_dim).transpose(1, 2)
        return k, v

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k, v = kv
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads
        )
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


class CrossAttentionBlock(nn.Module):
    """Pre-norm decoder block with cross-attention (T5):

    x = x + self_attn(n1(x)); x = x + cross_attn(n2(x), encoder); x = x + mlp(n3(x)).
    """

    def __init__(
        self,
        attn: Attention,
        cross_attn: CrossAttention,
        mlp: nn.Module,
        attn_norm: nn.Module,
        cross_norm: nn.Module,
        mlp_norm: nn.Module,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.cross_norm, self.cross_attn = cross_norm, cross_attn
        self.mlp_norm, self.mlp = mlp_norm, mlp

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), None, mask, cache, positions)
        x = x + self.cross_attn(self.cross_norm(x), cross_kv, cross_mask)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """The layers of one side (encoder or decoder), its relative-bias table and its final norm."""

    def __init__(self, layers: list[nn.Module], position_bias: nn.Module, final_norm: nn.Module) -> None:
        super().__init__()
        self.position_bias = position_bias
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm


class EncoderDecoderCache(KVCache):
    """The decoder's self-attention caches, plus the cross-attention keys/values of the encoder output."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        super().__init__(layers)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, 1, keys] additive mask of a 1/0 attention mask (0 = padding): the dtype's minimum where padded.

    A finite minimum (not -inf), as transformers uses, so a row of padding never divides by zero.
    """
    return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)


class EncoderDecoderLM(nn.Module):
    """An encoder-decoder LM. `model(input_ids, decoder_input_ids=...)` gives decoder logits; with `labels=` the
    decoder input defaults to the labels shifted right behind the decoder start token, and the loss is returned.

    `head_scale` multiplies the decoder output before the head (T5 v1.0: d_model^-0.5 with the tied head).
    `eos_token_id` / `pad_token_id` are generate()'s defaults (`archspec.build` passes the spec's `tokens`).

    On CPU each stack's relative bias reaches SDPA as a view of a [heads, 2 seq - 1] table by distance
    (`ToeplitzBias`; no [heads, seq, seq] tensor) for the encoder without padding mask and the decoder without
    cache, and as a tensor otherwise. `attn_backend` (an attribute) = "flex" computes it inside FlexAttention
    (`FlexPattern`) in those cases instead; flex is fused only under `torch.compile` and has no backward on CPU,
    where training and sequences under `FLEX_CPU_SHORTEST` tokens keep the default ("sdpa") path.
    """

    def __init__(
        self,
        embed: nn.Embedding,
        encoder: Stack,
        decoder: Stack,
        lm_head: nn.Linear,
        *,
        kv_heads: int,
        head_dim: int,
        decoder_start: int,
        head_scale: float | None = None,
        tied: bool = False,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.embed = embed
        self.encoder = encoder
        self.decoder = decoder
        self.lm_head = lm_head
        if tied:
            self.lm_head.weight = self.embed.weight
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.decoder_start = decoder_start
        self.head_scale = head_scale
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults
        self.attn_backend = attn_backend

    def _flex(self, device: torch.device, seq: int) -> bool:
        """Whether relative biases go through FlexAttention (see the class docstring and `flex_block_size`)."""
        cpu_flex = not torch.is_grad_enabled() and seq >= FLEX_CPU_SHORTEST
        return self.attn_backend == "flex" and (device.type != "cpu" or cpu_flex)

    @staticmethod
    def _score_mod(bias: RelativePositionBias) -> Callable[..., torch.Tensor]:
        return relative_bias_score_mod(bias.table.weight, bias.bidirectional, bias.buckets, bias.max_distance)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        encoder_output: torch.Tensor | None = None,
    ) -> EncoderDecoderOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("an encoder-decoder model needs decoder_input_ids (or labels to derive them from)")
            decoder_input_ids = self.shift_right(labels)
        if encoder_output is None:
            encoder_output = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, encoder_output, attention_mask=attention_mask, cache=cache)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return EncoderDecoderOutput(logits=logits, loss=loss, encoder_output=encoder_output)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing input: the decoder start token, then the labels but the last (-100 becomes 0)."""
        start = torch.full_like(labels[:, :1], self.decoder_start)
        return torch.cat((start, labels[:, :-1].clamp(min=0)), dim=1)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [batch, source, d_model]; `attention_mask` (1 = token, 0 = padding) hides padded keys."""
        x = self.embed(input_ids)
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        mask: torch.Tensor | FlexPattern | ToeplitzBias
        if attention_mask is None and self._flex(x.device, seq):
            mask = FlexPattern(full_block_mask(seq, seq, x.device), self._score_mod(self.encoder.position_bias))
        elif attention_mask is None and x.device.type == "cpu":
            mask = ToeplitzBias(self.encoder.position_bias.by_distance(seq, seq).to(x.dtype))
        else:
            mask = self.encoder.position_bias(positions, positions).to(x.dtype)
            if attention_mask is not None:
                mask = mask + padding_bias(attention_mask, x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, None, mask, None, positions)
        return self.encoder.final_norm(x)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_output: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Decoder logits. With a cache, positions continue from `cache.length` and the cross-attention
        keys/values are projected on the first call and reused afterwards. `logits_to_keep` > 0: the logits of
        the last that many positions only (0: every position)."""
        seq = decoder_input_ids.shape[1]
        past = cache.length if cache is not None else 0
        device = decoder_input_ids.device
        positions = torch.arange(past, past + seq, device=device)
        key_positions = torch.arange(cache.max_len, device=device) if cache is not None else positions
        x = self.embed(decoder_input_ids)
        mask: torch.Tensor | FlexPattern | ToeplitzBias
        if cache is None and self._flex(x.device, seq):
            mask = FlexPattern(causal_block_mask(seq, seq, None, device), self._score_mod(self.decoder.position_bias))
        elif cache is None and device.type == "cpu":
            table = distance_table(self.decoder.position_bias.by_distance(seq, seq), True)
            mask = ToeplitzBias(table.to(x.dtype), causal=True)
        else:
            bias = self.decoder.position_bias(positions, key_positions)
            mask = additive_mask(causal_mask(positions, key_positions), bias, x.dtype)
        cross_mask = padding_bias(attention_mask, x.dtype) if attention_mask is not None else None
        if cache is not None and cache.cross is not None:
            cross_kv = cache.cross
        else:
            cross_kv = [layer.cross_attn.project_kv(encoder_output) for layer in self.decoder.layers]
            if cache is not None:
                cache.cross = cross_kv
        for index, layer in enumerate(self.decoder.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, mask, layer_cache, positions, cross_kv[index], cross_mask)
        if cache is not None:
            cache.length = past + seq
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        x = self.decoder.final_norm(x)
        if self.head_scale is not None:
            x = x * self.head_scale
        return self.lm_head(x)

    def new_cache(
        self, batch: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> EncoderDecoderCache:
        """An empty static cache of the decoder for `batch` sequences of up to `max_len` target positions."""
        reference = self.embed.weight
        layers = [
            LayerKVCache(
                batch, self.kv_heads, max_len, self.head_dim, dtype or reference.dtype, device or reference.device
            )
            for _ in self.decoder.layers
        ]
        return EncoderDecoderCache(layers)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        *,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor:
        """Run the encoder once, then decode greedily (by default) from the decoder start token with a KV cache.

        Returns the decoder sequences [batch, 1 + new] (start token first), as `transformers` does; the options are
        those of `archspec.nn.generate.generate`.
        """
        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        encoder_output = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            decoder_input_ids = torch.full_like(input_ids[:, :1], self.decoder_start)
        step = _DecoderStep(self, encoder_output, attention_mask)
        return generate(step, decoder_input_ids, max_new_tokens, **options)  # type: ignore[arg-type]


class _DecoderStep:
    """The decoder over a fixed encoder output, shaped like a decoder LM for the decoding loop."""

    def __init__(self, model: EncoderDecoderLM, encoder_output: torch.Tensor, attention_mask: torch.Tensor | None):
        self.model, self.encoder_output, self.attention_mask = model, encoder_output, attention_mask

    def new_cache(self, batch: int, max_len: int) -> EncoderDecoderCache:
        return self.model.new_cache(batch, max_len)

    def __call__(
        self, decoder_input_ids: torch.Tensor, cache: EncoderDecoderCache | None = None, logits_to_keep: int = 0
    ) -> LMOutput:
        logits = self.model.decode(
            decoder_input_ids,
            self.encoder_output,
            attention_mask=self.attention_mask,
            cache=cache,
            logits_to_keep=logits_to_keep,
        )
        return LMOutput(logits=logits)


# ------------------------------------------------------------------------------------- copied from archspec/nn/mlp.py
class MLP(nn.Module):
    """down(act(up x)), or gated: down(act(gate x) * up x) (SwiGLU, GeGLU, ReGLU)."""

    def __init__(
        self, d_model: int, d_ff: int, activation: Callable[[torch.Tensor], torch.Tensor], gated: bool, bias: bool
    ) -> None:
        super().__init__()
        self.activation = activation
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(self.activation(self.up(x)))
        return self.down(self.activation(self.gate(x)) * self.up(x))


# -------------------------------------------------------------------------------------- glue written by archspec.emit
def make_encoder_block() -> nn.Module:
    """One encoder block (pre-norm; bidirectional self-attention, MLP); the encoder stacks 6 of them."""
    attn = Attention(
        d_model=512,
        heads=8,
        kv_heads=8,
        head_dim=64,
        bias=(False, False, False, False),
        qk_norm_eps=None,
        scale=1.0,
        rope_interleaved=False,
    )
    mlp = MLP(
        d_model=512,
        d_ff=2048,
        activation=F.relu,
        gated=False,
        bias=False,
    )
    return PreNormBlock(
        attn,
        mlp,
        attn_norm=RMSNorm(512, 1e-06),
        mlp_norm=RMSNorm(512, 1e-06),
    )


def make_decoder_block() -> nn.Module:
    """One decoder block (pre-norm; causal self-attention, cross-attention over the encoder output, MLP); the
    decoder stacks 6 of them."""
    attn = Attention(
        d_model=512,
        heads=8,
        kv_heads=8,
        head_dim=64,
        bias=(False, False, False, False),
        qk_norm_eps=None,
        scale=1.0,
        rope_interleaved=False,
    )
    cross_attn = CrossAttention(
        d_model=512,
        heads=8,
        kv_heads=8,
        head_dim=64,
        bias=(False, False, False, False),
        scale=1.0,
    )
    mlp = MLP(
        d_model=512,
        d_ff=2048,
        activation=F.relu,
        gated=False,
        bias=False,
    )
    return CrossAttentionBlock(
        attn,
        cross_attn,
        mlp,
        attn_norm=RMSNorm(512, 1e-06),
        cross_norm=RMSNorm(512, 1e-06),
        mlp_norm=RMSNorm(512, 1e-06),
    )


class T5Small(EncoderDecoderLM):
    """The t5-small model; `T5Small()` builds it with random weights."""

    def __init__(self) -> None:
        super().__init__(
            embed=nn.Embedding(32128, 512),
            encoder=Stack(
                layers=[make_encoder_block() for _ in range(6)],
                position_bias=RelativePositionBias(
                    heads=8,
                    buckets=32,
                    max_distance=128,
                    bidirectional=True,
                ),
                final_norm=RMSNorm(512, 1e-06),
            ),
            decoder=Stack(
                layers=[make_decoder_block() for _ in range(6)],
                position_bias=RelativePositionBias(
                    heads=8,
                    buckets=32,
                    max_distance=128,
                    bidirectional=False,
                ),
                final_norm=RMSNorm(512, 1e-06),
            ),
            lm_head=nn.Linear(512, 32128, bias=False),
            kv_heads=8,
            head_dim=64,
            decoder_start=0,
            head_scale=512**-0.5,
            tied=True,
            eos_token_id=1,
            pad_token_id=0,
        )


Model = T5Small
"""This file's model under a fixed name."""
