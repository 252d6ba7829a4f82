"""The encoder-decoder language model (T5; Raffel et al. 2020, https://arxiv.org/abs/1910.10683).

```
input_ids ─ embed ─▶ [x = x + self_attn(n1(x))            (bidirectional, + encoder relative bias)
                      x = x + mlp(n2(x))] × n_layers ─ final_norm ─▶ encoder_output ─┐
                                                                                     │ keys/values, once
decoder_input_ids ─ embed ─▶ [x = x + self_attn(n1(x))    (causal, + decoder relative bias, KV cache)
                              x = x + cross_attn(n2(x), encoder_output)   (no position bias)
                              x = x + mlp(n3(x))] × n_decoder_layers ─ final_norm ─ (× d^-0.5) ─ head ─▶ logits
```
Each stack owns one relative-bias table; its bias is computed once per forward and shared by all of the stack's
layers. The embedding is shared by both stacks (and by the head when tied).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.attention import (
    FLEX_CPU_SHORTEST,
    Attention,
    FlexPattern,
    ToeplitzBias,
    causal_block_mask,
    distance_table,
    full_block_mask,
    relative_bias_score_mod,
)
from archspec.nn.cache import KVCache, LayerKVCache
from archspec.nn.masks import additive_mask, causal_mask
from archspec.nn.models import LMOutput
from archspec.nn.positions import RelativePositionBias


@dataclass
class EncoderDecoderOutput(LMOutput):
    """Decoder logits [batch, target, vocab], the loss when labels were given, and the encoder output."""

    encoder_output: torch.Tensor | None = None


class CrossAttention(Attention):
    """Attention of decoder positions over the encoder output: queries from x, keys/values from the encoder.

    The keys/values depend only on the encoder output, so generation projects them once (`project_kv`) and
    reuses them at every step. No positions, no causal mask: only the encoder's padding mask, if any.
    """

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output: [batch, kv_heads, source, head_dim] each."""
        batch, source, _ = memory.shape
        k = self.k(memory).view(batch, source, -1, self.head_dim).transpose(1, 2)
        v = self.v(memory).view(batch, source, -1, self.head_dim).transpose(1, 2)
        return k, v

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k, v = kv
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads
        )
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


class CrossAttentionBlock(nn.Module):
    """Pre-norm decoder block with cross-attention (T5):

    x = x + self_attn(n1(x)); x = x + cross_attn(n2(x), encoder); x = x + mlp(n3(x)).
    """

    def __init__(
        self,
        attn: Attention,
        cross_attn: CrossAttention,
        mlp: nn.Module,
        attn_norm: nn.Module,
        cross_norm: nn.Module,
        mlp_norm: nn.Module,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.cross_norm, self.cross_attn = cross_norm, cross_attn
        self.mlp_norm, self.mlp = mlp_norm, mlp

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerKVCache | None,
        positions: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), None, mask, cache, positions)
        x = x + self.cross_attn(self.cross_norm(x), cross_kv, cross_mask)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """The layers of one side (encoder or decoder), its relative-bias table and its final norm."""

    def __init__(self, layers: list[nn.Module], position_bias: nn.Module, final_norm: nn.Module) -> None:
        super().__init__()
        self.position_bias = position_bias
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm


class EncoderDecoderCache(KVCache):
    """The decoder's self-attention caches, plus the cross-attention keys/values of the encoder output."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        super().__init__(layers)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, 1, keys] additive mask of a 1/0 attention mask (0 = padding): the dtype's minimum where padded.

    A finite minimum (not -inf), as transformers uses, so a row of padding never divides by zero.
    """
    return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)


