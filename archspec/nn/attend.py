"""How one call of a model computes each layer's attention: an attention function per layer, chosen once per call.

Every layer calls `attend(q, k, v, scale)` with q [batch, heads, queries, dim] and k, v [batch, kv_heads, keys,
dim] (GQA: query head h reads key/value head h // (heads / kv_heads), SDPA's `enable_gqa`, no repeated K/V). Which
function that is depends on the call, and `AttentionPaths` decides it from the layer's pattern (causal, a sliding
window, ALiBi, GLM's prefix) and the call (a whole sequence, a cached chunk, one decoding step, the device):

* `causal_attention`: SDPA's `is_causal` fast path for a sequence attending to itself, and no mask at all for one
  query at the end of the keys (a decoding step sees every key); `unmasked_attention`: every query sees every key;
* `MaskedAttention`: SDPA with a mask rendered from the predicates of `archspec.nn.masks` (and a bias);
* `ToeplitzBias`: a bias that depends on key - query only (ALiBi, with -inf for causal or window masking) read by
  SDPA as a zero-copy view of a [heads, 2 seq - 1] table: no [seq, seq] tensor (CPU, whole sequences);
* `ChunkedWindow`: a sliding window as one SDPA call over chunks of queries, each over its own span of keys
  (CPU, whole sequences): work ~ seq x window instead of seq^2 / 2;
* `ChunkedScores`: what SDPA cannot do, soft-capped scores before the mask (Gemma 2) and attention sinks (a
  learned per-head logit that joins each softmax as an extra column, gpt-oss): the scores of a chunk of queries
  at a time, [rows, heads, chunk, keys], never [seq, seq]; FlexAttention on GPU (a `score_mod` for the cap, the
  log-sum-exp it returns for the sinks).

Models with sinks call `attend(q, k, v, scale, sinks)`: the sinks are the layer's own, the function the call's.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import and_masks, create_block_mask, or_masks

from archspec.nn.activations import soft_cap
from archspec.nn.flex import FLEX_CPU_SHORTEST, FlexPattern, alibi_score_mod, causal_block_mask, softcap_score_mod
from archspec.nn.masks import (
    MaskMod,
    additive_mask,
    causal,
    padding,
    prefix,
    render,
    same_document,
    sliding_window,
)
from archspec.nn.positions import Alibi, Context

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]  # attend(q, k, v, scale)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Queries at the end of the keys: SDPA's is_causal for a sequence attending to itself, no mask for one query."""
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=_several(q.shape[2]), scale=scale, enable_gqa=gqa)


def unmasked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Every query sees every key (an encoder, cross-attention, a vision tower)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _several(queries: int) -> bool:
    """A function: `queries` is a SymInt when compiled dynamic (a Proxy in an fx trace, of several queries)."""
    if isinstance(queries, torch.fx.Proxy):  # emit-if: library
        return True
    return True if queries > 1 else False  # noqa: SIM210 (an `if`, which dynamo specialises, not bool(SymInt))


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

    def __init__(
        self,
        table: torch.Tensor,
        causal: bool = False,
        window: int | None = None,  # a chunk's keys start window - 1 before its first query  # emit-if: window
        chunk: int = 384,
    ) -> None:
        self.table = table.contiguous()
        self.causal, self.chunk = causal, chunk
        self.window = window  # emit-if: window

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
            if chunked and self.window is not None:  # emit-if: window
                first = max(0, start - self.window + 1)
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


def distance_table(
    bias: torch.Tensor,
    causal: bool,
    window: int | None = None,  # emit-if: window
) -> torch.Tensor:
    """A [heads, 2 seq - 1] bias by distance (index key - query + seq - 1) with -inf where causal attention hides
    the key."""
    seq = (bias.shape[-1] + 1) // 2
    distance = torch.arange(1 - seq, seq, device=bias.device)
    hidden = distance > 0 if causal else torch.zeros_like(distance, dtype=torch.bool)
    if window is not None:  # and keys window or more positions back  # emit-if: window
        hidden = hidden | (distance <= -window)
    return bias.masked_fill(hidden, float("-inf"))


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


