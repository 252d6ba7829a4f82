"""Router, dispatch and router losses of archspec.nn.moe, each against a straightforward reference written here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import archspec
from archspec.nn.activations import ACTIVATIONS
from archspec.nn.mlp import MLP
from archspec.nn.moe import (
    Experts,
    MoE,
    Router,
    _can_grouped_mm,
    grouped_linear,
    load_balancing_loss,
    router_z_loss,
    sequence_balancing_loss,
)


def _router(**options) -> Router:
    router = Router(d_model=8, **options)
    torch.nn.init.normal_(router.weight)
    return router


def test_topk_selection_and_renormalisation():
    router = _router(experts=6, top_k=2, renormalize=True)
    x = torch.randn(20, 8)
    weights, experts, logits = router(x)
    probs = (x @ router.weight.T).softmax(-1)
    expected_experts = probs.topk(2).indices
    assert torch.equal(experts.sort().values, expected_experts.sort().values)
    torch.testing.assert_close(weights.sum(-1), torch.ones(20))
    torch.testing.assert_close(weights, probs.gather(1, experts) / probs.gather(1, experts).sum(-1, keepdim=True))


def test_without_renormalisation_weights_are_the_probabilities_times_scale():
    router = _router(experts=6, top_k=3, renormalize=False, scale=2.5)
    x = torch.randn(10, 8)
    weights, experts, _ = router(x)
    probs = (x @ router.weight.T).softmax(-1)
    torch.testing.assert_close(weights, 2.5 * probs.gather(1, experts))


def test_group_limited_routing_only_uses_the_best_groups():
    router = _router(experts=8, top_k=3, groups=4, top_groups=2, group_score="max", renormalize=False)
    x = torch.randn(50, 8)
    _, experts, logits = router(x)
    probs = logits.softmax(-1)
    best_groups = probs.view(50, 4, 2).max(-1).values.topk(2).indices
    for token in range(50):
        assert set((experts[token] // 2).tolist()) <= set(best_groups[token].tolist())


def test_correction_bias_changes_selection_but_not_weights():
    router = _router(experts=8, top_k=2, scoring="sigmoid", correction_bias=True, renormalize=False)
    x = torch.randn(30, 8)
    _, unbiased_experts, _ = router(x)
    router.correction_bias[3] = 10.0  # expert 3 always selected now
    weights, experts, logits = router(x)
    assert (experts == 3).any(dim=-1).all()
    assert not (unbiased_experts == 3).any(dim=-1).all()
    torch.testing.assert_close(weights, logits.sigmoid().gather(1, experts))  # weights from the unbiased scores


def test_grouped_linear_equals_a_loop_and_has_correct_gradients():
    x = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([2, 2, 10])  # an empty expert in the middle
    expected = torch.cat([x[:2] @ weight[0].T, x[2:2] @ weight[1].T, x[2:] @ weight[2].T])
    torch.testing.assert_close(grouped_linear(x, weight, offsets), expected)
    assert torch.autograd.gradcheck(lambda a, b: grouped_linear(a, b, offsets), (x, weight))


def test_grouped_mm_path_equals_a_loop_with_gradients():
    """float32 rows of 16-byte multiples take torch._grouped_mm (on CPU too); same values and gradients as
    one matmul per expert, an empty expert's weight gradient zero."""
    x = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(4, 8, 16, requires_grad=True)
    offsets = torch.tensor([10, 10, 25, 40])
    assert _can_grouped_mm(x, weight) and not _can_grouped_mm(x.double(), weight.double())
    grad = torch.randn(40, 8)
    grouped_linear(x, weight, offsets).backward(grad)
    actual = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    bounds = [(0, 10), (10, 10), (10, 25), (25, 40)]
    torch.cat([x[a:b] @ weight[e].T for e, (a, b) in enumerate(bounds)]).backward(grad)
    torch.testing.assert_close(actual[0], x.grad)
    torch.testing.assert_close(actual[1], weight.grad)
    assert actual[1][1].abs().max() == 0


