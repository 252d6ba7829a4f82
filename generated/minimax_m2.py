"""minimax-m2: a stand-alone PyTorch model emitted by archspec from this spec. Generated: do not edit by hand.

    name: minimax-m2
    description: MiniMax-M2 (256 experts top-8, sigmoid router with correction bias, projection qk-norm, half-width RoPE); numbers
      from config.json of MiniMaxAI/MiniMax-M2.
    vocab_size: 200064
    d_model: 3072
    n_layers: 62
    context_length: 196608
    attention:
      heads: 48
      kv_heads: 8
      head_dim: 128
      qk_norm: {over: projection}
    position: {kind: rope, theta: 5000000.0, fraction: 0.5}
    norm: {eps: 1.0e-06, bias: false}
    mlp: {activation: swiglu, d_ff: 1536}
    moe:
      experts: 256
      top_k: 8
      d_ff: 1536
      shared_d_ff: 1536
      router: {scoring: sigmoid, top_groups: 1, correction_bias: true, aux_loss_counts: softmax-top-k, aux_loss_coef: 0.001}
    tokens: {bos: 200034, eos: 200020}

Only torch and the standard library are imported. The weights start as archspec's build sets them (the same for
the same torch seed), and a state dict saved from an archspec model loads as it is:

    model = MinimaxM2()
    model.load_state_dict(torch.load("minimax_m2.pt"))
    logits = model(input_ids).logits
    loss = model(input_ids, labels=input_ids).loss
    tokens = model.generate(input_ids, max_new_tokens=20)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import and_masks

Rope = Callable[[torch.Tensor], torch.Tensor]  # turns q or k [batch, heads, queries, head_dim] by their positions
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (b, h, q, kv) -> seen
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]  # attend(q, k, v, scale)
Activation = Callable[[torch.Tensor], torch.Tensor]  # elementwise: F.silu, F.gelu, ...


# ------------------------------------------------------------------------------------------------ norms and activations
class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps) in at least float32, cast back *before* the weight multiply (LLaMA's order)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least: float64 is not rounded
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(x.dtype)


# ------------------------------------------------------------------------------------------------------------ positions
@dataclass
class Context:
    """One call as every layer sees it: `rows` sequences' queries at cache slots `positions` over the keys in slots
    0 .. keys - 1; padded or packed rows add `key_mask` (False: padding), `documents` and their `position_ids`."""

    positions: torch.Tensor
    keys: int
    rows: int = 1
    dtype: torch.dtype = torch.float32  # the activations' (of RoPE tables and biases)
    rope: Rope | None = None
    key_mask: torch.Tensor | None = None  # [rows, keys] bool
    documents: torch.Tensor | None = None  # [rows, keys]
    position_ids: torch.Tensor | None = None


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[rows, n] positions of a padding mask (1: token): each row counts its tokens from 0, pads at 0 (as
    transformers' generate and BLOOM's ALiBi do)."""
    mask = mask.long()
    return (mask.cumsum(-1) - 1) * mask


def packed_documents(position_ids: torch.Tensor) -> torch.Tensor | None:
    """[rows, seq] document of each token where positions restart (not the previous + 1: as transformers detects
    packing); None when every row is one document (checked eagerly; a compiled graph always gets them)."""
    first = position_ids[:, :1] - 1
    documents = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    if not torch.compiler.is_compiling() and not bool(documents[:, -1].any()):
        return None
    return documents


