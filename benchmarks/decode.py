"""Greedy decode throughput with the KV cache: archspec vs transformers `generate`, same weights.

    python benchmarks/decode.py                                   # CPU: float32, small llama3, batch 1 and 8
    python benchmarks/decode.py --device cuda --size 8b --batches 1 # GPU: bf16, Llama-3-8B shape, random weights

Prompt 128 tokens, 128 new tokens (no early stop: the configs have no eos). Timed: the whole `generate` call
(prefill + 128 steps); tokens/s = batch * new tokens / time. Variants, run in turn:
  archspec-eager     model.generate(ids, 128)                       static cache, eager steps
  archspec-compile   model.generate(ids, 128, compile=True)         static cache, one compiled decode step
                                                                   (CUDA graphs via mode reduce-overhead on GPU)
  hf-default         reference.generate(ids, max_new_tokens=128)   transformers' default (dynamic) cache
  hf-static          ... cache_implementation="static"              transformers' static cache (compiled on GPU)
On CUDA, decode bandwidth utilisation = (weight bytes + KV bytes read per step) * steps/s over the bandwidth of a
large device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import torch


def copy_bandwidth(device: str, gib: float = 4.0) -> float:
    """Bytes/s of a large device-to-device copy (bytes read + bytes written), median of 10."""
    n = int(gib * 2**30) // 2
    src = torch.randn(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times = sorted(times[2:])
    return 2 * src.numel() * src.element_size() / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, default_repeats=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--variants", default="archspec-eager,archspec-compile,hf-default,hf-static")
    args = parser.parse_args()
    dtype_name, dtype, size = common.resolve(args)
    cuda = args.device.startswith("cuda")
    config = common.hf_config("llama3", size)
    reference, model = common.make_pair(config, dtype, args.device)
    diff = common.check_same_logits(
        reference, model, config.vocab_size, args.device, 1e-3 if dtype == torch.float32 else 1.0
    )
    bandwidth = copy_bandwidth(args.device) if cuda else None
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed.weight")
    weight_bytes += config.hidden_size * dtype.itemsize  # one embedding row per token (negligible)
    for batch in [int(b) for b in args.batches.split(",")]:
        torch.manual_seed(batch)
        ids = torch.randint(0, config.vocab_size, (batch, args.prompt), device=args.device)
        new = args.new
        outputs: dict[str, torch.Tensor] = {}

        def run(name: str, ids: torch.Tensor = ids, new: int = new, outputs: dict = outputs) -> None:
            with torch.no_grad():
                if name == "archspec-eager":
                    out = model.generate(ids, new, eos_token_id=None)
                elif name == "archspec-compile":
                    out = model.generate(ids, new, eos_token_id=None, compile=True)
                elif name == "hf-default":
                    out = reference.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
                else:
                    out = reference.generate(
                        ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static"
                    )
            outputs[name] = out

        cases = {name: (lambda name=name: run(name)) for name in args.variants.split(",")}
        results = common.interleaved(cases, args.device, repeats=args.repeats, warmup=args.warmup)
        common.print_table(
            f"decode llama3-{size} {dtype_name} batch {batch}, prompt {args.prompt} + {new} new on {args.device}",
            results,
            batch * new,
            "tok/s",
        )
        # Greedy tokens agree with transformers' (exactly in float32; bf16 rounding may flip near-ties).
        agreement = {}
        base = outputs.get("hf-default")
        for name, out in outputs.items():
            if base is not None and out.shape == base.shape:
                agreement[name] = (out[:, args.prompt :] == base[:, args.prompt :]).float().mean().item()
            else:
                agreement[name] = None
        ratios: dict[str, Any] = common.ratios(
            results,
            [
                ("archspec-eager", "hf-default"),
                ("archspec-eager", "hf-static"),
                ("archspec-compile", "hf-default"),
                ("archspec-compile", "hf-static"),
            ],
        )
        for r in results.values():
            if "median_s" in r:
                r["tokens_per_s"] = batch * new / r["median_s"]
        if bandwidth is not None:
            head_dim = config.hidden_size // config.num_attention_heads
            kv_per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize
            # archspec's static cache is read in full each step (prompt + new positions); count what is needed:
            mean_context = args.prompt + new / 2
            bytes_per_step = weight_bytes + batch * kv_per_position * mean_context
            ratios["copy_bandwidth_TBps"] = bandwidth / 1e12
            ratios["bandwidth_utilisation"] = {
                name: bytes_per_step * new / r["median_s"] / bandwidth for name, r in results.items() if "median_s" in r
            }
        for key, value in ratios.items():
            print(f"  {key}: {value if not isinstance(value, float) else round(value, 3)}")
        print(f"  greedy-token agreement with hf-default: {agreement}")
        record = {
            **common.environment(args.device),
            "benchmark": "decode",
            "size": size,
            "dtype": dtype_name,
            "batch": batch,
            "prompt": args.prompt,
            "new_tokens": new,
            "parity_max_logit_diff": diff,
            "token_agreement": agreement,
            "results": results,
            "ratios": ratios,
        }
        if not args.no_save:
            common.append_result("decode", record)


if __name__ == "__main__":
    main()
