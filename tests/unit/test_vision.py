"""The vision section: placeholder splice (a property over random placements), pooling, validation, compile."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archspec
from archspec.nn.vision import PatchPool, splice_image_tokens

IMAGE = 60
TEXT = dict(name="tiny-vlm", vocab_size=64, d_model=32, n_layers=2, context_length=128, attention={"heads": 4, "kv_heads": 2},
            position="rope", mlp={"activation": "swiglu", "d_ff": 48})  # fmt: skip
VIT = dict(kind="vit", image_size=28, patch_size=7, width=16, depth=3, heads=2, d_ff=24)
EXTERNAL = dict(kind="external", width=20, patches=36)


def tiny(**vision: object) -> archspec.Spec:
    return archspec.spec_from_dict({**TEXT, "vision": {"image_token": IMAGE, **vision}})


def model_of(spec: archspec.Spec) -> torch.nn.Module:
    torch.manual_seed(0)
    return archspec.build(spec).eval()


def prompt(runs: list[int], tokens_per_image: int, length: int, seed: int = 0) -> torch.Tensor:
    """One row of text tokens (< IMAGE) with a run of placeholders starting at each offset in `runs`."""
    ids = torch.randint(0, IMAGE, (1, length), generator=torch.Generator().manual_seed(seed))
    for start in runs:
        ids[0, start : start + tokens_per_image] = IMAGE
    return ids


# ------------------------------------------------------------------------------------------ the splice
@st.composite
def placements(draw: st.DrawFn) -> tuple[torch.Tensor, list[list[int]], int]:
    """input_ids [batch, seq] with image runs at random, non-overlapping places; per row, the runs' offsets."""
    batch = draw(st.integers(1, 3))
    tokens = draw(st.integers(1, 5))
    seq = draw(st.integers(tokens, 24))
    rows, ids = [], torch.zeros(batch, seq, dtype=torch.long)
    for b in range(batch):
        starts, position = [], draw(st.integers(0, seq))
        while position + tokens <= seq and draw(st.booleans()):
            starts.append(position)
            position += tokens + draw(st.integers(0, 3))
        text = draw(st.lists(st.integers(0, IMAGE - 1), min_size=seq, max_size=seq))
        ids[b] = torch.tensor(text)
        for start in starts:
            ids[b, start : start + tokens] = IMAGE
        rows.append(starts)
    return ids, rows, tokens


@settings(max_examples=200, deadline=None)
@given(placements())
def test_each_image_lands_exactly_on_its_placeholders(case) -> None:
    ids, rows, tokens = case
    images = sum(len(starts) for starts in rows)
    d = 3
    embeds = torch.randn(*ids.shape, d)
    # image i's token t is the vector (i, t, -1): where each one lands says which image and token it is
    image_tokens = torch.stack(
        [torch.stack([torch.tensor([i, t, -1.0]) for t in range(tokens)]) for i in range(images)]
    ) if images else torch.zeros(0, tokens, d)  # fmt: skip
    out = splice_image_tokens(embeds, ids, image_tokens, IMAGE)
    image = 0
    for b, starts in enumerate(rows):  # images are numbered in reading order: row by row, left to right
        for start in starts:
            assert torch.equal(out[b, start : start + tokens], image_tokens[image])
            image += 1
    text = ids != IMAGE
    assert torch.equal(out[text], embeds[text])


def test_the_model_splices_before_the_text_stack() -> None:
    """forward(image_features=...) is the text model run on the spliced embeddings."""
    model = model_of(tiny(tower=EXTERNAL))
    ids = prompt([2, 45], 36, 90)
    features = torch.randn(2, 36, 20)
    with torch.no_grad():
        tokens = model.image_tokens(image_features=features)
        embeds = model.embed(ids).clone()
        embeds[0, 2:38], embeds[0, 45:81] = tokens[0], tokens[1]
        expected = archspec.nn.models.DecoderLM.forward(model, ids, inputs_embeds=embeds).logits
        assert torch.equal(model(ids, image_features=features).logits, expected)


