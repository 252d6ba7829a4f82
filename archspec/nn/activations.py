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
