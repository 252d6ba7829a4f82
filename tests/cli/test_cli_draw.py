"""`archspec draw` and `archspec diff --draw` on the command line: formats by suffix, directories, `--check`
(the committed docs/diagrams are current), and errors as one readable line with exit code 1."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import archspec.cli as cli
from tests.tiny import SPECS_DIR, spec_files
from tests.unit.test_draw import require_dot

DOCS = SPECS_DIR.parent / "docs" / "diagrams"
LLAMA = str(SPECS_DIR / "llama3-8b.yaml")
MISTRAL = str(SPECS_DIR / "mistral-7b.yaml")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args))


def assert_one_readable_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_the_committed_diagrams_are_current() -> None:
    """docs/diagrams holds one page per spec, each what `archspec draw` writes now (CI fails on a stale one)."""
    result = invoke("draw", str(SPECS_DIR), "-o", str(DOCS), "--check")
    assert result.exit_code == 0, result.stderr
    assert {path.stem for path in DOCS.glob("*.md")} == {path.stem for path in spec_files()}


@pytest.mark.parametrize("suffix", ["mmd", "md", "dot"])
def test_text_formats_by_suffix(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"llama.{suffix}"
    result = invoke("draw", LLAMA, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert "32 heads · 8 kv heads · head_dim 128" in text
    first = {"mmd": "flowchart TB", "md": "# llama3-8b", "dot": "digraph archspec {"}[suffix]
    assert text.startswith(first)
    if suffix == "md":
        assert "```mermaid\nflowchart TB\n" in text


@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_rendered_formats(tmp_path: Path, suffix: str) -> None:
    require_dot()
    out = tmp_path / f"llama.{suffix}"
    result = invoke("draw", LLAMA, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    if suffix == "svg":
        ET.parse(out)  # well-formed
    else:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_finds_stale_and_missing_files(tmp_path: Path) -> None:
    specs = [LLAMA, MISTRAL]
    assert invoke("draw", *specs, "-o", str(tmp_path / "out")).exit_code == 0
    assert invoke("draw", *specs, "-o", str(tmp_path / "out"), "--check").exit_code == 0
    page = tmp_path / "out" / "llama3-8b.md"
    page.write_text(page.read_text(encoding="utf-8").replace("8 kv heads", "4 kv heads"), encoding="utf-8")
    (tmp_path / "out" / "mistral-7b.md").unlink()
    result = invoke("draw", *specs, "-o", str(tmp_path / "out"), "--check")
    assert_one_readable_error(result, "llama3-8b.md is stale", "mistral-7b.md does not exist", "archspec draw")


def test_directory_format_option(tmp_path: Path) -> None:
    result = invoke("draw", LLAMA, "-o", str(tmp_path), "--format", "dot")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "llama3-8b.dot").read_text(encoding="utf-8").startswith("digraph")


def test_unknown_suffix_is_one_error(tmp_path: Path) -> None:
    assert_one_readable_error(invoke("draw", LLAMA, "-o", str(tmp_path / "x.txt")), "'txt'", ".mmd", ".png")


def test_missing_graphviz_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = invoke("draw", LLAMA, "-o", str(tmp_path / "x.png"))
    assert_one_readable_error(result, "apt-get install graphviz")
    assert not (tmp_path / "x.png").exists()


def test_bad_spec_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nvocab_size: 10\n", encoding="utf-8")
    result = invoke("draw", str(bad), "-o", str(tmp_path / "x.mmd"))
    assert_one_readable_error(result, "bad.yaml")
    assert not (tmp_path / "x.mmd").exists()


def test_check_refuses_rendered_formats(tmp_path: Path) -> None:
    assert_one_readable_error(invoke("draw", LLAMA, "-o", str(tmp_path / "x.png"), "--check"), "--check compares text")


def test_a_file_takes_one_spec(tmp_path: Path) -> None:
    assert_one_readable_error(invoke("draw", LLAMA, MISTRAL, "-o", str(tmp_path / "x.mmd")), "one spec")


def test_diff_draw_writes_both_with_differences_marked(tmp_path: Path) -> None:
    out = tmp_path / "diff.dot"
    result = invoke("diff", LLAMA, MISTRAL, "--draw", str(out))
    assert result.exit_code == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert "cluster_a_model" in text and "cluster_b_model" in text
    assert "sliding window 4096, every layer" in text and "#cc0000" in text


def test_diff_draw_needs_two_specs(tmp_path: Path) -> None:
    result = invoke("diff", LLAMA, MISTRAL, LLAMA, "--draw", str(tmp_path / "d.mmd"))
    assert_one_readable_error(result, "--draw compares two specs")
    result = invoke("diff", LLAMA, MISTRAL, "--draw", str(tmp_path / "d.jpg"))
    assert_one_readable_error(result, "'jpg'")
