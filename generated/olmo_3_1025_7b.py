"""olmo-3-1025-7b: a stand-alone PyTorch model emitted by archspec from this spec. Generated: do not edit by hand.

    name: olmo-3-1025-7b
    description: OLMo 3 7B (3 sliding layers of 4096 per full layer, norms on the sublayer outputs, qk-norm over the projections);
      allenai/Olmo-3-1025-7B.
    vocab_size: 100278
    d_model: 4096
    n_layers: 32
    context_length: 65536
    attention:
      heads: 32
      kv_heads: 32
      head_dim: 128
      qk_norm: {over: projection}
    position: {kind: rope, theta: 500000.0}
    norm: {eps: 1.0e-06, bias: false}
    block: {kind: output-norm}
    layers:
      kinds:
        sliding: {window: 4096}
        full: {}
      pattern:
      - sliding
      - sliding
      - sliding
      - full
    mlp: {activation: swiglu, d_ff: 11008}
    tokens: {eos: 100257, pad: 100277}

Only torch and the standard library are imported. The weights start as archspec's build sets them (the same for
the same torch seed), and a state dict saved from an archspec model loads as it is:

    model = Olmo3_1025_7b()
    model.load_state_dict(torch.load("olmo_3_1025_7b.pt"))
    logits = model(input_ids).logits
    loss = model(input_ids, labels=input_ids).loss
    tokens = model.generate(input_ids, max_new_tokens=20)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import and_masks

Rope = Callable[[torch.Tensor], torch.Tensor]  # turns q or k [batch, heads, queries, head_dim] by their positions
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
    dtype: torch.dtype = torch.float32  # the activations' (of RoPE tables and biases)
    rope: Rope | None = None
    key_mask: torch.Tensor | None = None  # [rows, keys] bool
    documents: torch.Tensor | None = None  # [rows, keys]
    position_ids: torch.Tensor | None = None


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[rows, n] positions of a padding mask (1: token): each row counts its tokens from 0, pads at 0 (as
    transformers' generate and BLOOM's ALiBi do)."""
    mask = mask.long()
    return (mask.cumsum(-1) - 1) * mask


def packed_documents(position_ids: torch.Tensor) -> torch.Tensor | None:
    """[rows, seq] document of each token where positions restart (not the previous + 1: as transformers detects
    packing); None when every row is one document (checked eagerly; a compiled graph always gets them)."""
    first = position_ids[:, :1] - 1
    documents = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    if not torch.compiler.is_compiling() and not bool(documents[:, -1].any()):
        return None
    return documents


def rope_frequencies(rotary_dim: int, theta: float) -> torch.Tensor:
    """inv_freq[k] = theta^(-2k / rotary_dim), k = 0 .. rotary_dim/2 - 1."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponents)


class HalfPairs:
    """Dim k rotates with dim k + r/2 (GPT-NeoX; LLaMA in transformers' layout). A pairing lays the frequencies out
    over the rotated dims (`angles`) and turns each pair by 90 degrees: (x1, x2) -> (-x2, x1) (`rotated`)."""

    def angles(self, freqs: torch.Tensor) -> torch.Tensor:
        return torch.cat((freqs, freqs), dim=-1)

    def rotated(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """A call's `Rope`: angles position * inv_freq (float32, computed on the CPU), laid out for the pairing."""

    def __init__(self, inv_freq: torch.Tensor, pairing: HalfPairs) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device(), torch.float32), persistent=False)
        self.pairing = pairing

    def forward(self, context: Context) -> Rope:
        inv_freq = self.inv_freq
        positions = context.positions if context.position_ids is None else context.position_ids  # [(rows,) queries]
        angles = self.pairing.angles(positions[..., None].float() * inv_freq)
        cos, sin = angles.cos(), angles.sin()
        return partial(apply_rotary, cos=cos.to(context.dtype), sin=sin.to(context.dtype), pairing=self.pairing)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: HalfPairs) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x ([batch, heads, seq, head_dim]); cos/sin: [(batch,) seq, r]."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    return x * cos + pairing.rotated(x) * sin


