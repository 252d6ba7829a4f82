"""What the padding inputs refuse, each with a message that says what to pass instead: masks of the wrong shape,
right-padded prompts for generate, and `position_ids` for GLM's 2-D block positions (which count slots)."""

from __future__ import annotations

import pytest
import torch
from tiny import shrink

import archspec


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return archspec.build(shrink(archspec.load_spec(f"specs/{name}.yaml"))).eval()


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


def test_block_positions_refuse_position_ids_but_take_right_padding() -> None:
    model = tiny("chatglm-6b")
    ids = torch.randint(0, 100, (2, 6))
    with pytest.raises(ValueError, match="pad on the right"):
        model(ids, position_ids=torch.arange(6)[None].expand(2, -1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="pad on the right"):
        model.generate(ids, max_new_tokens=2, attention_mask=mask)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, :4]).logits
    torch.testing.assert_close(padded[1, :4], alone[0], rtol=1e-5, atol=1e-5)
