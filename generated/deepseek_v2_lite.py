"""deepseek-v2-lite: a stand-alone PyTorch model emitted by archspec from its spec. Generated: do not edit by hand.

| name | layers | d_model | attention | position | norm | block | mlp | embeddings | moe |
|---|---|---|---|---|---|---|---|---|---|
| deepseek-v2-lite | 27 | 2048 | MLA, 16 heads, q rank None, kv rank 512, qk 128+64 (rope), v 128 | rope, theta 10000.0, interleaved, yarn x40.0 | rmsnorm, eps 1e-06 | pre-norm | swiglu, d_ff 10944 | untied | 64 experts top-6, d_ff 1408, 2 shared (d_ff 1408), softmax, dense layer 0 |

Imports only torch and the standard library. The components below are copied from `archspec.nn` (only those
this spec uses); the glue at the end wires them into `DeepseekV2Lite` as `archspec.build(spec)` does, so
state-dict names and numerics are the same as the archspec model's:

    model = DeepseekV2Lite()  # random weights; then load a state dict saved from archspec.build(spec):
    model.load_state_dict(torch.load("deepseek_v2_lite.pt"))
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
    "name": "deepseek-v2-lite",
    "description": "DeepSeek-V2-Lite (MLA, 64 experts top-6 + 2 shared); numbers from config.json of deepseek-ai/DeepSeek-V2-Lite.",
    "structure": "decoder",
    "vocab_size": 102400,
    "d_model": 2048,
    "n_layers": 27,
    "context_length": 163840,
    "attention": {
        "kind": "mla",
        "heads": 16,
        "kv_rank": 512,
        "nope_dim": 128,
        "rope_dim": 64,
        "v_dim": 128,
        "bias": False,
        "latent_norm_eps": 1e-06,
    },
    "position": {
        "kind": "rope",
        "theta": 10000.0,
        "fraction": 1.0,
        "pairing": "interleaved",
        "scaling": {
            "kind": "yarn",
            "factor": 40.0,
            "original_context": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "truncate": True,
        },
        "block_positions": False,
    },
    "norm": {"kind": "rmsnorm", "eps": 1e-06, "bias": False},
    "block": {"kind": "pre-norm", "parallel_norms": 1, "residual_from_norm": False},
    "mlp": {"activation": "swiglu", "d_ff": 10944, "bias": False},
    "moe": {
        "experts": 64,
        "top_k": 6,
        "d_ff": 1408,
        "shared_experts": 2,
        "shared_d_ff": 1408,
        "shared_gate": False,
        "dense_layers": 1,
        "router": {
            "scoring": "softmax",
            "renormalize": False,
            "scale": 1.0,
            "groups": 1,
            "top_groups": 1,
            "group_score": "max",
            "correction_bias": False,
            "jitter": 0.0,
            "aux_loss": "token",
            "aux_loss_coef": 0.0,
            "z_loss_coef": 0.0,
        },
    },
    "embeddings": {"tied": False, "norm": False, "scale_head": False},
    "tokens": {"bos": 100000, "eos": 100001},
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


# ------------------------------------------------------------------------------------ copied from archspec/nn/rope.py
def yarn_scaled_frequencies(
    rotary_dim: int,
    theta: float,
    factor: float,
    original_context: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> torch.Tensor:
    """YaRN (Peng et al. 2023, https://arxiv.org/abs/2309.00071): NTK-by-parts interpolation.

    Dims that rotate more than beta_fast times over L0 extrapolate (keep their frequency), dims that rotate fewer
    than beta_slow times interpolate (frequency / factor), with a linear ramp between. The correction dim of r
    rotations is d * ln(L0 / (2 pi r)) / (2 ln theta).
    """

    def correction_dim(rotations: float) -> float:
        return rotary_dim * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    position_freqs = theta ** (torch.arange(0, rotary_dim, 2).to(torch.float32) / rotary_dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * position_freqs)) * (1 - extrapolation) + (1.0 / position_freqs) * extrapolation


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(
    factor: float, mscale: float | None = None, mscale_all_dim: float | None = None, explicit: float | None = None
) -> float:
    """Multiplier of cos and sin: the explicit value, DeepSeek's mscale ratio, or yarn_mscale(factor)."""
    if explicit is not None:
        return explicit
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions, already laid out for the pairing (half or interleaved).

    `dynamic_ntk = (theta, factor, context_length)` recomputes the frequencies when the sequence grows past the
    context length (dynamic NTK scaling); otherwise the frequencies are a fixed buffer.
    """

    def __init__(
        self,
        inv_freq: torch.Tensor,
        attention_factor: float = 1.0,
        interleaved: bool = False,
        dynamic_ntk: tuple[float, float, int] | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.to(torch.float32), persistent=False)
        self.rotary_dim = 2 * inv_freq.shape[0]
        self.attention_factor = attention_factor
        self.interleaved = interleaved
        self.dynamic_ntk = dynamic_ntk

    def forward(self, positions: torch.Tensor, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [..., S] integer positions; seq_len: the largest position + 1 (for dynamic NTK)."""
        inv_freq = self.inv_freq
        freqs = positions[..., None].float() * inv_freq
        if self.interleaved:
            angles = freqs.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x ([batch, heads, seq, head_dim]); cos/sin: [(batch,) seq, r]."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    # a rotary fraction: the other dims pass through (no slices otherwise; an fx trace cannot tell, and slices)
    partial = isinstance(rotary_dim, torch.fx.Proxy) or rotary_dim < x.shape[-1]
    x_rot = x[..., :rotary_dim] if partial else x
    if interleaved:
        rotated = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
    else:
        half = rotary_dim // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat((out, x[..., rotary_dim:]), dim=-1) if partial else out


# ------------------------------------------------------------------------------- copied from archspec/nn/attention.py
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


# ------------------------------------------------------------------------------------- copied from archspec/nn/moe.py
def _can_grouped_mm(*tensors: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes these operands: CUDA in bfloat16, or CPU (torch >= 2.9) in float32,
    bfloat16 or float16, each a row- or column-major matrix (stack) whose every stride but the contiguous
    dimension's is a multiple of 16 bytes (the kernel's requirement). A size-1 dimension does not make its stride
    exempt: x [tokens, 1] has strides (1, 1), and its row stride of 1 element is not aligned."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    for t in tensors:
        if t.is_cuda:
            if t.dtype != torch.bfloat16:
                return False
        elif t.device.type != "cpu" or t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return False
        strides = t.stride()
        inner = t.ndim - 1 if strides[-1] == 1 else t.ndim - 2  # the matrix's contiguous dimension
        if strides[inner] != 1 or any(s * t.element_size() % 16 for d, s in enumerate(strides) if d != inner):
            return False
    return True


@torch.library.custom_op("deepseek_v2_lite_ops::grouped_linear", mutates_args=())
def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows offsets[e-1]:offsets[e] of x times weight[e].T ([experts, out, in], nn.Linear layout).

    `torch._grouped_mm` where it applies (one call instead of a Python loop: at 64 experts the loop's per-expert
    overhead was a third of the MoE layer's time on CPU), else one matmul per expert written in place.
    """
    if _can_grouped_mm(x, weight):
        return torch._grouped_mm(x, weight.transpose(-2, -1), offs=offsets.to(torch.int32))
    out = x.new_empty(x.shape[0], weight.shape[1])
    start = 0
    for expert, end in enumerate(offsets.tolist()):
        torch.mm(x[start:end], weight[expert].T, out=out[start:end])
        start = end
    return out


@grouped_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[1])


@torch.library.custom_op("deepseek_v2_lite_ops::grouped_linear_weight_grad", mutates_args=())
def grouped_linear_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor, experts: int
) -> torch.Tensor:
    """d(loss)/d(weight[e]) = grad[block e].T @ x[block e] (zero for an expert without rows)."""
    if _can_grouped_mm(grad, x):
        return torch._grouped_mm(grad.T, x, offs=offsets.to(torch.int32))
    out = grad.new_empty(experts, grad.shape[1], x.shape[1])
    start = 0
    for expert, end in enumerate(offsets.tolist()):
        torch.mm(grad[start:end].T, x[start:end], out=out[expert])
        start = end
    return out


@grouped_linear_weight_grad.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor, experts: int) -> torch.Tensor:
    return grad.new_empty(experts, grad.shape[1], x.shape[1])


def _grouped_linear_backward(ctx, grad: torch.Tensor):  # noqa: ANN001 (autograd context)
    x, weight, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    # grad @ weight[e]: the transposed view needs no copy, except for CUDA's kernel (column-major operand).
    weight_t = weight.transpose(1, 2)
    grad_x = grouped_linear(grad, weight_t.contiguous() if grad.is_cuda else weight_t, offsets)
    grad_weight = grouped_linear_weight_grad(grad, x, offsets, weight.shape[0])
    return grad_x, grad_weight, None


def _grouped_linear_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*inputs)


grouped_linear.register_autograd(_grouped_linear_backward, setup_context=_grouped_linear_setup)


class Router(nn.Module):
    """Scores experts per token and picks the top-k. Returns (weights [T, k], experts [T, k], logits [T, E]).

    The correction bias (DeepSeek-V3) shifts which experts are *selected*; the weights always come from the
    unbiased scores. With groups, each group is scored (its best expert, or its best two summed) and only the
    experts of the top_groups best groups can be selected.
    """

    def __init__(
        self,
        d_model: int,
        experts: int,
        top_k: int,
        scoring: str = "softmax",
        renormalize: bool = True,
        scale: float = 1.0,
        groups: int = 1,
        top_groups: int = 1,
        group_score: str = "max",
        correction_bias: bool = False,
    ) -> None:
        super().__init__()
        self.experts, self.top_k = experts, top_k
        self.scoring, self.renormalize, self.scale = scoring, renormalize, scale
        self.groups, self.top_groups, self.group_score = groups, top_groups, group_score
        self.weight = nn.Parameter(torch.empty(experts, d_model))
        self.correction_bias: torch.Tensor | None
        if correction_bias:
            self.register_buffer("correction_bias", torch.zeros(experts))
        else:
            self.correction_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32 at least: bf16/fp16 up, float64 kept
        logits = F.linear(x.to(dtype), self.weight.to(dtype))
        scores = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        choice = scores if self.correction_bias is None else scores + self.correction_bias
        if self.groups > 1:
            grouped = choice.view(-1, self.groups, self.experts // self.groups)
            if self.group_score == "max":
                group_scores = grouped.max(dim=-1).values
            else:
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            best_groups = group_scores.topk(self.top_groups, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best_groups, True)
            choice = choice.masked_fill(~keep.repeat_interleave(self.experts // self.groups, dim=1), float("-inf"))
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.renormalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scale, experts, logits


class Experts(nn.Module):
    """E expert MLPs stored as 3-D tensors ([experts, out, in], nn.Linear layout): gate, up, down."""

    def __init__(
        self, experts: int, d_model: int, d_ff: int, activation: Callable[[torch.Tensor], torch.Tensor], gated: bool
    ) -> None:
        super().__init__()
        self.activation = activation
        self.gate = nn.Parameter(torch.empty(experts, d_ff, d_model)) if gated else None
        self.up = nn.Parameter(torch.empty(experts, d_ff, d_model))
        self.down = nn.Parameter(torch.empty(experts, d_model, d_ff))

    def forward(self, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """x_sorted: token rows grouped by expert; offsets: cumulative row count per expert."""
        up = grouped_linear(x_sorted, self.up, offsets)
        if self.gate is not None:
            hidden = self.activation(grouped_linear(x_sorted, self.gate, offsets)) * up
        else:
            hidden = self.activation(up)
        return grouped_linear(hidden, self.down, offsets)


class MoE(nn.Module):
    """y = sum_k w_k * expert_k(x) [+ shared(x), optionally gated by sigmoid(shared_gate x)].

    After each forward, `router_logits` [T, E] and `selected` [T, k] are kept for the router losses (read by the
    model when it computes the training loss).
    """

    def __init__(
        self,
        router: Router,
        experts: Experts,
        shared: nn.Module | None = None,
        shared_gate: nn.Linear | None = None,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.router, self.experts = router, experts
        self.shared, self.shared_gate = shared, shared_gate
        self.jitter = jitter
        self.router_logits: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        weights, selected, logits = self.router(x)
        self.router_logits, self.selected = logits, selected
        top_k = selected.shape[1]
        flat = selected.flatten()
        order = flat.argsort(stable=True)
        counts = torch.zeros(self.router.experts, dtype=torch.long, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat)
        )
        token_of_row = order // top_k
        # index_select, not x[token_of_row]: its backward is an index_add_, cheaper on CPU than the accumulating
        # index_put_ of advanced indexing (~3% of the MoE layer's training step at 64 experts)
        rows = self.experts(x.index_select(0, token_of_row), counts.cumsum(0))
        rows = rows * weights.flatten().index_select(0, order)[:, None].to(rows.dtype)
        out = torch.zeros_like(x).index_add_(0, token_of_row, rows)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
        return out.view(shape)


def load_balancing_loss(logits: list[torch.Tensor], selected: list[torch.Tensor], experts: int) -> torch.Tensor:
    """Switch-Transformer balance loss over all tokens of all MoE layers: E * sum_e f_e * P_e.

    f_e is the fraction of (token, slot) selections that went to expert e times top_k (so sum_e f_e = top_k, as
    in transformers' Mixtral), P_e the mean softmax probability of expert e. Minimal (= top_k) when uniform.
    """
    probs = torch.cat([logit.softmax(dim=-1) for logit in logits])
    chosen = torch.cat(selected)
    fraction = F.one_hot(chosen, experts).to(probs.dtype).mean(dim=0)  # [k, E]: per slot
    return experts * (fraction * probs.mean(dim=0)).sum()


def sequence_balancing_loss(
    logits: list[torch.Tensor], selected: list[torch.Tensor], experts: int, batch: int, scoring: str
) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over layers and sequences:
    sum_e f_e * P_e with f_e = E / (k T) * #selections of e in the sequence and P_e = mean_t of the normalised scores.
    """
    losses = []
    for logit, chosen in zip(logits, selected, strict=True):
        scores = logit.softmax(dim=-1) if scoring == "softmax" else logit.sigmoid()
        scores = scores / scores.sum(dim=-1, keepdim=True)
        scores = scores.view(batch, -1, experts)
        tokens, top_k = scores.shape[1], chosen.shape[-1]
        counts = F.one_hot(chosen.view(batch, -1), experts).to(scores.dtype).sum(dim=1)  # [batch, E]
        fraction = counts * experts / (top_k * tokens)
        losses.append((fraction * scores.mean(dim=1)).sum(dim=-1).mean())
    return torch.stack(losses).mean()


def router_z_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """mean over tokens (of all MoE layers) of logsumexp(router logits)^2: keeps the logits small (ST-MoE)."""
    return torch.cat(logits).logsumexp(dim=-1).pow(2).mean()


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
        if any(isinstance(layer.mlp, MoE) for layer in self.layers):
            aux, z = self._router_losses(batch)
            total = loss + self.aux_loss_coef * aux + self.z_loss_coef * z
            return LMOutput(logits=logits, loss=total, aux_loss=aux, z_loss=z)
        return LMOutput(logits=logits, loss=loss)

    def _router_losses(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        moes = [layer.mlp for layer in self.layers if isinstance(layer.mlp, MoE)]
        logits = [moe.router_logits for moe in moes]
        selected = [moe.selected for moe in moes]
        experts = moes[0].router.experts
        if self.aux_loss == "sequence":
            aux = sequence_balancing_loss(logits, selected, experts, batch, moes[0].router.scoring)  # type: ignore[arg-type]
        else:
            aux = load_balancing_loss(logits, selected, experts)  # type: ignore[arg-type]
        return aux, router_z_loss(logits)  # type: ignore[arg-type]

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


# ------------------------------------------------------------------------------------- copied from archspec/nn/mla.py
class LatentAttention(nn.Module):
    """MLA with the same call signature as `Attention`; RoPE pairs are interleaved (DeepSeek's layout)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        q_rank: int | None,
        kv_rank: int,
        nope_dim: int,
        rope_dim: int,
        v_dim: int,
        bias: bool = False,
        latent_norm_eps: float = 1e-6,
        scale: float | None = None,
        rope_interleaved: bool = True,
    ) -> None:
        super().__init__()
        self.heads, self.kv_rank = heads, kv_rank
        self.nope_dim, self.rope_dim, self.v_dim = nope_dim, rope_dim, v_dim
        self.scale = (nope_dim + rope_dim) ** -0.5 if scale is None else scale
        self.rope_interleaved = rope_interleaved
        q_width = heads * (nope_dim + rope_dim)
        self.q: nn.Linear | None = None
        self.q_down: nn.Linear | None = None
        self.q_latent_norm: RMSNorm | None = None
        self.q_up: nn.Linear | None = None
        if q_rank is None:
            self.q = nn.Linear(d_model, q_width, bias=False)
        else:
            self.q_down = nn.Linear(d_model, q_rank, bias=bias)
            self.q_latent_norm = RMSNorm(q_rank, latent_norm_eps)
            self.q_up = nn.Linear(q_rank, q_width, bias=False)
        self.kv_down = nn.Linear(d_model, kv_rank + rope_dim, bias=bias)
        self.kv_latent_norm = RMSNorm(kv_rank, latent_norm_eps)
        self.kv_up = nn.Linear(kv_rank, heads * (nope_dim + v_dim), bias=False)
        self.o = nn.Linear(heads * v_dim, d_model, bias=bias)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """One 'head' of width kv_rank (the latent) as keys and the shared rope key as values."""
        return LayerKVCache(batch, 1, max_len, self.kv_rank, dtype, device, value_dim=self.rope_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        if self.q is not None:
            q = self.q(x)
        else:
            q = self.q_up(self.q_latent_norm(self.q_down(x)))  # type: ignore[misc]
        q = q.view(batch, seq, -1, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], dim=-1)
        latent = self.kv_latent_norm(latent)[:, None]  # [batch, 1, seq, kv_rank]
        k_rope = k_rope[:, None]  # [batch, 1, seq, rope_dim]: one rope key shared by the heads
        if rope is not None:
            cos, sin = rope
            q_rope = apply_rotary(q_rope, cos, sin, self.rope_interleaved)
            k_rope = apply_rotary(k_rope, cos, sin, self.rope_interleaved)
        if cache is not None and positions is not None:
            latent, k_rope = cache.update(positions, latent, k_rope)
        keys_len = latent.shape[2]
        kv = self.kv_up(latent[:, 0]).view(batch, keys_len, -1, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, k_nope.shape[1], -1, -1)), dim=-1)
        if _is_pattern(mask):  # a pattern that computes attention itself (see archspec.nn.attention)
            out = mask(q, k, v, self.scale)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and _several_queries(seq), scale=self.scale
            )
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


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
def make_moe() -> MoE:
    """The mixture of experts that replaces the MLP in layers 1-26."""
    return MoE(
        Router(
            d_model=2048,
            experts=64,
            top_k=6,
            scoring="softmax",
            renormalize=False,
            scale=1.0,
            groups=1,
            top_groups=1,
            group_score="max",
            correction_bias=False,
        ),
        Experts(
            experts=64,
            d_model=2048,
            d_ff=1408,
            activation=F.silu,
            gated=True,
        ),
        shared=MLP(
            d_model=2048,
            d_ff=2816,
            activation=F.silu,
            gated=True,
            bias=False,
        ),
        jitter=0.0,
    )


def make_block(moe: bool) -> nn.Module:
    """One pre-norm block, with the mixture of experts (layers 1-26) or the dense MLP; the model stacks
    27 of them."""
    attn = LatentAttention(
        d_model=2048,
        heads=16,
        q_rank=None,
        kv_rank=512,
        nope_dim=128,
        rope_dim=64,
        v_dim=128,
        bias=False,
        latent_norm_eps=1e-06,
        scale=192**-0.5 * yarn_mscale(40.0, 0.707) ** 2,
        rope_interleaved=True,
    )
    mlp: nn.Module
    if moe:
        mlp = make_moe()
    else:
        mlp = MLP(
            d_model=2048,
            d_ff=10944,
            activation=F.silu,
            gated=True,
            bias=False,
        )
    return PreNormBlock(
        attn,
        mlp,
        attn_norm=RMSNorm(2048, 1e-06),
        mlp_norm=RMSNorm(2048, 1e-06),
    )


class DeepseekV2Lite(DecoderLM):
    """The deepseek-v2-lite model; `DeepseekV2Lite()` builds it with random weights."""

    def __init__(self) -> None:
        with torch.device("cpu"):  # frequencies are exact float32 numbers, computed on the CPU then moved
            inv_freq = yarn_scaled_frequencies(
                rotary_dim=64,
                theta=10000.0,
                factor=40.0,
                original_context=4096,
                beta_fast=32.0,
                beta_slow=1.0,
                truncate=True,
            )
        attention_factor = yarn_attention_factor(
            factor=40.0,
            mscale=0.707,
            mscale_all_dim=0.707,
            explicit=None,
        )
        rotary = RotaryEmbedding(
            inv_freq.to(torch.get_default_device()),
            attention_factor=attention_factor,
            interleaved=True,
            dynamic_ntk=None,
        )
        super().__init__(
            embed=nn.Embedding(102400, 2048),
            layers=[make_block(moe=index >= 1) for index in range(27)],
            final_norm=RMSNorm(2048, 1e-06),
            lm_head=nn.Linear(2048, 102400, bias=False),
            windows=[None] * 27,
            context_length=163840,
            rotary=rotary,
            aux_loss="token",
            aux_loss_coef=0.0,
            z_loss_coef=0.0,
            eos_token_id=100001,
        )


Model = DeepseekV2Lite
"""This file's model under a fixed name."""
