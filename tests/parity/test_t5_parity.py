"""archspec's encoder-decoder reproduces transformers' T5 (v1.0 and v1.1): encoder output, decoder logits, loss,
padding, and greedy generation.

Reference: transformers 5.25.0 `T5ForConditionalGeneration`, tiny random models with every weight perturbed, the
relative-bias tables included (HF's init would leave the bias tiny and hide bucket bugs). Sequences are longer than
half the buckets so the logarithmic buckets are reached. Both sides in float64 (sdpa attention; T5LayerNorm's
float32 variance lifted for float64 inputs, as hf_reference describes): encoder output and logits within 1e-10 of
their max|value|, the loss within 1e-6 (archspec's cross-entropy takes float32 logits), greedy tokens equal. float32
against transformers' eager float32 path: within 1e-5 of max|value| (the largest seen: 2.3e-6 of logits of
magnitude 9.6, on every CPU capability; a fixed 1e-5 absolute failed on AVX-512).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T
import yaml
from hf_reference import Reference, assert_loss_matches, assert_matches, load_reference

import archspec

TINY = dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=10, dropout_rate=0.0,
            decoder_start_token_id=0)  # fmt: skip

# name -> (config, replace lm_head by a separate perturbed matrix: the hub layout of v1.1 checkpoints)
CONFIGS: dict[str, tuple[T.T5Config, bool]] = {
    "v1.0-relu-tied-scaled": (T.T5Config(**TINY, feed_forward_proj="relu"), False),
    "v1.1-gated-gelu-untied": (T.T5Config(**TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False), True),
    # 5.x keeps lm_head tied to shared when built from a config, even for v1.1: the checkpoint has no lm_head.
    "v1.1-built-from-config": (T.T5Config(**TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False), False),
    "odd-inner-dim-gated-silu": (
        T.T5Config(
            vocab_size=101,
            d_model=48,
            d_kv=20,
            d_ff=72,
            num_layers=3,
            num_heads=3,
            relative_attention_num_buckets=12,
            relative_attention_max_distance=20,
            dropout_rate=0.0,
            feed_forward_proj="gated-silu",
            tie_word_embeddings=False,
            decoder_start_token_id=0,
        ),
        True,
    ),  # fmt: skip
}
# transformers' generate builds its cache with num_layers entries, so unequal stacks are checked on logits only.
UNEQUAL_STACKS = T.T5Config(**{**TINY, "num_layers": 3}, num_decoder_layers=2, feed_forward_proj="relu")


def make_t5_reference(
    config: T.T5Config, directory: Path, untie_head: bool, seed: int = 0
) -> T.T5ForConditionalGeneration:
    """A tiny T5 with every parameter re-randomised (norm weights around 1), saved to `directory`."""
    torch.manual_seed(seed)
    model = T.T5ForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    if untie_head:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layer_norm" in name:
                param.copy_(1.0 + 0.2 * noise)
            elif name == "shared.weight":
                param.copy_(0.3 * noise)
            elif "relative_attention_bias" in name:
                param.copy_(noise)
            else:
                param.copy_(0.1 * noise)
    model.save_pretrained(directory)
    return model


def _load(
    directory: Path, spec: archspec.Spec | None = None, device: str | None = None, dtype: torch.dtype = torch.float64
) -> torch.nn.Module:
    spec = spec or archspec.spec_from_hf(directory)
    model = archspec.build(spec, device=device, dtype=dtype)
    archspec.load_hf_weights(model, directory)
    return model.eval()


def _ids(seed: int, vocab: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    """hf_reference.Reference: the directory, transformers in float32 (eager) and in float64 (sdpa)."""
    config, untie = CONFIGS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    float32 = make_t5_reference(config, directory, untie)
    return Reference(request.param, directory, float32, load_reference(directory, T.T5ForConditionalGeneration))


def _compare(hf_model, model, source: torch.Tensor, target: torch.Tensor, **kwargs) -> None:
    """Encoder output and decoder logits agree (hf_reference.assert_matches: 1e-10 of max|value| in float64)."""
    with torch.no_grad():
        expected = hf_model(input_ids=source, decoder_input_ids=target, **kwargs)
        actual = model(source, decoder_input_ids=target, **kwargs)
    assert_matches(expected.encoder_last_hidden_state, actual.encoder_output)
    assert_matches(expected.logits, actual.logits)


def test_spec_reads_the_t5_variant(reference):
    spec = archspec.spec_from_hf(reference.directory)
    config = reference.float64.config
    assert spec.structure == "encoder-decoder" and spec.attention.scale == 1.0
    assert spec.embeddings.scale_head == config.scale_decoder_outputs == spec.embeddings.tied
    assert (
        spec.mlp.activation
        == {"relu": "relu", "gated-gelu": "geglu-tanh", "gated-silu": "swiglu"}[config.feed_forward_proj]
    )
    assert (spec.position.buckets, spec.position.max_distance) == (
        config.relative_attention_num_buckets,
        config.relative_attention_max_distance,
    )


def test_encoder_output_and_decoder_logits_match(reference):
    model = _load(reference.directory)
    vocab = reference.float64.config.vocab_size
    _compare(reference.float64, model, _ids(1, vocab, (2, 13)), _ids(2, vocab, (2, 11)))


def test_float32_encoder_output_and_decoder_logits_match_eager(reference):
    """archspec's float32 norm statistics and bias tables against transformers' eager float32 path: 1e-5 of the
    values' magnitude."""
    model = _load(reference.directory, dtype=torch.float32)
    vocab = reference.float32.config.vocab_size
    _compare(reference.float32, model, _ids(1, vocab, (2, 13)), _ids(2, vocab, (2, 11)))


