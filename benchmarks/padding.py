"""Documents of different lengths: a padded batch vs one packed row, archspec vs transformers, training steps.

    python benchmarks/padding.py                     # CPU: float32, small llama3, 12 documents of 16 .. 160 tokens
    python benchmarks/padding.py --device cuda --size 1b --documents 32 --longest 2048

The same documents (lengths drawn once from the seed) go through a training step (forward + backward of the
model's own loss) two ways, on both libraries with the same weights, run in turn:

- padded: one row per document, right-padded to the longest, `model(ids, attention_mask=m, labels=ids)` with the
  padded labels -100 (transformers) or left to the mask (archspec, which ignores padded pairs itself);
- packed: the documents concatenated into one row with positions restarting at each, `model(ids,
  position_ids=p, labels=l)` with -100 at each document's first label, as transformers'
  `DataCollatorWithFlattening` writes it (transformers then builds block-diagonal masks, with `use_cache=False`:
  its default empty cache turns the detection off; archspec builds them too, or a FlexAttention block mask on its
  flex backend).

Reported: real (non-pad) tokens per second of each variant, and the ratios archspec / transformers for each way
and packed / padded for each library. Both ways compute the same loss (checked, within float32 rounding).
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import torch


def document_lengths(count: int, shortest: int, longest: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(shortest, longest + 1, (count,), generator=generator).tolist()


def padded_batch(documents: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    width = max(len(d) for d in documents)
    ids = torch.zeros(len(documents), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, document in enumerate(documents):
        ids[row, : len(document)], mask[row, : len(document)] = document, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def packed_row(documents: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.cat(documents)[None]
    positions = torch.cat([torch.arange(len(d)) for d in documents])[None]
    return {"input_ids": ids, "position_ids": positions, "labels": ids.masked_fill(positions == 0, -100)}


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    inner = getattr(model, "_orig_mod", model)
    if hasattr(inner, "spec"):  # archspec: input ids positional, the rest keywords
        inputs = dict(batch)
        loss = model(inputs.pop("input_ids"), **inputs).loss
    else:  # without a cache: transformers detects packed positions only when no (even empty) cache is passed
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--shortest", type=int, default=16)
    parser.add_argument("--longest", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dtype_name, dtype, size = common.resolve(args)
    torch.manual_seed(args.seed)
    config = common.hf_config("llama3", size)
    reference, model = common.make_pair(config, dtype, args.device)
    diff = common.check_same_logits(
        reference, model, config.vocab_size, args.device, 1e-3 if dtype == torch.float32 else 0.5
    )
    reference.train()
    model.train()
    lengths = document_lengths(args.documents, args.shortest, args.longest, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    documents = [torch.randint(0, config.vocab_size, (n,), generator=generator) for n in lengths]
    ways = {
        "padded": {k: v.to(args.device) for k, v in padded_batch(documents).items()},
        "packed": {k: v.to(args.device) for k, v in packed_row(documents).items()},
    }
    losses = {
        f"{library}-{way}": float(train_step(m, batch))
        for library, m in (("archspec", model), ("hf", reference))
        for way, batch in ways.items()
    }
    spread = max(losses.values()) - min(losses.values())
    if not spread <= (1e-3 if dtype == torch.float32 else 0.1):
        raise RuntimeError(f"the four ways disagree on the loss: {losses}")
    cases = {
        f"{library}-{way}": (lambda m=m, batch=batch: train_step(m, batch))
        for library, m in (("archspec", model), ("hf", reference))
        for way, batch in ways.items()
    }
    results = common.interleaved(cases, args.device, repeats=args.repeats, warmup=args.warmup)
    tokens = sum(lengths)
    padded_tokens = len(lengths) * max(lengths)
    common.print_table(
        f"train step llama3-{size} {dtype_name}: {len(lengths)} documents, {tokens} tokens "
        f"({padded_tokens} padded) on {args.device}",
        results,
        tokens,
        "real tok/s",
    )
    summary: dict[str, Any] = common.ratios(
        results,
        [
            ("archspec-padded", "hf-padded"),
            ("archspec-packed", "hf-packed"),
            ("archspec-packed", "archspec-padded"),
            ("hf-packed", "hf-padded"),
        ],
    )
    for key, value in summary.items():
        print(f"  {key}: {value if not isinstance(value, float) else round(value, 3)}")
    for r in results.values():
        if "median_s" in r:
            r["tokens_per_s"] = tokens / r["median_s"]
    record = {
        **common.environment(args.device),
        "benchmark": "padding",
        "family": "llama3",
        "size": size,
        "dtype": dtype_name,
        "document_lengths": lengths,
        "real_tokens": tokens,
        "padded_tokens": padded_tokens,
        "parity_max_logit_diff": diff,
        "losses": losses,
        "results": results,
        "ratios": summary,
    }
    if not args.no_save:
        common.append_result("padding", record)


if __name__ == "__main__":
    main()
