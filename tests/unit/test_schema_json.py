"""`archspec schema`: a Draft 2020-12 JSON Schema of spec *files* that accepts every file the loader reads (shorthands,
`extends`, `bias: false`) and still rejects unknown keys, unknown kinds and, without `extends`, missing keys."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.validators import validator_for
from typer.testing import CliRunner

import archspec.cli as cli
from archspec import Spec, SpecError, load_spec, spec_from_dict
from archspec.cli import spec_to_yaml
from archspec.spec.json_schema import spec_file_schema
from archspec.spec.loader import SpecYamlLoader

ROOT = Path(__file__).resolve().parents[2]
ERRORS = ROOT / "examples" / "errors"  # the README's deliberately broken specs (see test_the_error_examples)
SHIPPED = sorted((ROOT / "specs").glob("*.yaml")) + sorted(
    path for pattern in ("*.yaml", "*.yml") for path in (ROOT / "examples").rglob(pattern) if ERRORS not in path.parents
)
SCHEMA = spec_file_schema()
VALIDATOR = Draft202012Validator(SCHEMA)

BASE: dict[str, Any] = {
    "name": "base",
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 2,
    "context_length": 16,
    "attention": {"heads": 4, "kv_heads": 2},
    "position": {"kind": "rope", "theta": 500000, "scaling": {"kind": "llama3", "factor": 8, "original_context": 8}},
    "norm": "rmsnorm",
    "mlp": {"activation": "swiglu", "d_ff": 64},
}
KINDS_AND_TYPOS = [
    *("rmsnorm", "layernorm", "rmsnrom", "RMSNorm", ""),
    *("pre-norm", "post-norm", "parallel", "sandwich", "deepnorm", "prenorm"),
    *("rope", "alibi", "learned", "none", "relative-bias", "rotary", "mha", "mla"),
    *("linear", "dynamic", "llama3", "yarn", "ntk"),
    *("mlp", "mpl", "vit", "external"),
]
SHORTHAND_PATHS = [("norm",), ("block",), ("position",), ("position", "scaling")]


def read(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=SpecYamlLoader)  # YAML 1.2 floats, as editors read


def problems(data: Any) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in VALIDATOR.iter_errors(data)]


def with_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


def loads(data: dict[str, Any]) -> bool:
    try:
        spec_from_dict(data)
    except SpecError:
        return False
    return True


def loads_file(path: Path) -> bool:
    try:
        load_spec(path)
    except SpecError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- the schema
def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert validator_for(SCHEMA) is Draft202012Validator  # what a validator picks for it


def test_the_schema_reads_the_same_as_draft_7() -> None:
    """yaml-language-server validates draft-07: the shipped files and the typo checks must come out the same."""
    Draft7Validator.check_schema(SCHEMA)
    draft7 = Draft7Validator(SCHEMA)
    assert all(draft7.is_valid(read(path)) for path in SHIPPED)
    assert not draft7.is_valid(with_value(BASE, ("mlp", "activaton"), "swiglu"))
    assert not draft7.is_valid({"extends": "base.yaml", "norm": "rmsnrom"})


def test_archspec_schema_prints_the_spec_file_schema() -> None:
    result = CliRunner().invoke(cli.app, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == spec_file_schema()


def descriptions(node: Any) -> Counter[str]:
    found: Counter[str] = Counter()
    if isinstance(node, dict):
        found.update(value for key, value in node.items() if key == "description" and isinstance(value, str))
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found += descriptions(value)
    return found


def test_every_description_is_kept() -> None:
    """The schema documents the vocabulary: each description of the models appears for full and for partial files."""
    resolved = descriptions(Spec.model_json_schema())
    in_file = descriptions(SCHEMA)
    assert len(resolved) > 50
    assert {text: count for text, count in resolved.items() if in_file[text] < 2 * count} == {}


# ------------------------------------------------------------------------------------------- shipped files
def test_the_shipped_specs_are_found() -> None:
    assert len(SHIPPED) >= 2 and any("extends" in read(path) for path in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_shipped_spec_file_validates(path: Path) -> None:
    load_spec(path)  # the premise: the loader reads it
    assert problems(read(path)) == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(ROOT)))
def test_written_specs_validate(path: Path) -> None:
    """What `archspec import-hf` writes (spec_to_yaml) and what examples/train.py writes (the full dump)."""
    spec = load_spec(path)
    assert problems(yaml.load(spec_to_yaml(spec), Loader=SpecYamlLoader)) == []
    assert problems(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))) == []


def test_the_readme_yaml_examples_validate() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for block in blocks:
        assert problems(yaml.load(block, Loader=SpecYamlLoader)) == [], block


# -------------------------------------------------------------------------------------- what is rejected
def test_a_typo_at_the_top_level_is_rejected() -> None:
    assert problems(BASE) == []
    assert problems(with_value(BASE, ("n_layer",), 2))
    assert problems({"extends": "base.yaml", "name": "child", "d_modle": 64})


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mlp",), {"activaton": "swiglu", "d_ff": 64}),
        (("attention", "kv_head"), 2),
        (("norm",), {"kind": "rmsnorm", "epsilon": 1e-6}),
        (("position", "scaling", "factr"), 8),
        (("attention", "bias"), {"q": True, "x": True}),
        (("moe",), {"experts": 4, "top_k": 2, "router": {"scorng": "softmax"}}),
    ],
)
def test_a_typo_inside_a_section_is_rejected(path: tuple[str, ...], value: Any) -> None:
    assert not loads(with_value(BASE, path, value))  # the loader refuses it too
    assert problems(with_value(BASE, path, value))
    child = with_value({"extends": "base.yaml", "name": "child"}, path, value)
    assert problems(child)  # a file that extends another sets fewer keys, never unknown ones


@pytest.mark.parametrize(
    ("path", "value"), [(("norm",), "rmsnrom"), (("block",), "prenorm"), (("position",), "rotary")]
)
def test_a_wrong_shorthand_kind_is_rejected(path: tuple[str, ...], value: str) -> None:
    assert problems(with_value(BASE, path, value))
    assert problems({"extends": "base.yaml", **with_value({}, path, value)})


def test_required_keys_only_without_extends() -> None:
    no_mlp = {key: value for key, value in BASE.items() if key != "mlp"}
    assert not loads(no_mlp)
    assert any("mlp" in problem for problem in problems(no_mlp))
    assert problems(with_value(BASE, ("attention",), {"kv_heads": 2}))  # heads is required in a full file
    assert problems({"extends": "base.yaml", "name": "child"}) == []
    assert problems({"extends": "base.yaml", "name": "child", "attention": {"kv_heads": 1}, "mlp": {"d_ff": 8}}) == []
    assert problems({"extends": 3, "name": "child"})
    assert problems({"name": "child"})


def test_attention_variants_do_not_mix_even_in_a_partial_file() -> None:
    child = {"extends": "base.yaml", "attention": {"kv_heads": 2, "kv_rank": 16}}  # mha's kv_heads, mla's kv_rank
    assert problems(child)


# ---------------------------------------------------- agreement with the loader, value by value
@pytest.mark.parametrize("path", SHORTHAND_PATHS, ids=".".join)
def test_the_schema_accepts_every_shorthand_the_loader_accepts(path: tuple[str, ...]) -> None:
    verdicts = []
    for value in KINDS_AND_TYPOS:
        data = with_value(BASE, path, value)
        loader_ok, schema_ok = loads(data), not problems(data)
        assert schema_ok or not loader_ok, (path, value, problems(data))
        verdicts.append(loader_ok)
    assert not all(verdicts)
    assert any(verdicts) or path == ("position", "scaling")  # every scaling kind needs a factor


def test_a_shorthand_that_needs_more_keys_is_rejected_without_extends() -> None:
    data = with_value(BASE, ("position", "scaling"), "llama3")  # llama3 scaling needs factor and original_context
    assert not loads(data)
    assert problems(data)


@pytest.mark.parametrize("path", SHORTHAND_PATHS, ids=".".join)
def test_the_schema_accepts_every_partial_file_the_loader_accepts(tmp_path: Path, path: tuple[str, ...]) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE), encoding="utf-8")
    verdicts = []
    for value in KINDS_AND_TYPOS:
        child = with_value({"extends": "base.yaml", "name": "child"}, path, value)
        (tmp_path / "child.yaml").write_text(yaml.safe_dump(child), encoding="utf-8")
        loader_ok = loads_file(tmp_path / "child.yaml")
        assert not problems(child) or not loader_ok, (path, value, problems(child))
        verdicts.append(loader_ok)
    assert any(verdicts) and not all(verdicts)
    if path == ("position", "scaling"):
        assert verdicts[KINDS_AND_TYPOS.index("llama3")]  # a bare kind over the parent's mapping of that kind


def test_the_vision_projector_shorthand() -> None:
    vlm = next(read(path) for path in SHIPPED if "vision" in read(path) and "extends" not in read(path))
    verdicts = []
    for value in KINDS_AND_TYPOS:
        data = with_value(vlm, ("vision", "projector"), value)
        loader_ok, schema_ok = loads(data), not problems(data)
        assert schema_ok == loader_ok, (value, problems(data))
        verdicts.append(loader_ok)
    assert any(verdicts) and not all(verdicts)


@pytest.mark.parametrize(
    "value",
    [True, False, {"q": True}, {"q": True, "k": True, "v": True, "o": False}, {}, "true", 1, None, [True], {"x": True}],
)
def test_attention_bias_agrees_with_the_loader(value: Any) -> None:
    data = with_value(BASE, ("attention", "bias"), value)
    assert (not problems(data)) == loads(data), problems(data)


def test_the_error_examples() -> None:
    """examples/errors/broken.yaml (a typo'd key, a wrong kind) is refused by the schema as by the loader;
    gqa.yaml's mistake (heads not divisible by kv_heads) is a cross-field rule only the loader can check."""
    assert VALIDATOR.is_valid(read(ERRORS / "gqa.yaml"))
    with pytest.raises(SpecError):
        load_spec(ERRORS / "gqa.yaml")
    messages = " ".join(error.message for error in VALIDATOR.iter_errors(read(ERRORS / "broken.yaml")))
    assert "activaton" in messages
