"""`archspec export-hf`: a spec's model as a transformers directory; specs without a counterpart fail before any
weights are allocated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from archspec.cli import app

TINY_QWEN3 = {
    "name": "tiny-qwen3", "vocab_size": 64, "d_model": 32, "n_layers": 2, "context_length": 64,
    "attention": {"heads": 4, "kv_heads": 2, "head_dim": 16, "qk_norm": True}, "position": {"kind": "rope"},
    "norm": {"kind": "rmsnorm", "eps": 1.0e-6}, "mlp": {"activation": "swiglu", "d_ff": 48},
}  # fmt: skip
TINY_T5 = {
    "name": "tiny-t5", "structure": "encoder-decoder", "vocab_size": 64, "d_model": 32, "n_layers": 2,
    "context_length": 64, "attention": {"heads": 4, "head_dim": 8, "scale": 1.0},
    "position": {"kind": "relative-bias", "buckets": 8, "max_distance": 16}, "norm": {"kind": "rmsnorm", "eps": 1.0e-6},
    "mlp": {"activation": "relu", "d_ff": 48}, "embeddings": {"tied": True, "scale_head": True},
    "tokens": {"eos": 1, "pad": 0, "decoder_start": 0},
}  # fmt: skip


def test_export_writes_a_directory_transformers_loads(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_QWEN3))
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert model.config.model_type == "qwen3"
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def test_export_of_a_huge_spec_without_counterpart_fails_fast(tmp_path: Path) -> None:
    """glm-130b (a prefix LM: no transformers class) fails with one readable error, and nothing is allocated."""
    spec = Path(__file__).resolve().parents[2] / "specs" / "glm-130b.yaml"
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "structure = 'glm'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_export_names_the_transformers_class_that_loads_it(tmp_path: Path) -> None:
    spec = tmp_path / "tiny-t5.yaml"
    spec.write_text(yaml.safe_dump(TINY_T5))
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "AutoModelForSeq2SeqLM" in result.output
    model, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert model.config.model_type == "t5"
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def _tiny_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_QWEN3))
    return spec


def _dtypes(directory: Path) -> tuple[str, set[torch.dtype]]:
    config = json.loads((directory / "config.json").read_text())
    return config["dtype"], {t.dtype for t in load_file(directory / "model.safetensors").values()}


def test_export_writes_bfloat16_by_default(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export-hf", str(_tiny_spec(tmp_path)), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "bfloat16" in result.output
    assert _dtypes(tmp_path / "out") == ("bfloat16", {torch.bfloat16})
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert model.dtype == torch.bfloat16
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))


@pytest.mark.parametrize(
    ("option", "written", "dtype"),
    [("fp32", "float32", torch.float32), ("float16", "float16", torch.float16), ("bf16", "bfloat16", torch.bfloat16)],
)
def test_export_dtype_option(tmp_path: Path, option: str, written: str, dtype: torch.dtype) -> None:
    spec = _tiny_spec(tmp_path)
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out"), "--dtype", option])
    assert result.exit_code == 0, result.output
    assert _dtypes(tmp_path / "out") == (written, {dtype})


@pytest.mark.parametrize("option", ["int4", "float64", "int8"])
def test_a_bad_dtype_is_one_error_line(tmp_path: Path, option: str) -> None:
    spec = _tiny_spec(tmp_path)
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out"), "--dtype", option])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: dtype {option!r} cannot be exported: use float32, float16, bfloat16 (or fp32, float, fp16, half, bf16)"
    ]
    assert not (tmp_path / "out").exists()


def test_export_of_a_run_dir_prints_no_distributed_warning(tmp_path: Path) -> None:
    """examples/train.py's run directory (DCP checkpoints), exported by the real command: no torch warning about a
    process group the user never asked for."""
    root = Path(__file__).resolve().parents[2]
    spec = _tiny_spec(tmp_path)
    spec.write_text(yaml.safe_dump({**TINY_QWEN3, "vocab_size": 256}))  # raw bytes
    (tmp_path / "text.txt").write_bytes((root / "README.md").read_bytes()[:4096])
    train = [sys.executable, str(root / "examples" / "train.py"), str(spec), str(tmp_path / "text.txt")]
    train += ["--out", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--seq", "16", "--checkpoint-every", "2"]
    subprocess.run(train, check=True, capture_output=True, cwd=root)
    assert (tmp_path / "run" / "step-2").is_dir()
    command = [sys.executable, "-m", "archspec", "export-hf", str(tmp_path / "run"), "-o", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"wrote {tmp_path / 'out'} (qwen3, bfloat16;")
    assert _dtypes(tmp_path / "out") == ("bfloat16", {torch.bfloat16})
