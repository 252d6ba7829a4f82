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

from archspec.nn.attend import AttentionFn, MaskedAttention, ToeplitzBias, distance_table, unmasked_attention
from archspec.nn.attention import Attention
from archspec.nn.cache import EncoderDecoderCache, LayerKVCache
from archspec.nn.flex import FLEX_CPU_SHORTEST, FlexPattern, causal_block_mask, full_block_mask, relative_bias_score_mod
from archspec.nn.generate import generate
from archspec.nn.masks import additive_mask, causal, render
from archspec.nn.models import LMOutput
from archspec.nn.positions import Context, RelativePositionBias


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
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], attend: AttentionFn
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k, v = kv
        return self.o(attend(q, k, v, self.scale).transpose(1, 2).reshape(batch, seq, -1))


class CrossAttentionBlock(nn.Module):
    """Pre-norm decoder block with cross-attention (T5):

    x = x + self_attn(n1(x)); x = x + cross_attn(n2(x), encoder); x = x + mlp(n3(x)).
    """

    def __init__(
        self,
        attn_norm: nn.Module,
        attn: Attention,
        cross_norm: nn.Module,
        cross_attn: CrossAttention,
        mlp_norm: nn.Module,
        mlp: nn.Module,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.cross_norm, self.cross_attn = cross_norm, cross_attn
        self.mlp_norm, self.mlp = mlp_norm, mlp

    def forward(
        self,
        x: torch.Tensor,
        context: Context,
        attend: AttentionFn,
        cache: LayerKVCache | None,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_attend: AttentionFn,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), context, attend, cache)
        x = x + self.cross_attn(self.cross_norm(x), cross_kv, cross_attend)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """The layers of one side (encoder or decoder), its relative-bias table and its final norm."""

    def __init__(self, layers: list[nn.Module], position_bias: RelativePositionBias, final_norm: nn.Module) -> None:
        super().__init__()
        self.position_bias = position_bias
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, 1, keys] additive mask of a 1/0 attention mask (0 = padding): the dtype's minimum where padded.

    A finite minimum (not -inf), as transformers uses, so a row of padding never divides by zero.
    """
    return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min).to(dtype)


class EncoderDecoderLM(nn.Module):
    """An encoder-decoder LM. `model(input_ids, decoder_input_ids=...)` gives decoder logits; with `labels=` the
    decoder input defaults to the labels shifted right behind the decoder start token, and the loss is returned.

    `eos_token_id` / `pad_token_id` are generate()'s defaults (the spec's `tokens`).

    On CPU each stack's relative bias reaches SDPA as a view of a [heads, 2 seq - 1] table by distance
    (`ToeplitzBias`; no [heads, seq, seq] tensor) for the encoder without padding mask and the decoder without
    cache, and as a tensor otherwise.
    """

    def __init__(
        self,
        embed: nn.Embedding,
        encoder: Stack,
        decoder: Stack,
        lm_head: nn.Linear,
        decoder_start: int,
        head_scale: float | None = None,  # times the decoder output (T5 v1.0: d_model^-0.5)  # emit-if: head_scale
        tied: bool = False,  # emit-if: library
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.encoder = encoder
        self.decoder = decoder
        self.lm_head = lm_head
        if tied:  # emit-when: tied
            self.lm_head.weight = self.embed.weight
        self.decoder_start = decoder_start
        self.head_scale = head_scale  # emit-if: head_scale
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults
        self.attn_backend = "sdpa"  # emit-if: library

    def _flex(self, device: torch.device, seq: int) -> bool:  # emit-if: library
        """Whether relative biases go through FlexAttention (`attn_backend = "flex"`): fused only under
        torch.compile, and on CPU forward-only and for sequences of at least FLEX_CPU_SHORTEST tokens."""
        cpu_flex = not torch.is_grad_enabled() and seq >= FLEX_CPU_SHORTEST
        return self.attn_backend == "flex" and (device.type != "cpu" or cpu_flex)

    @staticmethod  # emit-if: library
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
        context = Context(torch.arange(seq, device=input_ids.device), seq, rows=input_ids.shape[0])
        bias = self.encoder.position_bias
        attend: AttentionFn
        if attention_mask is None and x.device.type == "cpu":
            attend = ToeplitzBias(bias.by_distance(seq, seq).to(x.dtype))
        else:
            mask = bias(context.positions, context.positions).to(x.dtype)
            if attention_mask is not None:
                mask = mask + padding_bias(attention_mask, x.dtype)
            attend = MaskedAttention(mask)
        if attention_mask is None and self._flex(x.device, seq):  # emit-if: library
            attend = FlexPattern(full_block_mask(seq, seq, x.device), self._score_mod(bias))
        for layer in self.encoder.layers:
            x = layer(x, context, attend)
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
        keys = cache.max_len if cache is not None else seq
        x = self.embed(decoder_input_ids)
        context = Context(positions, keys, rows=decoder_input_ids.shape[0])  # keys: the whole static cache
        bias = self.decoder.position_bias
        attend: AttentionFn
        if cache is None and device.type == "cpu":
            attend = ToeplitzBias(distance_table(bias.by_distance(seq, seq), True).to(x.dtype), causal=True)
        else:
            key_positions = torch.arange(keys, device=device)
            attend = MaskedAttention(additive_mask(render(causal, context), bias(positions, key_positions), x.dtype))
        if cache is None and self._flex(x.device, seq):  # emit-if: library
            attend = FlexPattern(causal_block_mask(seq, seq, None, device), self._score_mod(bias))
        cross_attend = unmasked_attention
        if attention_mask is not None:
            cross_attend = MaskedAttention(padding_bias(attention_mask, x.dtype))
        if cache is not None and cache.cross is not None:
            cross_kv = cache.cross
        else:
            cross_kv = [layer.cross_attn.project_kv(encoder_output) for layer in self.decoder.layers]
            if cache is not None:
                cache.cross = cross_kv
        for index, layer in enumerate(self.decoder.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, context, attend, layer_cache, cross_kv[index], cross_attend)
        if cache is not None:
            cache.length = past + seq
        if logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        x = self.decoder.final_norm(x)
        if self.head_scale is not None:  # emit-when: head_scale
            x = x * self.head_scale
        return self.lm_head(x)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> EncoderDecoderCache:
        """An empty static cache of the decoder for `batch` sequences of up to `max_len` target positions."""
        weight = self.embed.weight
        dtype, layers = dtype or weight.dtype, self.decoder.layers
        return EncoderDecoderCache([layer.attn.new_cache(batch, max_len, dtype, weight.device) for layer in layers])

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
        those of `generate`.
        """
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
