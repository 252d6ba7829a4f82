"""`Family`: everything import, loading and export need to know of one group of `transformers` model types.

A family is a group of model types converted by the same code (Llama, Mistral, Qwen2 and Qwen3 are one). Each
module of `archspec.interop.families` defines one `FAMILY`; `registry.FAMILIES` lists them, and generic code asks
the family instead of branching on a model type's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from archspec.interop.families.common import Getter
from archspec.interop.keys import FusedPart, KeyMap, split_rows
from archspec.spec.schema import Spec

SpecKind = Literal["encoder-decoder", "vision", "mla", "moe", "dense"]


def spec_kind(spec: Spec) -> SpecKind:
    """The kind of model a spec is, which decides the families export tries for it."""
    if spec.structure == "encoder-decoder":
        return "encoder-decoder"
    if spec.vision is not None:
        return "vision"
    if spec.attention.kind == "mla":
        return "mla"
    if spec.moe is not None:
        return "moe"
    return "dense"


TensorFix = Callable[[str, Any, dict[str, Any]], Any]
"""(HF tensor name, tensor, HF config) -> the tensor as the other side stores it."""


def _unchanged(name: str, tensor: Any, config: dict[str, Any]) -> Any:
    return tensor


@dataclass(frozen=True)
class GgufMapping:
    """What llama.cpp's converter (`convert_hf_to_gguf.py`) does differently for one family.

    GGUF is read and written through the family's HF form: metadata <-> an HF config dict (`archspec.interop.gguf`
    maps the keys every architecture shares; `config` / `metadata` add the family's own), tensors <-> HF names
    (`gguf.tensor_mapping`), with `from_gguf` / `to_gguf` undoing / redoing a layout the converter changes (the
    Q/K row permutation of llama-style models).
    """

    archs: Mapping[str, str]  # GGUF `general.architecture` -> model type
    export_arch: Mapping[str, str]  # model type -> the GGUF architecture llama.cpp's converter writes for it
    config: Callable[[Callable[[str], Any], set[str], str], dict[str, Any]]  # (metadata getter, tensors, type)
    metadata: Callable[[dict[str, Any], str], dict[str, Any]]  # (HF config, model type) -> "<arch>.*" suffixes
    from_gguf: TensorFix = _unchanged
    to_gguf: TensorFix = _unchanged


@dataclass(frozen=True)
class Family:
    """One family; the callables take the model type as their last argument where its members differ."""

    name: str  # its module in archspec.interop.families
    model_types: tuple[str, ...]
    architectures: Mapping[str, str]  # model type -> the class config.json's "architectures" names
    defaults: Mapping[str, dict[str, Any]]  # model type -> its config class's defaults, for keys a config leaves out
    to_spec: Callable[[Getter, str], dict[str, Any]]  # config -> spec data (raises UnsupportedConfigError)
    to_config: Callable[[Spec, str], dict[str, Any]]  # spec -> config keys (raises NoCounterpart)
    key_map: Callable[[Spec, str], KeyMap]  # the checkpoint's names (some depend on the spec)
    kind: SpecKind  # the kind of spec export tries this family for
    fused_part: FusedPart = split_rows  # how parts sit in its fused tensors
    auto_class: str = "AutoModelForCausalLM"  # the transformers auto class that loads an export
    gguf: GgufMapping | None = None  # how llama.cpp writes this family (None: no GGUF import or export)

    def __post_init__(self) -> None:
        for table in ("architectures", "defaults"):
            if set(getattr(self, table)) != set(self.model_types):
                raise ValueError(f"family {self.name!r}: {table} must have exactly the keys {self.model_types}")
