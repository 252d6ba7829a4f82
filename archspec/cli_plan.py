"""`archspec plan`: memory per device, whether it fits, and time bounds of training or serving a spec.

Registered on the main app next to `info` and `diff` (see `archspec.cli_analysis.register`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from archspec.analysis.plan_render import plan_diff_tables, plan_json, plan_tables, plot_plan
from archspec.analysis.planner import Setup, device_of, plan_memory
from archspec.cli_output import FORMAT, OutputFormat, emit, guarded
from archspec.spec import load_spec


def plan(
    specs: list[Path] = typer.Argument(..., help="Spec YAML file(s); several: side by side.", show_default=False),
    train: bool = typer.Option(True, "--train/--serve", help="Training step (default) or serving (weights + KV)."),
    batch: int = typer.Option(1, "--batch", "-b", help="Sequences per data-parallel rank."),
    seq: int = typer.Option(2048, "--seq", "-s", help="Tokens per sequence (serving: the context)."),
    gpus: int = typer.Option(1, "--gpus", help="Devices in all (default: fsdp x tp)."),
    fsdp: int = typer.Option(1, "--fsdp", help="FSDP ranks sharding parameters, gradients and optimizer states."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree (archspec.parallelize's plan)."),
    dtype: str = typer.Option("bf16", "--dtype", help="Weights and activations: bf16, fp16, fp32, ..."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw (2 fp32 states per parameter) or sgd."),
    master_weights: bool = typer.Option(False, "--master-weights", help="Also fp32 master weights."),
    checkpointing: str = typer.Option(
        "none", "--checkpointing", help="Activation checkpointing: none, selective (every other block) or full."
    ),
    device: str | None = typer.Option(None, "--device", help="h100 (default), h200, a100, cpu.", show_default=False),
    peak_tflops: float | None = typer.Option(None, "--peak-tflops", help="Dense peak TFLOP/s.", show_default=False),
    bandwidth_gbs: float | None = typer.Option(None, "--bandwidth-gbs", help="Memory GB/s.", show_default=False),
    memory_gib: float | None = typer.Option(None, "--memory-gib", help="Memory per device.", show_default=False),
    measured: float | None = typer.Option(
        None,
        "--measured",
        help="A measured training throughput (tokens/s, all GPUs): also print the MFU it corresponds to.",
        show_default=False,
    ),
    format: OutputFormat = FORMAT,
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw the memory as stacked bars into this PNG.", show_default=False
    ),
) -> None:
    """Memory per device (parameters, gradients, optimizer, activations, logits, transient, KV cache), whether it
    fits and the smallest change that does, and upper bounds on tokens/s, from the compiler's plan."""

    def compute() -> list:
        chosen = device_of(device, peak_tflops, bandwidth_gbs, memory_gib)
        setup = Setup(
            mode="train" if train else "serve",
            batch=batch,
            seq=seq,
            gpus=max(gpus, fsdp * tp),
            fsdp=fsdp,
            tp=tp,
            dtype=dtype,
            optimizer=optimizer,  # type: ignore[arg-type]
            master_weights=master_weights,
            checkpointing=checkpointing,  # type: ignore[arg-type]
            device=chosen,
        )
        plans = [plan_memory(load_spec(path), setup) for path in specs]
        if plot is not None:
            plot_plan(plans, plot)
        return plans

    plans = guarded(compute)
    tables = (lambda: plan_tables(plans[0], measured)) if len(plans) == 1 else (lambda: plan_diff_tables(plans))
    emit(format, tables, lambda: plan_json(plans, measured))  # type: ignore[arg-type]
    if plot is not None and format is OutputFormat.table:
        typer.echo(f"plot written to {plot}", err=True)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
