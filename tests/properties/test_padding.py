"""Padding and packed documents, on whole decoders of every layout, position kind, norm and causal family.

- A padded row's real positions give the logits of the row alone, for either padding side and any lengths (left
  padding with the positions transformers' generate computes, `cumsum(mask) - 1`; GLM rows with any prefixes,
  counted from each row's first token).
- A row packed with documents (positions restarting at each, or explicit `document_ids`) gives each document's
  logits alone, and, without a router loss, its loss is the token-weighted mean of the documents' losses.
- No information crosses a document boundary: the gradient of one document's logits with respect to the other
  documents' embeddings is exactly zero.

Models are float64 with O(1) random weights (strategies.randomize_): a leak shows at O(1e-3) or more, while the
padded and packed paths (an explicit mask) and the row alone (SDPA's causal path) differ by float64 rounding.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from archspec.nn.positions import positions_from_mask

from .strategies import DECODERS, build64, seeds, specs, token_ids

MAX_SEQ = 10
CLOSE = dict(rtol=1e-10, atol=1e-10)


@given(spec=specs(families=DECODERS, min_context=MAX_SEQ), data=st.data(), seed=seeds)
def test_a_padded_row_gives_the_logits_of_the_row_alone(spec, data, seed):
    side = data.draw(st.sampled_from(("left", "right")), label="side")
    lengths = data.draw(st.lists(st.integers(1, MAX_SEQ), min_size=2, max_size=3), label="lengths")
    width = max(lengths) + data.draw(st.integers(0, 2), label="extra padding")
    model = build64(spec, seed)
    rows = [token_ids(spec.vocab_size, 1, length, seed + index)[0] for index, length in enumerate(lengths)]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[index, where], mask[index, where] = row, 1
    options = {"position_ids": positions_from_mask(mask)} if side == "left" else {}
    prefixes = None
    if spec.structure == "glm":  # each row's bidirectional prefix, in its own tokens
        prefixes = torch.tensor([data.draw(st.integers(0, length), label="prefix") for length in lengths])
        options["prefix_lengths"] = prefixes
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, **options).logits
        for index, row in enumerate(rows):
            alone_options = {} if prefixes is None else {"prefix_lengths": prefixes[index : index + 1]}
            alone = model(row[None], **alone_options).logits[0]
            torch.testing.assert_close(padded[index][mask[index].bool()], alone, **CLOSE)


@st.composite
def packed_rows(draw, spec, seed):
    """A row of 1-4 documents (lengths 1-4, MAX_SEQ at most): the documents, the row and its restarting positions."""
    lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4).filter(lambda ls: sum(ls) <= MAX_SEQ))
    documents = [token_ids(spec.vocab_size, 1, length, seed + index) for index, length in enumerate(lengths)]
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    ids = torch.cat(documents, dim=1)
    document_ids = torch.cat([torch.full((length,), index) for index, length in enumerate(lengths)])[None]
    return documents, ids, positions, document_ids


@given(spec=specs(families=("dense", "moe", "mla"), min_context=MAX_SEQ), data=st.data(), seed=seeds)
def test_a_packed_row_gives_each_document_alone(spec, data, seed):
    documents, ids, positions, document_ids = data.draw(packed_rows(spec, seed), label="packed row")
    explicit = data.draw(st.booleans(), label="document_ids given")
    options = {"position_ids": positions} | ({"document_ids": document_ids} if explicit else {})
    model = build64(spec, seed)
    with torch.no_grad():
        packed = model(ids, labels=ids, **options)
        start = 0
        losses, weights = [], []
        for document in documents:
            length = document.shape[1]
            alone = model(document, labels=document)
            torch.testing.assert_close(packed.logits[:, start : start + length], alone.logits, **CLOSE)
            if length > 1:
                losses.append(alone.loss * (length - 1))
                weights.append(length - 1)
            start += length
    if spec.moe is None and weights:  # a router loss is over the whole row, not per document
        # the cross-entropy is float32, as transformers computes it (`logits.float()`), whatever the model's dtype
        torch.testing.assert_close(packed.loss, sum(losses) / sum(weights), rtol=1e-6, atol=1e-6)


@given(spec=specs(families=DECODERS, min_context=MAX_SEQ), data=st.data(), seed=seeds)
def test_no_gradient_crosses_a_document_boundary(spec, data, seed):
    documents, ids, positions, document_ids = data.draw(packed_rows(spec, seed), label="packed row")
    target = data.draw(st.integers(0, len(documents) - 1), label="document whose logits are differentiated")
    model = build64(spec, seed)
    embeddings: list[torch.Tensor] = []

    def keep(module, inputs, output):
        output.retain_grad()
        embeddings.append(output)

    model.embed.register_forward_hook(keep)
    options = {"document_ids": document_ids, "position_ids": positions}
    logits = model(ids, **options).logits
    ours = document_ids[0] == target
    weights = torch.randn(logits[:, ours].shape, generator=torch.Generator().manual_seed(seed), dtype=logits.dtype)
    (logits[:, ours] * weights).sum().backward()
    gradient = embeddings[0].grad[0]
    assert torch.equal(gradient[~ours], torch.zeros_like(gradient[~ours]))  # (its own may be 0 too: d_model 1)