def test_text_only_calls_are_the_text_model() -> None:
    spec = tiny(tower=VIT, feature_layer=-2)
    model = model_of(spec)
    text_model = archspec.build(spec.model_copy(update={"vision": None})).eval()
    text_model.load_state_dict({k: v for k, v in model.state_dict().items() if k in text_model.state_dict()})
    ids = prompt([], 0, 20)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, text_model(ids).logits)
        assert torch.equal(model.generate(ids, max_new_tokens=5), text_model.generate(ids, max_new_tokens=5))


@pytest.mark.parametrize("images", [1, 3])
def test_placeholder_count_mismatch_is_a_clear_error(images: int) -> None:
    model = model_of(tiny(tower=VIT))
    ids = prompt([1, 20], 16, 40)  # room for 2 images of 16 tokens
    with pytest.raises(ValueError, match=rf"32 image placeholder tokens \(id {IMAGE}\), but {images} image\(s\) x 16"):
        model(ids, pixel_values=torch.randn(images, 3, 28, 28))


def test_wrong_feature_shape_and_missing_tower_are_clear_errors() -> None:
    model = model_of(tiny(tower=EXTERNAL))
    ids = prompt([0], 36, 40)
    with pytest.raises(ValueError, match=r"expects \[images, 36, 20\]"):
        model(ids, image_features=torch.randn(1, 35, 20))
    with pytest.raises(ValueError, match="external"):
        model(ids, pixel_values=torch.randn(1, 3, 28, 28))
    model.vision_tower = lambda pixels: pixels.flatten(1)[:, : 36 * 20].reshape(-1, 36, 20)  # a user's tower
    features = model.vision_tower(torch.randn(1, 3, 28, 28))
    assert model(ids, pixel_values=torch.randn(1, 3, 28, 28)).logits.shape == (1, 40, 64)
    assert model(ids, image_features=features).logits.shape == (1, 40, 64)


# ---------------------------------------------------------------------------------------------- pooling
def test_pooling_averages_square_windows_in_reading_order() -> None:
    x = torch.randn(2, 576, 8)
    pooled = PatchPool(grid=24, side=12)(x)
    assert pooled.shape == (2, 144, 8)
    grid = x.view(2, 24, 24, 8)
    for r, c in [(0, 0), (0, 11), (5, 7), (11, 11)]:  # pooled token r*12+c is the mean of a 2 x 2 window
        window = grid[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(2, 4, 8).mean(1)
        torch.testing.assert_close(pooled[:, r * 12 + c], window)


@pytest.mark.parametrize(("patches", "tokens"), [(576, 144), (576, 64), (576, 36), (36, 9), (36, 36), (36, 1)])
def test_image_tokens_have_the_pooled_shape(patches: int, tokens: int) -> None:
    spec = tiny(tower={**EXTERNAL, "patches": patches}, pooling={"tokens": tokens})
    assert spec.vision.tokens_per_image == tokens
    model = model_of(spec)
    assert model.image_tokens(image_features=torch.randn(3, patches, 20)).shape == (3, tokens, 32)


def test_example_spec_pools_576_to_144() -> None:
    spec = archspec.load_spec("specs/vlm-pooled-example.yaml")
    assert spec.vision.tower.patches == 576 and spec.vision.tokens_per_image == 144


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("vision", "path", "message"),
    [
        ({"tower": EXTERNAL, "pooling": {"tokens": 8}}, "vision.pooling.tokens", "side dividing the 6 x 6"),
        ({"tower": EXTERNAL, "pooling": {"tokens": 16}}, "vision.pooling.tokens", "side dividing the 6 x 6"),
        ({"tower": {**EXTERNAL, "patches": 30}, "pooling": {"tokens": 9}}, "vision.pooling", "square grid"),
        ({"tower": VIT, "feature_select": "all", "pooling": {"tokens": 4}}, "vision.pooling", "square grid"),
        ({"tower": VIT, "tokens_per_image": 17}, "vision.tokens_per_image", "16 feature tokens"),
        ({"tower": VIT, "feature_select": "all", "tokens_per_image": 16}, "vision.tokens_per_image", "17 feature"),
        (
            {"tower": EXTERNAL, "pooling": {"tokens": 9}, "tokens_per_image": 36},
            "vision.tokens_per_image",
            "pooling to 9",
        ),
        ({"tower": {**VIT, "patch_size": 6}}, "vision.tower.patch_size", "does not divide image_size"),
        ({"tower": {**VIT, "heads": 3}}, "vision.tower.heads", "not divisible"),
        ({"tower": VIT, "feature_layer": [1, -5]}, "vision.feature_layer", "[-5] out of range"),
        ({"tower": EXTERNAL, "feature_layer": -2}, "vision.feature_layer", "used as given"),
        ({"tower": VIT, "projector": {"kind": "linear", "depth": 2}}, "vision.projector.depth", "depth 1"),
        ({"tower": VIT, "image_token": 64}, "vision.image_token", "vocab_size"),
    ],
)
def test_inconsistent_vision_sections_are_reported_at_their_key(vision: dict, path: str, message: str) -> None:
    data = {**TEXT, "vision": {"image_token": IMAGE, **vision}}
    with pytest.raises(archspec.SpecError) as error:
        archspec.spec_from_dict(data)
    assert f"{path}: " in str(error.value) and message in str(error.value)


