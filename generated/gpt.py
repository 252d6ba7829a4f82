"""gpt: a stand-alone PyTorch model emitted by archspec from its spec. Generated: do not edit by hand.

| name | layers | d_model | attention | position | norm | block | mlp | embeddings |
|---|---|---|---|---|---|---|---|---|
| gpt | 12 | 768 | MHA, 12 heads / 12 kv, head_dim 64, bias q/k/v/o | learned | layernorm, eps 1e-05 | post-norm | gelu, d_ff 3072, bias | tied |

Imports only torch and the standard library. The components below are copied from `archspec.nn` (only those
this spec uses); the glue at the end wires them into `Gpt` as `archspec.build(spec)` does, so
state-dict names and numerics are the same as the archspec model's:

    model = Gpt()  # random weights; then load a state dict saved from archspec.build(spec):
    model.load_state_dict(torch.load("gpt.pt"))
    logits = model(input_ids).logits
    tokens = model.generate(input_ids, max_new_tokens=20)
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

CONFIG = {
    "name": "gpt",
    "description": "The original 2018 OpenAI GPT (post-norm); numbers from config.json of openai-community/openai-gpt and the paper.",
    "structure": "decoder",
    "vocab_size": 40478,
    "d_model": 768,
    "n_layers": 12,
    "context_length": 512,
    "attention": {
        "kind": "mha",
        "heads": 12,
        "kv_heads": 12,
        "head_dim": 64,
        "bias": {"q": True, "k": True, "v": True, "o": True},
        "qk_norm": False,
    },
    "position": {"kind": "learned"},
    "norm": {"kind": "layernorm", "eps": 1e-05, "bias": True},
    "block": {"kind": "post-norm", "parallel_norms": 1, "residual_from_norm": False},
    "mlp": {"activation": "gelu", "d_ff": 3072, "bias": True},
    "embeddings": {"tied": True, "norm": False, "scale_head": False},
    "tokens": {},
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


# ---------------------------------------------------------------------------------- copied from archspec/nn/blocks.py
Rope = tuple[torch.Tensor, torch.Tensor] | None


class PostNormBlock(nn.Module):
    """norm(x + attn(x)), then norm(x + mlp(x)): the original Transformer and GPT layout."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, rope, mask, cache, positions))
        return self.mlp_norm(x + self.mlp(x))


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


