"""Structure: the YAML round trip is the identity; validation is idempotent; the analytic parameter counts of
`archspec info` equal the built model's; torch.compile and torch.fx agree with eager.

The spec-level properties draw from every family (dense, MoE, MLA, GLM, T5, vision); the compile and trace
properties from the dense decoders (one compile takes seconds). spec -> HF config -> spec is in test_hf_config.py.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import pytest
import torch
import torch.fx
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import archspec
from archspec.analysis import param_counts
from archspec.nn.moe import MoE

from .strategies import FAMILIES, STATIC_SCALINGS, build64, scaled, seeds, spec_dicts, specs, token_ids


@given(spec=specs(families=FAMILIES))
def test_spec_to_yaml_to_spec_is_identity(spec):
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        loaded = archspec.load_spec(path)
    assert loaded == spec
    assert loaded.model_dump(mode="json") == spec.model_dump(mode="json")


@given(data=spec_dicts(families=FAMILIES))
def test_validation_is_idempotent(data):
    """A validated spec is resolved: validating its dump again changes nothing (shorthands, defaults, kv_heads...)."""
    spec = archspec.spec_from_dict(data)
    assert archspec.spec_from_dict(spec.model_dump()) == spec


def numel(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())  # a tied weight counts once


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_analytic_parameter_counts_equal_the_built_model(family, data):
    """`archspec info`'s formulas against the modules the compiler builds, in total and per block; the active count
    leaves out exactly the experts a token does not use: (experts - top_k) experts' weights per MoE layer. One run
    per family (meta builds are cheap), so that each gets the full example budget."""
    spec = data.draw(specs(families=(family,)), label="spec")
    counts = param_counts(spec)
    model = archspec.build(spec, device="meta")
    assert counts.total == numel(model)
    if spec.structure == "encoder-decoder":
        blocks = [*model.encoder.layers, *model.decoder.layers]
    else:
        blocks = list(model.layers)
        assert counts.vision == numel(getattr(model, "vision_tower", None)) + numel(getattr(model, "projector", None))
    assert [layer.total for layer in counts.layers] == [numel(block) for block in blocks]
    unused = 0
    for block in blocks:
        if isinstance(getattr(block, "mlp", None), MoE):
            experts = block.mlp.experts
            unused += numel(experts) // spec.moe.experts * (spec.moe.experts - spec.moe.top_k)
    assert counts.active == counts.total - unused


@settings(max_examples=scaled(3), deadline=None)
@given(spec=specs(max_layers=2, min_context=8), seq=st.integers(1, 8), seed=seeds)
def test_torch_compile_fullgraph_matches_eager(spec, seq, seed):
    torch._dynamo.reset()
    model = build64(spec, seed)
    ids = token_ids(spec.vocab_size, 2, seq, seed)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-7, atol=1e-9)


@settings(max_examples=scaled(10), deadline=None)
@given(
    spec=specs(scalings=STATIC_SCALINGS, min_context=12),
    seqs=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    seed=seeds,
)
def test_fx_symbolic_trace_of_no_cache_forward_matches_eager(spec, seqs, seed):
    """The traced graph is shape-generic: one trace serves every length. (Dynamic NTK RoPE cannot be traced:
    RotaryEmbedding.forward branches in Python on `seq_len > context_length`, a traced value; soft-capped attention
    and attention sinks neither: their chunks of queries depend on the length.)"""
    assume(getattr(spec.attention, "softcap", None) is None and not getattr(spec.attention, "sinks", False))
    model = build64(spec, seed)
    # every keyword-only argument (cache, labels, prefix masks, embeddings, logits_to_keep...) fixed to its
    # default: the plain forward
    parameters = inspect.signature(model.forward).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    graph = torch.fx.symbolic_trace(model, concrete_args=defaults)
    with torch.no_grad():
        for seq in seqs:
            ids = token_ids(spec.vocab_size, 2, seq, seed)
            # float64; eager CPU inference may take a mask-free path (ALiBi/T5 as a Toeplitz bias, chunked windows)
            # where the trace uses plain masks: equal up to rounding
            torch.testing.assert_close(graph(ids).logits, model(ids).logits, rtol=0, atol=1e-12)
