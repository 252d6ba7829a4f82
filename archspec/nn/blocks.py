"""Residual layouts of a transformer block. Each block takes ready-made attention, MLP and norm modules.

```
pre-norm (GPT-2, LLaMA)      post-norm (GPT, BERT)          parallel (GPT-J, NeoX, Falcon)
x = x + attn(n1(x))          x = n1(x + attn(x))            x = x + attn(n1(x)) + mlp(n2(x))
x = x + mlp(n2(x))           x = n2(x + mlp(x))             (n2 is n1 when the norm is shared)

sandwich (GLM-4-0414): pre-norm with a norm on each sublayer output: x = x + n3(attn(n1(x))), ...
```
Absent optional norms are `nn.Identity`, so the forward passes read the same for every variant. `attn` is any
attention with `Attention`'s call signature (`Attention`, MLA's `LatentAttention`).
"""

import torch
from torch import nn

from archspec.nn.cache import LayerKVCache

Rope = tuple[torch.Tensor, torch.Tensor] | None


class PreNormBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); `residual_from_norm` adds to the normed input instead (BLOOM)."""

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        attn_out_norm: nn.Module | None = None,
        mlp_out_norm: nn.Module | None = None,
        residual_from_norm: bool = False,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.attn_out_norm = attn_out_norm or nn.Identity()
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.mlp_out_norm = mlp_out_norm or nn.Identity()
        self.residual_from_norm = residual_from_norm

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        x = (h if self.residual_from_norm else x) + self.attn_out_norm(self.attn(h, rope, mask, cache, positions))
        h = self.mlp_norm(x)
        return (h if self.residual_from_norm else x) + self.mlp_out_norm(self.mlp(h))


class PostNormBlock(nn.Module):
    """norm(x + attn(x)), then norm(x + mlp(x)): the original Transformer and GPT layout."""

    def __init__(self, attn: nn.Module, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, rope, mask, cache, positions))
        return self.mlp_norm(x + self.mlp(x))


class ParallelBlock(nn.Module):
    """x + attn(norm(x)) + mlp(norm'(x)): both sublayers read the block input (GPT-J, GPT-NeoX, Falcon).

    With `mlp_norm=None` the MLP reads the attention's normed input (one shared norm: Falcon-7B, GPT-J).
    """

    def __init__(
        self, attn: nn.Module, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        h_mlp = h if self.mlp_norm is None else self.mlp_norm(x)
        return x + self.attn(h, rope, mask, cache, positions) + self.mlp(h_mlp)


class DeepNormBlock(nn.Module):
    """DeepNorm (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", https://arxiv.org/abs/2203.00555):
    post-norm with the residual up-weighted by a constant alpha,

    ```
    x = n1(alpha * x + attn(x))
    x = n2(alpha * x + mlp(x))
    ```
    For a decoder-only stack of N layers the paper sets alpha = (2N)^(1/4) and initialises the value, output and
    MLP projections with Xavier-normal gain beta = (8N)^(-1/4) (query and key keep gain 1): the update of each
    sublayer is then bounded independently of depth. GLM-130B uses alpha = (2N)^(1/2), beta = (2N)^(-1/2).
    With alpha = 1 this is the post-norm block.
    """

    def __init__(
        self, attn: nn.Module, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module, alpha: float
    ) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm
        self.alpha = alpha

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        x = self.attn_norm(self.alpha * x + self.attn(x, rope, mask, cache, positions))
        return self.mlp_norm(self.alpha * x + self.mlp(x))
