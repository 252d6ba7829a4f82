"""Padded batches, left-padded batched generation and packed documents, against transformers and against each row
run alone, for every decoder family.

Reference: transformers 5.25.0 (`masking_utils.create_causal_mask`: padding from `attention_mask`, packed documents
found from `position_ids` that restart when there is neither a mask nor a cache; `generation/utils.py`: positions
`cumsum(mask) - 1`, pads at 0; BLOOM and Falcon's ALiBi from `cumsum(mask) - 1`). Tiny models from the parity
configs with every weight perturbed, float64 on both sides (sdpa, BLOOM eager), logits at real positions within
1e-10 of max|logit|. Rows have different lengths (13 and 8 tokens) and windows are shorter than both.
"""

from __future__ import annotations

import pytest
import torch
from hf_reference import archspec_from, assert_loss_matches, assert_matches, saved_reference
from test_hf_parity import CONFIGS as DENSE
from test_moe_parity import CONFIGS as MOE

FAMILIES = [
    "llama-gqa-llama3",
    "llama-mqa-bias-yarn-headdim",
    "mistral-window",
    "qwen2-sliding-layers",
    "qwen3-qknorm-headdim",
    "gpt2",
    "bloom-6-heads",
    "falcon-7b-style",
    "falcon-40b-style",
    "falcon-rw-alibi-20-heads",
    "gpt-neox-parallel",
    "glm",
    "glm4",
    "mixtral-top1-window",
    "qwen2-moe-shared-gated-sparse-step",
    "qwen3-moe-top4-renorm-dense-first",
    "deepseek-v2-group-limited-yarn",
    "deepseek-v3-yarn-groups",
]
CONFIGS = {name: {**DENSE, **MOE}[name] for name in FAMILIES}
# Falcon-RW rounds slope x key slot to bfloat16: a document packed after another sees other roundings than alone
# (in transformers too, whose ALiBi counts the slots of a packed row); its packed logits are compared with
# transformers only.
POSITION_DEPENDENT_ROUNDING = {"falcon-rw-alibi-20-heads"}
NO_POSITION_IDS = {"bloom-6-heads"}  # transformers' BLOOM takes no position_ids (its ALiBi reads the mask)
LONG, SHORT = 13, 8
# Weights (hf_reference.make_reference's scale) large enough that attention decides the greedy tokens: with the
# parity default 0.1 several families repeat one token, which a broken mask would reproduce as well.
SCALE = {"bloom-6-heads": 0.2, "gpt-neox-parallel": 0.2}


@pytest.fixture(scope="module", params=FAMILIES)
def reference(request, tmp_path_factory):
    name = request.param
    return saved_reference(name, CONFIGS[name], tmp_path_factory.mktemp(name), scale=SCALE.get(name, 0.3))


