"""Compile-ready by construction: no graph breaks, and compiled models agree with eager ones."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from tiny import distinct_tiny_specs

import archspec

TINY_SPECS = distinct_tiny_specs()
# Compiling takes seconds per model on two cores: the default run compiles one spec of each kind (structure,
# attention, position, MLP/MoE, block, vision); the others run with `-m slow`. Graph breaks are checked for all.
REPRESENTATIVE = {
    "llama3.1-8b", "mistral-7b", "bloom-176b", "gpt2", "falcon-40b", "deepseek-v3", "qwen1.5-moe-a2.7b",
    "t5-base", "chatglm-6b", "llava-1.5-7b", "gpt-oss-120b",
}  # fmt: skip
COMPILED = [pytest.param(name, marks=() if name in REPRESENTATIVE else pytest.mark.slow) for name in sorted(TINY_SPECS)]


def build_tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return archspec.build(TINY_SPECS[name]).eval()


@pytest.fixture(params=sorted(TINY_SPECS))
def tiny_model(request):
    return build_tiny(request.param)


@pytest.fixture(params=COMPILED)
def compiled_case(request):
    return build_tiny(request.param)


def test_representatives_exist():
    assert REPRESENTATIVE <= TINY_SPECS.keys()


def with_source(model, source: torch.Tensor, decoder_input_ids: torch.Tensor, **kwargs):
    return model(source, decoder_input_ids=decoder_input_ids, **kwargs)


def extra(model, ids: torch.Tensor) -> dict:
    """Encoder-decoder models also take the decoder's input (here the source reversed)."""
    return {"decoder_input_ids": ids.flip(1)} if model.spec.structure == "encoder-decoder" else {}


def test_forward_has_no_graph_breaks(tiny_model):
    ids = torch.randint(0, 128, (2, 10))
    explanation = torch._dynamo.explain(tiny_model)(ids, **extra(tiny_model, ids))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_fullgraph_compile_matches_eager(compiled_case):
    tiny_model = compiled_case
    torch._dynamo.reset()
    ids = torch.randint(0, 128, (2, 10))
    compiled = torch.compile(tiny_model, fullgraph=True, backend="aot_eager")
    kwargs = extra(tiny_model, ids)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(ids, **kwargs).logits, tiny_model(ids, **kwargs).logits, rtol=1e-5, atol=1e-5
        )


def test_cached_decode_step_compiles_without_breaks(compiled_case):
    """Prefill + one decode step through the static cache under fullgraph compile."""
    tiny_model = compiled_case
    torch._dynamo.reset()
    ids = torch.randint(0, 128, (1, 6))
    cache = tiny_model.new_cache(1, 8)
    compiled = torch.compile(tiny_model, fullgraph=True, backend="aot_eager")
    if tiny_model.spec.structure == "encoder-decoder":  # the decoder steps over a fixed source
        source = torch.randint(0, 128, (1, 9))
        step, model = partial(with_source, compiled, source), partial(with_source, tiny_model, source)
    else:
        step, model = compiled, tiny_model
    with torch.no_grad():
        step(ids, cache=cache)
        last = step(ids[:, :1], cache=cache).logits
        full = model(torch.cat([ids, ids[:, :1]], dim=1)).logits[:, -1:]
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_compile_matches_eager(tiny_model):
    torch._dynamo.reset()
    ids = torch.randint(0, 128, (2, 10))
    compiled = torch.compile(tiny_model, fullgraph=True)
    kwargs = extra(tiny_model, ids)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(ids, **kwargs).logits, tiny_model(ids, **kwargs).logits, rtol=1e-4, atol=1e-4
        )
