"""`archspec export-hf`: a spec's model as a transformers directory; specs without a counterpart fail before any
weights are allocated."""

from __future__ import annotations

from pathlib import Path

import transformers
import yaml
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