class DecoderLM(nn.Module):
    """A causal decoder LM. Receives its parts ready-made; `windows[i]` is layer i's sliding window or None.

    Positions are `cache.length + arange(seq)` for every row. Masks are built once per forward, one per distinct
    window, and shared by the layers; without a cache, window or ALiBi none is built and SDPA's causal fast path
    runs.

    On CPU, when a whole sequence is attended from position 0 (training, a prompt), ALiBi and sliding windows get
    no [seq, seq] tensor: SDPA reads a view of a bias by distance (`ToeplitzBias`, over the visible keys of each
    query chunk), and windows run in chunks of queries over their own span of keys (`ChunkedWindow`).
    `attn_backend` (an attribute; set it on a built model) = "flex" runs whole sequences through FlexAttention
    instead (`FlexPattern`: block-sparse, meant for GPUs; causal, windows, ALiBi and GLM prefixes); it is fused
    only under `torch.compile` and has no backward on CPU, where training and sequences under
    `FLEX_CPU_SHORTEST` tokens keep the default ("sdpa") paths.
    """

    def __init__(
        self,
        embed: nn.Embedding,
        layers: list[nn.Module],
        final_norm: nn.Module,
        lm_head: nn.Linear,
        *,
        windows: list[int | None],
        context_length: int,
        pos_embed: nn.Embedding | None = None,
        embed_norm: nn.Module | None = None,
        rotary: nn.Module | None = None,
        alibi_slopes: torch.Tensor | None = None,
        tied: bool = False,
        aux_loss: str = "token",
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        prefix_lm: bool = False,
        block_positions: bool = False,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.prefix_lm, self.block_positions = prefix_lm, block_positions
        self.attn_backend = attn_backend
        self.embed = embed
        self.pos_embed = pos_embed
        self.embed_norm = embed_norm or nn.Identity()
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.lm_head = lm_head
        if tied:
            self.lm_head.weight = self.embed.weight
        self.rotary = rotary
        if alibi_slopes is not None:
            self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)
        else:
            self.alibi_slopes = None
        self.windows = windows
        self.context_length = context_length
        self.aux_loss, self.aux_loss_coef, self.z_loss_coef = aux_loss, aux_loss_coef, z_loss_coef
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """`prefix_lengths` ([batch]; GLM): the first prefix_lengths[b] tokens of row b attend to each other in both
        directions (part A), the rest causally (part B). None or 0 is the causal decoder.

        `logits_to_keep` > 0 computes the logits of the last that many positions only (what decoding needs: the
        head over a whole prompt is a [seq, d_model] x [d_model, vocab] matmul thrown away); 0 keeps every position.
        The loss needs every position, so with `labels` it is ignored."""
        batch, seq = input_ids.shape
        # Explicit `positions` ([seq], a tensor) replace cache.length + arange(seq), and the caller advances
        # cache.length: a compiled decode step (generate(compile=True)) then serves every position with one graph.
        explicit = positions is not None
        past = cache.length if cache is not None and not explicit else 0
        if positions is None:
            positions = torch.arange(past, past + seq, device=input_ids.device)
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.embed_norm(x)
        rope_positions = positions
        rope = self.rotary(rope_positions, past + seq, x.dtype) if self.rotary is not None else None
        # Eager calls know the cache length as a number: attention then reads only the written slots, and a
        # plain causal model needs no mask for the first chunk (SDPA's is_causal) nor for a one-token decoding
        # step. Compiled steps (explicit positions) read the whole static cache under a mask, so that their
        # shapes never change.
        keys = seq if cache is None else (cache.max_len if explicit else past + seq)
        if cache is not None:
            for layer_cache in cache.layers:
                layer_cache.visible = None if explicit else keys
        masks = self._masks(positions, keys, x.dtype, prefix_lengths, at_end=not explicit)
        for index, layer in enumerate(self.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, rope, masks[self.windows[index]], layer_cache, positions)
        if cache is not None and not explicit:
            cache.length = past + seq
        if labels is None:
            if logits_to_keep > 0:
                x = x[:, -logits_to_keep:]
            return LMOutput(logits=self.lm_head(self.final_norm(x)))
        logits = self.lm_head(self.final_norm(x))
        # Shift the labels, not the logits (as transformers does): no copy of the [batch, seq, vocab] logits.
        shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
        return LMOutput(logits=logits, loss=loss)

    def _masks(
        self,
        positions: torch.Tensor,
        keys: int,
        dtype: torch.dtype,
        prefix_lengths: torch.Tensor | None = None,
        at_end: bool = True,
    ) -> dict[int | None, torch.Tensor | Callable[..., torch.Tensor] | None]:
        """Per distinct window: None where plain causal attention is exact (`Attention`: SDPA's is_causal, or no
        mask for one query), a pattern that computes attention itself (see `attn_backend`), or a
        [1 or batch, 1 or heads, queries, keys] mask. `at_end`: the queries are the last positions of the `keys`
        (eager calls), so that a shortcut can apply: the first chunk of a causal model, or one decoding step,
        which sees every key (a prefix changes nothing there), as long as no ALiBi bias applies and no window is
        shorter than the keys."""
        seq, device = positions.shape[0], positions.device
        # An fx trace (lengths are Proxies) is of the no-cache forward: queries = keys, windows assumed binding,
        # and only plain masks (the fast paths below branch on lengths in Python).
        traced = isinstance(keys, torch.fx.Proxy)
        sequence = at_end and (traced or seq == keys)  # queries = keys = positions 0 .. seq-1
        whole = sequence and prefix_lengths is None
        shortcut = at_end and self.alibi_slopes is None and (whole or seq == 1)
        cpu_inference = not traced and device.type == "cpu" and not torch.is_grad_enabled()
        cpu_flex = cpu_inference and seq >= FLEX_CPU_SHORTEST  # see attention.flex_block_size
        flex = not traced and sequence and self.attn_backend == "flex" and (device.type != "cpu" or cpu_flex)
        key_positions = torch.arange(keys, device=device)
        masks: dict[int | None, torch.Tensor | Callable[..., torch.Tensor] | None] = {}
        for window in set(self.windows):
            binding = window is not None and (traced or window < keys)
            if shortcut and not binding:
                masks[window] = None
                continue
            if flex:
                score_mod = None
                block_mask = causal_block_mask(
                    seq, keys, window if binding else None, device, prefix_lengths=prefix_lengths
                )
                masks[window] = FlexPattern(block_mask, score_mod)
                continue
            mask = causal_mask(positions, key_positions, window)
            masks[window] = mask[(None,) * (4 - mask.dim())]  # 4-D: CPU SDPA is far slower with 2-D masks
        return masks

    def new_cache(
        self, batch: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> KVCache:
        """An empty static cache for `batch` sequences of up to `max_len` positions."""
        reference = self.embed.weight
        dtype, device = dtype or reference.dtype, device or reference.device
        return KVCache([layer.attn.new_cache(batch, max_len, dtype, device) for layer in self.layers])

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        *,
        prefix_lengths: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor:
        """Greedy (default) or sampled continuation with the KV cache; see `archspec.nn.generate.generate`.

        Model inputs are keywords, as in the forward pass: `prefix_lengths` ([batch]; GLM) sets each row's
        bidirectional part A; a GLM model defaults to the whole prompt as part A, generated tokens being part B.
        `eos_token_id` / `pad_token_id` default to the model's own (`archspec.build` passes the spec's `tokens`).
        """
        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        if prefix_lengths is not None:
            options["model_kwargs"] = {"prefix_lengths": prefix_lengths}
        return generate(self, input_ids, max_new_tokens, **options)  # type: ignore[arg-type]


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
def make_block() -> nn.Module:
    """One post-norm block; the model stacks 12 of them."""
    attn = Attention(
        d_model=768,
        heads=12,
        kv_heads=12,
        head_dim=64,
        bias=(True, True, True, True),
        qk_norm_eps=None,
        scale=None,
        rope_interleaved=False,
    )
    mlp = MLP(
        d_model=768,
        d_ff=3072,
        activation=F.gelu,
        gated=False,
        bias=True,
    )
    return PostNormBlock(
        attn,
        mlp,
        attn_norm=nn.LayerNorm(768, eps=1e-05, bias=True),
        mlp_norm=nn.LayerNorm(768, eps=1e-05, bias=True),
    )


class Gpt(DecoderLM):
    """The gpt model; `Gpt()` builds it with random weights."""

    def __init__(self) -> None:
        super().__init__(
            embed=nn.Embedding(40478, 768),
            layers=[make_block() for _ in range(12)],
            final_norm=nn.Identity(),
            lm_head=nn.Linear(768, 40478, bias=False),
            windows=[None] * 12,
            context_length=512,
            pos_embed=nn.Embedding(512, 768),
            tied=True,
        )


Model = Gpt
"""This file's model under a fixed name."""
