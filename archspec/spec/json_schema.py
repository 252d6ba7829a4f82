"""The JSON Schema (Draft 2020-12) of spec *files*, for editors (yaml-language-server) and other validators.

`Spec.model_json_schema()` describes a resolved spec. A file is looser in three ways, all of them derived here from
the pydantic models rather than written out by hand:

* a section validated through `kind_shorthand` may be a bare kind (`norm: rmsnorm`), and a field validated through
  `bool_for_all_projections` or `qk_norm_shorthand` may be one boolean (`attention.bias: false`, `qk_norm: true`):
  `_FileSchemaGenerator` turns those before-validators into `anyOf` alternatives;
* a file with `extends:` sets only the keys it changes, so it is checked against a *partial* copy of every
  definition (`SpecPartial`, `NormSpecPartial`, ...) that has no required keys, and whose sections may leave out their
  `kind` (the parent's is kept);
* `extends` itself is a key.

Unknown keys stay errors everywhere (`additionalProperties: false` on every section), and every description is
kept, so the schema documents the vocabulary as `archspec schema` always did.

The schema is valid Draft 2020-12 and uses only keywords that mean the same in draft-07, and it does not declare
a `$schema` dialect: yaml-language-server validates draft-07 and flags every file whose schema declares 2020-12
("Draft 2020-12 schemas are not yet fully supported"), while validators without a declaration use 2020-12.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from archspec.spec.schema import Spec, bool_for_all_projections, kind_shorthand, qk_norm_shorthand

PARTIAL = "Partial"
_SHORTHAND = "x-archspec-kind-shorthand"
"""Marks the string alternative of a kind shorthand until its enum of kinds is filled in (then it is removed)."""

EXTENDS = {
    "type": "string",
    "minLength": 1,
    "title": "Extends",
    "description": (
        "Path of the spec this one starts from, relative to this file. Mappings merge key by key, so this file "
        "sets only the keys it changes; a section whose kind changes is replaced whole."
    ),
}


class _FileSchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, plus the input forms that the spec's before-validators accept."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        inner = super().function_before_schema(schema)
        function = schema["function"].get("function")
        if function is kind_shorthand:
            return {"anyOf": [{"type": "string", _SHORTHAND: True}, inner]}
        if function is bool_for_all_projections or function is qk_norm_shorthand:
            return {"anyOf": [{"type": "boolean"}, inner]}
        return inner


def spec_file_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file: what `archspec schema` prints."""
    root = Spec.model_json_schema(schema_generator=_FileSchemaGenerator)
    models: dict[str, Any] = root.pop("$defs")
    models["Spec"] = root
    root["properties"] = {"extends": EXTENDS, **root["properties"]}

    defs: dict[str, Any] = {}
    for name, model in models.items():
        defs[name] = _finish(model, models, partial=False)
    for name, model in models.items():
        defs[name + PARTIAL] = _finish(model, models, partial=True)
    defs["Spec" + PARTIAL]["required"] = ["extends"]

    return {
        "title": "archspec spec file",
        "description": (
            "One architecture (archspec's YAML spec). A file without `extends` gives every required key; a file "
            "with `extends` sets only what differs from the spec it extends."
        ),
        "type": "object",
        "if": {"required": ["extends"]},
        "then": {"$ref": _ref("Spec" + PARTIAL)},
        "else": {"$ref": _ref("Spec")},
        "$defs": defs,
    }


# ------------------------------------------------------------------------------------------ internals
def _ref(name: str) -> str:
    return f"#/$defs/{name}"


def _finish(node: Any, models: dict[str, Any], partial: bool) -> Any:
    """A copy of `node` with the shorthand enums filled in; for a partial copy, also without required keys and with
    refs to partial definitions.

    A bare kind is allowed where `{kind: <it>}` alone would be valid: in a full file only kinds whose section needs
    no other key (`position: rope`, not `scaling: yarn`), in a partial copy any kind (the parent may supply the rest).
    """
    if isinstance(node, list):
        return [_finish(item, models, partial) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _finish(value, models, partial) for key, value in node.items()}
    if partial:
        node.pop("required", None)
        node.pop("discriminator", None)  # the kind may be left out: the parent's is kept
        if "oneOf" in node:  # without required kinds, several variants may match the same mapping
            node["anyOf"] = node.pop("oneOf")
        if isinstance(node.get("$ref"), str):
            node["$ref"] = node["$ref"] + PARTIAL
    branches = node.get("anyOf")
    if isinstance(branches, list):  # {anyOf: [{anyOf: [a, b]}, c]} is {anyOf: [a, b, c]}
        branches = node["anyOf"] = [
            inner for branch in branches for inner in (branch["anyOf"] if list(branch) == ["anyOf"] else [branch])
        ]
    if isinstance(branches, list) and any(_SHORTHAND in branch for branch in branches):
        others = [branch for branch in branches if _SHORTHAND not in branch]
        kinds = _kinds(others, models, partial)
        if kinds:
            node["anyOf"] = [{"type": "string", "enum": kinds}, *others]
        elif len(others) == 1:  # no kind is valid on its own: only the mapping form is left
            del node["anyOf"]
            node = {**others[0], **node}
        else:
            node["anyOf"] = others
    return node


def _kinds(branches: list[Any], models: dict[str, Any], partial: bool) -> list[Any]:
    """The `kind` values of the object schemas in `branches` (following $ref, anyOf and oneOf)."""
    kinds: list[Any] = []
    for branch in branches:
        if not isinstance(branch, dict):
            continue
        ref = branch.get("$ref")
        if isinstance(ref, str):
            name = ref.removeprefix(_ref(""))
            branch = models[name.removesuffix(PARTIAL) if partial else name]
        for key in ("anyOf", "oneOf"):
            if isinstance(branch.get(key), list):
                kinds += [kind for kind in _kinds(branch[key], models, partial) if kind not in kinds]
        kind = branch.get("properties", {}).get("kind")
        if not isinstance(kind, dict):
            continue
        if not partial and not set(branch.get("required", [])) <= {"kind"}:
            continue
        values = [kind["const"]] if "const" in kind else kind.get("enum", [])
        kinds += [value for value in values if value not in kinds]
    return kinds
