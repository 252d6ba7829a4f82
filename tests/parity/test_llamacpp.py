"""archspec's GGUF export run by llama.cpp itself (`llama-cpp-python`), against archspec's own logits.

The client is the reference: the file must load in llama.cpp and give archspec's logits. f32: max|Δlogit| <= 1e-5
of max|logit| with llama.cpp's KV cache in f32 (its default f16 cache alone costs ~5e-4; GELU models 1e-3, see
GELU_TOLERANCE), and the same greedy continuation; q8_0: the same argmax on >= 95% of positions. Marker `llamacpp`; .ci/run installs llama-cpp-python
(it compiles llama.cpp) and says so when it cannot, deselecting these tests; under CI a missing module is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hf_reference import make_reference
from test_gguf_parity import CONFIGS as GGUF_CONFIGS
from test_gguf_parity import ONLY_ARCHSPEC, SMALL

import archspec

pytestmark = pytest.mark.llamacpp

# The GGUF parity suite's tiny models (every architecture mapped; not Mistral, which llama.cpp runs as llama without
# its window), plus a tied head, and Gemma 2 and Qwen3 at their usual head widths (the parity suite widens their
# heads where transformers' GGUF loading ignores head_dim).
CONFIGS = {
    **{name: config for name, config in GGUF_CONFIGS.items() if name != "mistral"},
    **ONLY_ARCHSPEC,
    "gemma2": lambda: transformers.Gemma2Config(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        **SMALL,
    ),
    "qwen3": lambda: transformers.Qwen3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, **SMALL
    ),
    "llama-tied": lambda: transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, **SMALL
    ),
}
F32_TOLERANCE = 1e-5  # of max|logit|
# ggml's CPU GELU does not evaluate the formula on f32 inputs: it rounds them to f16 and looks the result up in a
# table (`#define GGML_GELU_FP16` in ggml-cpu/vec.h), ~5e-4 relative per activation; measured 3.6e-4 on tiny GPT-2.
# Emulating that table in archspec (GELU of the f16-rounded input, rounded to f16) brings GPT-2 from 3.6e-4 to 3.7e-5
# and the 6-layer Gemma 3 from 2.5e-3 to 1.9e-4: the table is what these tolerances allow for.
GELU_TOLERANCE = 1e-3
DEEP_GELU_TOLERANCE = 5e-3  # Gemma 3's test model has 6 layers (five sliding, one full), the others 2
TOLERANCE = {
    "gemma3": DEEP_GELU_TOLERANCE,
    "bloom": GELU_TOLERANCE,
    "falcon": GELU_TOLERANCE,
    "falcon-7b-style": GELU_TOLERANCE,
    "gpt_neox": GELU_TOLERANCE,
    "gpt2": GELU_TOLERANCE,
    "starcoder2": GELU_TOLERANCE,
    "gemma": GELU_TOLERANCE,
    "gemma2": GELU_TOLERANCE,
}
GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def llama_cpp():  # type: ignore[no-untyped-def]
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed: .ci/run installs it or deselects -m llamacpp, saying so")
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python; it compiles llama.cpp)")
    return llama_cpp


def _model(name: str, directory: Path) -> torch.nn.Module:
    make_reference(CONFIGS[name](), directory).save_pretrained(directory)
    return archspec.load_hf_weights(archspec.build(archspec.spec_from_hf(directory)), directory).eval()


def _archspec_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out)[0].numpy()


def _run(llama_cpp, path: Path, ids: list[int]):  # type: ignore[no-untyped-def]
    llm = llama_cpp.Llama(
        str(path), logits_all=True, n_ctx=128, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, n_threads=2, verbose=False
    )
    llm.eval(ids)
    return llm, np.array(llm.scores[: len(ids)])


def _greedy(llm, prompt: list[int], steps: int, eos: set[int]) -> list[int]:  # type: ignore[no-untyped-def]
    """llama.cpp's greedy continuation: the argmax of its own logits, fed back one token at a time, up to an eos
    token (where `generate` stops too)."""
    llm.reset()
    llm.eval(prompt)
    tokens: list[int] = []
    while len(tokens) < steps and not (tokens and tokens[-1] in eos):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    return tokens


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_f32_export_runs_in_llama_cpp_with_archspecs_logits_and_greedy_text(llama_cpp, tmp_path: Path, name: str):  # type: ignore[no-untyped-def]
    model = _model(name, tmp_path / "hf")
    path = archspec.save_gguf(model, tmp_path / f"{name}.gguf", type="f32")
    ids = torch.randint(0, 96, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    llm, theirs = _run(llama_cpp, path, ids)
    ours = _archspec_logits(model, ids)
    assert np.abs(theirs - ours).max() <= TOLERANCE.get(name, F32_TOLERANCE) * np.abs(ours).max()

    prompt = ids[:6]
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=12)[0, len(prompt) :].tolist()
    eos = model.spec.tokens.eos
    assert _greedy(llm, prompt, 12, set(eos if isinstance(eos, list) else [] if eos is None else [eos])) == expected


def test_q8_0_export_runs_in_llama_cpp_with_archspecs_argmax(llama_cpp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model("llama", tmp_path / "hf")
    path = archspec.save_gguf(model, tmp_path / "q8.gguf", type="q8_0")
    ids = torch.randint(0, 96, (48,), generator=torch.Generator().manual_seed(2)).tolist()
    _, theirs = _run(llama_cpp, path, ids)
    ours = _archspec_logits(model, ids)
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.95


def test_a_hf_directorys_tokenizer_is_carried_over(llama_cpp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer.json in the HF directory: llama.cpp tokenises text with it as the tokenizers
    library does."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = __import__("tokenizers").decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=96, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:60])
    text = ["the cat sat on the mat", "the dog ate the cat food"] * 20
    tokenizer.train_from_iterator(text, trainer)
    hf = tmp_path / "hf"
    _model("llama", hf)
    tokenizer.save(str(hf / "tokenizer.json"))
    assert tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).get_vocab_size() <= 96
    path = tmp_path / "tok.gguf"
    archspec.interop.gguf.export_gguf(hf, path, type="f32")
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    assert llm.tokenize(b"the cat sat", add_bos=False) == tokenizer.encode("the cat sat").ids
