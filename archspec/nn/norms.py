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
