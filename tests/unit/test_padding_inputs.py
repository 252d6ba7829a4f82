"""What the padding inputs refuse, each with a message that says what to pass instead (masks of the wrong shape,
right-padded prompts for generate), and GLM's prefix LMs padded on the left, which have no transformers reference:
each row equals itself alone."""

from __future__ import annotations

import pytest
import torch
from tiny import shrink

import archspec


def tiny(name: str) -> torch.nn.Module:
    """float64: a row alone and padded differ by float64 rounding only, a leak by orders of magnitude more."""
    torch.manual_seed(0)
    return archspec.build(shrink(archspec.load_spec(f"specs/{name}.yaml")), dtype=torch.float64).eval()


def test_masks_of_the_wrong_shape_are_refused() -> None:
    model = tiny("llama3")
    ids = torch.randint(0, 100, (2, 6))
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, past \+ seq\] = \[2, 6\], got \[2, 5\]"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"document_ids must be \[batch, past \+ seq\] = \[2, 6\], got \[1, 6\]"):
        model(ids, document_ids=torch.zeros(1, 6, dtype=torch.long))


def test_generate_needs_left_padding() -> None:
    model = tiny("llama3")
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with pytest.raises(ValueError, match="padded on the left"):
        model.generate(ids, max_new_tokens=2, attention_mask=mask)


@pytest.mark.parametrize("name", ["chatglm-6b", "glm-130b"], ids=["2-d-positions", "1-d"])
def test_glm_left_padded_rows_equal_each_row_alone(name: str) -> None:
    """A prefix LM's `prefix_lengths` count each row's tokens: left-padded, the bidirectional prefix starts at the
    row's first token and the 2-D positions count from it, so the row's logits and greedy tokens are its own."""
    model = tiny(name)
    with torch.no_grad():
        for parameter in model.parameters():  # tokens that depend on what is attended
            parameter.add_(
                0.2 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            )
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    prefixes = torch.tensor([3, 6])
    positions = (mask.cumsum(-1) - 1) * mask
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, position_ids=positions, prefix_lengths=prefixes).logits
        alone = model(ids[:1, 4:], prefix_lengths=prefixes[:1]).logits
        unmasked = model(ids, position_ids=positions, document_ids=torch.zeros_like(ids), prefix_lengths=prefixes)
    torch.testing.assert_close(padded[0, 4:], alone[0], rtol=1e-10, atol=1e-10)
    assert (unmasked.logits[0, 4:] - alone[0]).abs().max() > 1e-3  # the pads would change the row
    batched = model.generate(ids, max_new_tokens=5, attention_mask=mask, prefix_lengths=prefixes)
    assert torch.equal(batched[0, 4:], model.generate(ids[:1, 4:], max_new_tokens=5, prefix_lengths=prefixes[:1])[0])
    assert torch.equal(batched[1], model.generate(ids[1:], max_new_tokens=5, prefix_lengths=prefixes[1:])[0])