def test_padded_source_matches(reference):
    """The encoder's attention_mask hides padded keys in encoder self-attention and in cross-attention."""
    hf_model, model = reference.float64, _load(reference.directory)
    vocab = hf_model.config.vocab_size
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 8:] = 0
    _compare(hf_model, model, _ids(3, vocab, (2, 13)), _ids(4, vocab, (2, 7)), attention_mask=mask)


def test_loss_with_labels_matches(reference):
    """labels= derives the decoder input (start token, labels shifted right) and gives transformers' loss."""
    hf_model, model = reference.float64, _load(reference.directory)
    vocab = hf_model.config.vocab_size
    source, labels = _ids(5, vocab, (2, 9)), _ids(6, vocab, (2, 6))
    labels[0, -2:] = -100
    with torch.no_grad():
        expected = hf_model(input_ids=source, labels=labels)
        actual = model(source, labels=labels)
    assert_matches(expected.logits, actual.logits)
    assert_loss_matches(expected.loss, actual.loss)


def test_greedy_generate_matches_transformers_and_full_recompute(reference):
    hf_model, model = reference.float64, _load(reference.directory)
    source = _ids(7, hf_model.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = hf_model.generate(source, attention_mask=torch.ones_like(source), max_new_tokens=10, do_sample=False)
    cached = model.generate(source, max_new_tokens=10)
    recomputed = model.generate(source, max_new_tokens=10, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached, expected)


def test_padded_greedy_generate_matches_transformers(reference):
    hf_model, model = reference.float64, _load(reference.directory)
    source = _ids(8, hf_model.config.vocab_size, (2, 9))
    mask = torch.ones_like(source)
    mask[0, 6:] = 0
    with torch.no_grad():
        expected = hf_model.generate(source, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(source, attention_mask=mask, max_new_tokens=8), expected)


def test_yaml_round_trip_and_meta_build(reference, tmp_path):
    """spec -> YAML -> load_spec gives the same spec; a meta-device build becomes a working model once loaded."""
    directory = reference.directory
    spec = archspec.spec_from_hf(directory)
    path = tmp_path / "t5.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert archspec.load_spec(path) == spec
    model = _load(directory, archspec.load_spec(path), device="meta")
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert next(model.parameters()).dtype == torch.float64
    vocab = reference.float64.config.vocab_size
    _compare(reference.float64, model, _ids(9, vocab, (1, 12)), _ids(10, vocab, (1, 12)))


def test_unequal_encoder_and_decoder_depth(tmp_path):
    make_t5_reference(UNEQUAL_STACKS, tmp_path, untie_head=False)
    spec = archspec.spec_from_hf(tmp_path)
    assert (spec.n_layers, spec.n_decoder_layers) == (3, 2)
    _compare(
        load_reference(tmp_path, T.T5ForConditionalGeneration),
        _load(tmp_path),
        _ids(11, 128, (2, 14)),
        _ids(12, 128, (2, 10)),
    )


def test_strict_loading_names_a_missing_bias_table(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = reference.directory
    tensors = load_file(directory / "model.safetensors")
    del tensors["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    model = archspec.build(archspec.spec_from_hf(tmp_path))
    with pytest.raises(archspec.WeightLoadError, match="decoder.position_bias.table.weight"):
        archspec.load_hf_weights(model, tmp_path)
