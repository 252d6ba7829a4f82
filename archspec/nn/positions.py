"""Position schemes that are not rotary: ALiBi biases and learned absolute positions."""

import math

import torch


def alibi_slopes(heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022, https://arxiv.org/abs/2108.12409).

    For p = 2^floor(log2 heads): slopes b^1 .. b^p with b = 2^(-8/p). Head counts that are not powers of two
    take the odd powers 1, 3, 5, ... of 2^(-4/p) for the remaining heads (BLOOM's convention).
    """
    closest = 2 ** math.floor(math.log2(heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base**power for power in range(1, closest + 1)]
    if closest != heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base**power for power in range(1, 2 * (heads - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """bias[h, j] = slope_h * j, broadcast over queries: [heads, 1, keys].

    Softmax is shift-invariant per query row, so slope * j equals the paper's slope * (j - i); using the key
    position alone is what BLOOM computes, which keeps the logits bit-comparable.
    """
    return (slopes[:, None] * key_positions[None, :].float())[:, None, :]
