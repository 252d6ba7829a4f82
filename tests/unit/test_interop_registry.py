"""The interop registry is the only list of families, and archspec.interop is layered without cycles.

Adding a `transformers` family must mean one module in `archspec/interop/families/` plus its line in
`registry.FAMILIES`: a module left out of the registry, a model type claimed twice, or a family that registers
itself by import side effect (an import cycle, or a private table patched from elsewhere) fails here.
"""

from __future__ import annotations

import ast
import importlib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import archspec.interop as interop
from archspec.interop import hf, hf_export
from archspec.interop.family import Family
from archspec.interop.registry import FAMILIES, FAMILY_OF, SUPPORTED_MODEL_TYPES

INTEROP = Path(interop.__file__).parent
SHARED = {"__init__", "common"}  # modules of the families package that are no family
FAMILY_MODULES = sorted(p.stem for p in (INTEROP / "families").glob("*.py") if p.stem not in SHARED)


def _module(path: Path) -> str:
    parts = path.relative_to(INTEROP.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every import in the file, function-level ones included; `import m` gives (m, "")."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found += [(node.module or "", alias.name) for alias in node.names]
    return found


MODULES = {_module(path): path for path in sorted(INTEROP.rglob("*.py"))}


def test_every_supported_model_type_has_exactly_one_family() -> None:
    claimed = [model_type for family in FAMILIES for model_type in family.model_types]
    assert sorted(claimed) == sorted(set(claimed)), "a model type is in two families"
    assert set(claimed) == set(SUPPORTED_MODEL_TYPES) == set(FAMILY_OF)
    assert hf.SUPPORTED_MODEL_TYPES == hf_export.EXPORTABLE_MODEL_TYPES == SUPPORTED_MODEL_TYPES
    kinds = hf_export.DENSE_MODEL_TYPES + hf_export.MOE_MODEL_TYPES + hf_export.MLA_MODEL_TYPES
    assert set(kinds) <= set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("name", FAMILY_MODULES)
def test_every_family_module_is_in_the_registry(name: str) -> None:
    module = importlib.import_module(f"archspec.interop.families.{name}")
    family = getattr(module, "FAMILY", None)
    assert isinstance(family, Family), f"families/{name}.py defines no FAMILY"
    assert family.name == name
    assert family in FAMILIES, f"families/{name}.py is not in registry.FAMILIES"


def test_the_registry_lists_only_family_modules() -> None:
    assert sorted(family.name for family in FAMILIES) == FAMILY_MODULES


def test_interop_has_no_import_cycle() -> None:
    assert {"archspec.interop.hf", "archspec.interop.registry", "archspec.interop.families.llama"} <= set(MODULES)
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {f"{source}.{name}" if f"{source}.{name}" in MODULES else source for source, name in _imports(path)}
        graph[module] = (targets & set(MODULES)) - {module}
    assert graph["archspec.interop.registry"], "the walk sees no edges"
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle.args[1]))


def test_interop_imports_no_private_name_from_another_module() -> None:
    offences = [
        f"{module}: from {source} import {name}"
        for module, path in MODULES.items()
        for source, name in _imports(path)
        if source.startswith("archspec") and name.startswith("_") and not name.startswith("__")
    ]
    assert not offences, offences
