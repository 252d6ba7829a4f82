"""archspec reproduces transformers' LLaVA (CLIP vision tower + projector + llama text model) with images.

Reference: transformers 5.x (checked with 5.23.0) LlavaForConditionalGeneration, eager attention, float32, tiny
random configs with every weight perturbed (as hf_reference.make_reference does). Tolerance: 1e-5 max abs logit difference.
The configs vary what LLaVA lets a checkpoint choose: the feature layer (one or several, from either end), whether
the class token is kept, the projector activation and bias, and the text model's attention layout.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
import yaml

import archspec

TOLERANCE = 1e-5
IMAGE_TOKEN = 100


def _config(
    feature_layer: int | list[int] = -2, strategy: str = "default", act: str = "gelu", bias: bool = True, **text: object
) -> T.LlavaConfig:
    vision = T.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        projection_dim=16,
        layer_norm_eps=1e-5,
    )
    text_config = T.LlamaConfig(
        **{
            **dict(
                vocab_size=128,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=96,
                rms_norm_eps=1e-5,
            ),
            **text,
        }
    )
    return T.LlavaConfig(vision_config=vision, text_config=text_config, image_token_index=IMAGE_TOKEN,
                         vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
                         projector_hidden_act=act, multimodal_projector_bias=bias)  # fmt: skip


CONFIGS = {
    "llava-1.5-style": _config(),
    "last-layer-full-cls": _config(feature_layer=-1, strategy="full"),
    "embeddings-layer-silu-nobias": _config(feature_layer=-4, act="silu", bias=False),
    "several-layers-tied-mqa": _config(feature_layer=[1, -1], num_key_value_heads=1, tie_word_embeddings=True),
}


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Every parameter re-randomised (hf_reference.make_reference's scheme): norms near 1, embeddings 0.3, rest 0.1."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and "norm" in name:
                param.copy_(1.0 + 0.2 * noise)
            elif "embed" in name:
                param.copy_(noise * 0.3)
            else:
                param.copy_(noise * 0.1)


def _tokens_per_image(config: T.LlavaConfig) -> int:
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return grid * grid + (config.vision_feature_select_strategy == "full")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    """(name, transformers model, saved directory) for one tiny LLaVA config."""
    directory = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = T.LlavaForConditionalGeneration._from_config(CONFIGS[request.param], attn_implementation="eager").eval()
    perturb(model, seed=0)
    model.save_pretrained(directory)
    return request.param, model, directory


def _inputs(config: T.LlavaConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows: one image in the first, two in the second (placeholder runs at different offsets); 3 images."""
    generator = torch.Generator().manual_seed(seed)
    n = _tokens_per_image(config)
    ids = torch.randint(0, IMAGE_TOKEN, (2, 2 * n + 9), generator=generator)
    ids[0, 2 : 2 + n] = IMAGE_TOKEN
    ids[1, 1 : 1 + n] = IMAGE_TOKEN
    ids[1, n + 4 : 2 * n + 4] = IMAGE_TOKEN
    pixels = torch.randn(3, 3, 28, 28, generator=generator)
    return ids, pixels


def _archspec(directory) -> torch.nn.Module:
    model = archspec.build(archspec.spec_from_hf(directory))
    archspec.load_hf_weights(model, directory)
    return model.eval()


def test_logits_match_transformers_with_images(reference):
    name, hf_model, directory = reference
    model = _archspec(directory)
    ids, pixels = _inputs(hf_model.config, seed=len(name))
    with torch.no_grad():
        expected = hf_model(input_ids=ids, pixel_values=pixels).logits
        actual = model(ids, pixel_values=pixels).logits
    assert (expected - actual).abs().max().item() <= TOLERANCE


def test_text_only_logits_match_transformers(reference):
    name, hf_model, directory = reference
    model = _archspec(directory)
    ids = torch.randint(0, IMAGE_TOKEN, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf_model(input_ids=ids).logits - model(ids).logits).abs().max().item() <= TOLERANCE


def test_projected_image_tokens_match_transformers(reference):
    """The tower's feature layer(s), the class-token choice and the projector, compared before the splice."""
    name, hf_model, directory = reference
    model = _archspec(directory)
    _, pixels = _inputs(hf_model.config, seed=3)
    with torch.no_grad():
        expected = torch.stack(hf_model.model.get_image_features(pixel_values=pixels).pooler_output)
        actual = model.image_tokens(pixel_values=pixels)
    assert actual.shape == expected.shape
    assert (expected - actual).abs().max().item() <= TOLERANCE


def test_spec_round_trips_through_yaml(reference, tmp_path):
    name, hf_model, directory = reference
    spec = archspec.spec_from_hf(directory)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert archspec.load_spec(path) == spec


def test_greedy_generate_with_images_matches_transformers(reference):
    name, hf_model, directory = reference
    model = _archspec(directory)
    ids, pixels = _inputs(hf_model.config, seed=5)
    ids, pixels = ids[1:], pixels[1:]  # the row with two images
    with torch.no_grad():
        expected = hf_model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=6, do_sample=False)  # fmt: skip
    cached = model.generate(ids, max_new_tokens=6, pixel_values=pixels)
    recomputed = model.generate(ids, max_new_tokens=6, pixel_values=pixels, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached, expected)


def test_meta_build_then_load(reference):
    name, hf_model, directory = reference
    model = archspec.build(archspec.spec_from_hf(directory), device="meta")
    archspec.load_hf_weights(model, directory)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ids, pixels = _inputs(hf_model.config, seed=7)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, pixel_values=pixels).logits
        assert (expected - model.eval()(ids, pixel_values=pixels).logits).abs().max().item() <= TOLERANCE


def test_parameter_count_equals_transformers(reference):
    name, hf_model, directory = reference
    model = _archspec(directory)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf_model.parameters())
