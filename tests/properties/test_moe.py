"""Mixture of experts, on models built by the compiler from drawn specs (Mixtral, Qwen-MoE and DeepSeek routers).

- routing: each token gets k distinct experts, the k best by (bias-corrected) score among the experts of its
  top_groups best groups; their weights are the unbiased scores, renormalised to sum to the routed scale when
  the router renormalises;
- one expert with top-1 is the dense MLP with the same weights, for every MLP activation;
- numbering the experts differently (router rows, correction bias and expert weights moved together; with
  group-limited routing whole groups move and experts move within their group) changes no logit and no loss
  (the token-level balance loss pools the layers per expert number, so there every layer moves alike).

Models are float64, but the router works in float32 (as in transformers), so routing weights carry float32
rounding: tolerances are those of two float32-rounded paths (`CLOSE`).
"""

from __future__ import annotations

import re

import torch
from hypothesis import given
from hypothesis import strategies as st

import archspec
from archspec.nn.moe import MoE

from .strategies import build64, decoder_dicts, seeds, specs, token_ids

CLOSE = dict(rtol=1e-5, atol=1e-6)
MAX_SEQ = 8


def moe_layers(model: torch.nn.Module) -> list[MoE]:
    return [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoE)]


# A spec with at least one MoE layer (the family may also place none: dense_layers = n_layers, or layers = []).
moe_specs = specs(families=("moe",), max_layers=2, min_context=MAX_SEQ).filter(
    lambda spec: any(spec.is_moe_layer(layer) for layer in range(spec.n_layers))
)


# ------------------------------------------------------------------------------------------------- routing
@given(spec=moe_specs, tokens=st.integers(1, 16), seed=seeds)
def test_routing_picks_the_k_best_allowed_experts_and_renormalised_weights_sum_to_the_scale(spec, tokens, seed):
    router_spec = spec.moe.router
    model = build64(spec, seed)
    generator = torch.Generator().manual_seed(seed)
    for moe in moe_layers(model):
        router = moe.router
        x = torch.randn(tokens, spec.d_model, generator=generator, dtype=torch.float64)
        weights, chosen, logits = router(x)
        assert chosen.shape == weights.shape == (tokens, spec.moe.top_k)
        logit_bias = 0 if router.bias is None else router.bias  # gpt-oss's
        torch.testing.assert_close(logits, x @ router.weight.T + logit_bias)  # float64 in, float64 out (no rounding)

        scores = logits.softmax(-1) if router_spec.scoring == "softmax" else logits.sigmoid()
        bias = router.correction_bias if router_spec.correction_bias else torch.zeros(spec.moe.experts)
        choice = scores + bias  # the bias moves selection only
        size = spec.moe.experts // router_spec.groups
        for token in range(tokens):
            picked = chosen[token].tolist()
            assert len(set(picked)) == len(picked), picked
            groups = choice[token].view(router_spec.groups, size).sort(dim=-1, descending=True).values
            group_score = groups[:, 0] if router_spec.group_score == "max" or size < 2 else groups[:, :2].sum(-1)
            kept_floor = group_score.sort(descending=True).values[router_spec.top_groups - 1]
            allowed = (group_score >= kept_floor).repeat_interleave(size)
            assert allowed[picked].all(), (picked, group_score)
            others = [e for e in range(spec.moe.experts) if allowed[e] and e not in picked]
            if others:  # the k largest: every picked expert beats every allowed one left out
                assert choice[token, picked].min() >= choice[token, others].max()

        expected = scores.gather(1, chosen)
        if router_spec.renormalize:
            expected = expected / expected.sum(-1, keepdim=True)
            torch.testing.assert_close(weights.sum(-1), torch.full((tokens,), router_spec.scale, dtype=weights.dtype))
        torch.testing.assert_close(weights, router_spec.scale * expected)


