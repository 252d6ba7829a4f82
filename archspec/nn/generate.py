"""Decoding loops: greedy by default, optional temperature / top-k / top-p sampling, with a static KV cache."""

import torch
import torch.nn.functional as F

from archspec.nn.cache import KVCache
from archspec.nn.positions import positions_from_mask


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
    attention_mask: torch.Tensor | None = None,  # emit-if: !encoder_decoder
    use_cache: bool = True,  # emit-if: library
    compile: bool = False,  # emit-if: library
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
    table = getattr(model, "pos_embed", None)  # emit-if: learned_positions
    if table is not None and total > table.num_embeddings:  # emit-if: learned_positions
        raise ValueError(
            f"prompt + max_new_tokens = {total} exceeds the learned position table ({table.num_embeddings})"
        )
    stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    stop = torch.tensor(stops, dtype=torch.long, device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(stop[0]) if len(stop) else 0)
    cache = model.new_cache(batch, total)  # type: ignore[operator]
    step_fn = None  # emit-if: library
    if compile and use_cache:  # emit-if: library
        # one compiled step for every position (CUDA graphs on GPU)
        step_fn = _compiled_step(model, input_ids.device)
        cache = _reusable_cache(model, batch, total) if step_fn is not None else cache
    if not use_cache:  # emit-if: library
        cache = None  # each step recomputes the whole sequence: the reference the cache is tested against
    tokens = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    prompt = dict(model_inputs)
    mask = position = None  # the padding mask of every slot, the next position per row  # emit-if: !encoder_decoder
    if attention_mask is not None:  # emit-if: !encoder_decoder
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
        if cache is None:  # emit-if: library
            if mask is not None:
                inputs |= {"attention_mask": mask[:, : tokens.shape[1]]}
                inputs |= {"position_ids": positions_from_mask(mask[:, : tokens.shape[1]])}
            logits = model(tokens, logits_to_keep=1, **inputs).logits[:, -1]
            continue
        if step_fn is not None:  # emit-if: library
            if mask is not None:  # emit-if: !encoder_decoder
                inputs |= {"attention_mask": mask, "position_ids": position}
                position = position + 1
            slot = torch.full((1,), cache.length, dtype=torch.long, device=input_ids.device)
            logits = step_fn(model, next_token[:, None], cache, slot, inputs)
            cache.length += 1
            continue
        if mask is not None:  # emit-if: !encoder_decoder
            inputs |= {"attention_mask": mask[:, : cache.length + 1], "position_ids": position}
            position = position + 1
        logits = model(next_token[:, None], cache=cache, logits_to_keep=1, **inputs).logits[:, -1]
    return tokens


def _decode_step(  # emit-if: library
    model: torch.nn.Module,
    token: torch.Tensor,
    cache: KVCache,
    positions: torch.Tensor,
    model_inputs: dict[str, torch.Tensor],
) -> torch.Tensor:
    return model(token, cache=cache, positions=positions, logits_to_keep=1, **model_inputs).logits[:, -1]


_COMPILED_STEPS: dict[str, object] = {}  # emit-if: library


def _compiled_step(model: torch.nn.Module, device: torch.device):  # noqa: ANN202  # emit-if: library
    """The compiled decode step (one per compile mode), or None for models whose forward needs the sequence
    length as a number (dynamic NTK RoPE) and so cannot take positions as a tensor."""
    rotary = getattr(model, "rotary", None)
    if getattr(rotary, "dynamic_ntk", None) is not None or not hasattr(model, "new_cache"):
        return None
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _COMPILED_STEPS:
        _COMPILED_STEPS[mode] = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED_STEPS[mode]


def _reusable_cache(model: torch.nn.Module, batch: int, total: int) -> KVCache:  # emit-if: library
    """A static cache for compiled decoding, kept on the model and reused by calls of the same shape.

    Its tensors get fixed addresses (what CUDA graphs replay against), so reuse avoids a recompile per call.
    Stale slots need no clearing: slot t is written at position t before any query can attend to it.
    """
    caches: dict[tuple[int, int], KVCache] = model.__dict__.setdefault("_decode_caches", {})
    cache = caches.get((batch, total))
    if cache is None:
        cache = model.new_cache(batch, total)  # type: ignore[operator]
        for layer in cache.layers:
            for tensor in vars(layer).values():
                if isinstance(tensor, torch.Tensor):
                    torch._dynamo.mark_static_address(tensor)
        caches[(batch, total)] = cache
    cache.length = 0
    return cache


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
