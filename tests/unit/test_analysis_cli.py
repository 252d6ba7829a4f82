"""`archspec info` / `archspec diff` as commands, on a Typer app of their own (cli.py calls the same `register`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from archspec.cli_analysis import register

LLAMA3_405B = {
    "name": "llama3-405b",
    "vocab_size": 128256,
    "d_model": 16384,
    "n_layers": 126,
    "context_length": 131072,
    "attention": {"heads": 128, "kv_heads": 8},
    "position": {
        "kind": "rope",
        "theta": 500000.0,
        "scaling": {"kind": "llama3", "factor": 8, "original_context": 8192},
    },
    "norm": "rmsnorm",
    "mlp": {"activation": "swiglu", "d_ff": 53248},
}
TINY = {
    "name": "tiny",
    "vocab_size": 100,
    "d_model": 64,
    "n_layers": 2,
    "context_length": 32,
    "attention": {"heads": 8, "kv_heads": 8},
    "position": "rope",
    "mlp": {"activation": "swiglu", "d_ff": 128},
}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """archspec (test app)."""

    register(app)
    return app


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(app: typer.Typer, *args: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args))


def test_info_json(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "tiny", TINY)
    result = run(app, "info", str(path), "--format", "json", "--context", "16", "--batch", "4", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document) == ["version", "name", "summary", "params", "flops", "kv_cache"]
    assert document["params"]["total"] == 2 * (16384 + 24576 + 128) + 12800 + 64
    assert document["summary"]["attention"].startswith("MHA 8q/8kv")
    assert document["summary"]["moe"] == "dense"
    assert document["kv_cache"] == {
        "dtype": "float32",
        "bytes_per_token": 4 * 2 * 2 * 8 * 8,
        "context": 16,
        "batch": 4,
        "bytes": 1024 * 16 * 4,
        "bytes_windows_capped": 1024 * 16 * 4,  # no window
    }
    assert document["flops"]["context"] == 16
    assert len(document["params"]["layers"]) == 2


def test_info_table_and_markdown(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "tiny", TINY)
    table = run(app, "info", str(path))
    assert table.exit_code == 0, table.output
    assert "parameters (total)" in table.stdout and "95,040" in table.stdout and "0-1 (2)" in table.stdout
    markdown = run(app, "info", str(path), "--format", "markdown")
    assert markdown.exit_code == 0
    assert "| parameters (total) | 95 K | 95,040 |" in markdown.stdout


def test_diff_of_three_specs(app: typer.Typer, tmp_path: Path) -> None:
    paths = [
        write(tmp_path, name, {**TINY, "name": name, "n_layers": layers})
        for name, layers in (("a", 2), ("b", 4), ("c", 1))
    ]
    result = run(app, "diff", *map(str, paths), "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["specs"] == ["a", "b", "c"]
    assert document["fields"] == [{"path": "n_layers", "values": [2, 4, 1], "absent": [False, False, False]}]
    table = run(app, "diff", *map(str, paths))
    assert table.exit_code == 0 and "c / a" in table.stdout


def test_diff_of_specs_with_the_same_name_uses_the_paths(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    first, second = write(tmp_path, "tiny", TINY), write(tmp_path / "x", "tiny", {**TINY, "d_model": 128})
    result = run(app, "diff", str(first), str(second), "--format", "json")
    assert json.loads(result.stdout)["specs"] == [str(first), str(second)]


def test_errors_are_one_message_and_exit_1(app: typer.Typer, tmp_path: Path) -> None:
    good = write(tmp_path, "tiny", TINY)
    bad = write(tmp_path, "bad", {**TINY, "attention": {"heads": 8, "kv_heads": 3}})
    cases = [
        ("info", str(tmp_path / "missing.yaml")),
        ("info", str(bad)),
        ("info", str(good), "--dtype", "float13"),
        ("info", str(good), "--context", "0"),
        ("diff", str(good)),
        ("diff", str(good), str(bad)),
    ]
    for args in cases:
        result = run(app, *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: "), (args, result.stderr)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    result = run(app, "info", str(bad))
    assert "attention.kv_heads" in result.stderr and "bad.yaml" in result.stderr


def test_plot_without_matplotlib_is_a_clear_error(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    a, b = write(tmp_path, "a", TINY), write(tmp_path, "b", {**TINY, "name": "b", "n_layers": 3})
    result = run(app, "diff", str(a), str(b), "--plot", str(tmp_path / "out.png"))
    assert result.exit_code == 1
    assert "matplotlib" in result.stderr and "pip install" in result.stderr


def test_plot_with_matplotlib(app: typer.Typer, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a, b = write(tmp_path, "a", TINY), write(tmp_path, "b", {**TINY, "name": "b", "n_layers": 3})
    out = tmp_path / "out.png"
    result = run(app, "diff", str(a), str(b), "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_on_llama3_405b_in_every_format(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "llama3-405b", LLAMA3_405B)
    for format in ("json", "table"):
        result = run(app, "info", str(path), "--format", format, "--context", "131072", "--batch", "16")
        assert result.exit_code == 0, result.output
    assert "405,853,388,800" in result.stdout


def test_diff_table_shows_list_values(app: typer.Typer, tmp_path: Path) -> None:
    """A layer pattern is a list: the table prints it as written, not as Rich markup (which would hide it)."""
    kinds = {"local": {"window": 4}, "global": {}}
    paths = [
        write(tmp_path, name, {**TINY, "name": name, "layers": {"kinds": kinds, "pattern": pattern}})
        for name, pattern in (("a", ["local", "global"]), ("b", ["local", "local", "global"]))
    ]
    result = run(app, "diff", *map(str, paths))
    assert result.exit_code == 0, result.output
    assert "[local, global]" in result.stdout and "[local, local, global]" in result.stdout


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_per_layer_strip_reads_windows_and_positions_the_spec_says(path: Path) -> None:
    """`info`'s runs of layers come from the plan; the spec's own per-layer rules (an independent reading) must agree:
    each layer's window, and 'none' exactly on the layers without positions."""
    from archspec import load_spec
    from archspec.analysis import analyse
    from archspec.analysis.render import layer_groups
    from archspec.spec.schema import NoPositionSpec

    spec = load_spec(path)
    for first, last, _, window, positions in layer_groups(analyse(spec)):
        for index in range(first, last + 1):
            if index < spec.n_layers:  # T5: the decoder's layers follow the encoder's, without windows
                assert window == spec.window_for_layer(index)
                assert (positions == "none") == isinstance(spec.position_for_layer(index), NoPositionSpec)
