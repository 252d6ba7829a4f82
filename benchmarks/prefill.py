"""Prefill (forward pass, no grad) latency at 512 and 2048 tokens: archspec vs transformers, same weights.

    python benchmarks/prefill.py                       # CPU: float32, small llama3, batch 1
    python benchmarks/prefill.py --device cuda         # GPU: bf16, ~1B llama3
    python benchmarks/prefill.py --family gemma2 --variants archspec-eager,hf-eager   # soft-capped attention
    python benchmarks/prefill.py --family gpt_oss --variants archspec-eager,hf-eager  # attention sinks

Variants, run in turn: archspec eager, archspec torch.compile, transformers eager (sdpa), transformers compile;
hf-eager / hf-eager-compile: transformers' eager attention (Gemma 2's and gpt-oss's only path on CPU: SDPA cannot
soft-cap scores or add sinks).
The forward returns logits for every position on both sides (as `model(ids)` does).
"""

from __future__ import annotations

import argparse

import common
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--family", default="llama3", choices=["llama3", "gemma2", "gpt_oss"])
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", default="archspec-eager,archspec-compile,hf-sdpa,hf-sdpa-compile")
    args = parser.parse_args()
    dtype_name, dtype, size = common.resolve(args)
    config = common.hf_config(args.family, size)
    variants = args.variants.split(",")
    attn = "eager" if any(name.startswith("hf-eager") for name in variants) else "sdpa"
    reference, model = common.make_pair(config, dtype, args.device, attn=attn)
    diff = common.check_same_logits(
        reference, model, config.vocab_size, args.device, 1e-3 if dtype == torch.float32 else 1.0
    )
    hf = f"hf-{attn}"
    compiled = {
        "archspec-compile": torch.compile(model, dynamic=False),
        f"{hf}-compile": torch.compile(reference, dynamic=False),
    }
    models = {"archspec-eager": model, hf: reference, **compiled}
    for length in [int(n) for n in args.lengths.split(",")]:
        ids = torch.randint(0, config.vocab_size, (args.batch, length), device=args.device)

        def forward(m: torch.nn.Module, ids: torch.Tensor = ids) -> None:
            with torch.no_grad():
                m(ids)

        cases = {name: (lambda m=models[name]: forward(m)) for name in variants}
        results = common.interleaved(cases, args.device, repeats=args.repeats, warmup=args.warmup)
        common.print_table(
            f"prefill {args.family}-{size} {dtype_name} batch {args.batch} x {length} on {args.device}",
            results,
            args.batch * length,
            "tok/s",
        )
        ratios = common.ratios(results, [("archspec-eager", hf), ("archspec-compile", f"{hf}-compile")])
        for key, value in ratios.items():
            print(f"  {key}: {value if value is None else round(value, 3)}")
        for r in results.values():
            if "median_s" in r:
                r["latency_ms"] = r["median_s"] * 1e3
        record = {
            **common.environment(args.device),
            "benchmark": "prefill",
            "family": args.family,
            "size": size,
            "dtype": dtype_name,
            "batch": args.batch,
            "seq": length,
            "parity_max_logit_diff": diff,
            "results": results,
            "ratios": ratios,
        }
        if not args.no_save:
            common.append_result("prefill", record)


if __name__ == "__main__":
    main()
