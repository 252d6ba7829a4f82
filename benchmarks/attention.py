"""Attention patterns without [seq, seq] tensors: sliding window, ALiBi and T5's relative bias, forward (no grad).

    python benchmarks/attention.py                       # CPU: float32, batch 1, 8 heads of 64, seq 4096
    python benchmarks/attention.py --parts window --seq 8192 --window 2048

One attention call on random q/k/v ([batch, heads, seq, head_dim]), each variant the function archspec's layers
call, run in turn (medians; thread CPU time on one-thread CPU runs):

  window (causal, each query sees itself and the window - 1 keys before it):
    dense causal         SDPA is_causal over the whole sequence: the work a window should cut
    window mask          SDPA with a boolean [seq, seq] mask (archspec's path while training, and before)
    window chunked       archspec.nn.attention.ChunkedWindow: one SDPA call over chunks of 64 queries, each
                         over its own overlapping span of keys (an unfold view), one [64, 64 + window - 1] mask
                         shared by all chunks (archspec's CPU default, eager)
    window toeplitz      ToeplitzBias over each query chunk's visible keys, mask a view of a [2 seq - 1] table
                         (archspec's CPU path under torch.compile, as one call over every key)
    window flex          FlexPattern(causal_block_mask(..., window)) under torch.compile (attn_backend="flex")
  alibi (causal, BLOOM's slopes):
    materialised bias    SDPA with the additive [heads, seq, seq] float mask (causal -inf + bias; archspec before)
    toeplitz view        archspec.nn.attention.ToeplitzBias: SDPA reads a zero-copy view of a [heads, 2 seq - 1]
                         bias by distance, per chunk of 384 queries over the keys they see (archspec's CPU default)
    flex score_mod       FlexPattern(causal block mask, alibi_score_mod) under torch.compile
  t5 (encoder: bidirectional, 32 buckets, max distance 128):
    materialised bias    SDPA with RelativePositionBias(...)(positions, positions): [heads, seq, seq]
    toeplitz view        ToeplitzBias(RelativePositionBias.by_distance(seq, seq)) (archspec's default)
    flex score_mod       FlexPattern(None, relative_bias_score_mod(table, ...)) under torch.compile

Masks and biases are built before timing (the models build them once per forward for every layer); building them
is timed separately. `window-train`: the window variants with a backward, forward + backward (gradients of q, k,
v checked too). Peak memory is the most the CPU allocator held during one call, bias construction included
(torch.profiler's memory events), above what was allocated before it. All variants are checked against the
materialised/mask reference before timing
(dense causal is the baseline of a different pattern). FlexAttention has no CPU backward, hence forward only.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import common
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from archspec.nn.attention import (
    ChunkedWindow,
    FlexPattern,
    ToeplitzBias,
    alibi_score_mod,
    causal_block_mask,
    distance_table,
    relative_bias_score_mod,
)
from archspec.nn.masks import additive_mask, causal_mask
from archspec.nn.positions import RelativePositionBias, alibi_bias, alibi_by_distance, alibi_slopes


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Most bytes the CPU allocator held during fn() above what it held before (torch.profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as handle:
            events = [e for e in json.load(handle)["traceEvents"] if e.get("name") == "[memory]"]
    if not events:
        return 0
    totals = [(e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in events]
    before = totals[0][0] - totals[0][1]
    return max(total for total, _ in totals) - before


def compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return torch.compile(fn, fullgraph=True, dynamic=False)


def window_cases(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, block: int) -> dict[str, Any]:
    seq, scale = q.shape[2], q.shape[-1] ** -0.5
    positions = torch.arange(seq)
    start = time.perf_counter()
    mask = causal_mask(positions, positions, window)[None, None]
    build = {"window mask": time.perf_counter() - start}
    start = time.perf_counter()
    pattern = FlexPattern(causal_block_mask(seq, seq, window, q.device, block))
    build["window flex"] = time.perf_counter() - start
    chunked = ChunkedWindow(window)

    def toeplitz_pattern() -> ToeplitzBias:
        table = distance_table(torch.zeros(1, 2 * seq - 1, dtype=q.dtype, device=q.device), True, window)
        return ToeplitzBias(table, causal=True, window=window)

    start = time.perf_counter()
    toeplitz = toeplitz_pattern()
    build["window toeplitz"] = time.perf_counter() - start
    flex = compiled(lambda q, k, v: pattern(q, k, v, scale))
    return {
        "cases": {
            "dense causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale),
            "window mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
            "window chunked": lambda: chunked(q, k, v, scale),
            "window toeplitz": lambda: toeplitz(q, k, v, scale),
            "window flex": lambda: flex(q, k, v),
        },
        "reference": "window mask",
        "memory": {
            "window mask": lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=causal_mask(positions, positions, window)[None, None], scale=scale
            ),
            "window chunked": lambda: chunked(q, k, v, scale),
            "window toeplitz": lambda: toeplitz_pattern()(q, k, v, scale),
            "window flex": compiled(
                lambda: FlexPattern(causal_block_mask(seq, seq, window, q.device, block))(q, k, v, scale)
            ),
        },
        "build_s": build,
        "pairs": [
            ("window chunked", "dense causal"),
            ("window toeplitz", "dense causal"),
            ("window flex", "dense causal"),
            ("window chunked", "window mask"),
            ("window toeplitz", "window mask"),
            ("window flex", "window mask"),
        ],
    }


def window_train_cases(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> dict[str, Any]:
    """Forward + backward of the window paths that have a backward (FlexAttention has none on CPU)."""
    seq, scale = q.shape[2], q.shape[-1] ** -0.5
    positions = torch.arange(seq)
    mask = causal_mask(positions, positions, window)[None, None]
    table = distance_table(torch.zeros(1, 2 * seq - 1, dtype=q.dtype, device=q.device), True, window)
    toeplitz, chunked = ToeplitzBias(table, causal=True, window=window), ChunkedWindow(window)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    grad_out = torch.randn_like(q)

    def train(attention: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            with torch.enable_grad():
                out = attention(*leaves)
                out.backward(grad_out)
            grads = [t.grad.flatten() for t in leaves]  # type: ignore[union-attr]
            for t in leaves:
                t.grad = None
            return torch.cat([out.detach().flatten(), *grads])

        return step

    cases = {
        "dense causal": train(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)),
        "window mask": train(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)),
        "window chunked": train(lambda q, k, v: chunked(q, k, v, scale)),
        "window toeplitz": train(lambda q, k, v: toeplitz(q, k, v, scale)),
    }
    return {
        "cases": cases,
        "reference": "window mask",
        "memory": {name: cases[name] for name in ("window mask", "window chunked", "window toeplitz")},
        "build_s": {},
        "pairs": [
            ("window chunked", "dense causal"),
            ("window toeplitz", "dense causal"),
            ("window chunked", "window mask"),
            ("window toeplitz", "window mask"),
        ],
    }


def alibi_cases(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> dict[str, Any]:
    seq, heads, scale = q.shape[2], q.shape[1], q.shape[-1] ** -0.5
    slopes = alibi_slopes(heads)
    positions = torch.arange(seq)

    def bias() -> torch.Tensor:
        return additive_mask(causal_mask(positions, positions), alibi_bias(slopes, positions), q.dtype)[None]

    start = time.perf_counter()
    materialised = bias()
    build = {"materialised bias": time.perf_counter() - start}
    start = time.perf_counter()
    toeplitz = ToeplitzBias(distance_table(alibi_by_distance(slopes, seq), True).to(q.dtype), causal=True)
    build["toeplitz view"] = time.perf_counter() - start
    start = time.perf_counter()
    pattern = FlexPattern(causal_block_mask(seq, seq, None, q.device, block), alibi_score_mod(slopes))
    build["flex score_mod"] = time.perf_counter() - start
    flex = compiled(lambda q, k, v: pattern(q, k, v, scale))
    return {
        "cases": {
            "materialised bias": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=materialised, scale=scale),
            "toeplitz view": lambda: toeplitz(q, k, v, scale),
            "flex score_mod": lambda: flex(q, k, v),
        },
        "reference": "materialised bias",
        "memory": {
            "materialised bias": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias(), scale=scale),
            "toeplitz view": lambda: ToeplitzBias(
                distance_table(alibi_by_distance(slopes, seq), True).to(q.dtype), causal=True
            )(q, k, v, scale),
            "flex score_mod": compiled(
                lambda: FlexPattern(causal_block_mask(seq, seq, None, q.device, block), alibi_score_mod(slopes))(
                    q, k, v, scale
                )
            ),
        },
        "build_s": build,
        "pairs": [("toeplitz view", "materialised bias"), ("flex score_mod", "materialised bias")],
        # BLOOM's slope * key reaches ~2000 at 4096 positions, where a float32 step is 1.2e-4: the materialised
        # bias is itself off by ~1e-4 from float64 attention; slope * (key - query), small near the diagonal,
        # is within ~1e-6 of it. The check allows the reference's own error.
        "tolerance": 1e-3,
    }


def t5_cases(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    seq, heads = q.shape[2], q.shape[1]
    torch.manual_seed(0)
    relative = RelativePositionBias(heads, buckets=32, max_distance=128, bidirectional=True).to(q.dtype)
    torch.nn.init.normal_(relative.table.weight)
    relative.requires_grad_(False)
    positions = torch.arange(seq)
    start = time.perf_counter()
    materialised = relative(positions, positions)[None]
    build = {"materialised bias": time.perf_counter() - start}
    start = time.perf_counter()
    toeplitz = ToeplitzBias(relative.by_distance(seq, seq))
    build["toeplitz view"] = time.perf_counter() - start
    score_mod = relative_bias_score_mod(relative.table.weight, True, relative.buckets, relative.max_distance)
    flex = compiled(lambda q, k, v: FlexPattern(None, score_mod)(q, k, v, 1.0))
    return {
        "cases": {
            "materialised bias": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=materialised, scale=1.0),
            "toeplitz view": lambda: toeplitz(q, k, v, 1.0),
            "flex score_mod": lambda: flex(q, k, v),
        },
        "reference": "materialised bias",
        "memory": {
            "materialised bias": lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=relative(positions, positions)[None], scale=1.0
            ),
            "toeplitz view": lambda: ToeplitzBias(relative.by_distance(seq, seq))(q, k, v, 1.0),
            "flex score_mod": lambda: flex(q, k, v),
        },
        "build_s": build,
        "pairs": [("toeplitz view", "materialised bias"), ("flex score_mod", "materialised bias")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--parts", default="window,window-train,alibi,t5")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128, help="FlexAttention block size")
    args = parser.parse_args()
    dtype_name, dtype, _ = common.resolve(args)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v = (torch.randn(shape, device=args.device, dtype=dtype) for _ in range(3))
    for part in args.parts.split(","):
        with torch.no_grad():
            if part == "window":
                setup = window_cases(q, k, v, args.window, args.block)
            elif part == "window-train":
                setup = window_train_cases(q, k, v, args.window)
            elif part == "alibi":
                setup = alibi_cases(q, k, v, args.block)
            elif part == "t5":
                setup = t5_cases(q, k, v)
            else:
                raise SystemExit(f"unknown part {part!r}")
            cases = setup["cases"]
            reference = cases[setup["reference"]]()
            errors = {}
            for name, fn in cases.items():
                start = time.perf_counter()
                out = fn()  # the first call compiles the flex variants
                errors[name] = {
                    "max_abs_diff": (out.float() - reference.float()).abs().max().item(),
                    "first_call_s": time.perf_counter() - start,
                }
                tolerance = setup.get("tolerance", 1e-4) if dtype == torch.float32 else 5e-2
                if name != "dense causal" and errors[name]["max_abs_diff"] > tolerance:
                    raise RuntimeError(f"{part}: {name} differs from {setup['reference']}: {errors[name]}")
            del reference, out
            results = common.interleaved(cases, args.device, repeats=args.repeats, warmup=args.warmup)
            memory = {name: peak_bytes(fn) for name, fn in setup["memory"].items()}
        title = f"attention {part}: batch {args.batch}, {args.heads} heads x {args.head_dim}, seq {args.seq}"
        if part.startswith("window"):
            title += f", window {args.window}"
        direction = "forward + backward" if part == "window-train" else "forward"
        common.print_table(
            f"{title}, {dtype_name} on {args.device} ({direction})", results, args.batch * args.seq, "tok/s"
        )
        ratios = common.ratios(results, setup["pairs"])
        for key, value in ratios.items():
            print(f"  {key}: {value if value is None else round(value, 3)}")
        for name, value in memory.items():
            print(f"  peak memory {name}: {value / 2**20:.1f} MiB")
        for name, value in setup["build_s"].items():
            print(f"  build {name}: {value * 1e3:.1f} ms")
        record = {
            **common.environment(args.device),
            "benchmark": "attention",
            "part": part,
            "dtype": dtype_name,
            "batch": args.batch,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "seq": args.seq,
            "window": args.window if part.startswith("window") else None,
            "flex_block": args.block,
            "checks": errors,
            "results": results,
            "ratios": ratios,
            "peak_bytes": memory,
            "build_s": setup["build_s"],
        }
        if not args.no_save:
            common.append_result("attention", record)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
