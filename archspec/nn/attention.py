"""Multi-head attention with any number of key/value heads (MHA, GQA, MQA).

GQA (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245): query head h reads key/value head
h // (heads / kv_heads). How the scores are computed for a call (SDPA causal, a mask, a bias by distance, ...) is
the attention function the model hands every layer (`archspec.nn.attend`).
"""

import torch
from torch import nn

from archspec.nn.attend import AttentionFn
from archspec.nn.cache import LayerKVCache
from archspec.nn.positions import Context


class Attention(nn.Module):
    """q/k/v projections -> qk-norm (optional) -> RoPE (if the call has it) -> attend -> o; q.k times `scale`."""

    def __init__(
        self,
        heads: int,
        kv_heads: int,
        head_dim: int,
        q: nn.Linear,
        k: nn.Linear,
        v: nn.Linear,
        o: nn.Linear,
        q_norm: nn.Module | None = None,  # emit-if: qk_norm
        k_norm: nn.Module | None = None,  # emit-if: qk_norm
        qk_norm_at: str = "head",  # or "projection" (all of q, k: OLMo 2), "rotated" (Hunyuan)  # emit-if: qk_norm_placement
        scale: float | None = None,
        sinks: bool = False,  # a learned logit per head joins each softmax, then dropped (gpt-oss)  # emit-if: sinks
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.q, self.k, self.v, self.o = q, k, v, o
        self.q_norm, self.k_norm = q_norm, k_norm  # emit-if: qk_norm
        self.qk_norm_at = qk_norm_at  # emit-if: qk_norm_placement
        self.sinks = nn.Parameter(torch.zeros(heads)) if sinks else None  # emit-if: sinks

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """An empty static cache for this layer's keys and values."""
        keys = torch.zeros(batch, self.kv_heads, max_len, self.head_dim, dtype=dtype, device=device)
        return LayerKVCache(keys, torch.zeros_like(keys))

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.qk_norm_at == "projection":  # emit-when: qk_norm_projection
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, seq, -1, self.head_dim)  # -1: under tensor parallelism a rank has its share
        k = k.view(batch, seq, -1, self.head_dim)
        v = v.view(batch, seq, -1, self.head_dim)
        if self.q_norm is not None and self.qk_norm_at == "head":  # emit-when: qk_norm_head
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if context.rope is not None:  # emit-if: rope
            q, k = context.rope(q), context.rope(k)
        if self.qk_norm_at == "rotated":  # emit-when: qk_norm_rotated
            q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:
            k, v = cache.update(context.positions, k, v, context.keys)
        if self.sinks is not None:  # emit-when: sinks
            out = attend(q, k, v, self.scale, self.sinks)
        else:
            out = attend(q, k, v, self.scale)
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))
