"""archspec reproduces transformers' LLaVA (CLIP vision tower + projector + llama text model) with images.

Reference: transformers 5.25.0 LlavaForConditionalGeneration, tiny random configs with every weight perturbed (as
hf_reference.make_reference does). Both sides in float64 (sdpa attention in the tower and the text model; the text
model's RMSNorm float32 statistics lifted for float64 inputs, as hf_reference describes): logits and projected image
tokens within 1e-10 of their max|value|, greedy tokens equal. float32 against transformers' eager float32 path:
within 1e-5 of max|logit|. The configs vary what LLaVA lets a checkpoint choose: the feature layer (one or several,
from either end), whether the class token is kept, the projector activation and bias, and the text model's
attention layout.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
import yaml
from hf_reference import Reference, assert_matches, load_reference

import archspec

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
    """hf_reference.Reference for one tiny LLaVA config: transformers in float32 (eager) and float64 (sdpa)."""
    directory = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = T.LlavaForConditionalGeneration._from_config(CONFIGS[request.param], attn_implementation="eager").eval()
    perturb(model, seed=0)
    model.save_pretrained(directory)
    return Reference(request.param, directory, model, load_reference(directory, T.LlavaForConditionalGeneration))


def _inputs(config: T.LlavaConfig, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows: one image in the first, two in the second (placeholder runs at different offsets); 3 images."""
    generator = torch.Generator().manual_seed(seed)
    n = _tokens_per_image(config)
    ids = torch.randint(0, IMAGE_TOKEN, (2, 2 * n + 9), generator=generator)
    ids[0, 2 : 2 + n] = IMAGE_TOKEN
    ids[1, 1 : 1 + n] = IMAGE_TOKEN
    ids[1, n + 4 : 2 * n + 4] = IMAGE_TOKEN
    pixels = torch.randn(3, 3, 28, 28, generator=generator, dtype=dtype)
    return ids, pixels


def _archspec(directory, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    model = archspec.build(archspec.spec_from_hf(directory), dtype=dtype)
    archspec.load_hf_weights(model, directory)
    return model.eval()


def _logits_with_images(hf_model, model, ids: torch.Tensor, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        expected = hf_model(input_ids=ids, pixel_values=pixels).logits
        actual = model(ids, pixel_values=pixels).logits
    assert_matches(expected, actual)


def test_logits_match_transformers_with_images(reference):
    ids, pixels = _inputs(reference.float64.config, seed=len(reference.name))
    _logits_with_images(reference.float64, _archspec(reference.directory), ids, pixels)


def test_float32_logits_match_transformers_eager_with_images(reference):
    """float32 on both sides (archspec's float32 norm statistics and RoPE tables, transformers' eager path)."""
    ids, pixels = _inputs(reference.float32.config, seed=len(reference.name), dtype=torch.float32)
    _logits_with_images(reference.float32, _archspec(reference.directory, torch.float32), ids, pixels)


def test_text_only_logits_match_transformers(reference):
    model = _archspec(reference.directory)
    ids = torch.randint(0, IMAGE_TOKEN, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_matches(reference.float64(input_ids=ids).logits, model(ids).logits)


def test_projected_image_tokens_match_transformers(reference):
    """The tower's feature layer(s), the class-token choice and the projector, compared before the splice."""
    model = _archspec(reference.directory)
    _, pixels = _inputs(reference.float64.config, seed=3)
    with torch.no_grad():
        expected = torch.stack(reference.float64.model.get_image_features(pixel_values=pixels).pooler_output)
        actual = model.image_tokens(pixel_values=pixels)
    assert_matches(expected, actual)


def test_spec_round_trips_through_yaml(reference, tmp_path):
    spec = archspec.spec_from_hf(reference.directory)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert archspec.load_spec(path) == spec


def test_greedy_generate_with_images_matches_transformers(reference):
    model = _archspec(reference.directory)
    ids, pixels = _inputs(reference.float64.config, seed=5)
    ids, pixels = ids[1:], pixels[1:]  # the row with two images
    with torch.no_grad():
        expected = reference.float64.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                              max_new_tokens=6, do_sample=False)  # fmt: skip
    cached = model.generate(ids, max_new_tokens=6, pixel_values=pixels)
    recomputed = model.generate(ids, max_new_tokens=6, pixel_values=pixels, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached, expected)


def test_meta_build_then_load(reference):
    model = archspec.build(archspec.spec_from_hf(reference.directory), device="meta", dtype=torch.float64)
    archspec.load_hf_weights(model, reference.directory)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ids, pixels = _inputs(reference.float64.config, seed=7)
    _logits_with_images(reference.float64, model.eval(), ids, pixels)


def test_parameter_count_equals_transformers(reference):
    model = _archspec(reference.directory)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.float64.parameters())


def _left_padded(ids: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first row shortened by `pad` text tokens at its end and left-padded (token 0), with its mask."""
    shorter = torch.cat((torch.zeros(pad, dtype=torch.long), ids[0, :-pad]))
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return torch.stack((shorter, ids[1])), mask


def test_left_padded_logits_and_generation_with_images_match_transformers(reference):
    """A left-padded row with its image among rows of other lengths: logits at real positions and 6 greedy tokens
    equal transformers' (positions cumsum(mask) - 1 in both, as their generate computes them), and the padded
    row's logits and tokens equal the row alone. (These tiny LLaVAs' greedy tokens repeat: the logits carry the
    check.)"""
    model = _archspec(reference.directory)
    ids, pixels = _inputs(reference.float64.config, seed=13)
    ids, mask = _left_padded(ids, pad=4)
    positions = (mask.cumsum(-1) - 1) * mask
    with torch.no_grad():
        expected = reference.float64(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=positions)
        actual = model(ids, pixel_values=pixels, attention_mask=mask, position_ids=positions).logits
        alone = model(ids[:1, 4:], pixel_values=pixels[:1]).logits
        real = mask.bool()
        assert_matches(expected.logits[real], actual[real])
        assert_matches(alone[0], actual[0, 4:])
        generated = reference.float64.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                                               max_new_tokens=6, do_sample=False)  # fmt: skip
    batched = model.generate(ids, max_new_tokens=6, pixel_values=pixels, attention_mask=mask)
    assert torch.equal(batched, generated)
    assert torch.equal(batched[0, 4:], model.generate(ids[:1, 4:], max_new_tokens=6, pixel_values=pixels[:1])[0])
    with torch.no_grad():  # the pads matter here: seen, they change the row (so a broken mask fails this test)
        one_document = torch.zeros_like(ids)  # (else the restarting positions would mark each pad a document)
        unmasked = model(ids, pixel_values=pixels, position_ids=positions, document_ids=one_document).logits
    assert (unmasked[0, 4:] - alone[0]).abs().max() > 1e-3
