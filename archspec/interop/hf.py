"""Hugging Face interop, the public entry: `config.json` -> Spec, and checkpoint tensors -> archspec's names.

archspec itself does not need `transformers`: configs are read as JSON and tensors with safetensors. What is
peculiar to one `transformers` family (its config keys and their class defaults, key names, fused-QKV layouts,
GPT-2's Conv1D transposes) lives in that family's module in `archspec.interop.families`, listed once in
`archspec.interop.registry`; checkpoint loading is `archspec.interop.weights`, export `archspec.interop.hf_export`.
Matched against transformers 5.25.0; see /shared/reference/hf_parity_map.md for the formulas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archspec.interop.convert import read_hf_config, spec_of
from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.keys import KeyMap, Source
from archspec.interop.registry import FAMILY_OF, SUPPORTED_MODEL_TYPES, archspec_sources, fused_part, key_map
from archspec.interop.weights import load_hf_weights
from archspec.spec.schema import Spec

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "KeyMap",
    "Source",
    "UnsupportedConfigError",
    "archspec_sources",
    "fused_part",
    "key_map",
    "load_hf_weights",
    "read_hf_config",
    "spec_from_hf",
]


def spec_from_hf(source: str | Path | dict[str, Any], name: str | None = None) -> Spec:
    """The spec of a Hugging Face model directory (config.json) or config dict.

    Reads both the 5.x `rope_parameters` field and the 4.x `rope_theta` / `rope_scaling` fields.
    """
    config = read_hf_config(source)
    model_type = config.get("model_type")
    family = FAMILY_OF.get(model_type)
    if family is None:
        raise UnsupportedConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return spec_of(family, config, source, name)
