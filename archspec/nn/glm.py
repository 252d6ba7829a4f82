"""GLM's prefix LM pieces: 2-D positions and their rotary table (Du et al. 2022, https://arxiv.org/abs/2103.10360).

GLM trains by blank infilling: part A (the corrupted text, here the *prefix*) is attended bidirectionally, part B
(the spans to generate) causally; the mask is `archspec.nn.masks.prefix_mask`. Each token carries two position
ids: its position in part A (a part-B token takes the position of the blank it fills, here the last prefix
position), and its position inside its span (0 in part A, 1, 2, ... in part B). ChatGLM-6B keeps these 2-D ids
with RoPE: half of each head rotates by the first id, the other half by the second.
"""

from functools import partial

import torch
from torch import nn

from archspec.nn.positions import Context, Rope
from archspec.nn.rope import HalfPairs, apply_rotary


def glm_positions(positions: torch.Tensor, prefix_lengths: torch.Tensor | None, batch: int) -> torch.Tensor:
    """[2, batch, seq] GLM position ids of token positions `positions` ([seq], or [batch, seq] per row) for
    prefixes of `prefix_lengths`.

    position id = min(i, P - 1) (part B sits at the last prefix position: ChatGLM's [gMASK]);
    block position id = max(i - P + 1, 0) (0 in part A, then 1, 2, ...). P = 0 counts as P = 1.
    """
    if prefix_lengths is None:
        prefix_lengths = torch.zeros(batch, dtype=torch.long, device=positions.device)
    last = (prefix_lengths.clamp(min=1) - 1)[:, None]
    positions = positions.expand(batch, -1)
    position_ids = torch.minimum(positions, last)
    block_ids = (positions - last).clamp(min=0)
    return torch.stack((position_ids, block_ids))


class BlockRotaryEmbedding(nn.Module):
    """The `Rope` of 2-D positions, half pairing: frequencies [0, r/4) turn with the position id, [r/4, r/2) with
    the block position id, each set being a full RoPE of width r/2 (inv_freq = theta^(-2k/(r/2))).

    In half pairing dim k rotates with dim k + r/2, so one head's layout is [pos-half a, block-half a, pos-half b,
    block-half b]. ChatGLM-6B stores [pos rope (r/2) | block rope (r/2)] per head instead: importing its q/k
    weights is a fixed permutation of rows within each head, which leaves q.k unchanged.
    """

    def __init__(self, inv_freq: torch.Tensor) -> None:
        super().__init__()
        inv_freq = inv_freq.to(torch.get_default_device(), torch.float32)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, context: Context) -> Rope:
        """The tables of the call's [rows, queries] 2-D positions (its prefixes: `glm_positions`)."""
        positions = context.positions if context.position_ids is None else context.position_ids  # [(rows,) seq]
        position_ids, block_ids = glm_positions(positions, context.prefix_lengths, context.rows)
        freqs = torch.cat(
            (position_ids[..., None].float() * self.inv_freq, block_ids[..., None].float() * self.inv_freq), -1
        )
        angles = HalfPairs().angles(freqs)
        cos, sin = angles.cos().to(context.dtype), angles.sin().to(context.dtype)
        return partial(apply_rotary, cos=cos, sin=sin, pairing=HalfPairs())
