"""GLM's prefix LM (`structure: glm`), proved by its defining properties rather than against a reference (there is
no offline reference implementation of ChatGLM-6B):

- part A (the prefix) tokens see each other in both directions;
- part B tokens never see later tokens, so changing a part-B token never changes any part-A output;
- with prefix length 0 the model is the causal decoder with the same weights;
- generate() treats the prompt as part A, and its KV cache gives the tokens of a full recompute.

Each holds for 1-D RoPE and for GLM's 2-D positions (position id + block position id).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archspec
from archspec.nn.attend import MaskedAttention
from archspec.nn.glm import glm_positions
from archspec.nn.masks import causal_pattern, render
from archspec.nn.positions import Context

VOCAB, SEQ = 61, 12


def glm_spec(block_positions: bool, structure: str = "glm", block: str = "deepnorm") -> archspec.Spec:
    position = {"kind": "rope", "block_positions": block_positions} if structure == "glm" else "rope"
    return archspec.spec_from_dict(
        dict(name="tiny-glm", structure=structure, vocab_size=VOCAB, d_model=32, n_layers=2, context_length=64,
             attention={"heads": 4, "bias": True}, position=position, norm="layernorm", block=block,
             mlp={"activation": "gelu-tanh", "d_ff": 48, "bias": True}, embeddings={"norm": True})
    )  # fmt: skip


MODELS: dict[bool, torch.nn.Module] = {}


def model(block_positions: bool) -> torch.nn.Module:
    if block_positions not in MODELS:
        torch.manual_seed(int(block_positions))
        MODELS[block_positions] = archspec.build(glm_spec(block_positions)).eval()
    return MODELS[block_positions]


def logits(m: torch.nn.Module, ids: torch.Tensor, prefix: int | list[int]) -> torch.Tensor:
    prefix_lengths = torch.tensor(prefix if isinstance(prefix, list) else [prefix] * ids.shape[0])
    with torch.no_grad():
        return m(ids, prefix_lengths=prefix_lengths).logits


ids_and_prefix = st.integers(0, SEQ).flatmap(
    lambda prefix: st.tuples(
        st.lists(st.integers(0, VOCAB - 1), min_size=SEQ, max_size=SEQ), st.just(prefix), st.booleans()
    )
)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _changed(ids: list[int], position: int) -> tuple[torch.Tensor, torch.Tensor]:
    before = torch.tensor([ids])
    after = before.clone()
    after[0, position] = (after[0, position] + 1) % VOCAB
    return before, after


@SETTINGS
@given(ids_and_prefix, st.data())
def test_part_a_tokens_see_each_other_both_ways(case, data):
    ids, prefix, two_d = case
    if prefix < 2:
        return
    later = data.draw(st.integers(1, prefix - 1))  # a part-A token with an earlier part-A token before it
    earlier = data.draw(st.integers(0, later - 1))
    before, after = _changed(ids, later)
    m = model(two_d)
    assert not torch.allclose(logits(m, before, prefix)[0, earlier], logits(m, after, prefix)[0, earlier])
    before, after = _changed(ids, earlier)
    assert not torch.allclose(logits(m, before, prefix)[0, later], logits(m, after, prefix)[0, later])


@SETTINGS
@given(ids_and_prefix, st.data())
def test_part_b_never_sees_later_tokens(case, data):
    ids, prefix, two_d = case
    if prefix >= SEQ:
        return
    changed = data.draw(st.integers(prefix, SEQ - 1))  # a part-B token
    before, after = _changed(ids, changed)
    m = model(two_d)
    expected, actual = logits(m, before, prefix), logits(m, after, prefix)
    # every output before the changed token (all of part A, and part B up to it) is exactly unchanged
    assert torch.equal(expected[0, :changed], actual[0, :changed])
    assert not torch.allclose(expected[0, changed:], actual[0, changed:])


@pytest.mark.parametrize("two_d", [False, True])
def test_changing_part_b_never_changes_part_a(two_d):
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=generator)
    prefix = [3, 5, 8, 11]
    other = ids.clone()
    for row, p in enumerate(prefix):
        other[row, p:] = torch.randint(0, VOCAB, (SEQ - p,), generator=generator)
    m = model(two_d)
    a, b = logits(m, ids, prefix), logits(m, other, prefix)
    for row, p in enumerate(prefix):
        assert torch.equal(a[row, :p], b[row, :p])


def test_rows_with_different_prefixes_are_independent():
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(4))
    prefix = [0, 6, SEQ]
    m = model(True)
    batched = logits(m, ids, prefix)
    for row, p in enumerate(prefix):
        torch.testing.assert_close(batched[row], logits(m, ids[row : row + 1], p)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", ["deepnorm", "pre-norm"])
def test_prefix_zero_is_the_causal_decoder_with_the_same_weights(block):
    torch.manual_seed(5)
    glm = archspec.build(glm_spec(False, block=block)).eval()
    decoder = archspec.build(glm_spec(False, structure="decoder", block=block)).eval()
    decoder.load_state_dict(glm.state_dict())
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        expected = decoder(ids).logits
        torch.testing.assert_close(glm(ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(glm(ids, prefix_lengths=torch.zeros(2, dtype=torch.long)).logits, expected,
                                   rtol=1e-6, atol=1e-6)  # fmt: skip
        # a prefix of length 1 is causal too: the first token sees only itself either way
        torch.testing.assert_close(glm(ids, prefix_lengths=torch.ones(2, dtype=torch.long)).logits, expected,
                                   rtol=1e-6, atol=1e-6)  # fmt: skip


def test_full_prefix_is_bidirectional_attention():
    lengths = torch.tensor([5, 2])
    context = Context(torch.arange(5), 5, rows=2, prefix_lengths=lengths)
    expected = torch.tril(torch.ones(5, 5, dtype=torch.bool)) | (torch.arange(5) < 2)
    # the predicate rendered for SDPA, and the attention function the model gives every layer for that call
    (attend,) = set(model(False).attention(context))
    assert isinstance(attend, MaskedAttention)
    for mask in (render(causal_pattern(prefix_lengths=lengths), context), attend.mask):
        assert mask.shape == (2, 1, 5, 5)
        assert mask[0].all()
        assert torch.equal(mask[1, 0], expected)


def test_glm_two_d_position_ids():
    """ChatGLM-6B's layout: [context..., gMASK | sop, t1, t2]: part B keeps the gMASK position, counts blocks."""
    ids = glm_positions(torch.arange(7), torch.tensor([4, 0]), batch=2)
    position_ids, block_ids = ids
    assert position_ids.tolist() == [[0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0, 0]]
    assert block_ids.tolist() == [[0, 0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]]  # prefix 0 counts as 1