def _rows(name: str, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of LONG and SHORT tokens (no eos inside, so that greedy decoding runs its full length)."""
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randint(3, vocab, (LONG,), generator=generator), torch.randint(3, vocab, (SHORT,), generator=generator)


def _padded(long: torch.Tensor, short: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [2, LONG] with the short row padded (token 0) on `side`, and the attention mask (1: token)."""
    pad = torch.zeros(LONG - SHORT, dtype=torch.long)
    row = torch.cat((pad, short)) if side == "left" else torch.cat((short, pad))
    real = torch.ones_like(short)
    mask = torch.ones(2, LONG, dtype=torch.long)
    mask[1] = torch.cat((torch.zeros_like(pad), real)) if side == "left" else torch.cat((real, torch.zeros_like(pad)))
    return torch.stack((long, row)), mask


def _language_loss(output, model) -> torch.Tensor:
    """The next-token cross-entropy of an archspec output, without the router terms an MoE model adds (transformers
    adds them only with output_router_logits; test_moe_parity compares them)."""
    router = getattr(model, "router_loss", None)
    if router is None:
        return output.loss
    return output.loss - router.aux_coef * output.aux_loss - router.z_coef * output.z_loss


def _real(logits: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    return logits[row][mask[row].bool()]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_logits_match_transformers_and_each_row_alone(reference, side):
    hf_model, model = reference.float64, archspec_from(reference.directory)
    long, short = _rows(reference.name, hf_model.config.vocab_size)
    ids, mask = _padded(long, short, side)
    calls = [{}]  # transformers' default positions: the slots
    if reference.name not in NO_POSITION_IDS:
        calls.append({"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})  # each row's own positions
    with torch.no_grad():
        for kwargs in calls:
            expected = hf_model(ids, attention_mask=mask, **kwargs).logits
            actual = model(ids, attention_mask=mask, **kwargs).logits
            for row in (0, 1):
                assert_matches(_real(expected, mask, row), _real(actual, mask, row))
        alone = model(short[None]).logits[0]
        assert_matches(alone, _real(actual, mask, 1))  # the last call's positions are the row's own
        assert_matches(model(long[None]).logits[0], actual[0])


def test_left_padded_generation_matches_transformers_and_each_prompt_alone(reference):
    hf_model, model = reference.float64, archspec_from(reference.directory)
    long, short = _rows(reference.name, hf_model.config.vocab_size)
    ids, mask = _padded(long, short, "left")
    new = 8
    with torch.no_grad():
        expected = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=new)
    assert torch.equal(batched, expected)
    for row, prompt in ((0, long), (1, short)):
        alone = model.generate(prompt[None], max_new_tokens=new)[0, len(prompt) :]  # shorter if it ends at eos
        assert torch.equal(batched[row, LONG : LONG + len(alone)], alone)
    assert torch.equal(batched, model.generate(ids, attention_mask=mask, max_new_tokens=new, use_cache=False))
    assert len(set(batched[:, LONG:].flatten().tolist())) > 2  # not a model that repeats one token


def _packed(long: torch.Tensor, short: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row holding both documents, their restarting positions, and labels -100 at each document's first token
    (as transformers' DataCollatorWithFlattening writes them)."""
    ids = torch.cat((long, short))[None]
    positions = torch.cat((torch.arange(LONG), torch.arange(SHORT)))[None]
    labels = ids.clone()
    labels[0, [0, LONG]] = -100
    return ids, positions, labels


def test_packed_documents_match_transformers_and_each_document_alone(reference):
    hf_model, model = reference.float64, archspec_from(reference.directory)
    long, short = _rows(reference.name, hf_model.config.vocab_size)
    ids, positions, labels = _packed(long, short)
    documents = torch.cat((torch.zeros(LONG, dtype=torch.long), torch.ones(SHORT, dtype=torch.long)))[None]
    with torch.no_grad():
        runs = [model(ids, document_ids=documents, position_ids=positions, labels=labels)]  # explicit documents
        if reference.name not in NO_POSITION_IDS:
            expected = hf_model(ids, position_ids=positions, labels=labels, use_cache=False)  # packing: no cache
            runs.append(model(ids, position_ids=positions, labels=labels))
            assert_matches(expected.logits, runs[-1].logits)
            assert_loss_matches(expected.loss, _language_loss(runs[-1], model))  # float32 cross-entropy, both
        first, second = model(long[None], labels=long[None]), model(short[None], labels=short[None])
    # token-weighted: LONG - 1 and SHORT - 1 predicted tokens (MoE aux losses off: these configs have none)
    first_loss, second_loss = _language_loss(first, model), _language_loss(second, model)
    mean = ((LONG - 1) * first_loss + (SHORT - 1) * second_loss) / (LONG + SHORT - 2)
    if reference.name in POSITION_DEPENDENT_ROUNDING:
        return
    for run in runs:
        assert_matches(torch.cat((first.logits[0], second.logits[0])), run.logits[0])
        assert_loss_matches(mean, _language_loss(run, model))


def test_padded_labels_are_ignored(reference):
    """A left-padded batch's loss is the token-weighted mean of the rows' own losses: padded positions neither
    predict nor are predicted."""
    model = archspec_from(reference.directory)
    long, short = _rows(reference.name, model.embed.num_embeddings)
    ids, mask = _padded(long, short, "left")
    with torch.no_grad():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = _language_loss(model(ids, attention_mask=mask, position_ids=positions, labels=ids), model)
        first = _language_loss(model(long[None], labels=long[None]), model)
        second = _language_loss(model(short[None], labels=short[None]), model)
    mean = ((LONG - 1) * first + (SHORT - 1) * second) / (LONG + SHORT - 2)
    assert_loss_matches(mean, batch)
