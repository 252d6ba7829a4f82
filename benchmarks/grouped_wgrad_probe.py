"""GPU probe: can torch._grouped_mm compute the expert weight gradient (2-D x 2-D, groups along the token dim)?

python benchmarks/grouped_wgrad_probe.py     # CUDA only; prints correctness and time vs the per-expert loop
"""

import torch

from archspec.nn.moe import grouped_linear_weight_grad


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to probe")
        return
    torch.manual_seed(0)
    for experts, tokens, d_out, d_in in [(8, 16384, 5632, 2048), (64, 49152, 1408, 2048)]:
        counts = torch.distributions.Multinomial(tokens, torch.ones(experts)).sample().long()
        offsets = counts.cumsum(0).cuda()
        grad = torch.randn(tokens, d_out, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(tokens, d_in, device="cuda", dtype=torch.bfloat16)
        reference = grouped_linear_weight_grad(grad, x, offsets, experts)
        try:
            fast = torch._grouped_mm(grad.t(), x, offs=offsets.to(torch.int32))
        except Exception as error:  # noqa: BLE001
            print(f"E={experts}: grouped_mm weight grad failed: {type(error).__name__}: {str(error)[:300]}")
            continue
        err = ((fast.float() - reference.float()).norm() / reference.float().norm()).item()
        times = {}
        for name, fn in {
            "loop": lambda grad=grad, x=x, offsets=offsets, experts=experts: grouped_linear_weight_grad(
                grad, x, offsets, experts
            ),
            "grouped_mm": lambda grad=grad, x=x, offsets=offsets: torch._grouped_mm(
                grad.t(), x, offs=offsets.to(torch.int32)
            ),
        }.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                fn()
            end.record()
            end.synchronize()
            times[name] = start.elapsed_time(end) / 10
        print(
            f"E={experts}: shape {tuple(fast.shape)} rel err {err:.2e}; loop {times['loop']:.3f} ms, "
            f"grouped_mm {times['grouped_mm']:.3f} ms, speedup {times['loop'] / times['grouped_mm']:.2f}x"
        )


if __name__ == "__main__":
    main()
