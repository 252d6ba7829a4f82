"""Router, dispatch and router losses of archspec.nn.moe, each against a straightforward reference written here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import archspec
from archspec.nn.activations import ACTIVATIONS
from archspec.nn.mlp import GatedMLP
from archspec.nn.moe import (
    Experts,
    GroupLimit,
    MoE,
    Router,
    RouterStats,
    SequenceBalancingLoss,
    TokenBalancingLoss,
    _can_grouped_mm,
    best_expert,
    grouped_linear,
    router_z_loss,
    sigmoid_scores,
    softmax_scores,
)


def _router(scoring=softmax_scores, **options) -> Router:
    router = Router(d_model=8, scoring=scoring, **options)
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
    router = _router(experts=8, top_k=3, group_limit=GroupLimit(4, 2, score=best_expert), renormalize=False)
    x = torch.randn(50, 8)
    _, experts, logits = router(x)
    probs = logits.softmax(-1)
    best_groups = probs.view(50, 4, 2).max(-1).values.topk(2).indices
    for token in range(50):
        assert set((experts[token] // 2).tolist()) <= set(best_groups[token].tolist())


def test_correction_bias_changes_selection_but_not_weights():
    router = _router(experts=8, top_k=2, scoring=sigmoid_scores, correction_bias=torch.zeros(8), renormalize=False)
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


def _gated_mlp(d_model: int, d_ff: int, activation) -> GatedMLP:
    def linear(d_in: int, d_out: int) -> torch.nn.Linear:
        return torch.nn.Linear(d_in, d_out, bias=False)

    return GatedMLP(linear(d_model, d_ff), linear(d_model, d_ff), linear(d_ff, d_model), activation)


def _moe(experts: int, top_k: int, shared: bool = False) -> MoE:
    activation = ACTIVATIONS["silu"]
    moe = MoE(
        _router(experts=experts, top_k=top_k),
        Experts(experts, 8, 12, activation, gated=True),
        shared=_gated_mlp(8, 6, activation) if shared else None,
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
    y, stats = moe(x)
    torch.testing.assert_close(y, _reference_moe(moe, x), rtol=1e-5, atol=1e-5)
    # The router's decisions come back with the output (for the losses): its logits and the top-k experts.
    logits = x @ moe.router.weight.T
    torch.testing.assert_close(stats.logits, logits)
    assert torch.equal(stats.selected.sort().values, logits.softmax(-1).topk(top_k).indices.sort().values)


def test_router_statistics_come_back_with_the_output_and_keep_the_sequences():
    """A [batch, seq, d] input: the output keeps its shape, the statistics hold one row per token (batch-major)
    and the number of sequences (for the sequence-wise balance loss); nothing is kept on the module."""
    moe = _moe(experts=4, top_k=2)
    x = torch.randn(3, 5, 8)
    y, stats = moe(x)
    assert y.shape == x.shape and isinstance(stats, RouterStats)
    assert stats.rows == 3 and stats.logits.shape == (15, 4) and stats.selected.shape == (15, 2)
    torch.testing.assert_close(stats.logits[5:10], x[1] @ moe.router.weight.T)
    again, _ = moe(x[1:2])
    torch.testing.assert_close(again[0], y[1], rtol=1e-6, atol=1e-6)
    assert not any(isinstance(value, torch.Tensor) for value in vars(moe).values())


def test_single_expert_top1_equals_the_dense_mlp():
    moe = _moe(experts=1, top_k=1)
    dense = _gated_mlp(8, 12, ACTIVATIONS["silu"])
    with torch.no_grad():
        dense.gate.weight.copy_(moe.experts.gate[0])
        dense.up.weight.copy_(moe.experts.up[0])
        dense.down.weight.copy_(moe.experts.down[0])
    x = torch.randn(7, 8)
    torch.testing.assert_close(moe(x)[0], dense(x))


def test_losses_against_direct_formulas():
    torch.manual_seed(0)
    logits = [torch.randn(12, 4), torch.randn(12, 4)]
    selected = [lg.topk(2).indices for lg in logits]
    stats = [RouterStats(lg, sel) for lg, sel in zip(logits, selected, strict=True)]
    # Switch loss: E * sum_e (share of selections of e per slot) * (mean probability of e), over all rows.
    all_logits, all_selected = torch.cat(logits), torch.cat(selected)
    probs = all_logits.softmax(-1).mean(0)
    share = torch.zeros(2, 4)
    for row in all_selected:
        for slot, e in enumerate(row):
            share[slot, e] += 1 / all_selected.shape[0]
    torch.testing.assert_close(TokenBalancingLoss()(stats), 4 * (share * probs).sum())
    expected_z = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in all_logits]).mean()
    torch.testing.assert_close(router_z_loss(stats), expected_z)
    # Sequence-level: per layer and sequence (batch 3 x 4 tokens), f_e = E/(kT) * count, P_e = mean normalised score.
    per = []
    for lg, sel in zip(logits, selected, strict=True):
        for b in range(3):
            scores = lg[b * 4 : (b + 1) * 4].softmax(-1)
            counts = torch.stack([(sel[b * 4 : (b + 1) * 4] == e).sum() for e in range(4)]).float()
            per.append((counts * 4 / (2 * 4) * scores.mean(0)).sum())
    by_sequence = [RouterStats(lg, sel, rows=3) for lg, sel in zip(logits, selected, strict=True)]
    torch.testing.assert_close(SequenceBalancingLoss(softmax_scores)(by_sequence), torch.stack(per).mean())


def test_losses_over_real_tokens_equal_the_losses_without_the_padding():
    """With a padding mask the router losses are those of the real tokens alone: the token-wise losses over the
    remaining tokens, the sequence-wise loss over each sequence's own real tokens."""
    torch.manual_seed(1)
    logits = [torch.randn(12, 4), torch.randn(12, 4)]
    stats = [RouterStats(lg, lg.topk(2).indices, rows=3) for lg in logits]
    real = torch.ones(3, 4, dtype=torch.bool)
    real[1, :2] = False
    kept = [RouterStats(layer.logits[real.flatten()], layer.selected[real.flatten()]) for layer in stats]
    torch.testing.assert_close(TokenBalancingLoss()(stats, real), TokenBalancingLoss()(kept))
    torch.testing.assert_close(router_z_loss(stats, real), router_z_loss(kept))
    per = []
    for layer in stats:
        for b in range(3):
            rows = slice(b * 4, (b + 1) * 4)
            alone = RouterStats(layer.logits[rows][real[b]], layer.selected[rows][real[b]], rows=1)
            per.append(SequenceBalancingLoss(softmax_scores)([alone]))
    torch.testing.assert_close(SequenceBalancingLoss(softmax_scores)(stats, real), torch.stack(per).mean())


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
    routed = []  # what each MoE layer's forward returned as its router statistics, layer by layer
    for module in model.modules():
        if isinstance(module, MoE):
            module.register_forward_hook(lambda _module, _inputs, output: routed.append(output[1]))
    out = model(ids, labels=ids)
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, ce + 0.01 * out.aux_loss + 0.001 * out.z_loss)
    # The model's router terms are those of every MoE layer's statistics (2 layers x 20 tokens, 4 experts, top 2).
    assert len(routed) == 2
    logits, selected = torch.cat([s.logits for s in routed]), torch.cat([s.selected for s in routed])
    share = torch.stack([(selected[:, slot, None] == torch.arange(4)).float().mean(0) for slot in range(2)])
    torch.testing.assert_close(out.aux_loss, 4 * (share * logits.softmax(-1).mean(0)).sum())
    torch.testing.assert_close(out.z_loss, logits.logsumexp(-1).square().mean())


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
