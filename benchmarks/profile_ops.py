"""Where does the time go? Per-op self CPU time of archspec and transformers on the same workload, side by side.

    python benchmarks/profile_ops.py --family llama3 --workload train      # forward + backward, batch 2 x 128
    python benchmarks/profile_ops.py --family mixtral --workload train
    python benchmarks/profile_ops.py --family llama3 --workload decode --batch 8

Both models come from `common.make_pair` (same weights). The two sides are profiled in turn `--steps` times after a
warm-up and each op keeps its least time over the rounds (noise from other processes only adds); the table lists the ops whose self time differs most between the two, with call counts, so an
overhead (an extra copy, a mask, a per-expert loop) shows up as a row where archspec spends more.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import common
import torch
from torch.profiler import ProfilerActivity, profile


def workload(name: str, model: torch.nn.Module, archspec_side: bool, ids: torch.Tensor, new: int):  # noqa: ANN201
    if name == "train":

        def run() -> None:
            model.zero_grad(set_to_none=True)
            out = model(ids, labels=ids) if archspec_side else model(input_ids=ids, labels=ids)
            out.loss.backward()
    elif name == "prefill":

        def run() -> None:
            with torch.no_grad():
                model(ids)
    else:

        def run() -> None:
            with torch.no_grad():
                if archspec_side:
                    model.generate(ids, new, eos_token_id=None)
                else:
                    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    return run


def profile_once(run) -> tuple[dict[str, float], dict[str, int]]:  # noqa: ANN001
    """Self CPU ms and call count per op of one call of `run`."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in prof.key_averages():
        times[event.key] += event.self_cpu_time_total / 1e3
        counts[event.key] += event.count
    return times, counts


def interleaved_profiles(runs: list, steps: int) -> list[tuple[dict[str, float], dict[str, int], float]]:  # noqa: ANN001
    """Profile the runs in turn `steps` times; per op keep the least time seen (the least-disturbed round)."""
    for run in runs:
        run()
        run()
    best: list[dict[str, float]] = [{} for _ in runs]
    counts: list[dict[str, int]] = [{} for _ in runs]
    for _ in range(steps):
        for index, run in enumerate(runs):
            times, calls = profile_once(run)
            for key, value in times.items():
                best[index][key] = min(best[index].get(key, float("inf")), value)
            counts[index] = calls
    return [(b, c, sum(b.values())) for b, c in zip(best, counts, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llama3")
    parser.add_argument("--workload", default="train", choices=["train", "prefill", "decode"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = common.hf_config(args.family, "small", **({"dropout_rate": 0.0} if args.family == "t5" else {}))
    reference, model = common.make_pair(config, torch.float32, "cpu")
    if args.workload == "train":
        reference.train()
        model.train()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq))
    runs = [
        workload(args.workload, model, True, ids, args.new),
        workload(args.workload, reference, False, ids, args.new),
    ]
    (ours, our_counts, our_total), (theirs, their_counts, their_total) = interleaved_profiles(runs, args.steps)
    print(
        f"{args.family} {args.workload} batch {args.batch} seq {args.seq}: total self CPU per step "
        f"archspec {our_total:.1f} ms, transformers {their_total:.1f} ms"
    )
    print(f"{'op':<52} {'archspec ms':>12} {'calls':>6} {'hf ms':>10} {'calls':>6} {'diff ms':>9}")
    keys = sorted(set(ours) | set(theirs), key=lambda k: -abs(ours.get(k, 0) - theirs.get(k, 0)))
    for key in keys[: args.rows]:
        print(
            f"{key[:52]:<52} {ours.get(key, 0):12.2f} {our_counts.get(key, 0):6d} {theirs.get(key, 0):10.2f} "
            f"{their_counts.get(key, 0):6d} {ours.get(key, 0) - theirs.get(key, 0):9.2f}"
        )


if __name__ == "__main__":
    main()
