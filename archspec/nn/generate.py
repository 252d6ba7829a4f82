"""Decoding loops: greedy by default, optional temperature / top-k / top-p sampling, with a static KV cache."""

import torch

from archspec.nn.cache import KVCache


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
    use_cache: bool = True,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each row of `input_ids` ([batch, seq]) and return [batch, seq + n].

    Rows that produced `eos_token_id` are padded with `pad_token_id` (or eos) afterwards, and decoding stops
    early once every row has finished, as `transformers`' generate does. `use_cache=False` recomputes the whole
    sequence at each step (the reference the cache is tested against).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    batch, seq = input_ids.shape
    total = seq + max_new_tokens
    context_length = getattr(model, "context_length", None)
    if context_length is not None and getattr(model, "pos_embed", None) is not None and total > context_length:
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds the learned position table ({context_length})")
    stop = torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), device=input_ids.device
    )
    pad = pad_token_id if pad_token_id is not None else (int(stop[0]) if len(stop) else 0)
    cache: KVCache | None = model.new_cache(batch, total) if use_cache else None  # type: ignore[operator]
    tokens = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    logits = model(input_ids, cache=cache).logits[:, -1]
    for step in range(max_new_tokens):
        next_token = _pick(logits, do_sample, temperature, top_k, top_p, generator)
        if len(stop):
            next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
            finished = finished | torch.isin(next_token, stop)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
        if step == max_new_tokens - 1 or (len(stop) and bool(finished.all())):
            break
        step_input = next_token[:, None] if cache is not None else tokens
        logits = model(step_input, cache=cache).logits[:, -1]
    return tokens


def _pick(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
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
