"""`archspec draw`: the picture of each spec's architecture, registered on the main Typer app by `register`.

`archspec draw SPEC -o FILE` picks the format from FILE's suffix (.mmd / .md Mermaid, .dot Graphviz source,
.svg / .png rendered by Graphviz's `dot`); `-o DIR` writes `DIR/<name>.<format>` for every spec given, and
`--check` writes nothing and exits 1 when a file on disk is missing or stale (how `docs/diagrams` is kept current).
Errors (a bad spec, an unknown suffix, no Graphviz) are one line on stderr and exit code 1, via `cli.user_errors`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from archspec.draw import FORMATS
from archspec.draw.files import TEXT_FORMATS, render_spec, stale, target, write_atomically
from archspec.draw.render import DrawError
from archspec.spec import load_spec


def draw(
    specs: list[Path] = typer.Argument(
        ..., metavar="SPEC...", help="Spec files (a directory: every .yaml / .yml file in it).", show_default=False
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        metavar="FILE|DIR",
        help="A file (.mmd, .md, .dot, .svg, .png: the suffix gives the format) or a directory (DIR/<name>.<format>).",
        show_default=False,
    ),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help=f"Format of the files written into a directory: {', '.join(FORMATS)} (default md)."
    ),
    check_only: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if a picture on disk is missing or stale (text formats only)."
    ),
) -> None:
    """Draw each SPEC's architecture from its compiled plan: embeddings, block layout, attention, positions, MLP or
    MoE, head, and a per-layer strip when layers differ."""
    files = _spec_files(specs)
    problems, written = [], set()
    for spec_path in files:
        spec = load_spec(spec_path)
        path, fmt_of_file = target(spec, output, fmt, single=len(files) == 1)
        if path in written:
            raise DrawError(f"two specs are named {spec.name!r}; both would be drawn into {path}")
        written.add(path)
        if check_only and fmt_of_file not in TEXT_FORMATS:
            raise DrawError(f"--check compares text; .{fmt_of_file} files are rendered bytes (use .mmd, .md or .dot)")
        data = render_spec(spec, fmt_of_file)
        if check_only:
            problem = stale(path, data)
            if problem:
                problems.append(f"error: {path} {problem}; run `archspec draw {spec_path} -o {output}` to write it")
            else:
                typer.echo(f"up to date: {path}")
        else:
            changed = write_atomically(path, data)
            typer.echo(f"{'wrote' if changed else 'unchanged'}: {path}")
    if problems:
        typer.echo("\n".join(problems), err=True)
        raise typer.Exit(1)


def _spec_files(paths: list[Path]) -> list[Path]:
    """The paths, each directory replaced by the YAML files in it (sorted); a directory without any is an error."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not found:
            raise DrawError(f"{path}: a directory with no .yaml or .yml files in it")
        files += found
    return files


def register(app: typer.Typer) -> None:
    """Add `draw` to the archspec command line."""
    app.command("draw")(draw)