@pytest.mark.parametrize("two_d", [False, True])
def test_generate_treats_the_prompt_as_prefix(two_d):
    m = model(two_d)
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(6))
    cached = m.generate(prompt, max_new_tokens=6)
    recomputed = m.generate(prompt, max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, recomputed)
    tokens = prompt  # the definition: a greedy loop of full forwards with prefix = the prompt
    for _ in range(6):
        next_token = logits(m, tokens, prompt.shape[1])[:, -1].argmax(-1)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
    assert torch.equal(cached, tokens)


def test_glm_compiles_without_graph_breaks():
    m = model(True)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    prefix = torch.tensor([3, 9])
    explanation = torch._dynamo.explain(m)(ids, prefix_lengths=prefix)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(ids, prefix_lengths=prefix).logits, logits(m, ids, [3, 9]), rtol=1e-5, atol=1e-5
        )


def test_two_d_positions_need_structure_glm():
    data = glm_spec(True).model_dump(mode="json") | {"structure": "decoder"}
    with pytest.raises(archspec.SpecError, match="block_positions"):
        archspec.spec_from_dict(data)


@pytest.mark.parametrize("two_d", [False, True])
def test_generate_takes_prefix_lengths_as_a_keyword(two_d):
    """`generate(ids, prefix_lengths=...)`, like the forward pass: each row's own part A, shorter than its prompt."""
    m = model(two_d)
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(7))
    prefix = torch.tensor([3, 5])
    cached = m.generate(prompt, max_new_tokens=5, prefix_lengths=prefix)
    tokens = prompt
    for _ in range(5):
        next_token = logits(m, tokens, prefix.tolist())[:, -1].argmax(-1)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
    assert torch.equal(cached, tokens)
    # the test can tell: with the whole prompt as part A the first step's logits differ
    assert not torch.allclose(logits(m, prompt, prefix.tolist())[:, -1], logits(m, prompt, 7)[:, -1])
