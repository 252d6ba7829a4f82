"""Multi-head Latent Attention (DeepSeek-V2, https://arxiv.org/abs/2405.04434).

Keys and values are up-projected from one compressed latent per token (width kv_rank); only the RoPE part of
the key (rope_dim, shared by all heads) carries position. The KV cache therefore stores the latent and that one
rope key per token: kv_rank + rope_dim numbers instead of 2 * heads * head_dim.

```
x -> q_down -> q_latent_norm -> q_up -> [q_nope | q_rope] per head         (or a plain q when q_rank is None)
x -> kv_down -> [latent | k_rope]; latent -> kv_latent_norm -> kv_up -> [k_nope | v] per head
scores = [q_nope | rope(q_rope)] . [k_nope | rope(k_rope)] * scale
```
"""

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.attention import _is_pattern, _several_queries
from archspec.nn.cache import LayerKVCache
from archspec.nn.norms import RMSNorm
from archspec.nn.rope import apply_rotary


class LatentAttention(nn.Module):
    """MLA with the same call signature as `Attention`; RoPE pairs are interleaved (DeepSeek's layout)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        q_rank: int | None,
        kv_rank: int,
        nope_dim: int,
        rope_dim: int,
        v_dim: int,
        bias: bool = False,
        latent_norm_eps: float = 1e-6,
        scale: float | None = None,
        rope_interleaved: bool = True,
    ) -> None:
        super().__init__()
        self.heads, self.kv_rank = heads, kv_rank
        self.nope_dim, self.rope_dim, self.v_dim = nope_dim, rope_dim, v_dim
        self.scale = (nope_dim + rope_dim) ** -0.5 if scale is None else scale
        self.rope_interleaved = rope_interleaved
        q_width = heads * (nope_dim + rope_dim)
        self.q: nn.Linear | None = None
        self.q_down: nn.Linear | None = None
        self.q_latent_norm: RMSNorm | None = None
        self.q_up: nn.Linear | None = None
        if q_rank is None:
            self.q = nn.Linear(d_model, q_width, bias=False)
        else:
            self.q_down = nn.Linear(d_model, q_rank, bias=bias)
            self.q_latent_norm = RMSNorm(q_rank, latent_norm_eps)
            self.q_up = nn.Linear(q_rank, q_width, bias=False)
        self.kv_down = nn.Linear(d_model, kv_rank + rope_dim, bias=bias)
        self.kv_latent_norm = RMSNorm(kv_rank, latent_norm_eps)
        self.kv_up = nn.Linear(kv_rank, heads * (nope_dim + v_dim), bias=False)
        self.o = nn.Linear(heads * v_dim, d_model, bias=bias)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """One 'head' of width kv_rank (the latent) as keys and the shared rope key as values."""
        return LayerKVCache(batch, 1, max_len, self.kv_rank, dtype, device, value_dim=self.rope_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        if self.q is not None:
            q = self.q(x)
        else:
            q = self.q_up(self.q_latent_norm(self.q_down(x)))  # type: ignore[misc]
        q = q.view(batch, seq, -1, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], dim=-1)
        latent = self.kv_latent_norm(latent)[:, None]  # [batch, 1, seq, kv_rank]
        k_rope = k_rope[:, None]  # [batch, 1, seq, rope_dim]: one rope key shared by the heads
        if rope is not None:
            cos, sin = rope
            q_rope = apply_rotary(q_rope, cos, sin, self.rope_interleaved)
            k_rope = apply_rotary(k_rope, cos, sin, self.rope_interleaved)
        if cache is not None and positions is not None:
            latent, k_rope = cache.update(positions, latent, k_rope)
        keys_len = latent.shape[2]
        kv = self.kv_up(latent[:, 0]).view(batch, keys_len, -1, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, k_nope.shape[1], -1, -1)), dim=-1)
        if _is_pattern(mask):  # a pattern that computes attention itself (see archspec.nn.attention)
            out = mask(q, k, v, self.scale)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and _several_queries(seq), scale=self.scale
            )
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))
