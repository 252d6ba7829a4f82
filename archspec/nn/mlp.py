"""The position-wise feed-forward network, plain or gated (Shazeer 2020, https://arxiv.org/abs/2002.05202)."""

from collections.abc import Callable

import torch
from torch import nn

Activation = Callable[[torch.Tensor], torch.Tensor]  # elementwise: F.silu, F.gelu, ...


class MLP(nn.Module):
    """down(act(up x)): GPT-2, BLOOM, Falcon, T5 v1.0, the vision towers."""

    def __init__(self, up: nn.Linear, down: nn.Linear, activation: Activation) -> None:
        super().__init__()
        self.up, self.down, self.activation = up, down, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.up(x)))


class GatedMLP(nn.Module):
    """down(act(gate x) * up x): SwiGLU (LLaMA), GeGLU (T5 v1.1), ReGLU."""

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear, activation: Activation) -> None:
        super().__init__()
        self.gate, self.up, self.down, self.activation = gate, up, down, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.gate(x)) * self.up(x))
