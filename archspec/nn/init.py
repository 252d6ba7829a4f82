"""Initial weights: what a model built from its spec starts from when it is trained from scratch."""

import torch
from torch import nn

from archspec.nn.blocks import DeepNormBlock
from archspec.nn.moe import Experts, Router


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2's initialisation: N(0, std) for every matrix and embedding; biases stay 0 and norm weights 1."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:  # emit-if: linear_bias
            nn.init.zeros_(module.bias)
        if isinstance(module, Experts | Router):  # the experts' and routers' own matrices  # emit-if: moe
            for param in module.parameters(recurse=False):
                nn.init.normal_(param, mean=0.0, std=std)
            for name, param in module.named_parameters(recurse=False):  # emit-if: expert_bias|router_bias
                if name.endswith("bias"):  # biases start at 0, as nn.Linear's do here
                    nn.init.zeros_(param)


@torch.no_grad()  # emit-if: deepnorm
def deepnorm_init(model: nn.Module, beta: float) -> None:
    """DeepNet's initialisation (Wang et al. 2022, https://arxiv.org/abs/2203.00555, Algorithm 1): Xavier-normal
    weights, with gain beta for the value and output projections and the MLP, gain 1 for query and key."""
    for layer in model.layers:  # type: ignore[union-attr]
        if not isinstance(layer, DeepNormBlock):
            continue
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                gain = 1.0 if name in ("attn.q", "attn.k") else beta
                nn.init.xavier_normal_(module.weight, gain=gain)
