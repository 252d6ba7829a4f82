"""Normalisation layers. LayerNorm is `torch.nn.LayerNorm`; RMSNorm is written out because its cast order matters."""

import torch
from torch import nn


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


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w), in float32 at least and cast back *after* the weight
    multiply. `w` starts at 0, so a fresh model normalises plainly (checkpoints store w, not 1 + w)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return (wide * (1.0 + self.weight.to(wide.dtype))).to(x.dtype)


class HeadNorm(nn.Module):
    """A norm of each head's vector with each head's own weight ([heads, head_dim]: Cohere's q/k LayerNorms).
    `norm` is the weightless norm over the last dim."""

    def __init__(self, norm: nn.Module, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm = norm
        self.weight = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, heads, head_dim]
        return self.weight * self.norm(x)
