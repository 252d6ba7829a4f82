"""Multi-head attention with any number of key/value heads (MHA, GQA, MQA), through PyTorch's SDPA.

GQA (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245): query head h reads key/value head
h // (heads / kv_heads). SDPA's `enable_gqa` does that without materialising repeated K/V.
"""

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.cache import LayerKVCache
from archspec.nn.norms import RMSNorm
from archspec.nn.rope import apply_rotary


class Attention(nn.Module):
    """q/k/v projections -> optional per-head qk RMSNorm -> RoPE -> SDPA -> output projection.

    `mask` is None for plain causal attention with the queries at the end of the keys: SDPA's is_causal fast path
    for a sequence attending to itself, and no mask at all for one query (a decoding step sees every key). Else a
    boolean or additive mask broadcastable to [batch, heads, queries, keys] (sliding windows, ALiBi, caches).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        bias: tuple[bool, bool, bool, bool] = (False, False, False, False),
        qk_norm_eps: float | None = None,
        scale: float | None = None,
        rope_interleaved: bool = False,
    ) -> None:
        super().__init__()
        q_bias, k_bias, v_bias, o_bias = bias
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.rope_interleaved = rope_interleaved
        self.q = nn.Linear(d_model, heads * head_dim, bias=q_bias)
        self.k = nn.Linear(d_model, kv_heads * head_dim, bias=k_bias)
        self.v = nn.Linear(d_model, kv_heads * head_dim, bias=v_bias)
        self.o = nn.Linear(heads * head_dim, d_model, bias=o_bias)
        self.q_norm: nn.Module | None = None
        self.k_norm: nn.Module | None = None
        if qk_norm_eps is not None:  # emit-if: qk_norm
            self.q_norm = RMSNorm(head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """An empty static cache for this layer's keys and values."""
        return LayerKVCache(batch, self.kv_heads, max_len, self.head_dim, dtype, device)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        # -1, not self.heads: under tensor parallelism each rank holds only its share of the heads.
        q = self.q(x).view(batch, seq, -1, self.head_dim)
        k = self.k(x).view(batch, seq, -1, self.head_dim)
        v = self.v(x).view(batch, seq, -1, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # emit-if: qk_norm
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:  # emit-if: rope
            cos, sin = rope
            q = apply_rotary(q, cos, sin, self.rope_interleaved)
            k = apply_rotary(k, cos, sin, self.rope_interleaved)
        if cache is not None and positions is not None:
            k, v = cache.update(positions, k, v)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=(mask is None) if seq > 1 else False,  # an `if`: seq is a SymInt when compiled dynamic
            scale=self.scale,
            enable_gqa=self.kv_heads != self.heads,
        )
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))
