"""Mixture of experts: a router picks top-k experts per token; tokens are grouped by expert for the matmuls.

Dispatch sorts the (token, expert) pairs by expert so that every expert multiplies one contiguous block of rows
(a grouped GEMM) instead of masking every token through every expert. The grouped matmul is a custom op: on CUDA
in bfloat16 it runs `torch._grouped_mm`, elsewhere one matmul per expert over its block. To `torch.compile` the op
is opaque with a static output shape, so the forward has no data-dependent shapes and compiles with fullgraph.

Router variants (Shazeer 2017; Switch, Fedus 2021; DeepSeek-V2/V3): softmax or sigmoid scores, optional
group-limited selection, a selection-only correction bias, renormalisation of the top-k weights and a routed
scaling factor. Losses: load balancing (token- or sequence-level) and the router z-loss (ST-MoE, Zoph 2022).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.mlp import Activation


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


@torch.library.custom_op("archspec::grouped_linear", mutates_args=())
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


@torch.library.custom_op("archspec::grouped_linear_weight_grad", mutates_args=())
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


def softmax_scores(logits: torch.Tensor) -> torch.Tensor:
    """Expert scores that sum to one per token (Mixtral, Qwen-MoE, DeepSeek-V2)."""
    return logits.softmax(dim=-1)


def sigmoid_scores(logits: torch.Tensor) -> torch.Tensor:
    """Independent expert scores in (0, 1) (DeepSeek-V3)."""
    return logits.sigmoid()


def best_expert(group: torch.Tensor) -> torch.Tensor:
    """A group's score: its best expert's (DeepSeek-V2)."""
    return group.max(dim=-1).values


def best_two_summed(group: torch.Tensor) -> torch.Tensor:
    """A group's score: its best two experts' summed (DeepSeek-V3)."""
    return group.topk(2, dim=-1).values.sum(dim=-1)


SCORINGS = {"softmax": softmax_scores, "sigmoid": sigmoid_scores}
GROUP_SCORES = {"max": best_expert, "top2-sum": best_two_summed}


class GroupLimit:
    """Group-limited routing: the experts form `groups` groups, each scored by `score`, and a token may only use
    the experts of its `top_groups` best groups (the others' choice scores become -inf)."""

    def __init__(self, groups: int, top_groups: int, score: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.groups, self.top_groups, self.score = groups, top_groups, score

    def __call__(self, choice: torch.Tensor) -> torch.Tensor:
        size = choice.shape[-1] // self.groups
        group_scores = self.score(choice.view(-1, self.groups, size))
        best = group_scores.topk(self.top_groups, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
        return choice.masked_fill(~keep.repeat_interleave(size, dim=1), float("-inf"))


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
        group_limit: GroupLimit | None = None,  # emit-if: group_limited
        correction_bias: torch.Tensor | None = None,  # emit-if: correction_bias
        bias: bool = False,  # a learned bias of the logits (gpt-oss)  # emit-if: router_bias
    ) -> None:
        super().__init__()
        self.top_k, self.scoring, self.renormalize, self.scale = top_k, scoring, renormalize, scale
        self.group_limit = group_limit  # emit-if: group_limited
        self.weight = nn.Parameter(torch.empty(experts, d_model))
        self.bias = nn.Parameter(torch.zeros(experts)) if bias else None  # emit-if: router_bias
        self.register_buffer("correction_bias", correction_bias)  # emit-if: correction_bias

    @property
    def experts(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32 at least: bf16/fp16 up, float64 kept
        logits = F.linear(x.to(dtype), self.weight.to(dtype))
        if self.bias is not None:  # emit-when: router_bias
            logits = logits + self.bias.to(dtype)
        scores = self.scoring(logits)
        choice = scores
        if self.correction_bias is not None:  # emit-if: correction_bias
            choice = choice + self.correction_bias
        if self.group_limit is not None:  # emit-if: group_limited
            choice = self.group_limit(choice)
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.renormalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scale, experts, logits


class Experts(nn.Module):
    """E expert MLPs stored as 3-D tensors ([experts, out, in], nn.Linear layout): gate (gated MLPs), up, down."""

    def __init__(
        self,
        experts: int,
        d_model: int,
        d_ff: int,
        activation: Activation,
        gated: bool,
        glu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,  # emit-if: expert_glu
        bias: bool = False,  # a bias per expert and projection, added to that expert's rows  # emit-if: expert_bias
    ) -> None:
        super().__init__()
        self.activation = activation
        self.glu = glu  # the hidden units from (gate, up), instead of act(gate) * up  # emit-if: expert_glu
        self.gate = nn.Parameter(torch.empty(experts, d_ff, d_model)) if gated else None
        self.up = nn.Parameter(torch.empty(experts, d_ff, d_model))
        self.down = nn.Parameter(torch.empty(experts, d_model, d_ff))
        self.gate_bias = nn.Parameter(torch.zeros(experts, d_ff)) if bias and gated else None  # emit-if: expert_bias
        self.up_bias = nn.Parameter(torch.zeros(experts, d_ff)) if bias else None  # emit-if: expert_bias
        self.down_bias = nn.Parameter(torch.zeros(experts, d_model)) if bias else None  # emit-if: expert_bias

    def forward(self, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """x_sorted: token rows grouped by expert; offsets: cumulative row count per expert."""
        up = grouped_linear(x_sorted, self.up, offsets)
        if self.up_bias is not None:  # emit-when: expert_bias
            expert = torch.searchsorted(offsets, torch.arange(x_sorted.shape[0], device=offsets.device), right=True)
            up = up + self.up_bias[expert]
        if self.gate is not None:  # emit-when: gated_experts
            gate = grouped_linear(x_sorted, self.gate, offsets)
            if self.gate_bias is not None:  # emit-when: expert_bias
                gate = gate + self.gate_bias[expert]
            if self.glu is not None:  # emit-when: expert_glu
                hidden = self.glu(gate, up)
            else:
                hidden = self.activation(gate) * up
        else:
            hidden = self.activation(up)
        out = grouped_linear(hidden, self.down, offsets)
        if self.down_bias is not None:  # emit-when: expert_bias
            out = out + self.down_bias[expert]
        return out


@dataclass
class RouterStats:
    """What one MoE layer's router decided for the tokens of a call: its logits [T, E] and the chosen experts
    [T, k], for the balance and z losses; `rows`: the sequences the T tokens come from."""

    logits: torch.Tensor
    selected: torch.Tensor
    rows: int = 1  # emit-if: sequence_aux_loss


class MoE(nn.Module):
    """y = sum_k w_k * expert_k(x) [+ shared(x), optionally gated by sigmoid(shared_gate x)].

    Returns (y, RouterStats): the router's logits and choices go back to the model with the output (for the
    training losses), nothing is kept on the module.
    """

    def __init__(
        self,
        router: Router,
        experts: Experts,
        shared: nn.Module | None = None,  # emit-if: shared_experts
        shared_gate: nn.Linear | None = None,  # emit-if: shared_gate
        jitter: float = 0.0,  # emit-if: router_jitter
    ) -> None:
        super().__init__()
        self.router, self.experts = router, experts
        self.shared = shared  # emit-if: shared_experts
        self.shared_gate = shared_gate  # emit-if: shared_gate
        self.jitter = jitter  # emit-if: router_jitter

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.training and self.jitter > 0:  # emit-if: router_jitter
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
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
        if self.shared is not None:  # emit-if: shared_experts
            shared = self.shared(x)
            if self.shared_gate is not None:  # emit-if: shared_gate
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
        stats = RouterStats(logits, selected)
        stats.rows = shape[0]  # emit-if: sequence_aux_loss
        return out.view(shape), stats


class TokenBalancingLoss:
    """Switch-Transformer balance loss over all tokens of all MoE layers: E * sum_e f_e * P_e.

    f_e is the fraction of (token, slot) selections that went to expert e times top_k (so sum_e f_e = top_k, as
    in transformers' Mixtral), P_e the mean softmax probability of expert e. Minimal (= top_k) when uniform.
    `softmax_top_k`: count the top_k of the softmax instead of the experts the router selected (they differ when a
    correction bias shifts the choice; transformers' load_balancing_loss_func always counts the former).
    """

    def __init__(self, softmax_top_k: bool = False) -> None:  # emit-if: balance_softmax_top_k
        self.softmax_top_k = softmax_top_k

    def __call__(self, stats: list[RouterStats], real: torch.Tensor | None = None) -> torch.Tensor:
        """`real` [rows, seq] bool: the tokens that count (padding does not, as in transformers' balance loss)."""
        probs = torch.cat([layer.logits.softmax(dim=-1) for layer in stats])
        chosen = torch.cat([layer.selected for layer in stats])
        if self.softmax_top_k:  # emit-when: balance_softmax_top_k
            chosen = probs.topk(chosen.shape[-1], dim=-1).indices
        experts = probs.shape[-1]
        weight = _token_weights(real, len(stats), probs)  # [tokens of all layers, 1]
        fraction = (F.one_hot(chosen, experts).to(probs.dtype) * weight[..., None]).sum(dim=0) / weight.sum()  # [k, E]
        return experts * (fraction * ((probs * weight).sum(dim=0) / weight.sum())).sum()


class SequenceBalancingLoss:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over layers and sequences:
    sum_e f_e * P_e with f_e = E / (k T) * #selections of e in the sequence and P_e = mean_t of the normalised
    scores (`scoring`: the router's)."""

    def __init__(self, scoring: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.scoring = scoring

    def __call__(self, stats: list[RouterStats], real: torch.Tensor | None = None) -> torch.Tensor:
        """`real` [rows, seq] bool: the tokens that count in each sequence (padding does not)."""
        losses = []
        for layer in stats:
            experts = layer.logits.shape[-1]
            scores = self.scoring(layer.logits)
            scores = (scores / scores.sum(dim=-1, keepdim=True)).view(layer.rows, -1, experts)
            weight = torch.ones(scores.shape[:2], dtype=scores.dtype, device=scores.device)
            if real is not None:
                weight = real.to(scores.dtype)
            tokens, top_k = weight.sum(dim=1, keepdim=True), layer.selected.shape[-1]
            chosen = F.one_hot(layer.selected.view(layer.rows, -1, top_k), experts).to(scores.dtype)  # [r, t, k, E]
            counts = (chosen * weight[..., None, None]).sum(dim=(1, 2))  # [rows, E]
            fraction = counts * experts / (top_k * tokens)
            mean_scores = (scores * weight[..., None]).sum(dim=1) / tokens
            losses.append((fraction * mean_scores).sum(dim=-1).mean())
        return torch.stack(losses).mean()


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
