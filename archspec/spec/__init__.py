"""The spec DSL: schema (the vocabulary), loader (YAML, extends, line numbers), rules and errors."""

from archspec.spec.errors import ArchspecError, SpecError, SpecIssue, WeightLoadError
from archspec.spec.loader import load_spec, spec_from_dict
from archspec.spec.schema import Spec

__all__ = ["ArchspecError", "Spec", "SpecError", "SpecIssue", "WeightLoadError", "load_spec", "spec_from_dict"]
