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


def test_export_writes_a_directory_transformers_loads(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_QWEN3))
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert model.config.model_type == "qwen3"
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def test_export_of_a_huge_spec_without_counterpart_fails_fast(tmp_path: Path) -> None:
    """deepseek-v3 (671B) has no exportable counterpart yet: one readable error, and nothing is allocated."""
    spec = Path(__file__).resolve().parents[2] / "specs" / "deepseek-v3.yaml"
    result = CliRunner().invoke(app, ["export-hf", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "attention.kind = 'mla'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