class ChunkedScores:  # emit-if: softcap|sinks
    """Attention from the scores written out, a chunk of `chunk` queries at a time: [rows, heads, chunk, keys],
    never [seq, seq] (one chunk when compiling); `pattern` says which keys each query sees. Softmax in float32 at
    least (as transformers' eager attention)."""

    def __init__(
        self,
        pattern: MaskMod,
        context: Context,
        cap: float | None = None,  # scores soft-capped before the mask: cap * tanh(s / cap)  # emit-if: softcap
        chunk: int = 256,
    ) -> None:
        self.pattern, self.context, self.chunk = pattern, context, chunk
        self.cap = cap  # emit-if: softcap

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        sinks: torch.Tensor | None = None,  # [heads]: one more softmax column each, then dropped  # emit-if: sinks
    ) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # GQA: the heads' keys
        seq = q.shape[2]
        if torch.compiler.is_compiling():  # one chunk: a loop over chunks would make the graph depend on the length
            return self._queries(
                q,
                k,
                v,
                scale,
                0,
                None,
                sinks,  # emit-if: sinks
            )
        outs = []
        for start in range(0, seq, self.chunk):
            out = self._queries(
                q,
                k,
                v,
                scale,
                start,
                start + self.chunk,
                sinks,  # emit-if: sinks
            )
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def _queries(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        start: int,
        end: int | None,
        sinks: torch.Tensor | None = None,  # emit-if: sinks
    ) -> torch.Tensor:
        """The output of queries start .. end - 1."""
        queries = q[:, :, start:end]
        scores = queries @ k.transpose(-1, -2) * scale
        if self.cap is not None:  # emit-when: softcap
            scores = soft_cap(scores, self.cap)
        scores = scores.masked_fill(~render(self.pattern, self.context, start, end), float("-inf"))
        wide = torch.promote_types(q.dtype, torch.float32)
        if sinks is not None:  # emit-when: sinks
            # the sink logit as one more column, dropped after the softmax: a query may attend to nothing (Xiao et
            # al. 2023, https://arxiv.org/abs/2309.17453)
            sink = sinks.to(wide).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
            weights = torch.softmax(torch.cat([scores.to(wide), sink], dim=-1), dim=-1)[..., :-1]
            return weights.to(q.dtype) @ v
        return torch.softmax(scores.to(wide), dim=-1).to(q.dtype) @ v


