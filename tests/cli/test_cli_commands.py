"""The command line through Typer's CliRunner: check, build, import-hf, schema; errors are one message, exit 1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import archspec
import archspec.cli as cli
from archspec import Spec, load_spec
from archspec.spec.json_schema import spec_file_schema

TINY = """\
name: tiny-gqa.v1
vocab_size: 96
d_model: 48
n_layers: 3
context_length: 32
attention: {heads: 6, kv_heads: 2}
position: {kind: rope, theta: 10000}
norm: rmsnorm
mlp: {activation: swiglu, d_ff: 80}
"""


def expected_parameters(vocab: int, d: int, layers: int, heads: int, kv: int, d_ff: int) -> int:
    """A pre-norm SwiGLU decoder with RMSNorm, no biases, untied head, counted by hand."""
    head_dim = d // heads
    attention = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    mlp = 3 * d * d_ff
    norms = 2 * d
    return vocab * d + layers * (attention + mlp + norms) + d + d * vocab


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args))


def assert_one_readable_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return Path("tiny.yaml")


# ------------------------------------------------------------------------------------------------ check
def test_check_ok(tiny: Path) -> None:
    result = invoke("check", str(tiny))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: tiny.yaml\n"
    assert result.stderr == ""


def test_check_reports_every_file_and_fails_if_any_is_invalid(tiny: Path) -> None:
    Path("bad.yaml").write_text(TINY.replace("kv_heads: 2", "kv_heads: two").replace("d_ff: 80", "d_ff: -1"))
    result = invoke("check", "tiny.yaml", "bad.yaml", "missing.yaml")
    assert_one_readable_error(
        result,
        "error: bad.yaml:6: attention.kv_heads: Input should be a valid integer",
        "error: bad.yaml:9: mlp.d_ff: ",
        "error: missing.yaml: <root>: file not found",
        "2 of 3 specs are invalid",
    )
    assert result.stdout == "ok: tiny.yaml\n"


def test_check_of_a_directory_is_a_readable_error(tmp_path: Path) -> None:
    assert_one_readable_error(invoke("check", str(tmp_path)), str(tmp_path))


def test_check_needs_a_spec() -> None:
    result = invoke("check")
    assert result.exit_code == 2 and "Missing argument" in result.output  # Click's usage error
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ build
def test_build_prints_the_summary_with_the_exact_parameter_total(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    result = invoke("build", str(tiny), "-o", "out")
    assert result.exit_code == 0, result.output
    text = result.stdout
    total = expected_parameters(vocab=96, d=48, layers=3, heads=6, kv=2, d_ff=80)
    assert f"{total:,}" in text
    rows = dict(re.findall(r"^(\w+)\s{2,}(.*?)\s*$", text, flags=re.MULTILINE))
    assert rows["layers"] == "3" and rows["d_model"] == "48"
    assert rows["attention"].startswith("GQA, 6 heads, 2 kv heads, head_dim 8")
    assert rows["position"].startswith("rope") and rows["norm"].startswith("rmsnorm")
    assert rows["block"] == "pre-norm" and rows["mlp"].startswith("swiglu")
    assert "tiny-gqa.v1" in text
    assert [p.name for p in Path("out").iterdir()] == ["tiny_gqa_v1.py"]


@pytest.mark.parametrize(
    ("kv_heads", "window", "expected"),
    [(6, None, "MHA, 6 heads, 6 kv heads"), (1, None, "MQA, 6 heads, 1 kv heads"), (2, 4, "window 4 (all layers)")],
)
def test_build_names_the_attention_kind(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, kv_heads: int, window: int | None, expected: str
) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    attention = f"attention: {{heads: 6, kv_heads: {kv_heads}{f', window: {window}' if window else ''}}}"
    tiny.write_text(TINY.replace("attention: {heads: 6, kv_heads: 2}", attention))
    result = invoke("build", str(tiny))
    assert result.exit_code == 0, result.output
    assert expected in result.stdout


def test_build_counts_a_tied_embedding_once(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    tiny.write_text(TINY + "embeddings: {tied: true}\n")
    result = invoke("build", str(tiny))
    total = expected_parameters(vocab=96, d=48, layers=3, heads=6, kv=2, d_ff=80) - 96 * 48
    assert f"({total:,})" in result.stdout


def test_build_allocates_nothing(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = []
    real_build = archspec.build

    def spy(spec: Spec, **kwargs: object):
        model = real_build(spec, **kwargs)
        devices.extend({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(archspec, "build", spy)
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    assert invoke("build", str(tiny)).exit_code == 0
    assert set(devices) == {"meta"}


class FakeEmitter:
    """Stands in for `archspec.emit` (tested in tests/unit/test_emit.py): what `build` needs of it, and no more."""

    def __init__(self, version: int = 1) -> None:
        self.version = version

    def source(self, spec: Spec) -> str:
        return f"# emitted {spec.name} v{self.version}\n"

    def generated_path(self, spec: Spec, directory: str | Path) -> Path:
        return Path(directory) / f"{spec.name.replace('-', '_').replace('.', '_')}.py"

    def is_stale(self, spec: Spec, directory: str | Path) -> bool:
        path = self.generated_path(spec, directory)
        return not path.is_file() or path.read_text() != self.source(spec)

    def write_generated(self, spec: Spec, directory: str | Path) -> Path:
        path = self.generated_path(spec, directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.source(spec))
        return path


def test_build_writes_the_emitted_source_and_check_detects_stale_files(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter(1))
    target = Path("out/tiny_gqa_v1.py")

    missing = invoke("build", str(tiny), "-o", "out", "--check")
    assert_one_readable_error(missing, f"{target} does not exist")
    assert not target.exists()

    written = invoke("build", str(tiny), "-o", "out")
    assert written.exit_code == 0, written.output
    assert f"wrote {target}" in written.stdout
    assert target.read_text() == "# emitted tiny-gqa.v1 v1\n"

    fresh = invoke("build", str(tiny), "-o", "out", "--check")
    assert fresh.exit_code == 0, fresh.output
    assert "up to date" in fresh.stdout

    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter(2))  # the emitter changed: the file is stale
    stale = invoke("build", str(tiny), "-o", "out", "--check")
    assert_one_readable_error(stale, f"{target} is stale")
    assert target.read_text() == "# emitted tiny-gqa.v1 v1\n"  # --check writes nothing


def test_build_writes_to_generated_by_default(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    assert invoke("build", str(tiny)).exit_code == 0
    assert Path("generated/tiny_gqa_v1.py").is_file()


def test_an_emitter_failure_is_an_error_and_writes_nothing(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FakeEmitter):
        def write_generated(self, spec: Spec, directory: str | Path) -> Path:
            raise NotImplementedError(f"cannot emit {spec.name!r}")

        is_stale = write_generated  # type: ignore[assignment]

    monkeypatch.setattr(cli, "_emitter", lambda: Broken())
    for extra in ([], ["--check"]):
        assert_one_readable_error(invoke("build", str(tiny), *extra), "cannot emit 'tiny-gqa.v1'")
    assert not Path("generated").exists()


def test_build_summarises_latent_attention_and_experts(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    mla = "attention: {kind: mla, heads: 4, kv_rank: 16, nope_dim: 8, rope_dim: 4, v_dim: 8}"
    moe = "moe: {experts: 4, top_k: 2, shared_experts: 1, dense_layers: 1}\n"
    tiny.write_text(TINY.replace("attention: {heads: 6, kv_heads: 2}", mla) + moe)
    result = invoke("build", str(tiny))
    assert result.exit_code == 0, result.output
    rows = dict(re.findall(r"^(\w+)\s{2,}(.*?)\s*$", result.stdout, flags=re.MULTILINE))
    assert rows["attention"].startswith("MLA, 4 heads, kv latent 16, head_dim 12")
    assert rows["moe"] == "4 experts, top 2, d_ff 80, 1 shared, first 1 layer dense"


def test_build_uses_archspec_emit() -> None:
    emit = cli._emitter()  # the three functions build calls (FakeEmitter's)
    assert callable(emit.generated_path) and callable(emit.is_stale) and callable(emit.write_generated)


def test_build_of_an_invalid_spec_is_one_readable_error(tiny: Path) -> None:
    tiny.write_text(TINY.replace("n_layers: 3", "n_layers: three"))
    assert_one_readable_error(invoke("build", str(tiny)), "error: tiny.yaml:4: n_layers: ")


def test_build_of_a_missing_file_is_one_readable_error(tmp_path: Path) -> None:
    assert_one_readable_error(invoke("build", str(tmp_path / "nope.yaml")), "nope.yaml", "file not found")


def test_an_unexpected_error_is_one_line_too(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: Spec, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(archspec, "build", broken)
    result = invoke("build", str(tiny))
    assert_one_readable_error(result, "internal error: RuntimeError: boom")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_os_error_is_one_readable_error(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_emitter", lambda: FakeEmitter())
    Path("blocked").write_text("a file where the output directory should be")
    assert_one_readable_error(invoke("build", str(tiny), "-o", "blocked"), "error")


# -------------------------------------------------------------------------------------------- import-hf
LLAMA_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tiny-llama"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    return directory


def test_import_hf_writes_a_spec_that_loads_back_equal(hf_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    target = tmp_path / "specs" / "imported.yaml"
    result = invoke("import-hf", str(hf_dir), "-o", str(target))
    assert result.exit_code == 0, result.output
    loaded = load_spec(target)
    assert loaded == archspec.spec_from_hf(hf_dir)
    assert loaded.position.kind == "rope" and loaded.position.scaling.kind == "llama3"
    assert invoke("check", str(target)).exit_code == 0


def test_import_hf_accepts_config_json_and_a_name(hf_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "named.yaml"
    result = invoke("import-hf", str(hf_dir / "config.json"), "-o", str(target), "--name", "my-llama")
    assert result.exit_code == 0, result.output
    assert load_spec(target).name == "my-llama"


def test_import_hf_errors_are_readable(hf_dir: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.yaml")
    assert_one_readable_error(invoke("import-hf", str(tmp_path / "absent"), "-o", out), "absent")
    assert_one_readable_error(invoke("import-hf", str(tmp_path), "-o", out), "config.json")
    (hf_dir / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "model_type": "made-up"}))
    assert_one_readable_error(invoke("import-hf", str(hf_dir), "-o", out), "made-up")
    (hf_dir / "config.json").write_text("{not json")
    assert_one_readable_error(invoke("import-hf", str(hf_dir), "-o", out), "JSON")
    assert not Path(out).exists()


def test_import_hf_output_paths(hf_dir: Path, tmp_path: Path) -> None:
    """-o into an existing directory writes <name>.yaml there (like cp); a missing directory is an error, not a
    new tree of directories; a directory in the way of a file is an error, not a temp-file traceback."""
    into = tmp_path / "adir"
    into.mkdir()
    result = invoke("import-hf", str(hf_dir), "-o", str(into), "--name", "tiny-llama")
    assert result.exit_code == 0, result.output
    assert load_spec(into / "tiny-llama.yaml") == archspec.spec_from_hf(hf_dir, name="tiny-llama")
    nowhere = tmp_path / "missing" / "dir" / "x.yaml"
    assert_one_readable_error(invoke("import-hf", str(hf_dir), "-o", str(nowhere)), "no such directory")
    assert not (tmp_path / "missing").exists()


# ----------------------------------------------------------------------------------------------- schema
def test_schema_is_the_json_schema_of_a_spec() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == spec_file_schema()  # what spec files are: tests/unit/test_schema_json.py
    spec = schema["$defs"]["Spec"]
    assert spec["additionalProperties"] is False
    assert {"attention", "position", "norm", "block", "mlp", "extends"} <= set(spec["properties"])


def test_version_and_help() -> None:
    assert invoke("--version").stdout.strip() == f"archspec {archspec.__version__}"
    help_text = invoke("--help").stdout
    for command in ("check", "build", "info", "diff", "import-hf", "schema"):
        assert command in help_text