# ----------------------------------------------------------------------------------- one expert = the MLP
@st.composite
def single_expert_specs(draw: st.DrawFn) -> tuple[archspec.Spec, archspec.Spec]:
    """(a spec whose MoE layers have one expert with top-1, the same spec with dense MLPs there). Experts have no
    biases, so neither has the dense MLP; a single expert's weight is 1 under softmax scores or renormalisation."""
    data = draw(decoder_dicts(max_layers=2, min_context=MAX_SEQ))
    data["mlp"]["bias"] = False
    scoring = draw(st.sampled_from(["softmax", "sigmoid"]))
    router = {
        "scoring": scoring,
        "renormalize": True if scoring == "sigmoid" else draw(st.booleans()),
        "correction_bias": draw(st.booleans()),
        "aux_loss": draw(st.sampled_from(["token", "sequence"])),
        "jitter": draw(st.sampled_from([0.0, 0.1])),  # training only: eval models ignore it
    }
    moe: dict = {"experts": 1, "top_k": 1, "router": router}
    placement = draw(st.sampled_from(["all", "dense_layers", "layers"]))
    if placement == "dense_layers":
        moe["dense_layers"] = draw(st.integers(0, data["n_layers"] - 1))
    elif placement == "layers":
        moe["layers"] = draw(st.lists(st.integers(0, data["n_layers"] - 1), min_size=1, unique=True))
    dense = archspec.spec_from_dict(data)
    return archspec.spec_from_dict({**data, "moe": moe}), dense


EXPERT_TENSOR = re.compile(r"(layers\.\d+\.mlp)\.experts\.(gate|up|down)$")


@given(pair=single_expert_specs(), seq=st.integers(1, MAX_SEQ), seed=seeds)
def test_one_expert_with_top_1_is_the_dense_mlp(pair, seq, seed):
    moe_spec, dense_spec = pair
    model = build64(moe_spec, seed)
    assert moe_layers(model), "the spec has MoE layers"
    state = {}
    for name, tensor in model.state_dict().items():
        match = EXPERT_TENSOR.match(name)
        if match:  # [1, out, in] -> the dense Linear's weight
            state[f"{match[1]}.{match[2]}.weight"] = tensor[0]
        elif ".mlp.router." not in name:
            state[name] = tensor
    dense = archspec.build(dense_spec, dtype=torch.float64).eval()
    dense.load_state_dict(state, strict=True)
    ids = token_ids(moe_spec.vocab_size, 2, seq, seed)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, **CLOSE)


# ---------------------------------------------------------------------------------------- permutation
@st.composite
def expert_orders(draw: st.DrawFn, experts: int, groups: int) -> list[int]:
    """A renumbering that keeps group-limited routing meaningful: whole groups move, and experts move inside their
    group. new expert i is old expert order[i]."""
    size = experts // groups
    group_order = draw(st.permutations(range(groups)))
    return [group_order[g] * size + j for g in range(groups) for j in draw(st.permutations(range(size)))]


@given(spec=moe_specs, data=st.data(), seed=seeds)
def test_renumbering_experts_with_their_router_rows_changes_nothing(spec, data, seed):
    """Each MoE layer may be renumbered differently: logits, the z-loss and the sequence-level balance loss are
    per layer. The token-level balance loss is not: it pools expert e's load and probability over all layers before
    multiplying them (transformers' Mixtral `load_balancing_loss_func` concatenates the layers' router logits), so
    it is unchanged when every layer is renumbered the same way."""
    seq = data.draw(st.integers(1, MAX_SEQ), label="seq")
    same_order = data.draw(st.booleans(), label="same order in every layer")
    model = build64(spec, seed)
    renumbered = build64(spec, seed)
    order = data.draw(expert_orders(spec.moe.experts, spec.moe.router.groups), label="order")
    with torch.no_grad():
        for moe in moe_layers(renumbered):
            if not same_order:
                order = data.draw(expert_orders(spec.moe.experts, spec.moe.router.groups), label="layer order")
            index = torch.tensor(order)
            moe.router.weight.copy_(moe.router.weight[index])
            experts = moe.experts
            for tensor in (moe.router.correction_bias, moe.router.bias, experts.gate, experts.up, experts.down,
                           experts.gate_bias, experts.up_bias, experts.down_bias):  # fmt: skip
                if tensor is not None:  # a router row, or an expert's matrix or bias
                    tensor.copy_(tensor[index])
    ids = token_ids(spec.vocab_size, 2, seq, seed)
    with torch.no_grad():
        before, after = model(ids, labels=ids), renumbered(ids, labels=ids)
    torch.testing.assert_close(after.logits, before.logits, **CLOSE)
    torch.testing.assert_close(after.z_loss, before.z_loss, **CLOSE)
    if same_order or spec.moe.router.aux_loss == "sequence" or len(moe_layers(model)) == 1:
        torch.testing.assert_close(after.aux_loss, before.aux_loss, **CLOSE)
        if seq > 1:  # one token: nothing to predict, the language-model loss is NaN in both
            torch.testing.assert_close(after.loss, before.loss, **CLOSE)
