"""A table of broken specs: each must name the right file, line and key path, and the CLI must say so in one
readable message (exit 1, no traceback)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archspec import SpecError, load_spec
from archspec.cli import app

BASE = """\
name: tiny
vocab_size: 64
d_model: 32
n_layers: 2
context_length: 16
attention:
  heads: 4
  kv_heads: 2
position: rope
norm: rmsnorm
mlp: {activation: swiglu, d_ff: 64}
"""


def with_lines(replacements: dict[int, str], base: str = BASE) -> str:
    """BASE with the given 1-based lines replaced (a replacement may span several lines)."""
    lines = base.splitlines()
    for number, text in replacements.items():
        lines[number - 1] = text
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    files: dict[str, str]  # relative path -> YAML text; the first one is loaded
    file: str  # where the problem is reported
    line: int | None
    key_path: str
    message: str  # a fragment of the message

    @property
    def entry(self) -> str:
        return next(iter(self.files))


LAYERS = "layers:\n  kinds:\n    local: {window: 4}\n    global: {position: none}\n"

CASES = {
    "unknown layer kind": Case(
        {"spec.yaml": BASE + LAYERS + "  pattern: [local, globl]\n"},
        "spec.yaml",
        16,
        "layers.pattern.1",
        "unknown kind",
    ),
    "window beside a layers section": Case(
        {"spec.yaml": with_lines({8: "  kv_heads: 2\n  window: 4"}) + LAYERS + "  pattern: [local]\n"},
        "spec.yaml",
        9,
        "attention.window",
        "said per kind",
    ),
    "exception on a layer that does not exist": Case(
        {"spec.yaml": BASE + LAYERS + "  pattern: [local]\n  exceptions: {global: [7]}\n"},
        "spec.yaml",
        17,
        "layers.exceptions.global",
        "do not exist",
    ),
    "offset weight on a layernorm": Case(
        {"spec.yaml": with_lines({10: "norm: {kind: layernorm, offset: true}"})},
        "spec.yaml",
        10,
        "norm.offset",
        "Gemma",
    ),
    "per-head qk-norm weights after rope": Case(
        {"spec.yaml": with_lines({8: "  kv_heads: 2\n  qk_norm: {per_head_weights: true, after_rope: true}"})},
        "spec.yaml",
        9,
        "attention.qk_norm.per_head_weights",
        "before RoPE",
    ),
    "unknown key": Case(
        {"spec.yaml": with_lines({8: "  kv_head: 2"})}, "spec.yaml", 8, "attention.kv_head", "unknown key"
    ),
    "unknown top-level key": Case({"spec.yaml": BASE + "dropout: 0.1\n"}, "spec.yaml", 12, "dropout", "unknown key"),
    "wrong type": Case({"spec.yaml": with_lines({3: "d_model: wide"})}, "spec.yaml", 3, "d_model", "integer"),
    "wrong type nested": Case(
        {"spec.yaml": with_lines({7: "  heads: [4]"})}, "spec.yaml", 7, "attention.heads", "integer"
    ),
    "integer key": Case(
        {"spec.yaml": BASE.replace("  kv_heads: 2", "  kv_heads: 2\n  1: 5")}, "spec.yaml", 9, "attention.1", "string"
    ),
    "negative number": Case(
        {"spec.yaml": with_lines({4: "n_layers: -1"})}, "spec.yaml", 4, "n_layers", "greater than 0"
    ),
    "heads not divisible by kv_heads": Case(
        {"spec.yaml": with_lines({8: "  kv_heads: 3"})}, "spec.yaml", 8, "attention.kv_heads", "divisible"
    ),
    "d_model not divisible by heads": Case(
        {"spec.yaml": with_lines({7: "  heads: 5", 8: "  kv_heads: 5"})}, "spec.yaml", 7, "attention.heads", "divisible"
    ),
    "missing extends file": Case(
        {"spec.yaml": "extends: nowhere.yaml\nname: child\n"}, "spec.yaml", 1, "extends", "file not found"
    ),
    "extends cycle": Case(
        {"a.yaml": "name: a\nextends: b.yaml\n", "b.yaml": "# b\nextends: c.yaml\n", "c.yaml": "extends: a.yaml\n"},
        "c.yaml",
        1,
        "extends",
        "extends cycle",
    ),
    "extends itself": Case({"self.yaml": "\n\nextends: self.yaml\n"}, "self.yaml", 3, "extends", "extends cycle"),
    "bad YAML syntax": Case(
        {"spec.yaml": with_lines({6: "attention: {heads: 4, kv_heads: 2", 7: "", 8: ""})},
        "spec.yaml",
        9,
        "<root>",
        "invalid YAML",
    ),
    "bad YAML indentation": Case(
        {"spec.yaml": with_lines({8: "    kv_heads: 2"})}, "spec.yaml", 8, "<root>", "invalid YAML"
    ),
    "duplicate key": Case({"spec.yaml": BASE + "d_model: 64\n"}, "spec.yaml", 12, "d_model", "duplicate key"),
    "duplicate nested key": Case(
        {"spec.yaml": with_lines({8: "  heads: 8"})}, "spec.yaml", 8, "attention.heads", "duplicate key"
    ),
    "missing required key": Case(
        {"spec.yaml": with_lines({2: "# vocab_size: 64"})}, "spec.yaml", 1, "vocab_size", "required key is missing"
    ),
    "missing nested required key": Case(
        {"spec.yaml": with_lines({11: "mlp:\n  activation: swiglu"})}, "spec.yaml", 11, "mlp.d_ff", "required"
    ),
    "rmsnorm with bias": Case(
        {"spec.yaml": with_lines({10: "norm:\n  kind: rmsnorm\n  bias: true"})}, "spec.yaml", 12, "norm.bias", "no bias"
    ),
    "odd rotary dims": Case(
        {"spec.yaml": with_lines({9: "position:\n  kind: rope\n  fraction: 0.375"})},
        "spec.yaml",
        11,
        "position.fraction",
        "rotary dims",
    ),
    "unknown kind": Case(
        {"spec.yaml": with_lines({9: "position:\n  kind: sinusoidal"})},
        "spec.yaml",
        10,
        "position.kind",
        "unknown kind 'sinusoidal'",
    ),
    "unknown activation": Case(
        {"spec.yaml": with_lines({11: "mlp: {activation: swish, d_ff: 64}"})},
        "spec.yaml",
        11,
        "mlp.activation",
        "'swish' is not allowed",
    ),
    "error inherited from the parent file": Case(
        {"child.yaml": "extends: parent.yaml\nname: child\n", "parent.yaml": with_lines({8: "  kv_heads: 3"})},
        "parent.yaml",
        8,
        "attention.kv_heads",
        "divisible",
    ),
    "error in a child of a subdirectory parent": Case(
        {"sub/child.yaml": "extends: ../base.yaml\nattention: {kv_headz: 1}\n", "base.yaml": BASE},
        "sub/child.yaml",
        2,
        "attention.kv_headz",
        "unknown key",
    ),
    "python tag (safe loading)": Case(
        {"spec.yaml": "name: !!python/object/apply:os.system [echo hi]\n"},
        "spec.yaml",
        1,
        "<root>",
        "Python object tags are never read",
    ),
    "softmax-top-k counts beside the sequence balance loss": Case(
        {
            "spec.yaml": BASE
            + "moe:\n  experts: 4\n  top_k: 2\n  router:\n    aux_loss: sequence\n"
            + "    aux_loss_counts: softmax-top-k\n"
        },
        "spec.yaml",
        17,
        "moe.router.aux_loss_counts",
        "token balance loss only",
    ),
    "not a mapping": Case({"spec.yaml": "- name: tiny\n"}, "spec.yaml", 1, "<root>", "mapping"),
    "empty file": Case({"spec.yaml": "# nothing\n"}, "spec.yaml", 1, "<root>", "empty"),
}


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path / next(iter(files))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_spec_error_names_file_line_and_key_path(tmp_path: Path, case: Case) -> None:
    entry = write(tmp_path, case.files)
    with pytest.raises(SpecError) as caught:
        load_spec(entry)
    located = [
        (Path(issue.file).resolve(), issue.line, issue.key_path, issue.message)
        for issue in caught.value.issues
        if issue.file is not None
    ]
    expected = ((tmp_path / case.file).resolve(), case.line, case.key_path)
    matching = [item for item in located if item[:3] == expected]
    assert matching, f"no issue at {expected}; got {caught.value.issues}"
    assert any(case.message in item[3] for item in matching), caught.value.issues


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cli_check_prints_one_readable_message(tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    result = CliRunner().invoke(app, ["check", case.entry])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    # each issue is one line: `error: <file>:<line>: <key.path>: <message> (<hint>)`
    issue_lines = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any(
        Path(line.split(":", 1)[0]).resolve() == (tmp_path / case.file).resolve()
        and f":{case.line}: {case.key_path}: " in line
        and case.message in line
        for line in issue_lines
    ), result.stderr
    assert result.stderr.splitlines()[-1] == "1 of 1 spec is invalid"
    assert result.stdout == ""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = with_lines({3: "d_model: wide", 4: "n_layers: 0", 8: "  kv_head: 2"}) + "dropout: 0.1\n"
    entry = write(tmp_path, {"spec.yaml": text})
    with pytest.raises(SpecError) as caught:
        load_spec(entry)
    found = {(issue.key_path, issue.line) for issue in caught.value.issues}
    assert found >= {("d_model", 3), ("n_layers", 4), ("attention.kv_head", 8), ("dropout", 12)}


def test_unknown_key_suggests_the_closest_name(tmp_path: Path) -> None:
    entry = write(tmp_path, {"spec.yaml": with_lines({8: "  kv_head: 2"})})
    with pytest.raises(SpecError) as caught:
        load_spec(entry)
    assert "kv_heads" in caught.value.issues[0].hint


def test_a_key_of_another_section_is_not_suggested_as_itself(tmp_path: Path) -> None:
    entry = write(tmp_path, {"spec.yaml": BASE + "kind: rope\n"})  # `kind` exists, but only inside sections
    with pytest.raises(SpecError) as caught:
        load_spec(entry)
    (issue,) = caught.value.issues
    assert (issue.key_path, issue.line) == ("kind", 12)
    assert "did you mean 'kind'" not in issue.hint and "another section" in issue.hint


def test_str_of_an_issue_is_file_line_key_message_hint(tmp_path: Path) -> None:
    entry = write(tmp_path, {"spec.yaml": with_lines({8: "  kv_heads: 3"})})
    with pytest.raises(SpecError) as caught:
        load_spec(entry)
    (issue,) = caught.value.issues
    assert str(issue) == f"{entry}:8: attention.kv_heads: {issue.message} ({issue.hint})"
    assert issue.hint
