"""Activation functions by spec name. `gelu-tanh` serves GPT-2's gelu_new, gelu_pytorch_tanh and BLOOM's gelu."""

from functools import partial

import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu-tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that CLIP's towers were trained with."""
    return x * torch.sigmoid(1.702 * x)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): x bounded to (-cap, cap), nearly unchanged where |x| << cap (Gemma 2's logits and
    attention scores)."""
    return cap * torch.tanh(x / cap)


class ClampedSwiGLU:  # emit-if: expert_glu
    """gpt-oss's gated unit: (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g) with g = min(gate, limit).

    The clamps bound what one token can put through an expert; the + 1 lets the up projection start as a pass-through
    of the swish of the gate (OpenAI's gpt-oss model card, 2025)."""

    def __init__(self, limit: float, alpha: float) -> None:
        self.limit, self.alpha = limit, alpha

    def __call__(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        return (up + 1) * gate * torch.sigmoid(gate * self.alpha)
