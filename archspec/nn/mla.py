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
from torch import nn

from archspec.nn.attend import AttentionFn
from archspec.nn.cache import LayerKVCache
from archspec.nn.positions import Context
from archspec.nn.rope import yarn_mscale


class LatentAttention(nn.Module):
    """MLA with the same call as `Attention`. Receives its projections ready-made: `q` [d_model -> heads * (nope +
    rope)], or the low-rank `q_down` -> `q_latent_norm` -> `q_up`; `kv_down` [d_model -> kv_rank + rope_dim],
    `kv_latent_norm`, `kv_up` [kv_rank -> heads * (nope + v_dim)] and `o` [heads * v_dim -> d_model]."""

    def __init__(
        self,
        heads: int,
        kv_rank: int,
        nope_dim: int,
        rope_dim: int,
        v_dim: int,
        kv_down: nn.Linear,
        kv_latent_norm: nn.Module,
        kv_up: nn.Linear,
        o: nn.Linear,
        q: nn.Linear | None = None,
        q_down: nn.Linear | None = None,
        q_latent_norm: nn.Module | None = None,
        q_up: nn.Linear | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.kv_rank = heads, kv_rank
        self.nope_dim, self.rope_dim, self.v_dim = nope_dim, rope_dim, v_dim
        self.scale = (nope_dim + rope_dim) ** -0.5 if scale is None else scale
        self.q, self.q_down, self.q_latent_norm, self.q_up = q, q_down, q_latent_norm, q_up
        self.kv_down, self.kv_latent_norm, self.kv_up, self.o = kv_down, kv_latent_norm, kv_up, o

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """One 'head' of width kv_rank (the latent) as keys and the shared rope key as values."""
        latent = torch.zeros(batch, 1, max_len, self.kv_rank, dtype=dtype, device=device)
        return LayerKVCache(latent, torch.zeros(batch, 1, max_len, self.rope_dim, dtype=dtype, device=device))

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
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
        q_rope, k_rope = context.rope(q_rope), context.rope(k_rope)
        if cache is not None:
            latent, k_rope = cache.update(context.positions, latent, k_rope, context.keys)
        keys_len = latent.shape[2]
        kv = self.kv_up(latent[:, 0]).view(batch, keys_len, -1, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, k_nope.shape[1], -1, -1)), dim=-1)
        out = attend(q, k, v, self.scale)
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


def latent_attention_scale(qk_dim: int, factor: float | None = None, mscale_all_dim: float | None = None) -> float:
    """DeepSeek's softmax scale: qk_dim^-0.5, times YaRN's temperature mscale(factor, mscale_all_dim) squared when
    the keys are YaRN-scaled with mscale_all_dim (it enters both q and k)."""
    scale = qk_dim**-0.5
    if factor is not None and mscale_all_dim:
        scale *= yarn_mscale(factor, mscale_all_dim) ** 2
    return scale
