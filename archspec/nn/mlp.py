"""The position-wise feed-forward network, plain or gated (Shazeer 2020, https://arxiv.org/abs/2002.05202)."""

from collections.abc import Callable

import torch
from torch import nn


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
