"""Rotary position embedding (Su et al. 2021, https://arxiv.org/abs/2104.09864) and its context-extension scalings.

Each head's first `rotary_dim` dims rotate in pairs by angle `position * inv_freq[k]`; the rest pass through.
Two pairings exist: *half* pairs dim k with k + r/2 (GPT-NeoX, LLaMA in HF layout), *interleaved* pairs 2k with
2k+1 (GPT-J, GLM). The frequency functions below follow the formulas of each scaling's paper and are computed on
the CPU in float32 in the same order as the reference implementations, so the tables match bit for bit on every
device.
"""

import math
from functools import partial

import torch
from torch import nn

from archspec.nn.positions import Context, Rope


def rope_frequencies(rotary_dim: int, theta: float) -> torch.Tensor:
    """inv_freq[k] = theta^(-2k / rotary_dim), k = 0 .. rotary_dim/2 - 1."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponents)


def linear_scaled_frequencies(rotary_dim: int, theta: float, factor: float) -> torch.Tensor:
    """Position interpolation (Chen et al. 2023): every frequency divided by `factor`."""
    return rope_frequencies(rotary_dim, theta) / factor


def dynamic_ntk_theta(theta: float, factor: float, seq_len: int, context_length: int, rotary_dim: int) -> torch.Tensor:
    """Dynamic NTK: theta' = theta * (factor * L / L_max - (factor - 1)) ^ (d / (d - 2)) once L exceeds L_max.

    Evaluated in float32 (a 0-d tensor), as the reference does with the length as a tensor: in Python floats the
    base would differ by a float32 rounding, and some frequencies by one ulp.
    """
    length = torch.tensor(max(seq_len, context_length), dtype=torch.float32, device="cpu")
    return theta * ((factor * length / context_length) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))


def llama3_scaled_frequencies(
    rotary_dim: int, theta: float, factor: float, low_freq_factor: float, high_freq_factor: float, original_context: int
) -> torch.Tensor:
    """LLaMA 3.1: wavelengths above L0/low are divided by `factor`, below L0/high kept, smoothly blended between.

    With s = (L0 / wavelength - low) / (high - low): inv_freq = (1 - s) * inv_freq / factor + s * inv_freq.
    """
    inv_freq = rope_frequencies(rotary_dim, theta)
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = original_context / low_freq_factor
    high_freq_wavelength = original_context / high_freq_factor
    scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelength < high_freq_wavelength) * ~(wavelength > low_freq_wavelength)
    return torch.where(is_medium, smoothed, scaled)


def yarn_scaled_frequencies(
    rotary_dim: int,
    theta: float,
    factor: float,
    original_context: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> torch.Tensor:
    """YaRN (Peng et al. 2023, https://arxiv.org/abs/2309.00071): NTK-by-parts interpolation.

    Dims that rotate more than beta_fast times over L0 extrapolate (keep their frequency), dims that rotate fewer
    than beta_slow times interpolate (frequency / factor), with a linear ramp between. The correction dim of r
    rotations is d * ln(L0 / (2 pi r)) / (2 ln theta).
    """

    def correction_dim(rotations: float) -> float:
        return rotary_dim * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    position_freqs = theta ** (torch.arange(0, rotary_dim, 2, device="cpu").to(torch.float32) / rotary_dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * position_freqs)) * (1 - extrapolation) + (1.0 / position_freqs) * extrapolation


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(
    factor: float, mscale: float | None = None, mscale_all_dim: float | None = None, explicit: float | None = None
) -> float:
    """Multiplier of cos and sin: the explicit value, DeepSeek's mscale ratio, or yarn_mscale(factor)."""
    if explicit is not None:
        return explicit
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def longrope_frequencies(rotary_dim: int, theta: float, factors: tuple[float, ...]) -> torch.Tensor:
    """LongRoPE (Ding et al. 2024, https://arxiv.org/abs/2402.13753): inv_freq[k] = 1 / (factor[k] theta^(2k/r)),
    each frequency stretched by its own searched factor (Phi-3's short_factor / long_factor)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / rotary_dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32, device="cpu") * theta**exponents)


def longrope_attention_factor(context_length: int, original_context: int, explicit: float | None = None) -> float:
    """Multiplier of cos and sin: the explicit value, else sqrt(1 + ln(s) / ln(L0)), s = L / L0 (1 when s <= 1)."""
    if explicit is not None:
        return explicit
    factor = context_length / original_context
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_context))


class HalfPairs:
    """Dim k rotates with dim k + r/2 (GPT-NeoX; LLaMA in transformers' layout). A pairing lays the frequencies out
    over the rotated dims (`angles`) and turns each pair by 90 degrees: (x1, x2) -> (-x2, x1) (`rotated`)."""

    def angles(self, freqs: torch.Tensor) -> torch.Tensor:
        return torch.cat((freqs, freqs), dim=-1)

    def rotated(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class InterleavedPairs:
    """Dim 2k rotates with dim 2k + 1 (GPT-J, GLM, DeepSeek's MLA)."""

    def angles(self, freqs: torch.Tensor) -> torch.Tensor:
        return freqs.repeat_interleave(2, dim=-1)

    def rotated(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


Pairs = HalfPairs | InterleavedPairs  # which dims of a head rotate together


class RotaryEmbedding(nn.Module):
    """A call's `Rope`: angles position * inv_freq (float32, computed on the CPU), laid out for the pairing."""

    def __init__(
        self,
        inv_freq: torch.Tensor,
        pairing: Pairs,
        attention_factor: float = 1.0,  # emit-if: rope_attention_factor
        dynamic_ntk: tuple[float, float, int] | None = None,  # emit-if: dynamic_ntk
        long_inv_freq: torch.Tensor | None = None,  # emit-if: longrope
        original_context: int = 0,  # emit-if: longrope
    ) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device(), torch.float32), persistent=False)
        self.pairing = pairing
        self.attention_factor = attention_factor  # emit-if: rope_attention_factor
        self.dynamic_ntk = dynamic_ntk  # (theta, factor, context_length)  # emit-if: dynamic_ntk
        long_inv_freq = None if long_inv_freq is None else long_inv_freq.to(self.inv_freq)  # emit-if: longrope
        self.register_buffer("long_inv_freq", long_inv_freq, persistent=False)  # emit-if: longrope
        self.original_context = original_context  # LongRoPE's long factors past it  # emit-if: longrope

    def forward(self, context: Context) -> Rope:
        inv_freq = self.inv_freq
        if self.dynamic_ntk is not None and context.keys > self.dynamic_ntk[2]:  # emit-if: dynamic_ntk
            theta, factor, context_length = self.dynamic_ntk
            rotary_dim = 2 * inv_freq.shape[0]
            scaled_theta = dynamic_ntk_theta(theta, factor, context.keys, context_length, rotary_dim)
            inv_freq = rope_frequencies(rotary_dim, scaled_theta).to(inv_freq.device)
        if self.long_inv_freq is not None and context.keys > self.original_context:  # emit-if: longrope
            # LongRoPE: the long factors once the call's keys (cache included) exceed the pre-training context, as
            # transformers switches by the largest position id + 1; cached keys keep the table of their call
            inv_freq = self.long_inv_freq
        positions = context.positions if context.position_ids is None else context.position_ids  # [(rows,) queries]
        angles = self.pairing.angles(positions[..., None].float() * inv_freq)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:  # emit-if: rope_attention_factor
            # YaRN's temperature
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return partial(apply_rotary, cos=cos.to(context.dtype), sin=sin.to(context.dtype), pairing=self.pairing)


class LayerRotary(nn.Module):  # emit-if: layer_positions
    """Each layer's `Rope` where layers differ in positions (Gemma 3's local and global RoPE; NoPE layers, whose
    entry is None): one rotary per kind, each computed once per call."""

    def __init__(self, rotaries: list[RotaryEmbedding], of_layer: tuple[int | None, ...]) -> None:
        super().__init__()
        self.rotaries = nn.ModuleList(rotaries)
        self.of_layer = of_layer  # each layer's index into rotaries, None: no positions

    def forward(self, context: Context) -> list[Rope | None]:
        ropes = [rotary(context) for rotary in self.rotaries]
        return [None if index is None else ropes[index] for index in self.of_layer]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: Pairs) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x ([batch, heads, seq, head_dim]); cos/sin: [(batch,) seq, r]."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    if _rotates_part(cos.shape[-1], x.shape[-1]):  # emit-if: partial_rotary
        rotary_dim = cos.shape[-1]
        turned = x[..., :rotary_dim]
        return torch.cat((turned * cos + pairing.rotated(turned) * sin, x[..., rotary_dim:]), dim=-1)
    return x * cos + pairing.rotated(x) * sin


def _rotates_part(rotary_dim: int, head_dim: int) -> bool:  # emit-if: partial_rotary
    """Whether only part of each head rotates (a rotary fraction: GPT-NeoX, GLM, MLA's rope dims)."""
    if isinstance(rotary_dim, torch.fx.Proxy):  # emit-if: library
        return True  # a trace cannot tell: slice, which is exact either way
    return rotary_dim < head_dim
