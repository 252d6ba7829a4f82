import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hf_reference helpers

from hf_reference import lift_float32_roundings  # noqa: E402


@pytest.fixture(autouse=True)
def _float64_reference(monkeypatch):
    """transformers' float32 roundings lifted for float64 inputs (hf_reference's docstring lists each)."""
    lift_float32_roundings(monkeypatch)