def rope_frequencies(rotary_dim: int, theta: float) -> torch.Tensor:
    """inv_freq[k] = theta^(-2k / rotary_dim), k = 0 .. rotary_dim/2 - 1."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponents)


class HalfPairs:
    """Dim k rotates with dim k + r/2 (GPT-NeoX; LLaMA in transformers' layout). A pairing lays the frequencies out
    over the rotated dims (`angles`) and turns each pair by 90 degrees: (x1, x2) -> (-x2, x1) (`rotated`)."""

    def angles(self, freqs: torch.Tensor) -> torch.Tensor:
        return torch.cat((freqs, freqs), dim=-1)

    def rotated(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """A call's `Rope`: angles position * inv_freq (float32, computed on the CPU), laid out for the pairing."""

    def __init__(self, inv_freq: torch.Tensor, pairing: HalfPairs) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device(), torch.float32), persistent=False)
        self.pairing = pairing

    def forward(self, context: Context) -> Rope:
        inv_freq = self.inv_freq
        positions = context.positions if context.position_ids is None else context.position_ids  # [(rows,) queries]
        angles = self.pairing.angles(positions[..., None].float() * inv_freq)
        cos, sin = angles.cos(), angles.sin()
        return partial(apply_rotary, cos=cos.to(context.dtype), sin=sin.to(context.dtype), pairing=self.pairing)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: HalfPairs) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x ([batch, heads, seq, head_dim]); cos/sin: [(batch,) seq, r]."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    if _rotates_part(cos.shape[-1], x.shape[-1]):
        rotary_dim = cos.shape[-1]
        turned = x[..., :rotary_dim]
        return torch.cat((turned * cos + pairing.rotated(turned) * sin, x[..., rotary_dim:]), dim=-1)
    return x * cos + pairing.rotated(x) * sin


def _rotates_part(rotary_dim: int, head_dim: int) -> bool:
    """Whether only part of each head rotates (a rotary fraction: GPT-NeoX, GLM, MLA's rope dims)."""
    return rotary_dim < head_dim


# ------------------------------------------------------------------------------------------------------------ attention
def causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """A query sees itself and the keys before it."""
    return kv <= q


def padding(key_mask: torch.Tensor) -> MaskMod:
    """Row b's padded keys (key_mask[b, kv] False) are hidden; a query still sees its own slot, so that a padded
    query's softmax has a key (its output is never read)."""

    def real(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return key_mask[b, kv] | (kv == q)

    return real


def same_document(documents: torch.Tensor) -> MaskMod:
    """Packed rows: a query sees only the keys of its own document (documents[b, slot]: the document index)."""

    def same(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return documents[b, q] == documents[b, kv]

    return same


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


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries at the end of the keys: SDPA's is_causal for a sequence attending to itself, no mask for one query."""
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=_several(q.shape[2]), scale=scale, enable_gqa=gqa)


def _several(queries: int) -> bool:
    """A function: `queries` is a SymInt when compiled dynamic (a Proxy in an fx trace, of several queries)."""
    return True if queries > 1 else False  # noqa: SIM210 (an `if`, which dynamo specialises, not bool(SymInt))


class MaskedAttention:
    """SDPA with a mask broadcastable to [batch, heads, queries, keys]: boolean (True = may attend) or additive."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale, enable_gqa=gqa)


class AttentionPaths(nn.Module):
    """Each layer's causal attention function for one call, as its pattern and the call allow (alike layers share)."""

    def __init__(self, layers: int = 0) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, context: Context) -> list[AttentionFn]:
        return [self._function(context)] * self.layers

    def _function(self, context: Context) -> AttentionFn:
        seq, keys = context.positions.shape[0], context.keys
        whole = seq == keys  # a sequence attending to itself: queries = keys = positions 0 .. seq - 1
        if context.key_mask is not None or context.documents is not None:
            mask = self._mask(  # padded keys or packed documents: a mask per row
                context,
            )
            return MaskedAttention(mask)
        if whole or seq == 1:
            return causal_attention
        return MaskedAttention(self._mask(context))

    def _pattern(self, context: Context) -> MaskMod:
        """Which keys each query of the call sees, as one predicate composed of the mask predicates."""
        pattern = causal
        if context.key_mask is not None:
            pattern = and_masks(pattern, padding(context.key_mask))
        if context.documents is not None:
            pattern = and_masks(pattern, same_document(context.documents))
        return pattern

    def _mask(self, context: Context) -> torch.Tensor:
        pattern = self._pattern(context)
        mask = render(pattern, context)
        return mask


