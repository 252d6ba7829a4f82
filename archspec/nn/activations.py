"""Activation functions by spec name. `gelu-tanh` serves GPT-2's gelu_new, gelu_pytorch_tanh and BLOOM's gelu."""

from functools import partial

import torch.nn.functional as F

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu-tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}
