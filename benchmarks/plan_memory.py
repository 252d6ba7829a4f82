"""`archspec plan` against a measured training step: peak memory and throughput of one spec.

    python benchmarks/plan_memory.py --device cuda --gpu h100              # bf16, benchmarks/export-1b.yaml
    python benchmarks/plan_memory.py --device cpu --spec specs/gpt2.yaml --batch 1 --seq 64 --dtype float32

One AdamW step runs first (it allocates the optimizer states); the next steps are measured: the peak tensor
memory of one of them (`torch.cuda.max_memory_allocated` after a reset on CUDA; PyTorch's `MemTracker` on CPU)
and their tokens/s. The plan of the same spec, batch, sequence length, dtype and checkpointing is printed next
to them, with the MFU the measured throughput corresponds to, and the record is appended to
results/plan_memory.json (see RESULTS.md for what has been run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
import torch

import archspec
from archspec.analysis.planner import DEVICES, plan_memory
from archspec.distributed import enable_activation_checkpointing

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--spec", default=str(HERE / "export-1b.yaml"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32 (CPU default)")
    parser.add_argument("--checkpointing", choices=["none", "full"], default="none")
    parser.add_argument("--gpu", default="h100", help="the plan's device figures: h100, h200, a100")
    parser.add_argument("--steps", type=int, default=5, help="measured steps for the throughput")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    spec = archspec.load_spec(args.spec)
    model = archspec.build(spec, device=args.device, dtype=dtype)
    if args.checkpointing == "full":
        enable_activation_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=args.device).manual_seed(0)

    def step() -> None:
        ids = torch.randint(0, spec.vocab_size, (args.batch, args.seq), device=args.device, generator=generator)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    common.synchronize(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            step()
        (snapshot,) = tracker.get_tracker_snapshot("peak").values()
        peak = snapshot["Total"]
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    common.synchronize(args.device)
    tokens_per_s = args.steps * args.batch * args.seq / (time.perf_counter() - start)

    plan = plan_memory(
        spec,
        batch=args.batch,
        seq=args.seq,
        dtype=str(dtype).removeprefix("torch."),
        checkpointing=args.checkpointing,
        device=DEVICES[args.gpu if cuda else "cpu"],
    )
    record = {
        "spec": spec.name,
        "batch": args.batch,
        "seq": args.seq,
        "dtype": str(dtype),
        "checkpointing": args.checkpointing,
        "measured_peak_bytes": peak,
        "planned_peak_bytes": plan.memory.total,
        "plan_over_measured": plan.memory.total / peak,
        "tokens_per_s": tokens_per_s,
        "bound_tokens_per_s": plan.bounds.train_tokens_per_s,
        "mfu": plan.mfu(tokens_per_s) if cuda else None,
        "environment": common.environment(args.device),
    }
    print(f"{spec.name}: batch {args.batch} x {args.seq}, {dtype}, checkpointing {args.checkpointing}")
    print(f"  peak memory   measured {peak / 2**30:8.3f} GiB   plan {plan.memory.total / 2**30:8.3f} GiB   "
          f"plan / measured {plan.memory.total / peak:.3f}")  # fmt: skip
    print(f"  tokens/s      measured {tokens_per_s:10.1f}   bound {plan.bounds.train_tokens_per_s:12.1f}")
    if cuda:
        print(f"  MFU           {plan.mfu(tokens_per_s):.1%} of {plan.setup.device.peak_tflops:g} TFLOP/s")
    if not args.no_save:
        print("appended to", common.append_result("plan_memory", record))


if __name__ == "__main__":
    main()
