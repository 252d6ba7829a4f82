"""The decoder-only language model: embeddings -> blocks -> final norm -> head, plus its KV cache and masks."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.attention import (
    FLEX_CPU_SHORTEST,
    ChunkedWindow,
    FlexPattern,
    ToeplitzBias,
    alibi_score_mod,
    causal_block_mask,
    distance_table,
)
from archspec.nn.cache import KVCache
from archspec.nn.glm import glm_positions
from archspec.nn.masks import additive_mask, causal_mask, prefix_mask
from archspec.nn.moe import MoE, load_balancing_loss, router_z_loss, sequence_balancing_loss
from archspec.nn.positions import alibi_bias, alibi_by_distance


@dataclass
class LMOutput:
    """What a forward pass returns: logits [batch, seq, vocab], and the loss when labels were given.

    For MoE models the router losses are reported separately and added to `loss` with their coefficients.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None


class DecoderLM(nn.Module):
    """A causal decoder LM. Receives its parts ready-made; `windows[i]` is layer i's sliding window or None.

    Positions are `cache.length + arange(seq)` for every row. Masks are built once per forward, one per distinct
    window, and shared by the layers; without a cache, window or ALiBi none is built and SDPA's causal fast path
    runs.

    On CPU, when a whole sequence is attended from position 0 (training, a prompt), ALiBi and sliding windows get
    no [seq, seq] tensor: SDPA reads a view of a bias by distance (`ToeplitzBias`, over the visible keys of each
    query chunk), and windows run in chunks of queries over their own span of keys (`ChunkedWindow`).
    `attn_backend` (an attribute; set it on a built model) = "flex" runs whole sequences through FlexAttention
    instead (`FlexPattern`: block-sparse, meant for GPUs; causal, windows, ALiBi and GLM prefixes); it is fused
    only under `torch.compile` and has no backward on CPU, where training and sequences under
    `FLEX_CPU_SHORTEST` tokens keep the default ("sdpa") paths.
    """

    def __init__(
        self,
        embed: nn.Embedding,
        layers: list[nn.Module],
        final_norm: nn.Module,
        lm_head: nn.Linear,
        *,
        windows: list[int | None],
        context_length: int,
        pos_embed: nn.Embedding | None = None,
        embed_norm: nn.Module | None = None,
        rotary: nn.Module | None = None,
        alibi_slopes: torch.Tensor | None = None,
        tied: bool = False,
        aux_loss: str = "token",
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        prefix_lm: bool = False,
        block_positions: bool = False,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.prefix_lm, self.block_positions = prefix_lm, block_positions
        self.attn_backend = attn_backend
        self.embed = embed
        self.pos_embed = pos_embed
        self.embed_norm = embed_norm or nn.Identity()
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.lm_head = lm_head
        if tied:
            self.lm_head.weight = self.embed.weight
        self.rotary = rotary
        if alibi_slopes is not None:
            self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)
        else:
            self.alibi_slopes = None
        self.windows = windows
        self.context_length = context_length
        self.aux_loss, self.aux_loss_coef, self.z_loss_coef = aux_loss, aux_loss_coef, z_loss_coef
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id  # generate()'s defaults

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,  # emit-if: vision
        positions: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> LMOutput:
        """`prefix_lengths` ([batch]; GLM): the first prefix_lengths[b] tokens of row b attend to each other in both
        directions (part A), the rest causally (part B). None or 0 is the causal decoder.

        `logits_to_keep` > 0 computes the logits of the last that many positions only (what decoding needs: the
        head over a whole prompt is a [seq, d_model] x [d_model, vocab] matmul thrown away); 0 keeps every position.
        The loss needs every position, so with `labels` it is ignored."""
        batch, seq = input_ids.shape
        # Explicit `positions` ([seq], a tensor) replace cache.length + arange(seq), and the caller advances
        # cache.length: a compiled decode step (generate(compile=True)) then serves every position with one graph.
        explicit = positions is not None
        past = cache.length if cache is not None and not explicit else 0
        if positions is None:
            positions = torch.arange(past, past + seq, device=input_ids.device)
        x = self.embed(input_ids)
        if inputs_embeds is not None:  # emit-if: vision
            x = inputs_embeds
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.embed_norm(x)
        rope_positions = positions
        if self.block_positions:  # emit-if: block_positions
            rope_positions = glm_positions(positions, prefix_lengths, batch)
        rope = self.rotary(rope_positions, past + seq, x.dtype) if self.rotary is not None else None
        # Eager calls know the cache length as a number: attention then reads only the written slots, and a
        # plain causal model needs no mask for the first chunk (SDPA's is_causal) nor for a one-token decoding
        # step. Compiled steps (explicit positions) read the whole static cache under a mask, so that their
        # shapes never change.
        keys = seq if cache is None else (cache.max_len if explicit else past + seq)
        if cache is not None:
            for layer_cache in cache.layers:
                layer_cache.visible = None if explicit else keys
        masks = self._masks(positions, keys, x.dtype, prefix_lengths, at_end=not explicit)
        for index, layer in enumerate(self.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, rope, masks[self.windows[index]], layer_cache, positions)
        if cache is not None and not explicit:
            cache.length = past + seq
        if labels is None:
            if logits_to_keep > 0:
                x = x[:, -logits_to_keep:]
            return LMOutput(logits=self.lm_head(self.final_norm(x)))
        logits = self.lm_head(self.final_norm(x))
        # Shift the labels, not the logits (as transformers does): no copy of the [batch, seq, vocab] logits.
        shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
        if any(isinstance(layer.mlp, MoE) for layer in self.layers):  # emit-if: moe
            aux, z = self._router_losses(batch)
            total = loss + self.aux_loss_coef * aux + self.z_loss_coef * z
            return LMOutput(logits=logits, loss=total, aux_loss=aux, z_loss=z)
        return LMOutput(logits=logits, loss=loss)

    def _router_losses(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:  # emit-if: moe
        moes = [layer.mlp for layer in self.layers if isinstance(layer.mlp, MoE)]
        logits = [moe.router_logits for moe in moes]
        selected = [moe.selected for moe in moes]
        experts = moes[0].router.experts
        if self.aux_loss == "sequence":
            aux = sequence_balancing_loss(logits, selected, experts, batch, moes[0].router.scoring)  # type: ignore[arg-type]
        else:
            aux = load_balancing_loss(logits, selected, experts)  # type: ignore[arg-type]
        return aux, router_z_loss(logits)  # type: ignore[arg-type]

    def _masks(
        self,
        positions: torch.Tensor,
        keys: int,
        dtype: torch.dtype,
        prefix_lengths: torch.Tensor | None = None,
        at_end: bool = True,
    ) -> dict[int | None, torch.Tensor | Callable[..., torch.Tensor] | None]:
        """Per distinct window: None where plain causal attention is exact (`Attention`: SDPA's is_causal, or no
        mask for one query), a pattern that computes attention itself (see `attn_backend`), or a
        [1 or batch, 1 or heads, queries, keys] mask. `at_end`: the queries are the last positions of the `keys`
        (eager calls), so that a shortcut can apply: the first chunk of a causal model, or one decoding step,
        which sees every key (a prefix changes nothing there), as long as no ALiBi bias applies and no window is
        shorter than the keys."""
        seq, device = positions.shape[0], positions.device
        # An fx trace (lengths are Proxies) is of the no-cache forward: queries = keys, windows assumed binding,
        # and only plain masks (the fast paths below branch on lengths in Python).
        traced = isinstance(keys, torch.fx.Proxy)
        sequence = at_end and (traced or seq == keys)  # queries = keys = positions 0 .. seq-1
        whole = sequence and prefix_lengths is None
        shortcut = at_end and self.alibi_slopes is None and (whole or seq == 1)
        cpu_inference = not traced and device.type == "cpu" and not torch.is_grad_enabled()
        cpu_flex = cpu_inference and seq >= FLEX_CPU_SHORTEST  # see attention.flex_block_size
        flex = not traced and sequence and self.attn_backend == "flex" and (device.type != "cpu" or cpu_flex)
        cpu_whole = not traced and whole and device.type == "cpu"  # emit-if: distance_bias
        chunked = cpu_whole and not torch.compiler.is_compiling()  # emit-if: window
        key_positions = torch.arange(keys, device=device)
        masks: dict[int | None, torch.Tensor | Callable[..., torch.Tensor] | None] = {}
        for window in set(self.windows):
            binding = window is not None and (traced or window < keys)
            if shortcut and not binding:
                masks[window] = None
                continue
            if flex:
                score_mod = None
                if self.alibi_slopes is not None:  # emit-if: alibi
                    score_mod = alibi_score_mod(self.alibi_slopes)
                block_mask = causal_block_mask(
                    seq, keys, window if binding else None, device, prefix_lengths=prefix_lengths
                )
                masks[window] = FlexPattern(block_mask, score_mod)
                continue
            if chunked and binding and self.alibi_slopes is None:  # emit-if: window
                masks[window] = ChunkedWindow(window)  # type: ignore[arg-type]
                continue
            if cpu_whole and (binding or self.alibi_slopes is not None):  # emit-if: distance_bias
                table = torch.zeros(1, 2 * seq - 1, device=device)  # a bias by distance: 0, -inf where hidden
                if self.alibi_slopes is not None:  # emit-if: alibi
                    table = alibi_by_distance(self.alibi_slopes, seq)
                reach = window if binding else None
                masks[window] = ToeplitzBias(distance_table(table, True, reach).to(dtype), causal=True, window=reach)
                continue
            mask = causal_mask(positions, key_positions, window)
            if prefix_lengths is not None:  # emit-if: prefix_lm
                mask = prefix_mask(positions, key_positions, prefix_lengths, window)
            if self.alibi_slopes is not None:  # emit-if: alibi
                mask = additive_mask(mask, alibi_bias(self.alibi_slopes, key_positions), dtype)
            masks[window] = mask[(None,) * (4 - mask.dim())]  # 4-D: CPU SDPA is far slower with 2-D masks
        return masks

    def new_cache(
        self, batch: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> KVCache:
        """An empty static cache for `batch` sequences of up to `max_len` positions."""
        reference = self.embed.weight
        dtype, device = dtype or reference.dtype, device or reference.device
        return KVCache([layer.attn.new_cache(batch, max_len, dtype, device) for layer in self.layers])

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        *,
        prefix_lengths: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor:
        """Greedy (default) or sampled continuation with the KV cache; see `archspec.nn.generate.generate`.

        Model inputs are keywords, as in the forward pass: `prefix_lengths` ([batch]; GLM) sets each row's
        bidirectional part A; a GLM model defaults to the whole prompt as part A, generated tokens being part B.
        `eos_token_id` / `pad_token_id` default to the model's own (`archspec.build` passes the spec's `tokens`).
        """
        from archspec.nn.generate import generate

        options.setdefault("eos_token_id", self.eos_token_id)
        options.setdefault("pad_token_id", self.pad_token_id)
        if self.prefix_lm and prefix_lengths is None:  # emit-if: prefix_lm
            prefix_lengths = torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
        if prefix_lengths is not None:
            options["model_kwargs"] = {"prefix_lengths": prefix_lengths}
        return generate(self, input_ids, max_new_tokens, **options)  # type: ignore[arg-type]
