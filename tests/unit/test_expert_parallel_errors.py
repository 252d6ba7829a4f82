"""`parallelize(..., ep=N)` refuses what it cannot split with one clear message, before it touches a mesh (the
multi-process behaviour is tested in tests/distributed/test_expert_parallel.py)."""

from __future__ import annotations

import pytest
from tiny import shrink

import archspec
from archspec.spec.errors import ArchspecError


def tiny(name: str) -> archspec.Spec:
    return shrink(archspec.load_spec(f"specs/{name}.yaml"))


@pytest.fixture(scope="module")
def mixtral():
    return tiny("mixtral-8x7b")  # 8 experts per layer


def test_dense_model_is_refused():
    model = archspec.build(tiny("llama3-8b"), device="meta")
    with pytest.raises(ArchspecError, match="ep needs a model with routed experts"):
        archspec.parallelize(model, None, ep=2)


def test_expert_count_must_split(mixtral):
    with pytest.raises(ArchspecError, match="has 8 experts per layer; use an ep degree that divides it"):
        archspec.parallelize(archspec.build(mixtral, device="meta"), None, ep=3)


def test_tensor_parallel_with_ep_is_refused(mixtral):
    with pytest.raises(ArchspecError, match="does not combine with tensor parallelism"):
        archspec.parallelize(archspec.build(mixtral, device="meta"), None, ep=2, tp=True)


@pytest.mark.parametrize(("ep", "factor", "message"), [(1, 1.25, "pass ep >= 2"), (2, 0.0, "must be > 0")])
def test_capacity_factor_needs_ep_and_a_positive_value(mixtral, ep, factor, message):
    with pytest.raises(ArchspecError, match=message):
        archspec.parallelize(archspec.build(mixtral, device="meta"), None, ep=ep, capacity_factor=factor)
