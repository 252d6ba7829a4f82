"""gemma-2-9b: a stand-alone PyTorch model emitted by archspec from this spec. Generated: do not edit by hand.

    name: gemma-2-9b
    description: Gemma 2 9B (sliding and full attention alternating, sandwich norms, soft-capped scores and logits); config.json
      of google/gemma-2-9b.
    vocab_size: 256000
    d_model: 3584
    n_layers: 42
    context_length: 8192
    attention: {heads: 16, kv_heads: 8, head_dim: 256, softcap: 50.0}
    position: {kind: rope}
    norm: {eps: 1.0e-06, bias: false, offset: true}
    block: {kind: sandwich}
    layers:
      kinds:
        sliding: {window: 4096}
        full: {}
      pattern:
      - sliding
      - full
    mlp: {activation: geglu-tanh, d_ff: 14336}
    embeddings: {tied: true, scale: sqrt-d-model, logit_softcap: 30.0}
    tokens: {bos: 2, eos: 1, pad: 0}

Only torch and the standard library are imported. The weights start as archspec's build sets them (the same for
the same torch seed), and a state dict saved from an archspec model loads as it is:

    model = Gemma2_9b()
    model.load_state_dict(torch.load("gemma_2_9b.pt"))
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
def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): x bounded to (-cap, cap), nearly unchanged where |x| << cap (Gemma 2's logits and
    attention scores)."""
    return cap * torch.tanh(x / cap)


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w), in float32 at least and cast back *after* the weight
    multiply. `w` starts at 0, so a fresh model normalises plainly (checkpoints store w, not 1 + w)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return (wide * (1.0 + self.weight.to(wide.dtype))).to(x.dtype)


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


class ChunkedScores:
    """Attention from the scores written out, a chunk of `chunk` queries at a time: [rows, heads, chunk, keys],
    never [seq, seq] (one chunk when compiling); `pattern` says which keys each query sees. Softmax in float32 at
    least (as transformers' eager attention)."""

    def __init__(
        self,
        pattern: MaskMod,
        context: Context,
        cap: float | None = None,  # scores soft-capped before the mask: cap * tanh(s / cap)
        chunk: int = 256,
    ) -> None:
        self.pattern, self.context, self.chunk = pattern, context, chunk
        self.cap = cap

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # GQA: the heads' keys
        seq = q.shape[2]
        if torch.compiler.is_compiling():  # one chunk: a loop over chunks would make the graph depend on the length
            return self._queries(q, k, v, scale, 0, None)
        outs = []
        for start in range(0, seq, self.chunk):
            out = self._queries(q, k, v, scale, start, start + self.chunk)
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
    ) -> torch.Tensor:
        """The output of queries start .. end - 1."""
        queries = q[:, :, start:end]
        scores = queries @ k.transpose(-1, -2) * scale
        scores = soft_cap(scores, self.cap)
        scores = scores.masked_fill(~render(self.pattern, self.context, start, end), float("-inf"))
        wide = torch.promote_types(q.dtype, torch.float32)
        return torch.softmax(scores.to(wide), dim=-1).to(q.dtype) @ v


class AttentionPaths(nn.Module):
    """Each layer's causal attention function for one call, as its pattern and the call allow (alike layers share)."""

    def __init__(
        self,
        windows: tuple[int | None, ...] = (),  # each layer's sliding window, None: full
        softcap: float | None = None,  # cap * tanh(score / cap) before the mask
    ) -> None:
        super().__init__()
        self.windows = windows
        self.softcap = softcap

    def forward(self, context: Context) -> list[AttentionFn]:
        made = {window: self._function(context, window) for window in set(self.windows)}
        return [made[window] for window in self.windows]

    def _function(self, context: Context, window: int | None = None) -> AttentionFn:
        return self._scored(context, window)

    def _scored(self, context: Context, window: int | None = None) -> AttentionFn:
        """The scores written out, chunk by chunk (`ChunkedScores`); FlexAttention for whole sequences where it runs
        (GPU, or the flex backend: a cap as a score_mod, sinks from the log-sum-exp it returns)."""
        pattern = self._pattern(context, window)
        return ChunkedScores(pattern, context, self.softcap)

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
        embed_scale: float | None = None,
        embed_scale_in_dtype: bool = False,  # the scale rounded to the activations' dtype
        logit_softcap: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.embed_scale = embed_scale
        self.embed_scale_in_dtype = embed_scale_in_dtype
        self.logit_softcap = logit_softcap
        self.layers = nn.ModuleList(layers)
        self.final_norm, self.lm_head = final_norm, lm_head
        self.lm_head.weight = self.embed.weight
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
        scale = self.embed_scale
        scale = torch.tensor(scale, dtype=x.dtype)  # rounded as the activations are (Gemma)
        x = x * scale
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
        logits = soft_cap(logits, self.logit_softcap)
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
    """One SandwichBlock block; the model stacks 42 of them."""
    return SandwichBlock(
        attn_norm=OffsetRMSNorm(3584),
        attn=Attention(
            heads=16,
            kv_heads=8,
            head_dim=256,
            q=nn.Linear(3584, 4096, bias=False),
            k=nn.Linear(3584, 2048, bias=False),
            v=nn.Linear(3584, 2048, bias=False),
            o=nn.Linear(4096, 3584, bias=False),
        ),
        attn_out_norm=OffsetRMSNorm(3584),
        mlp_norm=OffsetRMSNorm(3584),
        mlp=GatedMLP(
            gate=nn.Linear(3584, 14336, bias=False),
            up=nn.Linear(3584, 14336, bias=False),
            down=nn.Linear(14336, 3584, bias=False),
            activation=partial(F.gelu, approximate="tanh"),
        ),
        mlp_out_norm=OffsetRMSNorm(3584),
    )


class Gemma2_9b(DecoderLM):
    """The gemma-2-9b model, starting from the weights archspec builds it with."""

    def __init__(self) -> None:
        super().__init__(
            embed=nn.Embedding(256000, 3584),
            layers=[make_block() for _ in range(42)],
            final_norm=OffsetRMSNorm(3584),
            lm_head=nn.Linear(3584, 256000, bias=False),
            attention=AttentionPaths(
                windows=(4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None, 4096, None),
                softcap=50.0,
            ),
            rotary=RotaryEmbedding(inv_freq=rope_frequencies(256, 10000.0), pairing=HalfPairs()),
            embed_scale=59.86651818838306,
            embed_scale_in_dtype=True,
            logit_softcap=30.0,
            eos_token_id=1,
            pad_token_id=0,
        )
        init_weights(self)


Model = Gemma2_9b  # this file's model under a fixed name
