"""The decoder-only language model: embeddings -> blocks -> final norm -> head, with a KV cache and `generate`."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archspec.nn.activations import soft_cap
from archspec.nn.attend import AttentionPaths
from archspec.nn.cache import KVCache
from archspec.nn.generate import generate
from archspec.nn.moe import RouterLoss, RouterStats
from archspec.nn.positions import Context, packed_documents


@dataclass
class LMOutput:
    """What a forward pass returns: logits [batch, seq, vocab], and the loss when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # the router's balance loss (in `loss` times its coefficient)  # emit-if: moe
    z_loss: torch.Tensor | None = None  # the router's z-loss (likewise)  # emit-if: moe


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
        rotary: nn.Module | None = None,  # emit-if: rope,!layer_positions
        layer_rotary: nn.Module | None = None,  # layers that differ in positions  # emit-if: layer_positions
        pos_embed: nn.Embedding | None = None,  # emit-if: learned_positions
        embed_norm: nn.Module | None = None,  # emit-if: embed_norm
        router_loss: RouterLoss | None = None,  # emit-if: moe
        tied: bool = False,  # emit-if: library
        prefix_lm: bool = False,  # emit-if: prefix_lm
        embed_scale: float | None = None,  # emit-if: embed_scale
        embed_scale_in_dtype: bool = False,  # the scale rounded to the activations' dtype  # emit-if: embed_scale_in_dtype
        logit_scale: float = 1.0,  # emit-if: logit_scale
        logit_softcap: float | None = None,  # emit-if: logit_softcap
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.embed_scale = embed_scale  # emit-if: embed_scale
        self.embed_scale_in_dtype = embed_scale_in_dtype  # emit-if: embed_scale_in_dtype
        self.logit_scale = logit_scale  # emit-if: logit_scale
        self.logit_softcap = logit_softcap  # emit-if: logit_softcap
        self.pos_embed = pos_embed  # emit-if: learned_positions
        self.embed_norm = embed_norm  # emit-if: embed_norm
        self.layers = nn.ModuleList(layers)
        self.final_norm, self.lm_head = final_norm, lm_head
        if tied:  # emit-when: tied
            self.lm_head.weight = self.embed.weight
        self.attention = attention
        self.rotary = rotary  # emit-if: rope,!layer_positions
        self.layer_rotary = layer_rotary  # emit-if: layer_positions
        self.router_loss = router_loss  # emit-if: moe
        self.prefix_lm = prefix_lm  # emit-if: prefix_lm
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
        positions: torch.Tensor | None = None,  # emit-if: library
        prefix_lengths: torch.Tensor | None = None,  # [batch]: each row's bidirectional part A  # emit-if: prefix_lm
        inputs_embeds: torch.Tensor | None = None,  # the embeddings with images spliced in  # emit-if: vision
    ) -> LMOutput:
        """`labels` [batch, seq]: the next-token loss (shifted inside; -100 is ignored). `logits_to_keep` > 0: the
        logits of the last that many positions only (decoding needs the last one). The queries continue the cache.

        `attention_mask` [batch, past + seq] (1: token, 0: padding, left or right, as in transformers): padded keys
        are never attended, padded positions are out of the loss. `position_ids` [batch, seq] (default: the slots);
        without a mask or cache, positions restarting in a row mark packed documents, as `document_ids` [batch,
        past + seq] do: no attention and no loss across documents."""
        batch, seq = input_ids.shape
        explicit = positions is not None  # emit-if: library
        if positions is None:  # emit-when: !library
            past = cache.length if cache is not None else 0
            positions = torch.arange(past, past + seq, device=input_ids.device)
            keys = past + seq
        else:
            # `positions` ([seq], a tensor): a compiled decoding step (generate(compile=True)), one graph for every
            # position: the whole static cache under a mask, its shape fixed; the caller advances cache.length
            keys = cache.max_len  # type: ignore[union-attr]
        x = self.embed(input_ids)
        if self.embed_scale is not None:  # emit-when: embed_scale
            scale = self.embed_scale
            if self.embed_scale_in_dtype:  # emit-when: embed_scale_in_dtype
                scale = torch.tensor(scale, dtype=x.dtype)  # rounded as the activations are (Gemma)
            x = x * scale
        if inputs_embeds is not None:  # emit-if: vision
            x = inputs_embeds
        if self.pos_embed is not None:  # emit-when: learned_positions
            x = x + self.pos_embed(positions if position_ids is None else position_ids)
        if self.embed_norm is not None:  # emit-when: embed_norm
            x = self.embed_norm(x)
        context = Context(
            positions,
            keys,
            rows=batch,
            dtype=x.dtype,  # emit-if: rope|distance_bias
            prefix_lengths=prefix_lengths,  # emit-if: prefix_lm
            position_ids=position_ids,
        )
        context.key_mask, context.documents = self._masks(
            attention_mask, position_ids, document_ids, cache, batch, keys
        )
        context.at_end = not explicit  # emit-if: library
        if self.rotary is not None:  # emit-when: rope,!layer_positions
            context.rope = self.rotary(context)
        if self.layer_rotary is not None:  # emit-if: layer_positions
            ropes = self.layer_rotary(context)
        attends = self.attention(context)
        routers: list[RouterStats] = []  # emit-if: moe
        for index, layer in enumerate(self.layers):
            if self.layer_rotary is not None:  # emit-when: layer_positions
                context.rope = ropes[index]
            x = layer(x, context, attends[index], cache.layers[index] if cache is not None else None)
            if isinstance(x, tuple):  # emit-if: moe
                x, stats = x
                routers.append(stats)
        if cache is not None:
            if not explicit:  # emit-when: !library
                cache.length = keys
        if labels is None and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.final_norm(x))
        if self.logit_scale != 1.0:  # emit-when: logit_scale
            logits = logits * self.logit_scale
        if self.logit_softcap is not None:  # emit-when: logit_softcap
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
        if self.router_loss is not None:  # emit-when: moe
            aux, z = self.router_loss(routers, None if attention_mask is None else attention_mask[:, -seq:].bool())
            total = loss + self.router_loss.aux_coef * aux + self.router_loss.z_coef * z
            return LMOutput(logits=logits, loss=total, aux_loss=aux, z_loss=z)
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

    @property  # emit-if: library
    def attn_backend(self) -> str:
        """ "sdpa" (the default paths) or "flex": whole sequences through FlexAttention (see `AttentionPaths`)."""
        return self.attention.backend

    @attn_backend.setter  # emit-if: library
    def attn_backend(self, backend: str) -> None:
        if backend not in ("sdpa", "flex"):
            raise ValueError(f"attn_backend must be 'sdpa' or 'flex', not {backend!r}")
        self.attention.backend = backend

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
        if self.prefix_lm and options.get("prefix_lengths") is None:  # GLM's part A: the prompt  # emit-if: prefix_lm
            options["prefix_lengths"] = torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
        return generate(self, input_ids, max_new_tokens, **options)  # type: ignore[arg-type]
