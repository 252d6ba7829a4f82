"""Writing generated files: atomically (temp file in the same directory + `os.replace`), and checking staleness."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from archspec.emit.source import emit_source, module_name
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import Spec

_BANNER = re.compile(r'^"""(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*): a stand-alone PyTorch model emitted by archspec')


class NameCollisionError(ArchspecError):
    """Two spec names that map to the same generated file (`a.b` and `a-b` both give `a_b.py`)."""


def emitted_name(text: str) -> str | None:
    """The spec name an emitted file was written for (from its first line), or None for any other file."""
    match = _BANNER.match(text)
    return match.group("name") if match else None


def generated_path(spec: Spec, directory: str | os.PathLike[str]) -> Path:
    """Where `spec`'s file lives in `directory`: `<directory>/<module_name(spec.name)>.py`."""
    return Path(directory) / f"{module_name(spec.name)}.py"


def write_generated(spec: Spec, directory: str | os.PathLike[str]) -> Path:
    """Write `emit_source(spec)` to `generated_path(spec, directory)` and return that path.

    The source is produced completely before anything is written, then written to a temporary file next to the
    target and renamed over it, so a failure at any point leaves either the old file or the new one, never a
    half-written one. An unchanged file is not rewritten.
    """
    text = emit_source(spec)
    path = generated_path(spec, directory)
    if not path.parent.is_dir():
        if not path.parent.parent.is_dir():  # create the output directory, never a tree of missing parents
            raise ArchspecError(f"{path.parent.parent}: no such directory (create it first)")
        path.parent.mkdir()
    if path.exists() and not path.is_file():
        raise ArchspecError(f"{path}: exists and is not a file (a directory?); not writing there")
    if path.is_file():
        old = path.read_bytes()
        if old == text.encode():
            return path
        owner = emitted_name(old.decode("utf-8", errors="replace"))
        if owner is None:
            raise ArchspecError(f"{path}: exists and is not a file emitted by archspec; not overwriting it")
        if owner != spec.name:
            raise NameCollisionError(
                f"{path} holds the model of spec '{owner}', and spec '{spec.name}' maps to the same file name; "
                "rename one of the two specs"
            )
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def is_stale(spec: Spec, directory: str | os.PathLike[str]) -> bool:
    """True when `spec`'s generated file in `directory` is missing or differs from what `emit_source` gives now."""
    path = generated_path(spec, directory)
    try:
        return path.read_bytes() != emit_source(spec).encode()
    except FileNotFoundError:
        return True
