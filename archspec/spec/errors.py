"""Errors that say where: every spec problem carries its file, line and key path."""

from __future__ import annotations

from dataclasses import dataclass, field


class ArchspecError(Exception):
    """Base of the errors archspec raises on bad input; the CLI prints these without a traceback."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: `file:line: key.path: message (hint)`."""

    path: tuple[str | int, ...]
    message: str
    hint: str = ""
    file: str | None = None
    line: int | None = None

    @property
    def key_path(self) -> str:
        return ".".join(str(part) for part in self.path) or "<root>"

    def __str__(self) -> str:
        where = f"{self.file or '<spec>'}:{self.line}" if self.line else (self.file or "<spec>")
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}: {self.key_path}: {self.message}{hint}"


@dataclass
class SpecError(ArchspecError):
    """A spec that cannot be loaded; holds every problem found, not just the first."""

    issues: list[SpecIssue] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class WeightLoadError(ArchspecError):
    """Weights that do not fit the model: names every missing, unexpected or mis-shaped tensor."""
