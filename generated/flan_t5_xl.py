"""flan-t5-xl: a stand-alone PyTorch model emitted by archspec from this spec. Generated: do not edit by hand.

    name: flan-t5-xl
    description: Flan-T5-XL (2.85B; T5 v1.1 layout); numbers from config.json of google/flan-t5-xl.
    structure: encoder-decoder
    vocab_size: 32128
    d_model: 2048
    n_layers: 24
    n_decoder_layers: 24
    context_length: 512
    attention: {heads: 32, kv_heads: 32, head_dim: 64, scale: 1.0}
    position: {kind: relative-bias}
    norm: {eps: 1.0e-06, bias: false}
    mlp: {activation: geglu-tanh, d_ff: 5120}
    tokens: {eos: 1, pad: 0, decoder_start: 0}

Only torch and the standard library are imported. The weights start as archspec's build sets them (the same for
the same torch seed), and a state dict saved from an archspec model loads as it is:

    model = FlanT5Xl()
    model.load_state_dict(torch.load("flan_t5_xl.pt"))
    logits = model(input_ids, decoder_input_ids=decoder_input_ids).logits
    tokens = model.generate(input_ids, max_new_tokens=20)  # the decoder's tokens
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (b, h, q, kv) -> seen
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]  # attend(q, k, v, scale)
Activation = Callable[[torch.Tensor], torch.Tensor]  # elementwise: F.silu, F.gelu, ...


# ------------------------------------------------------------------------------------------------ norms and activations
class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps) in at least float32, cast back *before* the weight multiply (LLaMA's order)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least: float64 is not rounded
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(x.dtype)


# ------------------------------------------------------------------------------------------------------------ positions
@dataclass
class Context:
    """One call as every layer sees it: `rows` sequences' queries at cache slots `positions` over the keys in slots
    0 .. keys - 1; padded or packed rows add `key_mask` (False: padding), `documents` and their `position_ids`."""

    positions: torch.Tensor
    keys: int
    rows: int = 1


def relative_position_buckets(
    relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each relative distance `relative = key - query` (Raffel et al. 2020, section 2.1).

    Bidirectional (encoder): half the buckets are for keys after the query. Causal (decoder): only
    n = max(query - key, 0) counts (later keys fall in bucket 0 and are masked anyway). Distances below
    me = buckets / 2 get a bucket each; larger ones share logarithmically wider buckets up to `max_distance`:
    me + trunc(ln(n / me) / ln(max_distance / me) * (buckets - me)), capped at buckets - 1.
    """
    offset = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        offset = (relative > 0).to(torch.long) * buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    max_exact = buckets // 2
    scaled = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (buckets - max_exact)
    large = (max_exact + scaled.to(torch.long)).clamp(max=buckets - 1)
    return offset + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(torch.nn.Module):
    """T5's learned bias per head and distance bucket, added to the attention scores: [heads, queries, keys].

    `table`: [buckets, heads]. One table per stack; the bias it gives is computed once per forward and shared by
    every layer of the stack.
    """

    def __init__(self, table: torch.nn.Embedding, max_distance: int, bidirectional: bool) -> None:
        super().__init__()
        self.buckets, self.max_distance, self.bidirectional = table.num_embeddings, max_distance, bidirectional
        self.table = table

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        relative = key_positions[None, :] - query_positions[:, None]
        bucket = relative_position_buckets(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.table(bucket).permute(2, 0, 1)

    def by_distance(self, queries: int, keys: int) -> torch.Tensor:
        """The same bias indexed by distance, [heads, queries + keys - 1]: entry key - query + queries - 1 holds the
        bias of queries at 0 .. queries-1 and keys at 0 .. keys-1. O(heads x seq) instead of [heads, q, k]."""
        relative = torch.arange(1 - queries, keys, device=self.table.weight.device)
        bucket = relative_position_buckets(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.table(bucket).T


# ------------------------------------------------------------------------------------------------------------ attention
def causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """A query sees itself and the keys before it."""
    return kv <= q


def render(mod: MaskMod, context: Context, start: int = 0, end: int | None = None) -> torch.Tensor:
    """The predicate over the call's [rows or 1, 1, queries, keys] grid: SDPA's boolean mask (True: may attend);
    `start`, `end`: of the queries start .. end - 1 only."""
    device = context.positions.device
    b = torch.arange(context.rows, device=device)[:, None, None, None]
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    q = context.positions[start:end][None, None, :, None]
    kv = torch.arange(context.keys, device=device)[None, None, None, :]
    visible = mod(b, h, q, kv)  # batch 1 unless a predicate reads the row; 4-D: CPU SDPA is slow with 2-D masks
    return visible.expand(visible.shape[0], 1, q.shape[2], context.keys)


def additive_mask(allowed: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask plus an optional float bias ([heads, q, k]) as one float mask for SDPA (-inf where masked)."""
    masked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
    return masked if bias is None else bias.to(dtype) + masked


def unmasked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Every query sees every key (an encoder, cross-attention, a vision tower)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


class MaskedAttention:
    """SDPA with a mask broadcastable to [batch, heads, queries, keys]: boolean (True = may attend) or additive."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale, enable_gqa=gqa)


class ToeplitzBias:
    """Attention of a whole sequence with an additive bias that depends on key - query only.

    `table` [heads, 2 seq - 1] holds the bias of distance key - query at index key - query + seq - 1 (-inf where
    masked). With the queries in reverse order, q' = seq - 1 - q, the bias of (q', k) is table[q' + k]: a Hankel
    pattern, which a view with strides (1, 1) over the table expresses without copying. SDPA's CPU kernel reads
    the mask through its strides, so the [heads, seq, seq] bias is never built; each query row is computed as
    with the materialised bias (the keys keep their order), and the rows are put back in order.

    `causal` (keys after the query are -inf in the table): the queries go in chunks of `chunk`, each over the keys
    it can see only, so the hidden half of the score matrix is not computed. Each chunk is an ordinary SDPA call:
    differentiable.
    """

    def __init__(self, table: torch.Tensor, causal: bool = False, chunk: int = 384) -> None:
        self.table = table.contiguous()
        self.causal, self.chunk = causal, chunk

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        heads, width = self.table.shape
        seq = q.shape[2]
        gqa = k.shape[1] != q.shape[1]
        # One call over every key when compiling (a loop over chunks would make the graph depend on the length).
        chunked = self.causal and not torch.compiler.is_compiling()
        outs = []
        for start in range(0, seq, self.chunk) if chunked else [0]:
            end = min(start + self.chunk, seq) if chunked else seq
            first = 0
            # bias of reversed query q' (query end - 1 - q') and key first + j: table[seq - end + first + q' + j]
            bias = self.table.as_strided(
                (1, heads, end - start, end - first), (heads * width, width, 1, 1), seq - end + first
            )
            out = F.scaled_dot_product_attention(
                q[:, :, start:end].flip(2),
                k[:, :, first:end],
                v[:, :, first:end],
                attn_mask=bias,
                scale=scale,
                enable_gqa=gqa,
            )
            outs.append(out.flip(2))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def distance_table(bias: torch.Tensor, causal: bool) -> torch.Tensor:
    """A [heads, 2 seq - 1] bias by distance (index key - query + seq - 1) with -inf where causal attention hides
    the key."""
    seq = (bias.shape[-1] + 1) // 2
    distance = torch.arange(1 - seq, seq, device=bias.device)
    hidden = distance > 0 if causal else torch.zeros_like(distance, dtype=torch.bool)
    return bias.masked_fill(hidden, float("-inf"))


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
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.q, self.k, self.v, self.o = q, k, v, o

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """An empty static cache for this layer's keys and values."""
        keys = torch.zeros(batch, self.kv_heads, max_len, self.head_dim, dtype=dtype, device=device)
        return LayerKVCache(keys, torch.zeros_like(keys))

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(batch, seq, -1, self.head_dim)  # -1: under tensor parallelism a rank has its share
        k = k.view(batch, seq, -1, self.head_dim)
        v = v.view(batch, seq, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(context.positions, k, v, context.keys)
        out = attend(q, k, v, self.scale)
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


# --------------------------------------------------------------------------------------------------------- feed-forward
class GatedMLP(nn.Module):
    """down(act(gate x) * up x): SwiGLU (LLaMA), GeGLU (T5 v1.1), ReGLU."""

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear, activation: Activation) -> None:
        super().__init__()
        self.gate, self.up, self.down, self.activation = gate, up, down, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.gate(x)) * self.up(x))


# --------------------------------------------------------------------------------------------------------------- blocks
class PreNormBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn_norm: nn.Module, attn: nn.Module, mlp_norm: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.mlp_norm, self.mlp = mlp_norm, mlp

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.attn(h, context, attend, cache)
        h = self.mlp_norm(x)
        out = self.mlp(h)
        return x + out


# ------------------------------------------------------------------------------------------------------- language model
@dataclass
class LMOutput:
    """What a forward pass returns: logits [batch, seq, vocab], and the loss when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


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
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.encoder = encoder
        self.decoder = decoder
        self.lm_head = lm_head
        self.decoder_start = decoder_start
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults

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


# ----------------------------------------------------------------------------------------------------------- generation
class LayerKVCache:
    """Keys and values of one attention layer, [batch, kv_heads, max_len, head_dim] each (zeros to begin with)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(
        self, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values at `positions` ([seq]); return the first `visible` slots."""
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        if visible == keys.shape[2]:  # only the new ones: the same numbers, without a strided read
            return keys, values
        return self.keys[:, :, :visible], self.values[:, :, :visible]


class KVCache:
    """The caches of every layer plus how many positions have been written."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.layers, self.length = layers, 0

    @property
    def max_len(self) -> int:
        return self.layers[0].keys.shape[2]


class EncoderDecoderCache(KVCache):
    """The decoder's self-attention caches, plus the cross-attention keys/values of the encoder output."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        super().__init__(layers)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int = 20,
    *,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    **model_inputs: torch.Tensor,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each row of `input_ids` ([batch, seq]); return [batch, seq + n]. Rows
    past `eos_token_id` get `pad_token_id` (or eos), as in `transformers`; `model_inputs` go to every forward.
    `attention_mask` [batch, seq] (0: padding): prompts of different lengths, left-padded; each row's positions
    count its own tokens (as transformers' generate computes them) and its pads stay hidden at every step."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    batch, seq = input_ids.shape
    total = seq + max_new_tokens
    stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    stop = torch.tensor(stops, dtype=torch.long, device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(stop[0]) if len(stop) else 0)
    cache = model.new_cache(batch, total)  # type: ignore[operator]
    tokens = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    prompt = dict(model_inputs)
    # Only the last position's logits are needed (`logits_to_keep=1`): the head is not run over the whole prompt.
    logits = model(input_ids, cache=cache, logits_to_keep=1, **prompt).logits[:, -1]
    for step in range(max_new_tokens):
        next_token = sample(logits, temperature, top_k, top_p, generator) if do_sample else logits.argmax(dim=-1)
        if len(stop):
            next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
            finished = finished | torch.isin(next_token, stop)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
        if step == max_new_tokens - 1 or (len(stop) and bool(finished.all())):
            break
        inputs = dict(model_inputs)
        logits = model(next_token[:, None], cache=cache, logits_to_keep=1, **inputs).logits[:, -1]
    return tokens


def sample(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row drawn from softmax(logits / temperature), restricted to the top-k and the top-p mass."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------------------------- initialisation
@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2's initialisation: N(0, std) for every matrix and embedding; biases stay 0 and norm weights 1."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)


# ------------------------------------------------------------------------------------------------------------ the model
def make_encoder_block() -> nn.Module:
    """One PreNormBlock block; the encoder stacks 24 of them."""
    return PreNormBlock(
        attn_norm=RMSNorm(2048, eps=1e-06),
        attn=Attention(
            heads=32,
            kv_heads=32,
            head_dim=64,
            q=nn.Linear(2048, 2048, bias=False),
            k=nn.Linear(2048, 2048, bias=False),
            v=nn.Linear(2048, 2048, bias=False),
            o=nn.Linear(2048, 2048, bias=False),
            scale=1.0,
        ),
        mlp_norm=RMSNorm(2048, eps=1e-06),
        mlp=GatedMLP(
            gate=nn.Linear(2048, 5120, bias=False),
            up=nn.Linear(2048, 5120, bias=False),
            down=nn.Linear(5120, 2048, bias=False),
            activation=partial(F.gelu, approximate="tanh"),
        ),
    )


def make_decoder_block() -> nn.Module:
    """One CrossAttentionBlock block; the decoder stacks 24 of them."""
    return CrossAttentionBlock(
        attn_norm=RMSNorm(2048, eps=1e-06),
        attn=Attention(
            heads=32,
            kv_heads=32,
            head_dim=64,
            q=nn.Linear(2048, 2048, bias=False),
            k=nn.Linear(2048, 2048, bias=False),
            v=nn.Linear(2048, 2048, bias=False),
            o=nn.Linear(2048, 2048, bias=False),
            scale=1.0,
        ),
        cross_norm=RMSNorm(2048, eps=1e-06),
        cross_attn=CrossAttention(
            heads=32,
            kv_heads=32,
            head_dim=64,
            q=nn.Linear(2048, 2048, bias=False),
            k=nn.Linear(2048, 2048, bias=False),
            v=nn.Linear(2048, 2048, bias=False),
            o=nn.Linear(2048, 2048, bias=False),
            scale=1.0,
        ),
        mlp_norm=RMSNorm(2048, eps=1e-06),
        mlp=GatedMLP(
            gate=nn.Linear(2048, 5120, bias=False),
            up=nn.Linear(2048, 5120, bias=False),
            down=nn.Linear(5120, 2048, bias=False),
            activation=partial(F.gelu, approximate="tanh"),
        ),
    )


class FlanT5Xl(EncoderDecoderLM):
    """The flan-t5-xl model, starting from the weights archspec builds it with."""

    def __init__(self) -> None:
        super().__init__(
            embed=nn.Embedding(32128, 2048),
            encoder=Stack(
                layers=[make_encoder_block() for _ in range(24)],
                position_bias=RelativePositionBias(table=nn.Embedding(32, 32), max_distance=128, bidirectional=True),
                final_norm=RMSNorm(2048, eps=1e-06),
            ),
            decoder=Stack(
                layers=[make_decoder_block() for _ in range(24)],
                position_bias=RelativePositionBias(table=nn.Embedding(32, 32), max_distance=128, bidirectional=False),
                final_norm=RMSNorm(2048, eps=1e-06),
            ),
            lm_head=nn.Linear(2048, 32128, bias=False),
            decoder_start=0,
            eos_token_id=1,
            pad_token_id=0,
        )
        init_weights(self)


Model = FlanT5Xl  # this file's model under a fixed name
