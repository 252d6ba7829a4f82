"""Training-step throughput (forward + backward, optimizer step excluded): archspec vs transformers.

    python benchmarks/train_step.py                          # CPU: float32, small llama3 / mixtral / t5
    python benchmarks/train_step.py --device cuda --families llama3 --batch 4 --seq 2048   # GPU: bf16, ~1B

Four variants per family, same weights, dtype, batch and sequence length, run in turn: archspec eager,
archspec torch.compile, transformers eager (sdpa), transformers torch.compile. Each step is
`loss = model(ids, labels=ids).loss; loss.backward()` (the models' own loss, router aux loss included for MoE),
with gradients dropped (`set_to_none`) before each step. On CUDA the model FLOPs utilisation is reported:
6 * (non-embedding matmul params) + 12 * layers * d_model * seq (causal attention counted in full, as in the
PaLM appendix) FLOPs per token, over --peak-tflops.
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import torch


def train_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """One forward + backward; T5 derives its decoder input from the labels (shifted right) on both sides."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids) if _is_archspec(model) else model(input_ids=ids, labels=ids)
    out.loss.backward()


def _is_archspec(model: torch.nn.Module) -> bool:
    inner = getattr(model, "_orig_mod", model)
    return hasattr(inner, "spec")


def flops_per_token(config: Any, seq: int) -> float:
    """Training FLOPs per token of a llama-style decoder (6N matmuls + causal-attention scores counted fully)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    ff = config.intermediate_size
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * ff
    matmul_params = layers * per_layer + d * config.vocab_size  # + the head (input embedding is a lookup)
    return 6 * matmul_params + 12 * layers * d * seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--families", default="llama3,mixtral,t5")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--variants", default="archspec-eager,archspec-compile,hf-sdpa,hf-sdpa-compile")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    args = parser.parse_args()
    dtype_name, dtype, size = common.resolve(args)
    cuda = args.device.startswith("cuda")
    batch = args.batch or (4 if cuda else 2)
    seq = args.seq or (2048 if cuda else 128)
    variants = args.variants.split(",")
    torch.manual_seed(0)
    for family in args.families.split(","):
        overrides = {"dropout_rate": 0.0} if family == "t5" else {}
        config = common.hf_config(family, size if family == "llama3" else "small", **overrides)
        reference, model = common.make_pair(config, dtype, args.device)
        diff = common.check_same_logits(
            reference, model, config.vocab_size, args.device, 1e-3 if dtype == torch.float32 else 0.5
        )
        reference.train()
        model.train()
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=args.device)
        candidates = {
            "archspec-eager": model,
            "archspec-compile": torch.compile(model),
            "hf-sdpa": reference,
            "hf-sdpa-compile": torch.compile(reference),
        }
        cases = {name: (lambda m=candidates[name], ids=ids: train_step(m, ids)) for name in variants}
        results = common.interleaved(cases, args.device, repeats=args.repeats, warmup=args.warmup)
        tokens = batch * seq
        common.print_table(
            f"train step {family}-{size if family == 'llama3' else 'small'} {dtype_name} batch {batch} seq {seq} on {args.device}",
            results,
            tokens,
            "tok/s",
        )
        summary: dict[str, Any] = common.ratios(
            results,
            [
                ("archspec-eager", "hf-sdpa"),
                ("archspec-compile", "hf-sdpa-compile"),
                ("archspec-compile", "hf-sdpa"),
            ],
        )
        if cuda and family == "llama3":
            flops = flops_per_token(config, seq) * tokens
            summary["mfu"] = {
                name: flops / r["median_s"] / (args.peak_tflops * 1e12)
                for name, r in results.items()
                if "median_s" in r
            }
        for key, value in summary.items():
            print(f"  {key}: {value if not isinstance(value, float) else round(value, 3)}")
        for r in results.values():
            if "median_s" in r:
                r["tokens_per_s"] = tokens / r["median_s"]
        record = {
            **common.environment(args.device),
            "benchmark": "train_step",
            "family": family,
            "size": size if family == "llama3" else "small",
            "dtype": dtype_name,
            "batch": batch,
            "seq": seq,
            "parity_max_logit_diff": diff,
            "results": results,
            "ratios": summary,
        }
        if not args.no_save:
            common.append_result("train_step", record)
        del reference, model, candidates, cases
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