class AttentionPaths(nn.Module):
    """Each layer's causal attention function for one call, as its pattern and the call allow (alike layers share)."""

    def __init__(
        self,
        layers: int = 0,  # emit-if: !window
        windows: tuple[int | None, ...] = (),  # each layer's sliding window, None: full  # emit-if: window
        alibi: Alibi | None = None,  # emit-if: alibi
        softcap: float | None = None,  # cap * tanh(score / cap) before the mask  # emit-if: softcap
        sinks: bool = False,  # the layers' attention has sink logits  # emit-if: sinks
    ) -> None:
        super().__init__()
        self.layers = layers  # emit-if: !window
        self.windows = windows  # emit-if: window
        self.alibi = alibi  # emit-if: alibi
        self.softcap = softcap  # emit-if: softcap
        self.sinks = sinks  # emit-if: sinks
        self.backend = "sdpa"  # or "flex": whole sequences through FlexAttention  # emit-if: library

    def forward(self, context: Context) -> list[AttentionFn]:
        if isinstance(context.keys, torch.fx.Proxy):  # emit-if: library
            return self._traced(context)
        if self.windows:  # emit-when: window
            made = {window: self._function(context, window) for window in set(self.windows)}
            return [made[window] for window in self.windows]
        return [self._function(context)] * self.layers  # emit-if: !window

    def _function(
        self,
        context: Context,
        window: int | None = None,  # emit-if: window
    ) -> AttentionFn:
        if self.softcap is not None:  # emit-when: softcap
            return self._scored(
                context,
                window,  # emit-if: window
            )
        if self.sinks:  # emit-when: sinks
            return self._scored(
                context,
                window,  # emit-if: window
            )
        if not context.at_end:  # emit-if: library
            return MaskedAttention(self._mask(context, window))  # a compiled step over the whole static cache
        seq, keys = context.positions.shape[0], context.keys
        whole = seq == keys  # a sequence attending to itself: queries = keys = positions 0 .. seq - 1
        if context.prefix_lengths is not None:  # emit-if: prefix_lm
            whole = False  # a bidirectional prefix: no causal shortcut, no bias by distance
        if context.key_mask is not None or context.documents is not None:  # emit-if: !encoder_decoder
            if self.backend == "flex" and self._flex_applies(context):  # emit-if: library
                return self._flex_padded(context, window)
            mask = self._mask(  # padded keys or packed documents: a mask per row
                context,
                window,  # emit-if: window
            )
            return MaskedAttention(mask)
        if self.alibi is not None:  # emit-when: alibi
            return self._biased(
                context,
                whole,
                window,  # emit-if: window
            )
        if window is not None and window < keys:  # emit-if: window
            return self._windowed(context, window, whole)
        if whole or seq == 1:
            return causal_attention
        if self.backend == "flex" and self._flex_applies(context):  # emit-if: library
            return self._flex(context, None)
        return MaskedAttention(self._mask(context))

    def _windowed(self, context: Context, window: int, whole: bool) -> AttentionFn:  # emit-if: window,!softcap,!sinks
        """A sliding window shorter than the keys. A whole sequence on CPU needs no [seq, seq] mask: chunks of
        queries over their own spans of keys (`ChunkedWindow`), or, when compiling, the window as a bias by
        distance read as a Toeplitz view (`ToeplitzBias`)."""
        if self.backend == "flex" and self._flex_applies(context):  # emit-if: library
            return self._flex(context, window)
        if whole and context.positions.device.type == "cpu":
            if not torch.compiler.is_compiling():  # a loop over chunks: eager only
                return ChunkedWindow(window)
            if self.backend == "sdpa":  # emit-if: library
                # compiled: the window as a bias by distance, one SDPA call per chunk of queries
                no_bias = torch.zeros(1, 2 * context.keys - 1, device=context.positions.device)
                table = distance_table(no_bias, True, window)
                return ToeplitzBias(table.to(context.dtype), causal=True, window=window)
        return MaskedAttention(self._mask(context, window))

    def _biased(  # emit-if: alibi
        self,
        context: Context,
        whole: bool,
        window: int | None = None,  # emit-if: window
    ) -> AttentionFn:
        """ALiBi: a whole sequence on CPU reads the bias by distance as a Toeplitz view, anything else gets it as a
        mask (so does bfloat16 ALiBi, whose rounding depends on the key position, not only the distance)."""
        if self.backend == "flex" and self._flex_applies(context):  # emit-if: library
            return self._flex(
                context,
                window,  # emit-if: window
            )
        if whole and context.positions.device.type == "cpu":  # emit-if: !alibi_bfloat16
            bias = self.alibi.by_distance(context.keys, context.dtype)
            if bias is not None:  # emit-when: !alibi_bfloat16
                table = distance_table(
                    bias,
                    True,
                    window,  # emit-if: window
                )
                return ToeplitzBias(
                    table,
                    causal=True,
                    window=window,  # emit-if: window
                )
        mask = self._mask(
            context,
            window,  # emit-if: window
        )
        return MaskedAttention(mask)

    def _scored(  # emit-if: softcap|sinks
        self,
        context: Context,
        window: int | None = None,  # emit-if: window
    ) -> AttentionFn:
        """The scores written out, chunk by chunk (`ChunkedScores`); FlexAttention for whole sequences where it runs
        (GPU, or the flex backend: a cap as a score_mod, sinks from the log-sum-exp it returns)."""
        whole = context.at_end and context.positions.shape[0] == context.keys  # emit-if: library
        flex = context.positions.device.type != "cpu" or self.backend == "flex"  # emit-if: library
        if whole and flex and self._flex_applies(context):  # emit-if: library
            pattern, device = self._pattern(context, window), context.positions.device
            block_mask = create_block_mask(pattern, context.rows, None, context.keys, context.keys, device)
            return FlexPattern(block_mask, None if self.softcap is None else softcap_score_mod(self.softcap))
        pattern = self._pattern(
            context,
            window,  # emit-if: window
        )
        return ChunkedScores(
            pattern,
            context,
            self.softcap,  # emit-if: softcap
        )

    def _pattern(
        self,
        context: Context,
        window: int | None = None,  # emit-if: window
    ) -> MaskMod:
        """Which keys each query of the call sees, as one predicate composed of the mask predicates."""
        pattern = causal
        if window is not None:  # emit-if: window
            pattern = and_masks(pattern, sliding_window(window))
        if context.prefix_lengths is not None:  # emit-if: prefix_lm
            pattern = or_masks(pattern, prefix(context.prefix_lengths, context.key_mask))
        if context.key_mask is not None:  # emit-if: !encoder_decoder
            pattern = and_masks(pattern, padding(context.key_mask))
        if context.documents is not None:  # emit-if: !encoder_decoder
            pattern = and_masks(pattern, same_document(context.documents))
        return pattern

    def _mask(  # emit-if: !softcap,!sinks
        self,
        context: Context,
        window: int | None = None,  # emit-if: window
    ) -> torch.Tensor:
        pattern = self._pattern(
            context,
            window,  # emit-if: window
        )
        mask = render(pattern, context)
        if self.alibi is not None:  # emit-when: alibi
            bias = self.alibi.by_key(
                context.keys,
                context.dtype,
                context.key_mask,  # emit-if: !encoder_decoder
            )
            mask = additive_mask(mask, bias, context.dtype)
        return mask

    def _flex_applies(self, context: Context) -> bool:  # emit-if: library
        """FlexAttention serves whole sequences (a prefix or not), on CPU without gradients and from
        `FLEX_CPU_SHORTEST` tokens (see `flex.flex_block_size`)."""
        seq, device = context.positions.shape[0], context.positions.device
        if seq != context.keys or (self.alibi is not None and self.alibi.bfloat16):  # its score_mod is BLOOM's
            return False
        return device.type != "cpu" or (not torch.is_grad_enabled() and seq >= FLEX_CPU_SHORTEST)

    def _flex(self, context: Context, window: int | None) -> AttentionFn:  # emit-if: library
        seq, device = context.positions.shape[0], context.positions.device
        block_mask = causal_block_mask(seq, seq, window, device, prefix_lengths=context.prefix_lengths)
        return FlexPattern(block_mask, self._score_mod())

    def _flex_padded(self, context: Context, window: int | None) -> AttentionFn:  # emit-if: library
        """Padded keys or packed documents on the flex backend: a block mask per row, built from the predicate."""
        seq, device = context.positions.shape[0], context.positions.device
        block_mask = create_block_mask(self._pattern(context, window), context.rows, None, seq, seq, device)
        return FlexPattern(block_mask, self._score_mod())

    def _score_mod(self) -> Callable[..., torch.Tensor] | None:  # emit-if: library
        return None if self.alibi is None else alibi_score_mod(self.alibi.slopes / self.alibi.divisor)

    def _traced(self, context: Context) -> list[AttentionFn]:  # emit-if: library
        """An fx trace (lengths are Proxies) is of the no-cache forward: queries = keys, every window assumed
        shorter than the sequence, plain masks only (the other paths branch on lengths in Python)."""
        if self.softcap is not None or self.sinks:
            raise NotImplementedError("an fx trace of soft-capped or sink attention (its chunks depend on the length)")
        windows = self.windows or (None,) * self.layers
        made = {window: MaskedAttention(self._mask(context, window)) for window in set(windows)}
        if self.alibi is None and context.prefix_lengths is None:
            made[None] = causal_attention
        return [made[window] for window in windows]


class LayerScaledPaths(AttentionPaths):
    """`AttentionPaths` whose layer i divides its q.k scale by i + 1 (GPT-2's scale_attn_by_inverse_layer_idx)."""

    def forward(self, context: Context) -> list[AttentionFn]:
        return [LayerScaled(attend, index + 1) for index, attend in enumerate(super().forward(context))]


class LayerScaled:
    """An attention function with the scale divided by `divisor` (as GPT-2 divides its scaling)."""

    def __init__(self, attend: AttentionFn, divisor: int) -> None:
        self.attend, self.divisor = attend, divisor

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        sinks: torch.Tensor | None = None,  # emit-if: sinks
    ) -> torch.Tensor:
        if sinks is not None:  # emit-when: sinks
            return self.attend(q, k, v, scale / self.divisor, sinks)
        return self.attend(q, k, v, scale / self.divisor)
