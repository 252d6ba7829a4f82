"""Writing generated files: atomically (temp file in the same directory + `os.replace`), and checking staleness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from archspec.emit.source import emit_source, module_name
from archspec.spec.schema import Spec


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
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() == text.encode():
        return path
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
