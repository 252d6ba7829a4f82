"""`archspec build --check SPEC...` with the real emitter: what CI runs over specs/*.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from archspec.cli import app

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_check_over_several_specs_fails_on_the_stale_one(tmp_path: Path) -> None:
    for name in ("gpt2.yaml", "falcon-7b.yaml"):
        shutil.copy(SPECS / name, tmp_path / name)
    specs = [str(tmp_path / "gpt2.yaml"), str(tmp_path / "falcon-7b.yaml")]
    generated = tmp_path / "gen"
    assert CliRunner().invoke(app, ["build", *specs, "-o", str(generated)]).exit_code == 0
    assert CliRunner().invoke(app, ["build", "--check", *specs, "-o", str(generated)]).exit_code == 0

    stale = generated / "falcon_7b.py"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    result = CliRunner().invoke(app, ["build", "--check", *specs, "-o", str(generated)])
    assert result.exit_code == 1
    assert "falcon_7b.py is stale" in result.output and "gpt2.py is stale" not in result.output
    assert "Traceback" not in result.output


def test_committed_generated_directory_is_current() -> None:
    """The same check over the repository's own specs/ and generated/."""
    specs = sorted(str(path) for path in SPECS.glob("*.yaml"))
    result = CliRunner().invoke(app, ["build", "--check", *specs, "-o", str(SPECS.parent / "generated")])
    assert result.exit_code == 0, result.output
