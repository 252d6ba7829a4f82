"""Paths a careless user gives: directories for files, missing directories, two specs that map to one file name.

Each is one readable error (or the obvious behaviour), never a traceback, a temp-file name or a silent overwrite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import archspec
from archspec.cli import app

SPEC = """\
name: {name}
vocab_size: 64
d_model: 32
n_layers: 1
context_length: 16
attention: {{heads: 4}}
position: rope
mlp: {{activation: swiglu, d_ff: 48}}
"""


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def write_spec(path: Path, name: str) -> Path:
    path.write_text(SPEC.format(name=name))
    return path


def test_check_a_directory_checks_its_yaml_files(tmp_path):
    write_spec(tmp_path / "a.yaml", "a")
    write_spec(tmp_path / "b.yml", "b")
    (tmp_path / "c.yaml").write_text("name: c\n")  # invalid: missing keys
    (tmp_path / "notes.txt").write_text("not a spec")
    result = invoke("check", str(tmp_path))
    assert result.exit_code == 1
    assert f"ok: {tmp_path / 'a.yaml'}" in result.stdout and f"ok: {tmp_path / 'b.yml'}" in result.stdout
    assert "c.yaml" in result.stderr and "notes.txt" not in result.output
    assert result.stderr.splitlines()[-1] == "1 of 3 specs is invalid"


def test_check_an_empty_directory_says_so(tmp_path):
    result = invoke("check", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path}: a directory with no .yaml or .yml files in it"


def test_load_spec_of_a_directory_says_it_is_one(tmp_path):
    with pytest.raises(archspec.SpecError, match="is a directory, not a spec file"):
        archspec.load_spec(tmp_path)


def test_two_specs_with_the_same_file_name_are_refused(tmp_path):
    first, second = write_spec(tmp_path / "1.yaml", "a.b"), write_spec(tmp_path / "2.yaml", "a-b")
    out = tmp_path / "gen"
    result = invoke("build", str(first), str(second), "-o", str(out))
    assert result.exit_code == 1
    assert "holds the model of spec 'a.b', and spec 'a-b' maps to the same file name" in result.stderr
    assert (out / "a_b.py").read_text().startswith('"""a.b: ')  # the first is kept, not overwritten
    assert invoke("build", str(first), "-o", str(out)).exit_code == 0  # the same spec again is fine


def test_build_does_not_overwrite_a_file_it_did_not_write(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "a_b.py").write_text("# my own code\n")
    result = invoke("build", str(write_spec(tmp_path / "s.yaml", "a-b")), "-o", str(out))
    assert result.exit_code == 1
    assert "is not a file emitted by archspec" in result.stderr
    assert (out / "a_b.py").read_text() == "# my own code\n"


def test_build_creates_the_output_directory_but_not_missing_parents(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", "s")
    assert invoke("build", str(spec), "-o", str(tmp_path / "gen")).exit_code == 0
    assert (tmp_path / "gen" / "s.py").is_file()
    result = invoke("build", str(spec), "-o", str(tmp_path / "no" / "such" / "gen"))
    assert result.exit_code == 1
    assert "no such directory" in result.stderr and not (tmp_path / "no").exists()