def test_vision_needs_a_decoder() -> None:
    data = {**TEXT, "structure": "glm", "vision": {"image_token": IMAGE, "tower": VIT}}
    with pytest.raises(archspec.SpecError, match="vision: vision is implemented for structure: decoder"):
        archspec.spec_from_dict(data)


# --------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize("tower", [VIT, EXTERNAL])
def test_generate_with_images_equals_full_recompute(tower: dict) -> None:
    model = model_of(tiny(tower=tower))
    n = model.tokens_per_image
    ids = torch.cat([prompt([1], n, n + 6, seed=1), prompt([3], n, n + 6, seed=2)])
    images = {"pixel_values": torch.randn(2, 3, 28, 28)} if tower is VIT else {"image_features": torch.randn(2, 36, 20)}
    cached = model.generate(ids, max_new_tokens=8, **images)
    assert torch.equal(cached, model.generate(ids, max_new_tokens=8, use_cache=False, **images))
    # greedy: each new token is the argmax of a full forward pass over everything before it
    with torch.no_grad():
        for step in range(8):
            logits = model(cached[:, : ids.shape[1] + step], **images).logits[:, -1]
            assert torch.equal(logits.argmax(-1), cached[:, ids.shape[1] + step])


# ---------------------------------------------------------------------------------------------- compile
@pytest.mark.parametrize("tower", [EXTERNAL, VIT])
def test_compiles_fullgraph_with_images(tower: dict) -> None:
    torch._dynamo.reset()
    model = model_of(tiny(tower=tower, pooling={"tokens": 4} if tower is EXTERNAL else None))
    n = model.tokens_per_image
    ids = prompt([2, 2 + n + 3], n, 2 * n + 10)
    images = {"pixel_values": torch.randn(2, 3, 28, 28)} if tower is VIT else {"image_features": torch.randn(2, 36, 20)}
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, **images).logits, model(ids, **images).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled(ids[:, :5]).logits, model(ids[:, :5]).logits, rtol=1e-5, atol=1e-5)


def test_llava_spec_builds_on_meta_with_the_published_layout() -> None:
    spec = archspec.load_spec("specs/llava-1.5-7b.yaml")
    model = archspec.build(spec, device="meta")
    assert spec.vision.tokens_per_image == 576
    assert list(model.vision_tower.feature_layers) == [23] and model.vision_tower.drop_class_token
    assert [tuple(layer.weight.shape) for layer in model.projector.layers] == [(4096, 1024), (4096, 4096)]
