"""Rendering DOT source to SVG or PNG with Graphviz's `dot` program (the Debian/Ubuntu package `graphviz`)."""

from __future__ import annotations

import shutil
import subprocess

from archspec.spec.errors import ArchspecError

RENDERED = ("svg", "png")


class DrawError(ArchspecError):
    """A picture that cannot be drawn or written (no Graphviz, an unknown format, a failed render)."""


def graphviz() -> str:
    """The path of `dot`; a DrawError naming the package to install when it is missing."""
    found = shutil.which("dot")
    if found is None:
        raise DrawError(
            "rendering .svg or .png needs Graphviz's `dot` program, which is not installed: "
            "apt-get install graphviz (Debian/Ubuntu; `brew install graphviz` on macOS), "
            "or write .dot or .mmd / .md (Mermaid) instead"
        )
    return found


def render(dot_source: str, fmt: str) -> bytes:
    """`dot_source` rendered as `fmt` (svg or png) by `dot`; its error output in a DrawError if it fails."""
    if fmt not in RENDERED:
        raise DrawError(f"cannot render {fmt!r}; Graphviz output here is one of {', '.join(RENDERED)}")
    try:
        done = subprocess.run(
            [graphviz(), f"-T{fmt}"], input=dot_source.encode(), capture_output=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise DrawError("Graphviz's dot took over 120 s; giving up") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise DrawError(f"Graphviz's dot failed (exit {done.returncode}): {message}")
    return done.stdout
