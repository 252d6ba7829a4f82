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

import torch
import torch.nn.functional as F
from torch import nn


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
