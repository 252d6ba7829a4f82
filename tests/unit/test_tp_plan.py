"""The tensor-parallel plan of the qk-norm placements (built on the meta device; no process group needed)."""

from __future__ import annotations

import pytest
from torch.distributed.tensor.parallel import SequenceParallel

import archspec
from archspec.distributed import ParallelismError, tp_plan

BASE = {
    "name": "tp",
    "vocab_size": 32,
    "d_model": 32,
    "n_layers": 1,
    "context_length": 16,
    "position": "rope",
    "mlp": {"activation": "swiglu", "d_ff": 16},
}


def _spec(qk_norm: object) -> archspec.Spec:
    return archspec.spec_from_dict({**BASE, "attention": {"heads": 4, "kv_heads": 2, "qk_norm": qk_norm}})


@pytest.mark.parametrize(("qk_norm", "heads_dim"), [(True, 2), ({"after_rope": True}, 1)])
def test_per_head_norms_are_sharded_on_the_head_dim(qk_norm: object, heads_dim: int) -> None:
    """Before RoPE q is [batch, seq, heads, head_dim]; after it (Hunyuan) [batch, heads, seq, head_dim]."""
    plan = tp_plan(_spec(qk_norm))
    style = plan["layers.0.attn.q_norm"]
    assert isinstance(style, SequenceParallel) and style.sequence_sharding[0].dim == heads_dim


@pytest.mark.parametrize("qk_norm", [{"over": "projection"}, {"per_head_weights": True}])
def test_norms_that_span_heads_are_refused(qk_norm: object) -> None:
    with pytest.raises(ParallelismError, match="span every head"):
        tp_plan(_spec(qk_norm))
