"""`archspec info` and `archspec diff`: the analysis commands, registered on the main Typer app by `register`.

Both read specs (after `extends` and defaults), compute exact figures without building weights, and print Rich
tables, Markdown (`--format markdown`, for pasting into a PR) or JSON (`--format json`, stable keys). Bad input
(an invalid spec, an unknown dtype, ...) is one readable message on stderr and exit code 1, no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from archspec.analysis.diff import diff_specs
from archspec.analysis.metrics import AnalysisError, analyse
from archspec.analysis.render import diff_json, diff_tables, info_json, info_tables, plot_diff
from archspec.cli_output import FORMAT, OutputFormat, emit, guarded
from archspec.spec import load_spec

CONTEXT = typer.Option(
    None,
    "--context",
    "-c",
    help="Sequence length for FLOPs and the KV cache (info: the spec's context_length; "
    "diff: the shortest context_length of the specs).",
    show_default=False,
)
BATCH = typer.Option(1, "--batch", "-b", help="Sequences in the batch, for the KV-cache total.")
DTYPE = typer.Option(
    "bfloat16", "--dtype", help="dtype of the KV cache: float32, float16/fp16, bfloat16/bf16, fp8, int8."
)


def info(
    spec: Path = typer.Argument(..., help="Spec YAML file.", show_default=False),
    context: int | None = CONTEXT,
    batch: int = BATCH,
    dtype: str = DTYPE,
    format: OutputFormat = FORMAT,
) -> None:
    """Parameters (total, embeddings, per layer, active per token), FLOPs per token, KV-cache bytes."""
    analysis = guarded(lambda: analyse(load_spec(spec), context, batch, dtype))
    emit(format, lambda: info_tables(analysis), lambda: info_json(analysis))


def diff(
    specs: list[Path] = typer.Argument(
        ..., help="Two or more spec YAML files; the first is the baseline.", show_default=False
    ),
    context: int | None = CONTEXT,
    batch: int = BATCH,
    dtype: str = DTYPE,
    format: OutputFormat = FORMAT,
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw the figures as grouped bars into this PNG (needs matplotlib).",
        show_default=False,
    ),
    draw: Path | None = typer.Option(
        None,
        "--draw",
        help="Also draw both architectures side by side, what differs in red (.mmd, .md, .dot, .svg or .png).",
        show_default=False,
    ),
    plan: str | None = typer.Option(
        None,
        "--plan",
        help="Also the memory plans side by side: train or serve, at --context, --batch and --dtype on an H100 "
        "(`archspec plan A B` takes every plan option).",
        show_default=False,
    ),
) -> None:
    """Fields that differ between resolved specs, and their figures side by side with the ratio to the first."""

    def compute() -> Any:
        loaded = [load_spec(path) for path in specs]
        names = [spec.name for spec in loaded]
        labels = [str(path) for path in specs] if len(set(names)) < len(names) else None
        result = diff_specs(loaded, context, batch, dtype, labels=labels)
        if plot is not None:
            plot_diff(result, plot)
        if draw is not None:
            draw_diff(loaded, labels or names, draw)
        return result, _plans(loaded, plan, context, batch, dtype)

    result, plans = guarded(compute)
    if plans:
        from archspec.analysis.plan_render import plan_diff_tables, plan_json

        emit(
            format,
            lambda: diff_tables(result) + plan_diff_tables(plans),
            lambda: {**diff_json(result), "plans": plan_json(plans)},
        )
    else:
        emit(format, lambda: diff_tables(result), lambda: diff_json(result))
    if plot is not None and format is OutputFormat.table:
        typer.echo(f"plot written to {plot}", err=True)
    if draw is not None and format is OutputFormat.table:
        typer.echo(f"drawing written to {draw}", err=True)


def draw_diff(specs: list[Any], titles: list[str], path: Path) -> None:
    """The two architectures side by side in one picture (`archspec.draw`), what differs marked."""
    from archspec.draw import diff_diagram, format_of, picture
    from archspec.draw.files import write_atomically

    if len(specs) != 2:
        raise AnalysisError(f"--draw compares two specs, not {len(specs)}")
    fmt = format_of(path)
    write_atomically(path, picture(diff_diagram(specs[0], specs[1], (titles[0], titles[1])), fmt))


def _plans(specs: list[Any], mode: str | None, context: int | None, batch: int, dtype: str) -> list[Any]:
    """`diff --plan`: each spec's memory plan at the diff's context (default: the shortest context_length)."""
    if mode is None:
        return []
    from archspec.analysis.metrics import AnalysisError
    from archspec.analysis.planner import plan_memory

    if mode not in ("train", "serve"):
        raise AnalysisError(f"--plan takes train or serve, not {mode!r}")
    seq = context or min(spec.context_length for spec in specs)
    return [plan_memory(spec, mode=mode, batch=batch, seq=seq, dtype=dtype) for spec in specs]


def register(app: typer.Typer) -> None:
    """Add `info`, `diff` and `plan` to the archspec command line."""
    from archspec import cli_plan

    app.command("info")(info)
    app.command("diff")(diff)
    cli_plan.register(app)
