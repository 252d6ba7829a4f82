"""One compiled graph per shape family: no recompiles across sequence lengths (marked dynamic) nor decode positions.

Each test compiles once, then runs new lengths / positions under torch.compiler.set_stance("fail_on_recompile"),
which raises instead of compiling again. Backend "eager" (dynamo's graph capture, no code generation) keeps them
fast; capture and guards, which decide recompiles, are the same for every backend.
"""

from __future__ import annotations

import pytest
import torch
from tiny import shrink

import archspec
from archspec.nn import generate as generation


def tiny(name: str, **updates: object) -> torch.nn.Module:
    spec = shrink(archspec.load_spec(f"specs/{name}.yaml"))
    if updates:
        data = spec.model_dump(mode="json")
        for key, value in updates.items():
            data[key].update(value)  # type: ignore[union-attr]
        spec = archspec.spec_from_dict(data)
    torch.manual_seed(0)
    return archspec.build(spec)


@pytest.mark.parametrize(
    "name, updates",
    [
        ("llama3.1-8b", {}),
        ("mixtral-8x7b", {}),
        ("mistral-7b", {"attention": {"window": 12}}),
        ("gemma-2-9b", {}),  # soft-capped scores and logits, sliding and full layers
        ("gemma-3-27b", {}),  # local and global RoPE, qk-norm
    ],
    ids=["llama", "mixtral", "mistral-window", "gemma2-softcap", "gemma3-layer-kinds"],
)
def test_no_recompile_across_sequence_lengths(name: str, updates: dict) -> None:
    """Forward with the loss (the training forward) and without grad, lengths marked dynamic."""
    model = tiny(name, **updates)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")

    def run(length: int, grad: bool) -> None:
        ids = torch.randint(0, 128, (2, length))
        torch._dynamo.mark_dynamic(ids, 1)
        with torch.set_grad_enabled(grad):
            out = compiled(ids, labels=ids) if grad else compiled(ids)
            expected = model(ids, labels=ids) if grad else model(ids)
        torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
        if grad:
            torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-5)
            out.loss.backward()

    for grad in (True, False):  # one graph each, for a dynamic length
        run(17, grad)
    with torch.compiler.set_stance("fail_on_recompile"):
        for length in (23, 40):
            run(length, grad=True)
            run(length, grad=False)


def test_compiled_decode_step_serves_every_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate(compile=True): the step graph compiled on the first decoding step serves every later position,
    and a second call with another prompt length (same total length, so the same static cache) recompiles
    nothing. Greedy tokens equal eager generate's."""
    model = tiny("llama3.1-8b").eval()
    torch._dynamo.reset()
    step = torch.compile(generation._decode_step, backend="eager", fullgraph=True, dynamic=False)
    monkeypatch.setitem(generation._COMPILED_STEPS, "default", step)
    first, second = torch.randint(0, 128, (2, 5)), torch.randint(0, 128, (2, 9))
    torch.testing.assert_close(model.generate(first, 11, compile=True), model.generate(first, 11))
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled = model.generate(second, 7, compile=True)
    torch.testing.assert_close(compiled, model.generate(second, 7))


@pytest.mark.parametrize(
    "name",
    ["llama3.1-8b", "bloom-560m", "gpt2", "gemma-2-9b", "gemma-3-27b"],
    ids=["rope", "alibi", "learned", "softcap", "layer-kinds"],
)
def test_compiled_decode_step_with_left_padding(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """generate(compile=True, attention_mask=...): the padding mask and each row's positions are tensors of the one
    step graph (no recompile from the second step on, nor for another mask); the tokens equal eager generate's and
    each prompt's alone. Weights perturbed: a default-initialised tiny model's greedy tokens hardly depend on
    what it attends to."""
    model = tiny(name).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    torch._dynamo.reset()
    step = torch.compile(generation._decode_step, backend="eager", fullgraph=True, dynamic=False)
    monkeypatch.setitem(generation._COMPILED_STEPS, "default", step)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # the first prompt is 4 tokens, left-padded
    compiled = model.generate(ids, 6, attention_mask=mask, compile=True)
    torch.testing.assert_close(compiled, model.generate(ids, 6, attention_mask=mask))
    torch.testing.assert_close(compiled[0, 3:], model.generate(ids[:1, 3:], 6)[0])
    other = mask.clone()
    other[1, :2] = 0
    with torch.compiler.set_stance("fail_on_recompile"):
        again = model.generate(ids, 6, attention_mask=other, compile=True)
    torch.testing.assert_close(again, model.generate(ids, 6, attention_mask=other))


@pytest.mark.parametrize("name", ["mixtral-8x7b", "bloom-560m", "gemma-2-9b"], ids=["moe", "alibi", "softcap"])
def test_padded_and_packed_training_forwards_compile_to_one_graph(name: str) -> None:
    """fullgraph=True: the padding mask, the packed documents and the router losses over real tokens have fixed
    shapes (weights, not selections) and no data-dependent branch while compiling; the losses equal eager's."""
    model = tiny(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids = torch.randint(0, 128, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    positions = torch.cat((torch.arange(4), torch.arange(5)))[None].expand(2, -1)
    for options in ({"attention_mask": mask}, {"position_ids": positions}):
        torch.testing.assert_close(
            compiled(ids, labels=ids, **options).loss, model(ids, labels=ids, **options).loss, rtol=1e-6, atol=1e-6
        )
