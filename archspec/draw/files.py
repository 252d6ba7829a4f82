"""Where pictures go and whether the ones on disk are current: `archspec draw` and `archspec draw --check`.

A file is written atomically (a temporary sibling renamed over it), so a failed render never leaves half a file;
an unchanged file is not rewritten. Only text formats can be checked (SVG and PNG bytes depend on the Graphviz
version that rendered them).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from archspec.draw import FORMATS, diagram, format_of, picture
from archspec.draw.render import DrawError
from archspec.spec.schema import Spec

TEXT_FORMATS = ("mmd", "md", "dot")


def page_note(spec: Spec) -> str:
    """The line under the heading of a Markdown diagram page."""
    return (
        f"The architecture of `{spec.name}`, drawn by `archspec draw` from the plan the compiler builds for it. "
        "Do not edit: `archspec draw specs/*.yaml -o docs/diagrams` rewrites it, and `--check` fails when it is stale."
    )


def render_spec(spec: Spec, fmt: str) -> bytes:
    """The bytes of `spec`'s picture in format `fmt`."""
    return picture(diagram(spec), fmt, markdown_note=page_note(spec))


def target(spec: Spec, output: Path, fmt: str | None, *, single: bool) -> tuple[Path, str]:
    """The file and format of `spec`'s picture: `output` itself when it names a file of a known suffix (one spec
    only), else `output/<name>.<fmt>` (fmt default: md)."""
    if output.suffix and not output.is_dir():
        if not single:
            raise DrawError(f"{output}: a file takes one spec; give a directory (-o DIR) to draw several")
        found = format_of(output)
        if fmt is not None and fmt != found:
            raise DrawError(f"{output}: the suffix says {found}, --format says {fmt}; give one of the two")
        return output, found
    fmt = fmt or "md"
    if fmt not in FORMATS:
        raise DrawError(f"unknown --format {fmt!r} (known: {', '.join(FORMATS)})")
    return output / f"{spec.name}.{fmt}", fmt


def write_atomically(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it already holds exactly that; True if written. The directory above an output
    directory must exist (a typo is reported, not turned into a tree of new directories)."""
    if not path.parent.is_dir():
        if not path.parent.parent.is_dir():
            raise DrawError(f"{path.parent}: no such directory (create it first)")
        path.parent.mkdir()
    if path.exists() and not path.is_file():
        raise DrawError(f"{path}: exists and is not a file; not writing there")
    if path.is_file() and path.read_bytes() == data:
        return False
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def stale(path: Path, data: bytes) -> str | None:
    """Why the file at `path` is not `data` ("does not exist", "is stale"), or None when it is current."""
    try:
        return None if path.read_bytes() == data else "is stale"
    except FileNotFoundError:
        return "does not exist"
