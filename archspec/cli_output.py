"""What the analysis commands (`info`, `diff`, `plan`) share: the output formats and the no-traceback guard."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import typer

from archspec.analysis.render import Table, tables_markdown, to_rich
from archspec.spec import ArchspecError

T = TypeVar("T")


class OutputFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"


FORMAT = typer.Option(OutputFormat.table, "--format", "-f", help="table (Rich), markdown, or json (stable keys).")


def guarded(compute: Callable[[], T]) -> T:
    """Run `compute`; an ArchspecError becomes its message on stderr and exit code 1."""
    try:
        return compute()
    except ArchspecError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None


def emit(format: OutputFormat, tables: Callable[[], list[Table]], document: Callable[[], dict[str, Any]]) -> None:
    if format is OutputFormat.json:
        typer.echo(json.dumps(document(), indent=2))
    elif format is OutputFormat.markdown:
        typer.echo(tables_markdown(tables()), nl=False)
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        for table in tables():
            console.print(to_rich(table))
