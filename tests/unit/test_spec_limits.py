"""Specs that cannot be built are spec errors at the key that causes them, found without building anything; and the
messages for common mistakes say what to do (one message per mistake, in line order).

Found by fuzzing mutated specs: `d_model: 1000000000000` passed `check` and then crashed `build` (storage size
overflow) while `info` printed `6e+12 T` parameters; `n_layers: 1000000000000000` made `build` hang.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import archspec
from archspec.analysis import param_counts
from archspec.cli import app
from archspec.spec.rules import MAX_PARAMETERS
from archspec.spec.schema import MAX_LAYERS, MAX_WIDTH

BASE = {
    "name": "base",
    "vocab_size": 32000,
    "d_model": 512,
    "n_layers": 4,
    "context_length": 2048,
    "attention": {"heads": 8},
    "position": "rope",
    "mlp": {"activation": "swiglu", "d_ff": 1024},
}


def spec_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE | changes, sort_keys=False))
    return path


def issues_of(path: Path) -> list[archspec.spec.SpecIssue]:
    with pytest.raises(archspec.SpecError) as error:
        archspec.load_spec(path)
    return error.value.issues


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"d_model": 10**12}, "d_model"),
        ({"n_layers": 10**15}, "n_layers"),
        ({"vocab_size": 10**13}, "vocab_size"),
        ({"attention": {"heads": 10**9}}, "attention.heads"),
        ({"mlp": {"activation": "swiglu", "d_ff": 2**40}}, "mlp.d_ff"),
        ({"context_length": 2**62}, "context_length"),
    ],
)
def test_a_size_no_machine_holds_is_an_error_at_its_key(tmp_path, changes, key):
    path = spec_file(tmp_path, **changes)
    (issue,) = issues_of(path)
    assert issue.key_path == key
    assert issue.line is not None and issue.message.startswith("must be at most")
    assert "archspec's limit" in issue.hint


def test_too_many_parameters_in_total_is_an_error_at_the_largest_part(tmp_path):
    """Every field within its own bound, but the product beyond any machine: 4000 layers of width 2^20."""
    path = spec_file(tmp_path, d_model=MAX_WIDTH, n_layers=4000, attention={"heads": 64})
    (issue,) = issues_of(path)
    assert issue.key_path == "n_layers"
    assert "parameters, more than any machine holds" in issue.message


def test_the_parameter_ceiling_never_refuses_a_spec_within_it():
    """The rule counts a lower bound of the parameters: a spec whose exact count is just below the ceiling passes."""
    data = BASE | {"d_model": 196608, "n_layers": 4096, "attention": {"heads": 1024}}
    spec = archspec.spec_from_dict(data | {"mlp": {"activation": "gelu", "d_ff": 196608}})
    assert 0.9 * MAX_PARAMETERS < param_counts(spec).total <= MAX_PARAMETERS


def test_the_largest_stack_builds_on_the_meta_device_in_seconds():
    """MAX_LAYERS tiny layers: the bound keeps `archspec build` (meta device) from taking minutes."""
    spec = archspec.spec_from_dict(BASE | {"d_model": 16, "n_layers": MAX_LAYERS, "attention": {"heads": 2}})
    start = time.process_time()
    model = archspec.build(spec, device="meta")
    assert len(model.layers) == MAX_LAYERS
    assert time.process_time() - start < 120  # a bound against hangs, not a performance claim


def test_cli_build_and_info_refuse_cleanly(tmp_path):
    path = spec_file(tmp_path, d_model=10**12)
    for command in (["build", str(path), "-o", str(tmp_path)], ["info", str(path)], ["check", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, command
        assert "internal error" not in result.output and "Traceback" not in result.output
        assert "d_model: must be at most 1048576" in result.output


def test_info_prints_the_largest_allowed_count_in_trillions():
    from archspec.analysis.render import human_count

    assert human_count(MAX_PARAMETERS) == "1000 T"
    assert human_count(8_030_261_248) == "8.03 B"


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_infinite_and_nan_numbers_are_refused(tmp_path, value):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + f"norm: {{kind: rmsnorm, eps: {value}}}\n")
    (issue,) = issues_of(path)
    assert issue.key_path == "norm.eps"


def test_token_ids_must_be_below_the_vocabulary(tmp_path):
    path = spec_file(tmp_path, vocab_size=256, tokens={"bos": 1, "eos": [2, 999], "pad": 256})
    issues = issues_of(path)
    assert {issue.key_path: issue.message for issue in issues} == {
        "tokens.pad": "256 is not below vocab_size (256)",
        "tokens.eos": "[999] is not below vocab_size (256)",
    }


def test_a_typo_of_a_required_key_is_one_message(tmp_path):
    path = spec_file(tmp_path, mlp={"activaton": "swiglu", "d_ff": 64})
    (issue,) = issues_of(path)
    assert issue.key_path == "mlp.activaton"
    assert issue.message == "unknown key"
    assert issue.hint == "did you mean 'activation'? it is required here"


def test_a_value_of_no_union_member_is_one_message(tmp_path):
    path = spec_file(tmp_path, tokens={"eos": -1})
    (issue,) = issues_of(path)
    assert issue.key_path == "tokens.eos" and issue.message == "must be at least 0"


def test_issues_come_in_line_order(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: 'bad name'\nvocab_size: 0\nd_model: 64\nn_layers: 2\ncontext_length: 16\n"
        "attention: {heads: 4, colour: red}\nposition: rope\nmlp: {activation: swiglu, d_ff: -3}\n"
    )
    issues = issues_of(path)
    lines = [issue.line for issue in issues]
    assert lines == sorted(lines) and len(issues) == 4


def test_names_say_what_is_allowed(tmp_path):
    path = spec_file(tmp_path, name="my model!")
    (issue,) = issues_of(path)
    assert issue.message == "'my model!' is not a valid name"
    assert "letters, digits, '.', '_' and '-'" in issue.hint and "[A-Za-z" not in issue.hint


def test_python_tags_are_refused_with_that_reason(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: !!python/object/apply:os.system [echo hi]\n")
    (issue,) = issues_of(path)
    assert "Python object tags are never read in a spec" in issue.message
    assert "indentation" not in issue.hint
