"""MoE dispatch, forward + backward: archspec's grouped dispatch vs a per-expert loop, same router and weights.

    python benchmarks/moe_dispatch.py                  # CPU: float32, 1024 tokens, d_model 256; experts:top-k:d_ff
                                                       # 8:2:512, 64:6:128 and 128:8:128
    python benchmarks/moe_dispatch.py --device cuda    # GPU: bf16, 8192 tokens, d_model 2048

grouped: `archspec.nn.moe.MoE` (tokens sorted by expert, one grouped matmul per projection: `torch._grouped_mm`
on CUDA in bf16 and on CPU, one matmul per expert block where it does not apply). loop: the textbook per-expert loop (transformers' eager
Mixtral block): for each expert, find its tokens (`torch.where`), run its MLP on them, `index_add_` the weighted
result. Both use the same Router and Experts parameters; their outputs are compared before timing.
"""

from __future__ import annotations

import argparse
import functools

import common
import torch
import torch.nn.functional as F

from archspec.nn.moe import Experts, MoE, Router


def loop_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The per-expert loop over the same parameters as `moe`."""
    flat = x.reshape(-1, x.shape[-1])
    weights, selected, _ = moe.router(flat)
    experts = moe.experts
    out = torch.zeros_like(flat)
    for expert in range(experts.up.shape[0]):
        token, slot = torch.where(selected == expert)
        h = flat[token]
        hidden = experts.activation(h @ experts.gate[expert].T) * (h @ experts.up[expert].T)
        y = (hidden @ experts.down[expert].T) * weights[token, slot, None].to(h.dtype)
        out.index_add_(0, token, y)
    return out.view(x.shape)


def make_moe(experts: int, top_k: int, d_model: int, d_ff: int, dtype: torch.dtype, device: str) -> MoE:
    torch.manual_seed(experts)
    with torch.device(device):
        moe = MoE(Router(d_model, experts, top_k), Experts(experts, d_model, d_ff, F.silu, gated=True))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return moe.to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--configs", default=None, help="experts:top_k:d_ff,... (default per device)")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=None)
    args = parser.parse_args()
    dtype_name, dtype, _ = common.resolve(args)
    cuda = args.device.startswith("cuda")
    tokens = args.tokens or (8192 if cuda else 1024)
    d_model = args.d_model or (2048 if cuda else 256)
    configs = args.configs or ("8:2:5632,64:6:1408" if cuda else "8:2:512,64:6:128,128:8:128")
    for item in configs.split(","):
        experts, top_k, d_ff = (int(v) for v in item.split(":"))
        moe = make_moe(experts, top_k, d_model, d_ff, dtype, args.device)
        x = torch.randn(tokens, d_model, device=args.device, dtype=dtype, requires_grad=True)
        grad = torch.randn(tokens, d_model, device=args.device, dtype=dtype)
        with torch.no_grad():
            grouped_out, loop_out = moe(x), loop_moe(moe, x)
        error = ((grouped_out.float() - loop_out.float()).norm() / loop_out.float().norm()).item()
        if error > (1e-5 if dtype == torch.float32 else 2e-2):
            raise RuntimeError(f"grouped and loop dispatch disagree: relative error {error:.3g}")

        def step(fn, moe: MoE = moe, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:  # noqa: ANN001
            moe.zero_grad(set_to_none=True)
            x.grad = None
            fn(x).backward(grad)

        cases = {
            "grouped": functools.partial(step, moe),
            "loop": functools.partial(step, functools.partial(loop_moe, moe)),
        }
        results = common.interleaved(cases, args.device, repeats=args.repeats, warmup=args.warmup)
        common.print_table(
            f"MoE fwd+bwd {experts} experts top-{top_k} d_ff {d_ff}, {tokens} tokens x {d_model} "
            f"{dtype_name} on {args.device}",
            results,
            tokens,
            "tok/s",
        )
        speedup = common.ratios(results, [("grouped", "loop")])
        print(f"  {speedup}  (relative output error {error:.2g})")
        record = {
            **common.environment(args.device),
            "benchmark": "moe_dispatch",
            "experts": experts,
            "top_k": top_k,
            "d_model": d_model,
            "d_ff": d_ff,
            "tokens": tokens,
            "dtype": dtype_name,
            "relative_output_error": error,
            "results": results,
            "ratios": speedup,
        }
        if not args.no_save:
            common.append_result("moe_dispatch", record)


if __name__ == "__main__":
    main()
