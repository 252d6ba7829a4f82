"""Residual layouts of a transformer block. Each block takes ready-made attention, MLP and norm modules.

```
pre-norm (GPT-2, LLaMA)      post-norm (GPT, BERT)          parallel (GPT-J, NeoX, Falcon)
x = x + attn(n1(x))          x = n1(x + attn(x))            x = x + attn(n1(x)) + mlp(n2(x))
x = x + mlp(n2(x))           x = n2(x + mlp(x))             (n2 is n1 when the norm is shared)

sandwich (GLM-4-0414, Gemma 2/3)      deepnorm (DeepNet, GLM-130B)      output-norm (OLMo 2): sandwich
x = x + n3(attn(n1(x)))               x = n1(alpha * x + attn(x))       with n1 = n2 = identity
x = x + n4(mlp(n2(x)))                x = n2(alpha * x + mlp(x))        x = x + n3(attn(x))
```
`attn` is any attention with `Attention`'s call (`Attention`, MLA's `LatentAttention`). `mlp` is an MLP or a
mixture of experts; an MoE returns its router statistics with its output, and the block returns them too.
"""

import torch
from torch import nn

from archspec.nn.attend import AttentionFn
from archspec.nn.cache import LayerKVCache
from archspec.nn.moe import RouterStats
from archspec.nn.positions import Context

Output = torch.Tensor | tuple[torch.Tensor, RouterStats]  # x, or (x, its MoE's router statistics)


class PreNormBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        attn_norm: nn.Module,
        attn: nn.Module,
        mlp_norm: nn.Module,
        mlp: nn.Module,
        residual_from_norm: bool = False,  # add to the normed input instead (BLOOM's option)  # emit-if: residual_from_norm
        residual_scale: float = 1.0,  # x + s * f(norm(x)) (Granite)  # emit-if: residual_scale
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.residual_from_norm = residual_from_norm  # emit-if: residual_from_norm
        self.residual_scale = residual_scale  # emit-if: residual_scale

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> Output:
        h = self.attn_norm(x)
        if self.residual_from_norm:  # emit-when: residual_from_norm
            x = h  # the residual starts from the normed input
        if self.residual_scale != 1.0:  # emit-when: residual_scale
            x = x + self.attn(h, context, attend, cache) * self.residual_scale
        else:
            x = x + self.attn(h, context, attend, cache)
        h = self.mlp_norm(x)
        if self.residual_from_norm:  # emit-when: residual_from_norm
            x = h
        out = self.mlp(h)
        if isinstance(out, tuple):  # emit-if: moe
            out, stats = out
            if self.residual_scale != 1.0:  # emit-when: residual_scale
                out = out * self.residual_scale
            return x + out, stats
        if self.residual_scale != 1.0:  # emit-when: residual_scale
            out = out * self.residual_scale
        return x + out


class SandwichBlock(nn.Module):
    """Pre-norm with a norm on each sublayer's output too: x + out_norm(f(norm(x))) (GLM-4-0414, Gemma 2 and 3).
    With identities as the input norms it is OLMo 2's x + out_norm(f(x))."""

    def __init__(
        self,
        attn_norm: nn.Module,
        attn: nn.Module,
        attn_out_norm: nn.Module,
        mlp_norm: nn.Module,
        mlp: nn.Module,
        mlp_out_norm: nn.Module,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.attn_out_norm = attn_norm, attn, attn_out_norm
        self.mlp_norm, self.mlp, self.mlp_out_norm = mlp_norm, mlp, mlp_out_norm

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> Output:
        x = x + self.attn_out_norm(self.attn(self.attn_norm(x), context, attend, cache))
        out = self.mlp(self.mlp_norm(x))
        if isinstance(out, tuple):  # emit-if: moe
            return x + self.mlp_out_norm(out[0]), out[1]
        return x + self.mlp_out_norm(out)


class PostNormBlock(nn.Module):
    """norm(x + attn(x)), then norm(x + mlp(x)): the original Transformer and GPT layout."""

    def __init__(self, attn: nn.Module, attn_norm: nn.Module, mlp: nn.Module, mlp_norm: nn.Module) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> Output:
        x = self.attn_norm(x + self.attn(x, context, attend, cache))
        out = self.mlp(x)
        if isinstance(out, tuple):  # emit-if: moe
            return self.mlp_norm(x + out[0]), out[1]
        return self.mlp_norm(x + out)


class ParallelBlock(nn.Module):
    """x + attn(norm(x)) + mlp(norm'(x)): both sublayers read the block input (GPT-J, GPT-NeoX, Falcon).

    With `mlp_norm=None` the MLP reads the attention's normed input (one shared norm: Falcon-7B, GPT-J).
    """

    def __init__(
        self,
        attn_norm: nn.Module,
        attn: nn.Module,
        mlp: nn.Module,
        mlp_norm: nn.Module | None = None,  # emit-if: two_parallel_norms
    ) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp = mlp
        self.mlp_norm = mlp_norm  # emit-if: two_parallel_norms

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> Output:
        h = self.attn_norm(x)
        if self.mlp_norm is not None:  # emit-when: two_parallel_norms
            out = self.mlp(self.mlp_norm(x))
        else:
            out = self.mlp(h)  # one norm shared by both sublayers
        x = x + self.attn(h, context, attend, cache)
        if isinstance(out, tuple):  # emit-if: moe
            return x + out[0], out[1]
        return x + out


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
        self, attn: nn.Module, attn_norm: nn.Module, mlp: nn.Module, mlp_norm: nn.Module, alpha: float
    ) -> None:
        super().__init__()
        self.attn, self.attn_norm = attn, attn_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm
        self.alpha = alpha

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> Output:
        x = self.attn_norm(self.alpha * x + self.attn(x, context, attend, cache))
        out = self.mlp(x)
        if isinstance(out, tuple):  # emit-if: moe
            return self.mlp_norm(self.alpha * x + out[0]), out[1]
        return self.mlp_norm(self.alpha * x + out)
