"""Expert parallelism against replicated experts: training-step time and per-rank parameter memory.

    python benchmarks/expert_parallel.py                       # 2 CPU processes (gloo), one thread each
    python benchmarks/expert_parallel.py --ranks 4 --experts 16
    python benchmarks/expert_parallel.py --device cuda --ranks 2   # NCCL, one GPU per rank (bf16)

A Mixtral-like model (`--experts` experts, top-2, every layer MoE) trains on random tokens; every rank takes its
own `--batch` rows (data parallel), in three layouts over the same ranks:

- replicated: every rank holds the whole model; gradients all-reduced (plain data parallelism);
- ep: `parallelize(model, mesh, ep=ranks, fsdp=False)`: each rank holds experts / ranks, the rest replicated;
- ep+fsdp: `parallelize(model, mesh, ep=ranks, fsdp=True)`: the rest sharded by FSDP2 too.

Reported per layout: the median step time (forward, backward, AdamW) over `--repeats` steps after `--warmup`, the
bytes of parameters each rank holds (measured: the storage of its local tensors), the rows each rank sent to other
ranks per step (all-to-all volume, measured by the experts' traffic counters) and, on CUDA, the peak allocated
memory. Results are appended to benchmarks/results/expert_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import archspec
from archspec.expert_parallel import expert_modules

RESULTS = Path(__file__).parent / "results" / "expert_parallel.json"


def spec(args: argparse.Namespace) -> archspec.Spec:
    """specs/mixtral-8x7b.yaml at benchmark sizes (every layer MoE, top-2)."""
    data = archspec.load_spec(Path(__file__).parent.parent / "specs" / "mixtral-8x7b.yaml").model_dump(mode="json")
    data.update(name="mixtral-ep-bench", vocab_size=4096, d_model=args.d_model, n_layers=args.layers)
    data["attention"].update(heads=8, kv_heads=2, head_dim=args.d_model // 8)
    data["mlp"]["d_ff"] = args.d_ff
    data["moe"].update(experts=args.experts, d_ff=args.d_ff)
    return archspec.spec_from_dict(data)


def local_bytes(model: torch.nn.Module) -> int:
    from torch.distributed.tensor import DTensor

    tensors = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    return sum(t.untyped_storage().nbytes() for t in tensors)


def replicate(model: torch.nn.Module, world: int) -> None:
    """Plain data parallelism: each gradient all-reduced and averaged as soon as it is accumulated."""

    def hook(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad)
        param.grad.div_(world)

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(hook)


def run_layout(rank: int, world: int, layout: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = archspec.build(spec(args), device=device, dtype=dtype)
    if layout == "replicated":
        replicate(model, world)
    else:
        mesh = init_device_mesh(device.type, (world,))
        archspec.parallelize(model, mesh, ep=world, fsdp=layout == "ep+fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    times, sent = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.repeats):
        ids = torch.randint(0, 4096, (args.batch, args.seq), generator=generator).to(device)
        dist.barrier()
        began = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - began)
            if layout != "replicated":
                sent.append(
                    sum(
                        sum(n for other, n in enumerate(experts.traffic.sent) if other != rank)
                        for _, experts in expert_modules(model)
                    )
                )
    record = {
        "layout": layout,
        "step_s": statistics.median(times),
        "param_bytes": local_bytes(model),
        "rows_sent_per_step": statistics.median(sent) if sent else 0,
    }
    if device.type == "cuda":
        record["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return record


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        records = [run_layout(rank, world, layout, args, device) for layout in args.layouts.split(",")]
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, records)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2, help="rows per rank")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layouts", default="replicated,ep,ep+fsdp")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.ranks:
        raise SystemExit(f"--ranks {args.ranks} needs {args.ranks} GPUs; {torch.cuda.device_count()} visible")

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = Path(f"/tmp/archspec-ep-bench-{os.getpid()}.json")
    mp.spawn(worker, args=(args.ranks, port, args, str(out)), nprocs=args.ranks, join=True)
    per_rank = json.loads(out.read_text())
    out.unlink()

    where = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores), {platform.machine()}"
    )
    rows = []
    print(f"{args.ranks} ranks, {args.experts} experts x {args.layers} layers, d_model {args.d_model}, {where}")
    print(f"{'layout':<12} {'step (ms, slowest rank)':>24} {'param MiB per rank':>19} {'rows sent/step':>15}")
    for index, record in enumerate(per_rank[0]):
        step = max(rank[index]["step_s"] for rank in per_rank)  # the slowest rank sets the pace
        memory = max(rank[index]["param_bytes"] for rank in per_rank)
        print(f"{record['layout']:<12} {step * 1e3:>24.1f} {memory / 2**20:>19.2f} {record['rows_sent_per_step']:>15}")
        rows.append({**record, "step_s": step, "param_bytes": memory})
    entry = {
        "date": date.today().isoformat(),
        "device": where,
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items()},
        "results": rows,
    }
    history = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*history, entry], indent=1) + "\n")


if __name__ == "__main__":
    main()
