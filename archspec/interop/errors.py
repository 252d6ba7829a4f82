"""The errors of Hugging Face interop, in a module of their own so that every other interop module can raise them."""

from __future__ import annotations

from archspec.spec.errors import ArchspecError


class UnsupportedConfigError(ArchspecError):
    """A config.json whose model type or options archspec cannot express exactly."""


class ExportError(ArchspecError):
    """A spec or model that no `transformers` model type expresses exactly."""


class NoCounterpart(Exception):
    """A family's config writer found a spec field it has no key for (`field`, e.g. "attention.kind").

    Not an `ArchspecError`: export catches it to rank the family below those that got as far as the round trip.
    """

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field