# ------------------------------------------------------------------------------------------------------------ attention
def causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """A query sees itself and the keys before it."""
    return kv <= q


def sliding_window(window: int) -> MaskMod:
    """A query sees the keys less than `window` positions back: itself and the window - 1 before (Mistral)."""

    def within(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return q - kv < window

    return within


def padding(key_mask: torch.Tensor) -> MaskMod:
    """Row b's padded keys (key_mask[b, kv] False) are hidden; a query still sees its own slot, so that a padded
    query's softmax has a key (its output is never read)."""

    def real(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return key_mask[b, kv] | (kv == q)

    return real


def same_document(documents: torch.Tensor) -> MaskMod:
    """Packed rows: a query sees only the keys of its own document (documents[b, slot]: the document index)."""

    def same(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return documents[b, q] == documents[b, kv]

    return same


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


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries at the end of the keys: SDPA's is_causal for a sequence attending to itself, no mask for one query."""
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=_several(q.shape[2]), scale=scale, enable_gqa=gqa)


def _several(queries: int) -> bool:
    """A function: `queries` is a SymInt when compiled dynamic (a Proxy in an fx trace, of several queries)."""
    return True if queries > 1 else False  # noqa: SIM210 (an `if`, which dynamo specialises, not bool(SymInt))


class MaskedAttention:
    """SDPA with a mask broadcastable to [batch, heads, queries, keys]: boolean (True = may attend) or additive."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale, enable_gqa=gqa)


class ChunkedWindow:
    """Causal sliding-window attention of a whole sequence (queries = keys = positions 0 .. seq-1), work ~ seq x
    window instead of seq^2 / 2, and no [seq, seq] mask.

    The first `window` queries see every earlier key: one causal SDPA call. Later queries go in chunks of `chunk`:
    the chunk starting at s sees keys s - window + 1 .. s + chunk - 1, and its query j sees keys j .. j + window - 1
    of that span. The pattern depends on key - query only, so one [chunk, chunk + window - 1] mask serves every
    chunk, and the overlapping key spans are one `unfold` view of the keys with the chunks as heads: a single SDPA
    call covers them all without copying a key. Differentiable (SDPA and unfold have gradients). Query heads that
    share a key/value head (GQA) are stacked along the queries of their chunk, so each key is read once per group.

    `chunk` trades wasted scores (chunk - 1 per query) against per-chunk overhead; by default 64 queries for
    inference and 256 with gradients (measured on CPU at window 1024: the backward pays more per chunk).
    """

    def __init__(self, window: int, chunk: int | None = None) -> None:
        if window < 1:
            raise ValueError(f"ChunkedWindow needs a window of at least 1 key, got {window}")
        self.window, self.chunk = window, chunk

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        seq, window = q.shape[2], self.window
        head = min(window, seq)
        parts = [
            F.scaled_dot_product_attention(
                q[:, :, :head],
                k[:, :, :head],
                v[:, :, :head],
                is_causal=True,
                scale=scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )
        ]
        chunk = self.chunk or max(16, min(256, window // 4) if q.requires_grad else min(64, window // 16))
        full = (seq - head) // chunk
        if full:
            parts.append(self._chunks(q, k, v, scale, head, chunk, full))
        if head + full * chunk < seq:
            parts.append(self._chunks(q, k, v, scale, head + full * chunk, seq - head - full * chunk, 1))
        return torch.cat(parts, dim=2)

    def _chunks(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: int, chunk: int, count: int
    ) -> torch.Tensor:
        """Queries start .. start + count * chunk (start >= window) in `count` chunks of `chunk`."""
        batch, heads, _, dim = q.shape
        kv_heads, span = k.shape[1], chunk + self.window - 1
        group = heads // kv_heads
        first = start - self.window + 1  # the oldest key of the first chunk

        def spans(x: torch.Tensor) -> torch.Tensor:  # [b, kv_heads, seq, d] -> [b * kv_heads, count, span, d], a view
            x = x[:, :, first : first + (count - 1) * chunk + span].reshape(batch * kv_heads, -1, dim)
            return x.unfold(1, span, chunk).transpose(-1, -2)

        # [b, kv_heads * group, count * chunk, d] -> [b * kv_heads, count, group * chunk, d]: a chunk's queries of
        # the heads that read the same keys, one after the other
        queries = q[:, :, start : start + count * chunk].reshape(batch, kv_heads, group, count, chunk, dim)
        queries = queries.permute(0, 1, 3, 2, 4, 5).reshape(batch * kv_heads, count, group * chunk, dim)
        query = torch.arange(chunk, device=q.device)[:, None]
        key = torch.arange(span, device=q.device)
        visible = (key >= query) & (key < query + self.window)
        out = F.scaled_dot_product_attention(
            queries, spans(k), spans(v), attn_mask=visible.repeat(group, 1), scale=scale
        )
        out = out.reshape(batch, kv_heads, count, group, chunk, dim).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, heads, count * chunk, dim)


class AttentionPaths(nn.Module):
    """Each layer's causal attention function for one call, as its pattern and the call allow (alike layers share)."""

    def __init__(
        self,
        windows: tuple[int | None, ...] = (),  # each layer's sliding window, None: full
    ) -> None:
        super().__init__()
        self.windows = windows

    def forward(self, context: Context) -> list[AttentionFn]:
        made = {window: self._function(context, window) for window in set(self.windows)}
        return [made[window] for window in self.windows]

    def _function(self, context: Context, window: int | None = None) -> AttentionFn:
        seq, keys = context.positions.shape[0], context.keys
        whole = seq == keys  # a sequence attending to itself: queries = keys = positions 0 .. seq - 1
        if context.key_mask is not None or context.documents is not None:
            mask = self._mask(  # padded keys or packed documents: a mask per row
                context,
                window,
            )
            return MaskedAttention(mask)
        if window is not None and window < keys:
            return self._windowed(context, window, whole)
        if whole or seq == 1:
            return causal_attention
        return MaskedAttention(self._mask(context))

    def _windowed(self, context: Context, window: int, whole: bool) -> AttentionFn:
        """A sliding window shorter than the keys. A whole sequence on CPU needs no [seq, seq] mask: chunks of
        queries over their own spans of keys (`ChunkedWindow`), or, when compiling, the window as a bias by
        distance read as a Toeplitz view (`ToeplitzBias`)."""
        if whole and context.positions.device.type == "cpu":
            if not torch.compiler.is_compiling():  # a loop over chunks: eager only
                return ChunkedWindow(window)
        return MaskedAttention(self._mask(context, window))

    def _pattern(self, context: Context, window: int | None = None) -> MaskMod:
        """Which keys each query of the call sees, as one predicate composed of the mask predicates."""
        pattern = causal
        if window is not None:
            pattern = and_masks(pattern, sliding_window(window))
        if context.key_mask is not None:
            pattern = and_masks(pattern, padding(context.key_mask))
        if context.documents is not None:
            pattern = and_masks(pattern, same_document(context.documents))
        return pattern

    def _mask(self, context: Context, window: int | None = None) -> torch.Tensor:
        pattern = self._pattern(context, window)
        mask = render(pattern, context)
        return mask


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
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        qk_norm_at: str = "head",  # or "projection" (all of q, k: OLMo 2), "rotated" (Hunyuan)
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.q, self.k, self.v, self.o = q, k, v, o
        self.q_norm, self.k_norm = q_norm, k_norm
        self.qk_norm_at = qk_norm_at

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKVCache:
        """An empty static cache for this layer's keys and values."""
        keys = torch.zeros(batch, self.kv_heads, max_len, self.head_dim, dtype=dtype, device=device)
        return LayerKVCache(keys, torch.zeros_like(keys))

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, seq, -1, self.head_dim)  # -1: under tensor parallelism a rank has its share
        k = k.view(batch, seq, -1, self.head_dim)
        v = v.view(batch, seq, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if context.rope is not None:
            q, k = context.rope(q), context.rope(k)
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
class SandwichBlock(nn.Module):
    """Pre-norm with a norm on each sublayer's output too: x + out_norm(f(norm(x))) (GLM-4-0414, Gemma 2 and 3).
    With identities as the input norms it is OLMo 2's x + out_norm(f(x))."""

    def __init__(
        self,
        attn_norm: nn.Module,
        attn: nn.Module,
        attn_out_norm: nn.Module,
        mlp_norm: nn.Module,
        mlp: nn.Module,
        mlp_out_norm: nn.Module,
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.attn_out_norm = attn_norm, attn, attn_out_norm
        self.mlp_norm, self.mlp, self.mlp_out_norm = mlp_norm, mlp, mlp_out_norm

    def forward(
        self, x: torch.Tensor, context: Context, attend: AttentionFn, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        x = x + self.attn_out_norm(self.attn(self.attn_norm(x), context, attend, cache))
        out = self.mlp(self.mlp_norm(x))
        return x + self.mlp_out_norm(out)


# ------------------------------------------------------------------------------------------------------- language model
@dataclass
class LMOutput:
    """What a forward pass returns: logits [batch, seq, vocab], and the loss when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class DecoderLM(nn.Module):
    """A causal decoder LM from its parts: embedding, blocks, final norm, head, and `attention` (each layer's
    attention function in a call). A forward pass works out the call's `Context` once and runs the blocks."""

    def __init__(
        self,
        embed: nn.Embedding,
        layers: list[nn.Module],
        final_norm: nn.Module,
        lm_head: nn.Linear,
        attention: AttentionPaths,
        rotary: nn.Module | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.final_norm, self.lm_head = final_norm, lm_head
        self.attention = attention
        self.rotary = rotary
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """`labels` [batch, seq]: the next-token loss (shifted inside; -100 is ignored). `logits_to_keep` > 0: the
        logits of the last that many positions only (decoding needs the last one). The queries continue the cache.

        `attention_mask` [batch, past + seq] (1: token, 0: padding, left or right, as in transformers): padded keys
        are never attended, padded positions are out of the loss. `position_ids` [batch, seq] (default: the slots);
        without a mask or cache, positions restarting in a row mark packed documents, as `document_ids` [batch,
        past + seq] do: no attention and no loss across documents."""
        batch, seq = input_ids.shape
        past = cache.length if cache is not None else 0
        positions = torch.arange(past, past + seq, device=input_ids.device)
        keys = past + seq
        x = self.embed(input_ids)
        context = Context(positions, keys, rows=batch, dtype=x.dtype, position_ids=position_ids)
        context.key_mask, context.documents = self._masks(
            attention_mask, position_ids, document_ids, cache, batch, keys
        )
        context.rope = self.rotary(context)
        attends = self.attention(context)
        for index, layer in enumerate(self.layers):
            x = layer(x, context, attends[index], cache.layers[index] if cache is not None else None)
        if cache is not None:
            cache.length = keys
        if labels is None and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.final_norm(x))
        if labels is None:
            return LMOutput(logits=logits)
        # Shift the labels, not the logits (as transformers does): no copy of the [batch, seq, vocab] logits.
        shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
        if attention_mask is not None:  # a padded position neither predicts nor is predicted
            real = attention_mask[:, -seq:].bool()
            shifted = shifted.masked_fill(~(real & F.pad(real[:, 1:], (0, 1), value=False)), -100)
        if context.documents is not None:  # nor does a document predict the next one's first token
            same = context.documents[:, -seq:]
            shifted = shifted.masked_fill(F.pad(same[:, 1:] != same[:, :-1], (0, 1), value=False), -100)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
        return LMOutput(logits=logits, loss=loss)

    def _masks(
        self,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        document_ids: torch.Tensor | None,
        cache: KVCache | None,
        batch: int,
        keys: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The call's key mask and documents ([batch, keys] each, or None where no key needs hiding)."""
        for name, given in (("attention_mask", attention_mask), ("document_ids", document_ids)):
            if given is not None and tuple(given.shape) != (batch, keys):
                raise ValueError(f"{name} must be [batch, past + seq] = [{batch}, {keys}], got {list(given.shape)}")
        key_mask = documents = None
        if attention_mask is not None:
            key_mask = attention_mask.bool()
            right_padded = bool((key_mask[:, 1:] <= key_mask[:, :-1]).all())  # (or not padded)
            if cache is None and not torch.compiler.is_compiling() and right_padded:
                key_mask = None  # no padding, or right padding only: causal attention is exact for every token
        if document_ids is not None:
            documents = document_ids
        elif position_ids is not None and attention_mask is None and cache is None:
            documents = packed_documents(position_ids.expand(batch, -1))
        return key_mask, documents

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty static cache for `batch` sequences of up to `max_len` positions (in the weights' dtype)."""
        weight = self.embed.weight
        dtype = dtype or weight.dtype
        return KVCache([layer.attn.new_cache(batch, max_len, dtype, weight.device) for layer in self.layers])

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, **options: object) -> torch.Tensor:
        """Greedy (default) or sampled continuation with the KV cache: `generate` with the model's eos/pad ids."""
        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        return generate(self, input_ids, max_new_tokens, **options)  # type: ignore[arg-type]


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
    attention_mask: torch.Tensor | None = None,
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
    mask = position = None  # the padding mask of every slot, the next position per row
    if attention_mask is not None:
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs prompts padded on the left: some row's last token is padding")
        mask = F.pad(attention_mask.bool(), (0, max_new_tokens), value=True)  # every slot the call fills
        positions = positions_from_mask(attention_mask)
        prompt |= {"attention_mask": mask[:, :seq], "position_ids": positions}
        position = positions[:, -1:] + 1  # of the next token, per row
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
        if mask is not None:
            inputs |= {"attention_mask": mask[:, : cache.length + 1], "position_ids": position}
            position = position + 1
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
def make_block() -> nn.Module:
    """One SandwichBlock block; the model stacks 32 of them."""
    return SandwichBlock(
        attn_norm=nn.Identity(),
        attn=Attention(
            heads=32,
            kv_heads=32,
            head_dim=128,
            q=nn.Linear(4096, 4096, bias=False),
            k=nn.Linear(4096, 4096, bias=False),
            v=nn.Linear(4096, 4096, bias=False),
            o=nn.Linear(4096, 4096, bias=False),
            q_norm=RMSNorm(4096, eps=1e-06),
            k_norm=RMSNorm(4096, eps=1e-06),
            qk_norm_at="projection",
        ),
        attn_out_norm=RMSNorm(4096, eps=1e-06),
        mlp_norm=nn.Identity(),
        mlp=GatedMLP(
            gate=nn.Linear(4096, 11008, bias=False),
            up=nn.Linear(4096, 11008, bias=False),
            down=nn.Linear(11008, 4096, bias=False),
            activation=F.silu,
        ),
        mlp_out_norm=RMSNorm(4096, eps=1e-06),
    )


class Olmo3_1025_7b(DecoderLM):
    """The olmo-3-1025-7b model, starting from the weights archspec builds it with."""

    def __init__(self) -> None:
        super().__init__(
            embed=nn.Embedding(100278, 4096),
            layers=[make_block() for _ in range(32)],
            final_norm=RMSNorm(4096, eps=1e-06),
            lm_head=nn.Linear(4096, 100278, bias=False),
            attention=AttentionPaths(
                windows=(4096,) * 3 + (None,) + (4096,) * 3 + (None,) + (4096,) * 3 + (None,) + (4096,) * 3 + (None,) + (4096,) * 3 + (None,) + (4096,) * 3 + (None,) + (4096,) * 3 + (None,) + (4096,) * 3 + (None,),
            ),
            rotary=RotaryEmbedding(inv_freq=rope_frequencies(128, 500000.0), pairing=HalfPairs()),
            eos_token_id=100257,
            pad_token_id=100277,
        )
        init_weights(self)


Model = Olmo3_1025_7b  # this file's model under a fixed name
