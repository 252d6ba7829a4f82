"""Presenting `archspec plan`: memory per device as a table with a text bar per kind, the time bounds, a PNG.

Uses the plain `Table` of `archspec.analysis.render`, so the Rich and the Markdown output are the same table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archspec.analysis.metrics import AnalysisError
from archspec.analysis.planner import MemoryPlan
from archspec.analysis.render import Table, exact, human_bytes

KINDS = ("parameters", "gradients", "optimizer", "activations", "logits", "transient", "kv_cache")
BAR = 40  # characters of the bar of the whole device memory


def _bar(value: int, scale: float) -> str:
    return "█" * round(value / scale * BAR) if scale else ""


def _setup_line(plan: MemoryPlan) -> str:
    s = plan.setup
    parts = [
        s.mode,
        f"batch {s.batch}",
        f"seq {s.seq}",
        s.dtype,
        f"{s.gpus} GPU" + ("s" if s.gpus > 1 else ""),
        f"fsdp {s.fsdp}",
        f"tp {s.tp}",
    ]
    if s.mode == "train":
        parts += [
            s.optimizer + (" + fp32 master weights" if s.master_weights else ""),
            f"checkpointing {s.checkpointing}",
        ]
    device = s.device
    parts.append(
        f"{device.name} ({device.memory_gib:g} GiB, {device.peak_tflops:g} TFLOP/s, {device.bandwidth_gbs:g} GB/s)"
    )
    return ", ".join(parts)


def plan_tables(plan: MemoryPlan, measured: float | None = None) -> list[Table]:
    """Memory by kind (bytes, exact bytes, a bar against the device's memory) and the time bounds (and the MFU
    of a `measured` training throughput)."""
    memory = plan.memory
    limit = plan.setup.device.memory_gib * 2**30
    scale = max(limit, memory.total)
    table = Table(f"{plan.spec}: memory per device", ["", "bytes", "exact", f"of {human_bytes(limit)}"], right={1, 2})
    for kind in KINDS:
        value = getattr(memory, kind)
        if value:
            table.rows.append([kind.replace("_", " "), human_bytes(value), exact(value), _bar(value, scale)])
    verdict = "fits" if plan.fits else "does not fit"
    table.rows.append(["peak (total)", human_bytes(memory.total), exact(memory.total), f"{verdict}"])
    table.caption = _setup_line(plan) + (
        "" if plan.fits or not plan.suggestion else f"; smallest change that fits: {plan.suggestion}"
    )
    bounds = plan.bounds
    times = Table(f"{plan.spec}: time bounds (upper bounds at the device's peak)", ["", "value"], right={1})
    if bounds.train_tokens_per_s is not None:
        times.rows.append(["training FLOPs per token", f"{bounds.train_flops_per_token:.4g}"])
        times.rows.append(["training tokens/s (all GPUs)", f"{bounds.train_tokens_per_s:,.0f}"])
        if measured is not None:
            times.rows.append([f"MFU at {measured:,.0f} tokens/s", f"{plan.mfu(measured):.1%}"])
    if bounds.decode_tokens_per_s is not None:
        times.rows.append(["decode tokens/s, batch 1", f"{bounds.decode_tokens_per_s_batch1:,.1f}"])
        times.rows.append([f"decode tokens/s, batch {plan.setup.batch}", f"{bounds.decode_tokens_per_s:,.1f}"])
        times.rows.append(["bytes read per decoding step", human_bytes(bounds.decode_bytes_per_step or 0)])
        times.rows.append(["prefill time (s)", f"{bounds.prefill_s:.4g}"])
    return [table, times]


def plan_diff_tables(plans: list[MemoryPlan]) -> list[Table]:
    """Plans side by side: memory by kind, fits, bounds."""
    headers = [""] + [plan.spec for plan in plans]
    table = Table("plans side by side", headers, right=set(range(1, len(headers))))
    for kind in (*KINDS, "total"):
        values = [getattr(plan.memory, kind) for plan in plans]
        if any(values):
            table.rows.append([kind.replace("_", " ")] + [human_bytes(value) for value in values])
    table.rows.append(["fits"] + ["yes" if plan.fits else "no" for plan in plans])
    for key, label in (
        ("train_tokens_per_s", "training tokens/s bound"),
        ("decode_tokens_per_s_batch1", "decode tokens/s bound, batch 1"),
        ("decode_tokens_per_s", "decode tokens/s bound, batch B"),
        ("prefill_s", "prefill time bound (s)"),
    ):
        values = [getattr(plan.bounds, key) for plan in plans]
        if all(value is not None for value in values):
            table.rows.append([label] + [f"{value:,.4g}" for value in values])
    table.caption = _setup_line(plans[0])
    return [table]


def plot_plan(plans: list[MemoryPlan], path: str | Path) -> None:
    """Memory per device as stacked bars (one per plan) into a PNG, with the device's memory as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise AnalysisError("--plot needs matplotlib (pip install matplotlib)") from error
    figure, axes = plt.subplots(figsize=(2 + 1.6 * len(plans), 4.5))
    bottoms = [0.0] * len(plans)
    names = [plan.spec for plan in plans]
    for kind in KINDS:
        values = [getattr(plan.memory, kind) / 2**30 for plan in plans]
        if any(values):
            axes.bar(names, values, bottom=bottoms, label=kind.replace("_", " "))
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    axes.axhline(plans[0].setup.device.memory_gib, color="black", linestyle="--", linewidth=1, label="device memory")
    axes.set_ylabel("GiB per device (sum of kinds; the peak is at most this)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise AnalysisError(f"{path}: cannot write the plot ({error.strerror or error})") from error
    finally:
        plt.close(figure)


def plan_json(plans: list[MemoryPlan], measured: float | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    documents = [plan.to_json() for plan in plans]
    if measured is not None:
        for document, plan in zip(documents, plans, strict=True):
            document["bounds"]["mfu_of_measured"] = plan.mfu(measured) if plan.setup.mode == "train" else None
    return documents[0] if len(plans) == 1 else documents
