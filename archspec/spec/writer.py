"""Writing a spec back as YAML: what `archspec import-hf` writes and emitted files quote."""

from __future__ import annotations

from typing import Any

import yaml

from archspec.spec.schema import Spec


def spec_to_yaml(spec: Spec) -> str:
    """A spec as YAML that `load_spec` reads back to an equal `Spec`.

    Values equal to the schema's defaults are left out, so the file reads like a hand-written spec; values the
    loader resolves (kv_heads, head_dim, norm bias) are written out, so the file does not depend on how they are
    derived. Sections whose values are all scalars are written on one line: `attention: {heads: 32, kv_heads: 8}`.
    """
    data = spec.model_dump(mode="json", exclude_defaults=True)
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=120)


class _SpecDumper(yaml.SafeDumper):
    """Block style at the top level, flow style for leaf sections."""

    def represent_mapping(self, tag: str, mapping: Any, flow_style: bool | None = None) -> yaml.MappingNode:
        node = super().represent_mapping(tag, mapping, flow_style)
        node.flow_style = all(isinstance(value, yaml.ScalarNode) for _, value in node.value) and self._depth > 0
        return node

    def represent_data(self, data: Any) -> yaml.Node:
        self._depth = getattr(self, "_depth", -1) + 1
        try:
            return super().represent_data(data)
        finally:
            self._depth -= 1