class Attention(nn.Module):
    """q/k/v projections -> qk-norm (optional) -> RoPE (if the call has it) -> attend -> o; q.k times `scale`."""

    def __init__(
        self,
        heads: int,
        kv_heads: int,
        head_dim: int,
        q: nn.Linear,
        k: nn.Linear,
        v: nn.Linear,
        o: nn.Linear,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        qk_norm_at: str = "head",  # or "projection" (all of q, k: OLMo 2), "rotated" (Hunyuan)
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.q, self.k, self.v, self.o = q, k, v, o
        self.q_norm, self.k_norm = q_norm, k_norm
        self.qk_norm_at = qk_norm_at

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """An empty static cache for this layer's keys and values."""
        keys = torch.zeros(batch, self.kv_heads, max_len, self.head_dim, dtype=dtype, device=device)
        return LayerKVCache(keys, torch.zeros_like(keys))

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, seq, -1, self.head_dim)  # -1: under tensor parallelism a rank has its share
        k = k.view(batch, seq, -1, self.head_dim)
        v = v.view(batch, seq, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if context.rope is not None:
            q, k = context.rope(q), context.rope(k)
        if cache is not None:
            k, v = cache.update(context.positions, k, v, context.keys)
        out = attend(q, k, v, self.scale)
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


# --------------------------------------------------------------------------------------------------------- feed-forward
def _can_grouped_mm(*tensors: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes these operands: CUDA in bfloat16, or CPU (torch >= 2.9) in float32,
    bfloat16 or float16, each a row- or column-major matrix (stack) whose every stride but the contiguous
    dimension's is a multiple of 16 bytes (the kernel's requirement). A size-1 dimension does not make its stride
    exempt: x [tokens, 1] has strides (1, 1), and its row stride of 1 element is not aligned."""
    return hasattr(torch, "_grouped_mm") and all(_grouped_mm_operand(t) for t in tensors)


def _grouped_mm_operand(t: torch.Tensor) -> bool:
    dtypes = (torch.bfloat16,) if t.is_cuda else (torch.float32, torch.bfloat16, torch.float16)
    strides = t.stride()
    inner = t.ndim - 1 if strides[-1] == 1 else t.ndim - 2  # the matrix's contiguous dimension
    aligned = all(s * t.element_size() % 16 == 0 for d, s in enumerate(strides) if d != inner)
    return t.device.type in ("cpu", "cuda") and t.dtype in dtypes and strides[inner] == 1 and aligned


@torch.library.custom_op("minimax_m2_ops::grouped_linear", mutates_args=())
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


@torch.library.custom_op("minimax_m2_ops::grouped_linear_weight_grad", mutates_args=())
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


def sigmoid_scores(logits: torch.Tensor) -> torch.Tensor:
    """Independent expert scores in (0, 1) (DeepSeek-V3)."""
    return logits.sigmoid()


class Router(nn.Module):
    """Scores experts per token and picks the top-k. Returns (weights [T, k], experts [T, k], logits [T, E]).

    Logits are computed in float32 at least (bf16 and fp16 inputs are upcast). `scoring` maps them to scores;
    the top-k weights are the scores of the chosen experts, renormalised to sum to one when `renormalize`, times
    `scale`. The correction bias (DeepSeek-V3) shifts which experts are *selected*; the weights always come from
    the unbiased scores. `group_limit` restricts the choice to the best groups of experts.
    """

    def __init__(
        self,
        d_model: int,
        experts: int,
        top_k: int,
        scoring: Callable[[torch.Tensor], torch.Tensor],
        renormalize: bool = True,
        scale: float = 1.0,
        correction_bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.top_k, self.scoring, self.renormalize, self.scale = top_k, scoring, renormalize, scale
        self.weight = nn.Parameter(torch.empty(experts, d_model))
        self.register_buffer("correction_bias", correction_bias)

    @property
    def experts(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32 at least: bf16/fp16 up, float64 kept
        logits = F.linear(x.to(dtype), self.weight.to(dtype))
        scores = self.scoring(logits)
        choice = scores
        if self.correction_bias is not None:
            choice = choice + self.correction_bias
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.renormalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scale, experts, logits


class Experts(nn.Module):
    """E expert MLPs stored as 3-D tensors ([experts, out, in], nn.Linear layout): gate (gated MLPs), up, down."""

    def __init__(self, experts: int, d_model: int, d_ff: int, activation: Activation, gated: bool) -> None:
        super().__init__()
        self.activation = activation
        self.gate = nn.Parameter(torch.empty(experts, d_ff, d_model)) if gated else None
        self.up = nn.Parameter(torch.empty(experts, d_ff, d_model))
        self.down = nn.Parameter(torch.empty(experts, d_model, d_ff))

    def forward(self, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """x_sorted: token rows grouped by expert; offsets: cumulative row count per expert."""
        up = grouped_linear(x_sorted, self.up, offsets)
        gate = grouped_linear(x_sorted, self.gate, offsets)
        hidden = self.activation(gate) * up
        out = grouped_linear(hidden, self.down, offsets)
        return out


@dataclass
class RouterStats:
    """What one MoE layer's router decided for the tokens of a call: its logits [T, E] and the chosen experts
    [T, k], for the balance and z losses; `rows`: the sequences the T tokens come from."""

    logits: torch.Tensor
    selected: torch.Tensor


class MoE(nn.Module):
    """y = sum_k w_k * expert_k(x) [+ shared(x), optionally gated by sigmoid(shared_gate x)].

    Returns (y, RouterStats): the router's logits and choices go back to the model with the output (for the
    training losses), nothing is kept on the module.
    """

    def __init__(self, router: Router, experts: Experts) -> None:
        super().__init__()
        self.router, self.experts = router, experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, selected, logits = self.router(x)
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
        stats = RouterStats(logits, selected)
        return out.view(shape), stats


class TokenBalancingLoss:
    """Switch-Transformer balance loss over all tokens of all MoE layers: E * sum_e f_e * P_e.

    f_e is the fraction of (token, slot) selections that went to expert e times top_k (so sum_e f_e = top_k, as
    in transformers' Mixtral), P_e the mean softmax probability of expert e. Minimal (= top_k) when uniform.
    `softmax_top_k`: count the top_k of the softmax instead of the experts the router selected (they differ when a
    correction bias shifts the choice; transformers' load_balancing_loss_func always counts the former).
    """

    def __init__(self, softmax_top_k: bool = False) -> None:
        self.softmax_top_k = softmax_top_k

    def __call__(self, stats: list[RouterStats], real: torch.Tensor | None = None) -> torch.Tensor:
        """`real` [rows, seq] bool: the tokens that count (padding does not, as in transformers' balance loss)."""
        probs = torch.cat([layer.logits.softmax(dim=-1) for layer in stats])
        chosen = torch.cat([layer.selected for layer in stats])
        chosen = probs.topk(chosen.shape[-1], dim=-1).indices
        experts = probs.shape[-1]
        weight = _token_weights(real, len(stats), probs)  # [tokens of all layers, 1]
        fraction = (F.one_hot(chosen, experts).to(probs.dtype) * weight[..., None]).sum(dim=0) / weight.sum()  # [k, E]
        return experts * (fraction * ((probs * weight).sum(dim=0) / weight.sum())).sum()


def router_z_loss(stats: list[RouterStats], real: torch.Tensor | None = None) -> torch.Tensor:
    """mean over (real) tokens of all MoE layers of logsumexp(router logits)^2: keeps the logits small (ST-MoE)."""
    logits = torch.cat([layer.logits for layer in stats])
    weight = _token_weights(real, len(stats), logits)[:, 0]
    return (logits.logsumexp(dim=-1).pow(2) * weight).sum() / weight.sum()


def _token_weights(real: torch.Tensor | None, layers: int, like: torch.Tensor) -> torch.Tensor:
    """[tokens of all layers, 1]: 1 for a real token, 0 for padding (`real` [rows, seq] bool; None: all real).
    Weights rather than a selection keep the shapes fixed (one compiled graph, whatever the mask)."""
    if real is None:
        return torch.ones(like.shape[0], 1, dtype=like.dtype, device=like.device)
    return real.flatten().repeat(layers)[:, None].to(like.dtype)


class RouterLoss:
    """The training loss's router terms: a balance loss and the z-loss, with their coefficients."""

    def __init__(
        self,
        balance: Callable[[list[RouterStats], torch.Tensor | None], torch.Tensor],
        aux_coef: float = 0.0,
        z_coef: float = 0.0,
    ) -> None:
        self.balance, self.aux_coef, self.z_coef = balance, aux_coef, z_coef

    def __call__(self, stats: list[RouterStats], real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(balance loss, z-loss) over the `real` tokens ([rows, seq] bool; None: all), unweighted; the model adds
        aux_coef and z_coef times them to its loss."""
        return self.balance(stats, real), router_z_loss(stats, real)


# --------------------------------------------------------------------------------------------------------------- blocks
Output = torch.Tensor | tuple[torch.Tensor, RouterStats]  # x, or (x, its MoE's router statistics)


class PreNormBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn_norm: nn.Module, attn: nn.Module, mlp_norm: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.mlp_norm, self.mlp = mlp_norm, mlp

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> Output:
        h = self.attn_norm(x)
        x = x + self.attn(h, context, attend, cache)
        h = self.mlp_norm(x)
        out = self.mlp(h)
        if isinstance(out, tuple):
            out, stats = out
            return x + out, stats
        return x + out


# ------------------------------------------------------------------------------------------------------- language model
@dataclass
class LMOutput:
    """What a forward pass returns: logits [batch, seq, vocab], and the loss when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # the router's balance loss (in `loss` times its coefficient)
    z_loss: torch.Tensor | None = None  # the router's z-loss (likewise)


class DecoderLM(nn.Module):
    """A causal decoder LM from its parts: embedding, blocks, final norm, head, and `attention` (each layer's
    attention function in a call). A forward pass works out the call's `Context` once and runs the blocks."""

    def __init__(
        self,
        embed: nn.Embedding,
        layers: list[nn.Module],
        final_norm: nn.Module,
        lm_head: nn.Linear,
        attention: AttentionPaths,
        rotary: nn.Module | None = None,
        router_loss: RouterLoss | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.final_norm, self.lm_head = final_norm, lm_head
        self.attention = attention
        self.rotary = rotary
        self.router_loss = router_loss
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """`labels` [batch, seq]: the next-token loss (shifted inside; -100 is ignored). `logits_to_keep` > 0: the
        logits of the last that many positions only (decoding needs the last one). The queries continue the cache.

        `attention_mask` [batch, past + seq] (1: token, 0: padding, left or right, as in transformers): padded keys
        are never attended, padded positions are out of the loss. `position_ids` [batch, seq] (default: the slots);
        without a mask or cache, positions restarting in a row mark packed documents, as `document_ids` [batch,
        past + seq] do: no attention and no loss across documents."""
        batch, seq = input_ids.shape
        past = cache.length if cache is not None else 0
        positions = torch.arange(past, past + seq, device=input_ids.device)
        keys = past + seq
        x = self.embed(input_ids)
        context = Context(positions, keys, rows=batch, dtype=x.dtype, position_ids=position_ids)
        context.key_mask, context.documents = self._masks(
            attention_mask, position_ids, document_ids, cache, batch, keys
        )
        context.rope = self.rotary(context)
        attends = self.attention(context)
        routers: list[RouterStats] = []
        for index, layer in enumerate(self.layers):
            x = layer(x, context, attends[index], cache.layers[index] if cache is not None else None)
            if isinstance(x, tuple):
                x, stats = x
                routers.append(stats)
        if cache is not None:
            cache.length = keys
        if labels is None and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.final_norm(x))
        if labels is None:
            return LMOutput(logits=logits)
        # Shift the labels, not the logits (as transformers does): no copy of the [batch, seq, vocab] logits.
        shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
        if attention_mask is not None:  # a padded position neither predicts nor is predicted
            real = attention_mask[:, -seq:].bool()
            shifted = shifted.masked_fill(~(real & F.pad(real[:, 1:], (0, 1), value=False)), -100)
        if context.documents is not None:  # nor does a document predict the next one's first token
            same = context.documents[:, -seq:]
            shifted = shifted.masked_fill(F.pad(same[:, 1:] != same[:, :-1], (0, 1), value=False), -100)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
        aux, z = self.router_loss(routers, None if attention_mask is None else attention_mask[:, -seq:].bool())
        total = loss + self.router_loss.aux_coef * aux + self.router_loss.z_coef * z
        return LMOutput(logits=logits, loss=total, aux_loss=aux, z_loss=z)

    def _masks(
        self,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        document_ids: torch.Tensor | None,
        cache: KVCache | None,
        batch: int,
        keys: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The call's key mask and documents ([batch, keys] each, or None where no key needs hiding)."""
        for name, given in (("attention_mask", attention_mask), ("document_ids", document_ids)):
            if given is not None and tuple(given.shape) != (batch, keys):
                raise ValueError(f"{name} must be [batch, past + seq] = [{batch}, {keys}], got {list(given.shape)}")
        key_mask = documents = None
        if attention_mask is not None:
            key_mask = attention_mask.bool()
            right_padded = bool((key_mask[:, 1:] <= key_mask[:, :-1]).all())  # (or not padded)
            if cache is None and not torch.compiler.is_compiling() and right_padded:
                key_mask = None  # no padding, or right padding only: causal attention is exact for every token
        if document_ids is not None:
            documents = document_ids
        elif position_ids is not None and attention_mask is None and cache is None:
            documents = packed_documents(position_ids.expand(batch, -1))
        return key_mask, documents

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty static cache for `batch` sequences of up to `max_len` positions (in the weights' dtype)."""
        weight = self.embed.weight
        dtype = dtype or weight.dtype
        return KVCache([layer.attn.new_cache(batch, max_len, dtype, weight.device) for layer in self.layers])

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, **options: object) -> torch.Tensor:
        """Greedy (default) or sampled continuation with the KV cache: `generate` with the model's eos/pad ids."""
        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        return generate(self, input_ids, max_new_tokens, **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------- generation
class LayerKVCache:
    """Keys and values of one attention layer, [batch, kv_heads, max_len, head_dim] each (zeros to begin with)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(
        self, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values at `positions` ([seq]); return the first `visible` slots."""
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        if visible == keys.shape[2]:  # only the new ones: the same numbers, without a strided read
            return keys, values
        return self.keys[:, :, :visible], self.values[:, :, :visible]


class KVCache:
    """The caches of every layer plus how many positions have been written."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.layers, self.length = layers, 0


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
    attention_mask: torch.Tensor | None = None,
    **model_inputs: torch.Tensor,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each row of `input_ids` ([batch, seq]); return [batch, seq + n]. Rows
    past `eos_token_id` get `pad_token_id` (or eos), as in `transformers`; `model_inputs` go to every forward.
    `attention_mask` [batch, seq] (0: padding): prompts of different lengths, left-padded; each row's positions
    count its own tokens (as transformers' generate computes them) and its pads stay hidden at every step."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    batch, seq = input_ids.shape
    total = seq + max_new_tokens
    stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    stop = torch.tensor(stops, dtype=torch.long, device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(stop[0]) if len(stop) else 0)
    cache = model.new_cache(batch, total)  # type: ignore[operator]
    tokens = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    prompt = dict(model_inputs)
    mask = position = None  # the padding mask of every slot, the next position per row
    if attention_mask is not None:
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs prompts padded on the left: some row's last token is padding")
        mask = F.pad(attention_mask.bool(), (0, max_new_tokens), value=True)  # every slot the call fills
        positions = positions_from_mask(attention_mask)
        prompt |= {"attention_mask": mask[:, :seq], "position_ids": positions}
        position = positions[:, -1:] + 1  # of the next token, per row
    # Only the last position's logits are needed (`logits_to_keep=1`): the head is not run over the whole prompt.
    logits = model(input_ids, cache=cache, logits_to_keep=1, **prompt).logits[:, -1]
    for step in range(max_new_tokens):
        next_token = sample(logits, temperature, top_k, top_p, generator) if do_sample else logits.argmax(dim=-1)
        if len(stop):
            next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
            finished = finished | torch.isin(next_token, stop)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
        if step == max_new_tokens - 1 or (len(stop) and bool(finished.all())):
            break
        inputs = dict(model_inputs)
        if mask is not None:
            inputs |= {"attention_mask": mask[:, : cache.length + 1], "position_ids": position}
            position = position + 1
        logits = model(next_token[:, None], cache=cache, logits_to_keep=1, **inputs).logits[:, -1]
    return tokens


def sample(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row drawn from softmax(logits / temperature), restricted to the top-k and the top-p mass."""
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


# ------------------------------------------------------------------------------------------------------- initialisation
@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2's initialisation: N(0, std) for every matrix and embedding; biases stay 0 and norm weights 1."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, Experts | Router):  # the experts' and routers' own matrices
            for param in module.parameters(recurse=False):
                nn.init.normal_(param, mean=0.0, std=std)


# ------------------------------------------------------------------------------------------------------------ the model
def make_block() -> nn.Module:
    """One PreNormBlock block; the model stacks 62 of them."""
    return PreNormBlock(
        attn_norm=RMSNorm(3072, eps=1e-06),
        attn=Attention(
            heads=48,
            kv_heads=8,
            head_dim=128,
            q=nn.Linear(3072, 6144, bias=False),
            k=nn.Linear(3072, 1024, bias=False),
            v=nn.Linear(3072, 1024, bias=False),
            o=nn.Linear(6144, 3072, bias=False),
            q_norm=RMSNorm(6144, eps=1e-06),
            k_norm=RMSNorm(1024, eps=1e-06),
            qk_norm_at="projection",
        ),
        mlp_norm=RMSNorm(3072, eps=1e-06),
        mlp=MoE(
            router=Router(
                d_model=3072,
                experts=256,
                top_k=8,
                scoring=sigmoid_scores,
                correction_bias=torch.zeros(256),
            ),
            experts=Experts(256, 3072, 1536, activation=F.silu, gated=True),
        ),
    )


class MinimaxM2(DecoderLM):
    """The minimax-m2 model, starting from the weights archspec builds it with."""

    def __init__(self) -> None:
        super().__init__(
            embed=nn.Embedding(200064, 3072),
            layers=[make_block() for _ in range(62)],
            final_norm=RMSNorm(3072, eps=1e-06),
            lm_head=nn.Linear(3072, 200064, bias=False),
            attention=AttentionPaths(layers=62),
            rotary=RotaryEmbedding(inv_freq=rope_frequencies(64, 5000000.0), pairing=HalfPairs()),
            router_loss=RouterLoss(balance=TokenBalancingLoss(softmax_top_k=True), aux_coef=0.001),
            eos_token_id=200020,
        )
        init_weights(self)


Model = MinimaxM2  # this file's model under a fixed name