def _moe(experts: int, top_k: int, shared: bool = False) -> MoE:
    activation = ACTIVATIONS["silu"]
    moe = MoE(
        _router(experts=experts, top_k=top_k),
        Experts(experts, 8, 12, activation, gated=True),
        shared=MLP(8, 6, activation, gated=True, bias=False) if shared else None,
    )
    for param in moe.experts.parameters():
        torch.nn.init.normal_(param, std=0.3)
    return moe


def _reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the definition, without any dispatch cleverness."""
    weights, selected, _ = moe.router(x)
    out = torch.zeros_like(x)
    for token in range(x.shape[0]):
        for slot in range(selected.shape[1]):
            e = selected[token, slot]
            hidden = F.silu(x[token] @ moe.experts.gate[e].T) * (x[token] @ moe.experts.up[e].T)
            out[token] += weights[token, slot] * (hidden @ moe.experts.down[e].T)
    if moe.shared is not None:
        out = out + moe.shared(x)
    return out


@settings(max_examples=15, deadline=None)
@given(experts=st.integers(1, 6), data=st.data(), tokens=st.integers(1, 12), shared=st.booleans())
def test_grouped_dispatch_equals_the_token_loop(experts, data, tokens, shared):
    top_k = data.draw(st.integers(1, experts))
    torch.manual_seed(experts * 100 + tokens)
    moe = _moe(experts, top_k, shared)
    x = torch.randn(tokens, 8)
    torch.testing.assert_close(moe(x), _reference_moe(moe, x), rtol=1e-5, atol=1e-5)


def test_single_expert_top1_equals_the_dense_mlp():
    moe = _moe(experts=1, top_k=1)
    dense = MLP(8, 12, ACTIVATIONS["silu"], gated=True, bias=False)
    with torch.no_grad():
        dense.gate.weight.copy_(moe.experts.gate[0])
        dense.up.weight.copy_(moe.experts.up[0])
        dense.down.weight.copy_(moe.experts.down[0])
    x = torch.randn(7, 8)
    torch.testing.assert_close(moe(x), dense(x))


def test_losses_against_direct_formulas():
    torch.manual_seed(0)
    logits = [torch.randn(12, 4), torch.randn(12, 4)]
    selected = [lg.topk(2).indices for lg in logits]
    # Switch loss: E * sum_e (share of selections of e per slot) * (mean probability of e), over all rows.
    all_logits, all_selected = torch.cat(logits), torch.cat(selected)
    probs = all_logits.softmax(-1).mean(0)
    share = torch.zeros(2, 4)
    for row in all_selected:
        for slot, e in enumerate(row):
            share[slot, e] += 1 / all_selected.shape[0]
    torch.testing.assert_close(load_balancing_loss(logits, selected, 4), 4 * (share * probs).sum())
    expected_z = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in all_logits]).mean()
    torch.testing.assert_close(router_z_loss(logits), expected_z)
    # Sequence-level: per layer and sequence (batch 3 x 4 tokens), f_e = E/(kT) * count, P_e = mean normalised score.
    per = []
    for lg, sel in zip(logits, selected, strict=True):
        for b in range(3):
            scores = lg[b * 4 : (b + 1) * 4].softmax(-1)
            counts = torch.stack([(sel[b * 4 : (b + 1) * 4] == e).sum() for e in range(4)]).float()
            per.append((counts * 4 / (2 * 4) * scores.mean(0)).sum())
    torch.testing.assert_close(
        sequence_balancing_loss(logits, selected, 4, batch=3, scoring="softmax"), torch.stack(per).mean()
    )


TINY_MOE = dict(
    name="tiny-moe",
    vocab_size=64,
    d_model=32,
    n_layers=2,
    context_length=32,
    attention={"heads": 4, "kv_heads": 2},
    position="rope",
    norm="rmsnorm",
    mlp={"activation": "swiglu", "d_ff": 48},
    moe={"experts": 4, "top_k": 2, "d_ff": 24, "router": {"aux_loss_coef": 0.01, "z_loss_coef": 0.001}},
)


def test_loss_includes_router_terms_with_their_coefficients():
    model = archspec.build(archspec.spec_from_dict(TINY_MOE))
    ids = torch.randint(0, 64, (2, 10))
    out = model(ids, labels=ids)
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, ce + 0.01 * out.aux_loss + 0.001 * out.z_loss)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = archspec.build(archspec.spec_from_dict(TINY_MOE)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