class EncoderDecoderLM(nn.Module):
    """An encoder-decoder LM. `model(input_ids, decoder_input_ids=...)` gives decoder logits; with `labels=` the
    decoder input defaults to the labels shifted right behind the decoder start token, and the loss is returned.

    `head_scale` multiplies the decoder output before the head (T5 v1.0: d_model^-0.5 with the tied head).
    `eos_token_id` / `pad_token_id` are generate()'s defaults (`archspec.build` passes the spec's `tokens`).

    On CPU each stack's relative bias reaches SDPA as a view of a [heads, 2 seq - 1] table by distance
    (`ToeplitzBias`; no [heads, seq, seq] tensor) for the encoder without padding mask and the decoder without
    cache, and as a tensor otherwise. `attn_backend` (an attribute) = "flex" computes it inside FlexAttention
    (`FlexPattern`) in those cases instead; flex is fused only under `torch.compile` and has no backward on CPU,
    where training and sequences under `FLEX_CPU_SHORTEST` tokens keep the default ("sdpa") path.
    """

    def __init__(
        self,
        embed: nn.Embedding,
        encoder: Stack,
        decoder: Stack,
        lm_head: nn.Linear,
        *,
        kv_heads: int,
        head_dim: int,
        decoder_start: int,
        head_scale: float | None = None,
        tied: bool = False,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.embed = embed
        self.encoder = encoder
        self.decoder = decoder
        self.lm_head = lm_head
        if tied:
            self.lm_head.weight = self.embed.weight
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.decoder_start = decoder_start
        self.head_scale = head_scale
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults
        self.attn_backend = attn_backend

    def _flex(self, device: torch.device, seq: int) -> bool:
        """Whether relative biases go through FlexAttention (see the class docstring and `flex_block_size`)."""
        cpu_flex = not torch.is_grad_enabled() and seq >= FLEX_CPU_SHORTEST
        return self.attn_backend == "flex" and (device.type != "cpu" or cpu_flex)

    @staticmethod
    def _score_mod(bias: RelativePositionBias) -> Callable[..., torch.Tensor]:
        return relative_bias_score_mod(bias.table.weight, bias.bidirectional, bias.buckets, bias.max_distance)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        encoder_output: torch.Tensor | None = None,
    ) -> EncoderDecoderOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("an encoder-decoder model needs decoder_input_ids (or labels to derive them from)")
            decoder_input_ids = self.shift_right(labels)
        if encoder_output is None:
            encoder_output = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, encoder_output, attention_mask=attention_mask, cache=cache)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return EncoderDecoderOutput(logits=logits, loss=loss, encoder_output=encoder_output)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing input: the decoder start token, then the labels but the last (-100 becomes 0)."""
        start = torch.full_like(labels[:, :1], self.decoder_start)
        return torch.cat((start, labels[:, :-1].clamp(min=0)), dim=1)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output [batch, source, d_model]; `attention_mask` (1 = token, 0 = padding) hides padded keys."""
        x = self.embed(input_ids)
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        mask: torch.Tensor | FlexPattern | ToeplitzBias
        if attention_mask is None and self._flex(x.device, seq):
            mask = FlexPattern(full_block_mask(seq, seq, x.device), self._score_mod(self.encoder.position_bias))
        elif attention_mask is None and x.device.type == "cpu":
            mask = ToeplitzBias(self.encoder.position_bias.by_distance(seq, seq).to(x.dtype))
        else:
            mask = self.encoder.position_bias(positions, positions).to(x.dtype)
            if attention_mask is not None:
                mask = mask + padding_bias(attention_mask, x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, None, mask, None, positions)
        return self.encoder.final_norm(x)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_output: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Decoder logits. With a cache, positions continue from `cache.length` and the cross-attention
        keys/values are projected on the first call and reused afterwards. `logits_to_keep` > 0: the logits of
        the last that many positions only (0: every position)."""
        seq = decoder_input_ids.shape[1]
        past = cache.length if cache is not None else 0
        device = decoder_input_ids.device
        positions = torch.arange(past, past + seq, device=device)
        key_positions = torch.arange(cache.max_len, device=device) if cache is not None else positions
        x = self.embed(decoder_input_ids)
        mask: torch.Tensor | FlexPattern | ToeplitzBias
        if cache is None and self._flex(x.device, seq):
            mask = FlexPattern(causal_block_mask(seq, seq, None, device), self._score_mod(self.decoder.position_bias))
        elif cache is None and device.type == "cpu":
            table = distance_table(self.decoder.position_bias.by_distance(seq, seq), True)
            mask = ToeplitzBias(table.to(x.dtype), causal=True)
        else:
            bias = self.decoder.position_bias(positions, key_positions)
            mask = additive_mask(causal_mask(positions, key_positions), bias, x.dtype)
        cross_mask = padding_bias(attention_mask, x.dtype) if attention_mask is not None else None
        if cache is not None and cache.cross is not None:
            cross_kv = cache.cross
        else:
            cross_kv = [layer.cross_attn.project_kv(encoder_output) for layer in self.decoder.layers]
            if cache is not None:
                cache.cross = cross_kv
        for index, layer in enumerate(self.decoder.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, mask, layer_cache, positions, cross_kv[index], cross_mask)
        if cache is not None:
            cache.length = past + seq
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        x = self.decoder.final_norm(x)
        if self.head_scale is not None:
            x = x * self.head_scale
        return self.lm_head(x)

    def new_cache(
        self, batch: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> EncoderDecoderCache:
        """An empty static cache of the decoder for `batch` sequences of up to `max_len` target positions."""
        reference = self.embed.weight
        layers = [
            LayerKVCache(
                batch, self.kv_heads, max_len, self.head_dim, dtype or reference.dtype, device or reference.device
            )
            for _ in self.decoder.layers
        ]
        return EncoderDecoderCache(layers)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        *,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor:
        """Run the encoder once, then decode greedily (by default) from the decoder start token with a KV cache.

        Returns the decoder sequences [batch, 1 + new] (start token first), as `transformers` does; the options are
        those of `archspec.nn.generate.generate`.
        """
        from archspec.nn.generate import generate

        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        encoder_output = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            decoder_input_ids = torch.full_like(input_ids[:, :1], self.decoder_start)
        step = _DecoderStep(self, encoder_output, attention_mask)
        return generate(step, decoder_input_ids, max_new_tokens, **options)  # type: ignore[arg-type]


class _DecoderStep:
    """The decoder over a fixed encoder output, shaped like a decoder LM for the decoding loop."""

    def __init__(self, model: EncoderDecoderLM, encoder_output: torch.Tensor, attention_mask: torch.Tensor | None):
        self.model, self.encoder_output, self.attention_mask = model, encoder_output, attention_mask

    def new_cache(self, batch: int, max_len: int) -> EncoderDecoderCache:
        return self.model.new_cache(batch, max_len)

    def __call__(
        self, decoder_input_ids: torch.Tensor, cache: EncoderDecoderCache | None = None, logits_to_keep: int = 0
    ) -> LMOutput:
        logits = self.model.decode(
            decoder_input_ids,
            self.encoder_output,
            attention_mask=self.attention_mask,
            cache=cache,
            logits_to_keep=logits_to_keep,
        )
        return LMOutput(logits=logits)
