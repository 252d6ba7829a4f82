"""The one list of the `transformers` families archspec reads and writes, and lookups by model type.

Adding a family: a module in `archspec/interop/families/` that defines `FAMILY = Family(...)`, and its line in
`FAMILIES`. The order is the order in which export tries the families that could express a spec (the first whose
config reads back as the same spec is written), and the order of every list of model types shown to the user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from types import MappingProxyType

from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.families import (
    bloom,
    cohere,
    deepseek,
    ernie,
    ernie_moe,
    exaone,
    falcon,
    gemma,
    glm,
    glm4_moe,
    gpt2,
    gpt_neox,
    gpt_oss,
    granite,
    granitemoe,
    hunyuan,
    hunyuan_moe,
    llama,
    llava,
    minimax,
    mixtral,
    olmo,
    phi3,
    qwen_moe,
    smollm3,
    starcoder2,
    t5,
)
from archspec.interop.family import Family
from archspec.interop.keys import KeyMap, Source, Split, tensor_sources
from archspec.spec.schema import Spec

FAMILIES: tuple[Family, ...] = (
    llama.FAMILY,
    glm.FAMILY,
    gpt2.FAMILY,
    bloom.FAMILY,
    falcon.FAMILY,
    gpt_neox.FAMILY,
    starcoder2.FAMILY,
    phi3.FAMILY,
    gemma.FAMILY,
    cohere.FAMILY,
    granite.FAMILY,
    olmo.FAMILY,
    exaone.FAMILY,
    smollm3.FAMILY,
    ernie.FAMILY,
    hunyuan.FAMILY,
    mixtral.FAMILY,
    qwen_moe.FAMILY,
    granitemoe.FAMILY,
    glm4_moe.FAMILY,
    hunyuan_moe.FAMILY,
    minimax.FAMILY,
    ernie_moe.FAMILY,
    gpt_oss.FAMILY,
    deepseek.FAMILY,
    t5.FAMILY,
    llava.FAMILY,
)


def _by_model_type(families: Iterable[Family]) -> Mapping[str, Family]:
    index: dict[str, Family] = {}
    for family in families:
        for model_type in family.model_types:
            if model_type in index:
                raise ValueError(
                    f"model_type {model_type!r} is in families {index[model_type].name!r} and {family.name!r}"
                )
            index[model_type] = family
    return MappingProxyType(index)


FAMILY_OF: Mapping[str, Family] = _by_model_type(FAMILIES)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILY_OF)


def key_map(model_type: str, spec: Spec) -> KeyMap:
    """The names of one family's checkpoint, given the spec (Falcon's norms depend on its layout)."""
    family = FAMILY_OF.get(model_type)
    if family is None:
        raise UnsupportedConfigError(f"model_type {model_type!r} has no weight map")
    return family.key_map(spec, model_type)


def fused_part(model_type: str, spec: Spec, part: str) -> Split:
    """How to cut one part (q, k, v, gate, up) out of one of `model_type`'s fused tensors."""
    family = FAMILY_OF.get(model_type)
    if family is None:
        raise UnsupportedConfigError(f"model_type {model_type!r} has no weight map")
    return family.fused_part(spec, part)


def archspec_sources(model_type: str, spec: Spec, archspec_keys: list[str]) -> dict[str, Source]:
    """For each archspec state-dict key, the HF tensor it comes from."""
    return tensor_sources(key_map(model_type, spec), partial(fused_part, model_type, spec), spec, archspec_keys)
