"""`python -m archspec` in a real process: exit codes, stdout/stderr, no traceback, and the meta-device build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LLAMA3_8B = """\
# Llama 3 8B, from meta-llama/Meta-Llama-3-8B config.json (a copy, so this test does not depend on specs/)
name: llama3-8b
vocab_size: 128256
d_model: 4096
n_layers: 32
context_length: 8192
attention: {heads: 32, kv_heads: 8}
position: {kind: rope, theta: 500000}
norm: {kind: rmsnorm, eps: 1.0e-5}
block: pre-norm
mlp: {activation: swiglu, d_ff: 14336}
embeddings: {tied: false}
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archspec", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def llama3_parameters() -> int:
    """Embedding + 32 x (GQA attention + SwiGLU MLP + 2 norms) + final norm + untied head, counted by hand."""
    d, vocab, d_ff, layers, head_dim, kv = 4096, 128256, 14336, 32, 128, 8
    attention = 2 * d * d + 2 * d * kv * head_dim
    return 2 * vocab * d + layers * (attention + 3 * d * d_ff + 2 * d) + d


def test_python_m_archspec_build_on_the_meta_device(tmp_path: Path) -> None:
    (tmp_path / "llama3-8b.yaml").write_text(LLAMA3_8B)
    done = run("build", "llama3-8b.yaml", "-o", "gen", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    total = llama3_parameters()
    assert total == 8_030_261_248  # the published size of Llama 3 8B
    assert f"8.03 B ({total:,})" in done.stdout
    assert "GQA, 32 heads, 8 kv heads" in done.stdout


def test_python_m_archspec_check_fails_with_one_message_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(LLAMA3_8B.replace("kv_heads: 8", "kv_heads: 5"))
    done = run("check", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: bad.yaml:7: attention.kv_heads: heads (32) must be divisible by kv_heads (5) "
        "(each key/value head serves a whole group of query heads)",
        "1 of 1 spec is invalid",
    ]
    assert done.stdout == ""
