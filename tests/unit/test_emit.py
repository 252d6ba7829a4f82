"""emit_source: the stand-alone file of a spec equals `archspec.build(spec)` (state-dict names, logits, generate),
runs where archspec is not importable, compiles with fullgraph, is deterministic, safe and ruff-clean; generated/
is current for every spec in specs/. Every structure: decoders (dense, MoE, MLA, every block kind), GLM prefix LMs
(with prefix_lengths), T5 encoder-decoders (with decoder_input_ids) and vision-language models (with pixel_values
or image_features); tiny variants below plus every spec in specs/ shrunk by tests/tiny.py.

The files are run in ONE fresh `python -I` subprocess (archspec blocked) that checks every tiny spec, to keep the
suite fast; per-spec results come back as JSON and each spec is its own test case.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny import import_emitted, shrink

import archspec
from archspec.emit import (
    class_name,
    emit_source,
    generated_path,
    is_stale,
    module_name,
    write_generated,
)
from archspec.spec import SpecError, spec_from_dict
from archspec.spec.loader import SpecYamlLoader

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.yaml"))

BASE: dict[str, Any] = {
    "vocab_size": 67,
    "d_model": 48,
    "n_layers": 2,
    "context_length": 64,
    "attention": {"heads": 6, "kv_heads": 2},
    "position": "rope",
    "norm": "rmsnorm",
    "mlp": {"activation": "swiglu", "d_ff": 40},
}


def tiny(name: str, **changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(BASE))
    data["name"] = name
    data.update(changes)
    return data


LAYERNORM = {"kind": "layernorm", "eps": 1e-5}
TINY: dict[str, dict[str, Any]] = {
    "llama3": tiny(
        "tiny-llama3",
        position={
            "kind": "rope",
            "theta": 500000.0,
            "scaling": {
                "kind": "llama3",
                "factor": 8,
                "low_freq_factor": 1,
                "high_freq_factor": 4,
                "original_context": 16,
            },
        },
        tokens={"bos": 1, "eos": 2},
    ),
    "mistral": tiny("tiny-mistral", attention={"heads": 6, "kv_heads": 2, "window": 5}),
    "qwen2-window-layers": tiny(
        "tiny.qwen2",
        attention={
            "heads": 6,
            "kv_heads": 2,
            "bias": {"q": True, "k": True, "v": True},
            "window": 4,
            "window_layers": [1],
        },
        position={"kind": "rope", "theta": 1000000.0, "scaling": {"kind": "yarn", "factor": 4, "original_context": 32}},
    ),
    "qwen3": tiny("tiny-qwen3", d_model=40, attention={"heads": 4, "kv_heads": 2, "head_dim": 16, "qk_norm": True}),
    "gpt2": tiny(
        "tiny-gpt2",
        attention={"heads": 4, "bias": True},
        position="learned",
        norm=LAYERNORM,
        mlp={"activation": "gelu-tanh", "d_ff": 64, "bias": True},
        embeddings={"tied": True},
    ),
    "bloom": tiny(
        "tiny-bloom",
        attention={"heads": 6, "bias": True},
        position="alibi",
        norm=LAYERNORM,
        mlp={"activation": "gelu-tanh", "d_ff": 64, "bias": True},
        embeddings={"tied": True, "norm": True},
    ),
    "falcon-7b": tiny(
        "tiny-falcon-7b",
        attention={"heads": 4, "kv_heads": 1},
        norm=LAYERNORM,
        block={"kind": "parallel", "parallel_norms": 1},
        mlp={"activation": "gelu", "d_ff": 64},
    ),
    "falcon-40b": tiny(
        "tiny-falcon-40b",
        attention={"heads": 6, "kv_heads": 2},
        norm=LAYERNORM,
        block={"kind": "parallel", "parallel_norms": 2},
        mlp={"activation": "gelu", "d_ff": 64},
        embeddings={"tied": True},
    ),
    "glm4": tiny(
        "tiny-glm4",
        d_model=40,
        attention={"heads": 4, "kv_heads": 2, "head_dim": 16, "bias": {"q": True, "k": True, "v": True}},
        position={"kind": "rope", "fraction": 0.5, "pairing": "interleaved"},
        block="sandwich",
        tokens={"eos": 5, "pad": 5},
    ),
    "gpt-neox": tiny(
        "tiny-gpt-neox",
        d_model=64,
        attention={"heads": 4, "bias": True},
        position={"kind": "rope", "fraction": 0.25, "scaling": {"kind": "linear", "factor": 2}},
        norm=LAYERNORM,
        block={"kind": "parallel", "parallel_norms": 2},
        mlp={"activation": "gelu", "d_ff": 64, "bias": True},
    ),
    "gpt": tiny(
        "tiny-gpt",
        attention={"heads": 4, "bias": True},
        position="learned",
        norm=LAYERNORM,
        block="post-norm",
        mlp={"activation": "gelu", "d_ff": 64, "bias": True},
        embeddings={"tied": True},
    ),
    "dynamic-ntk": tiny(
        "tiny-dynamic",
        context_length=8,  # shorter than the test sequences: the dynamic branch runs
        position={"kind": "rope", "scaling": {"kind": "dynamic", "factor": 2}},
        mlp={"activation": "geglu-tanh", "d_ff": 40},
    ),
    "odd-options": tiny(
        "7b",
        attention={"heads": 6, "kv_heads": 3, "scale": 0.3},
        position="none",
        norm={"kind": "layernorm", "eps": 1e-6, "bias": False},
        block={"kind": "pre-norm", "residual_from_norm": True},
        mlp={"activation": "reglu", "d_ff": 40},
        description='quotes \' " """ and a\nnewline {{ jinja }}',
    ),
    # Mixtral: softmax top-2, renormalised, every layer MoE.
    "moe-softmax": tiny(
        "tiny-moe",
        moe={"experts": 4, "top_k": 2, "d_ff": 24, "router": {"aux_loss_coef": 0.02, "z_loss_coef": 0.001}},
        tokens={"eos": 3},
    ),
    # Qwen-MoE: top-3 of 6 without renormalisation, a sigmoid-gated shared expert, qk-norm; MoE in layer 1 only.
    "moe-shared-gate": tiny(
        "tiny-qwen-moe",
        d_model=40,
        attention={"heads": 4, "kv_heads": 2, "head_dim": 16, "qk_norm": True, "bias": {"q": True, "k": True}},
        moe={
            "experts": 6,
            "top_k": 3,
            "d_ff": 24,
            "shared_experts": 1,
            "shared_d_ff": 32,
            "shared_gate": True,
            "layers": [1],
            "router": {"renormalize": False},
        },
    ),
    # DeepSeek-V3: MLA with q compression, YaRN with mscale, sigmoid scores, 2 of 4 groups (top2-sum), correction
    # bias, routed scale, two shared experts, first layer dense, sequence-level aux loss.
    "mla-moe-sigmoid-groups": tiny(
        "tiny-deepseek-v3",
        attention={"kind": "mla", "heads": 4, "q_rank": 16, "kv_rank": 24, "nope_dim": 16, "rope_dim": 8, "v_dim": 12},
        position={
            "kind": "rope",
            "pairing": "interleaved",
            "scaling": {"kind": "yarn", "factor": 4, "original_context": 16, "mscale": 0.707, "mscale_all_dim": 0.707},
        },
        moe={
            "experts": 8,
            "top_k": 3,
            "d_ff": 24,
            "shared_experts": 2,
            "dense_layers": 1,
            "router": {
                "scoring": "sigmoid",
                "correction_bias": True,
                "groups": 4,
                "top_groups": 2,
                "group_score": "top2-sum",
                "scale": 2.5,
                "aux_loss": "sequence",
                "aux_loss_coef": 0.001,
            },
        },
        tokens={"bos": 0, "eos": 1},
    ),
    # DeepSeek-V2-Lite: MLA without q compression, softmax top-2 of 4, grouped (max), MoE in layer 0 only.
    "mla-no-q-rank": tiny(
        "tiny-deepseek-v2",
        attention={"kind": "mla", "heads": 4, "kv_rank": 24, "nope_dim": 16, "rope_dim": 8, "v_dim": 16},
        position={"kind": "rope", "theta": 10000.0, "pairing": "interleaved"},
        norm={"kind": "rmsnorm", "eps": 1e-6},
        moe={
            "experts": 4,
            "top_k": 2,
            "d_ff": 24,
            "shared_experts": 1,
            "layers": [0],
            "router": {"renormalize": False, "groups": 2, "top_groups": 1},
        },
    ),
    # T5 v1.0: ReLU, unscaled attention, tied head scaled by d_model^-0.5; 8 buckets up to distance 6, so the
    # test sequences reach the logarithmic buckets and the last one; more decoder than encoder layers.
    "t5-v1.0": tiny(
        "tiny-t5",
        structure="encoder-decoder",
        n_decoder_layers=3,
        attention={"heads": 6, "head_dim": 8, "bias": False, "scale": 1.0},
        position={"kind": "relative-bias", "buckets": 8, "max_distance": 6},
        norm={"kind": "rmsnorm", "eps": 1e-6},
        mlp={"activation": "relu", "d_ff": 40},
        embeddings={"tied": True, "scale_head": True},
        tokens={"eos": 1, "pad": 0, "decoder_start": 0},
    ),
    # T5 v1.1: gated GELU, untied unscaled head; GQA and biases (not T5's, but the wiring must pass them on).
    "t5-v1.1": tiny(
        "tiny-t5-v1.1",
        structure="encoder-decoder",
        attention={"heads": 6, "kv_heads": 2, "bias": {"q": True, "o": True}, "qk_norm": True},
        position={"kind": "relative-bias", "buckets": 16, "max_distance": 32},
        mlp={"activation": "geglu-tanh", "d_ff": 40},
        tokens={"decoder_start": 3},
    ),
    # ChatGLM-6B: prefix LM, 2-D RoPE, embedding norm + DeepNorm blocks with an explicit alpha, biases, tied.
    "glm-2d": tiny(
        "tiny-chatglm",
        structure="glm",
        attention={"heads": 6, "bias": True},
        position={"kind": "rope", "block_positions": True},
        norm=LAYERNORM,
        block={"kind": "deepnorm", "alpha": 2.0, "beta": 0.5},
        mlp={"activation": "gelu-tanh", "d_ff": 64, "bias": True},
        embeddings={"tied": True, "norm": True},
        tokens={"eos": 4, "pad": 3},
    ),
    # GLM-130B: prefix LM with plain RoPE (no block positions), DeepNorm's default alpha, GeGLU, GQA window.
    "glm-1d": tiny(
        "tiny-glm-130b",
        structure="glm",
        attention={"heads": 6, "kv_heads": 2, "window": 6},
        position={"kind": "rope", "pairing": "interleaved", "fraction": 0.5},
        norm=LAYERNORM,
        block="deepnorm",
        mlp={"activation": "geglu-tanh", "d_ff": 40},
    ),
    # DeepNorm in a plain decoder with ALiBi and an MoE layer.
    "deepnorm-alibi-moe": tiny(
        "tiny-deepnorm",
        attention={"heads": 6, "kv_heads": 6},
        position="alibi",
        block={"kind": "deepnorm", "alpha": 1.7},
        moe={"experts": 4, "top_k": 2, "d_ff": 24, "layers": [1]},
    ),
    # LLaVA-like with every tower option away from CLIP's: two feature layers (the embeddings and the last block)
    # concatenated, class token kept, no pre/post norm, patch bias, 1 channel, linear projector, gelu-tanh; the text
    # blocks take BLOOM's residual from the normed input, the tower's pre-norm blocks do not (one class, two uses).
    "vlm-vit-options": tiny(
        "tiny-vlm-vit",
        block={"kind": "pre-norm", "residual_from_norm": True},
        vision={
            "tower": {
                "kind": "vit",
                "image_size": 16,
                "patch_size": 4,
                "channels": 1,
                "width": 24,
                "depth": 2,
                "heads": 3,
                "d_ff": 32,
                "activation": "gelu-tanh",
                "norm_eps": 1e-6,
                "bias": False,
                "patch_bias": True,
                "pre_norm": False,
                "post_norm": False,
            },
            "feature_layer": [0, -1],
            "feature_select": "all",
            "projector": "linear",
            "image_token": 66,
        },
        tokens={"eos": 2},
    ),
    # CLIP-like tower read at block 1 of 2, quick-gelu, MLP projector of depth 3 with relu, pooled 16 -> 4.
    "vlm-vit-pooled": tiny(
        "tiny-vlm-pooled",
        vision={
            "tower": {
                "kind": "vit",
                "image_size": 16,
                "patch_size": 4,
                "width": 32,
                "depth": 2,
                "heads": 4,
                "d_ff": 48,
            },
            "feature_layer": 1,
            "projector": {"kind": "mlp", "depth": 3, "activation": "relu", "bias": False},
            "pooling": {"tokens": 4},
            "image_token": 0,
        },
    ),
    # An external tower: features come in; MLA + MoE text model.
    "vlm-external-mla": tiny(
        "tiny-vlm-external",
        attention={"kind": "mla", "heads": 4, "kv_rank": 24, "nope_dim": 16, "rope_dim": 8, "v_dim": 16},
        moe={"experts": 4, "top_k": 2, "d_ff": 24},
        vision={"tower": {"kind": "external", "width": 20, "patches": 9}, "image_token": 65},
    ),
}
COMPILED = {"mistral": 0, "mla-moe-sigmoid-groups": 0, "t5-v1.1": 0, "glm-2d": 1, "vlm-vit-pooled": 1}
"""Cases also run through torch.compile(fullgraph=True, backend="aot_eager") in the subprocess, with the forward
call of the given index (see `_inputs`): a RoPE + GQA + sliding-window model, an MLA + MoE model whose grouped
matmul is the file's own custom op, T5 (relative bias, cross-attention), GLM with prefix_lengths (prefix mask, 2-D
RoPE), and a VLM with pixel_values (tower, projector, pooling, splice). A few seconds each; the compile-readiness of
every family is also tested on `archspec.build` models, which run the same code."""


def real_specs() -> dict[str, dict[str, Any]]:
    """Every spec in specs/ that the emitter supports, shrunk by tests/tiny.py (the shared test fixture)."""
    specs = {f"specs/{path.stem}": archspec.load_spec(path) for path in SPECS}
    return {key: shrink(spec).model_dump(exclude_none=True) for key, spec in specs.items()}


def distinct(cases: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The cases with one of each architecture, and for each case the key of the case that stands for it
    (llama3-8b and llama3-70b shrink to the same model: it is checked once)."""
    chosen: dict[str, dict[str, Any]] = {}
    first: dict[str, str] = {}
    alias = {}
    for key, data in cases.items():
        signature = json.dumps({**data, "name": "", "description": ""}, sort_keys=True)
        alias[key] = first.setdefault(signature, key)
        if alias[key] == key:
            chosen[key] = data
    return chosen, alias


RUNNER = r"""
import importlib.util, json, sys
sys.modules["archspec"] = None  # `import archspec` now fails: the files must stand alone
# the repository itself leaves the path (a virtual environment inside it, such as .venv/, stays)
sys.path[:] = [p for p in sys.path if "editable" not in p and p.rstrip("/") != sys.argv[3].rstrip("/")]
import torch

torch.set_num_threads(1)  # tiny models (see the one_thread fixture)
results = {}
for case in torch.load(sys.argv[1], weights_only=False):
    result = results.setdefault(case["key"], {})
    try:
        spec = importlib.util.spec_from_file_location(case["module"], case["path"])
        module = importlib.util.module_from_spec(spec)
        sys.modules[case["module"]] = module  # as an import registers it (dataclasses resolve annotations there)
        spec.loader.exec_module(module)
        model = getattr(module, case["class"])()
        assert type(model) is module.Model
        model.load_state_dict(case["state"], strict=True)
        model.eval()
        result["names"] = list(model.state_dict())
        with torch.no_grad():  # every forward call of the case (plain, with prefix_lengths, with images, ...)
            result["logits"] = max(
                (model(case["ids"], **kwargs).logits - logits).abs().max().item() for kwargs, logits in case["calls"]
            )
        result["generate"] = model.generate(case["prompt"], **case["options"]).tolist()
        if case["compile"] is not None:
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
            kwargs, logits = case["calls"][case["compile"]]
            with torch.no_grad():
                # relative: compiled, a window or bias runs another exact algorithm (no chunk loop in a graph)
                difference = (compiled(case["ids"], **kwargs).logits - logits).abs().max()
                result["compiled"] = (difference / logits.abs().max()).item()
    except Exception as error:  # reported per case by the parent
        result["error"] = f"{type(error).__name__}: {error}"
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """The models here are tiny: one intra-op thread runs them as fast as several, and several threads spinning on
    a shared machine cost many times the CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def all_cases() -> dict[str, dict[str, Any]]:
    return {**TINY, **real_specs()}


def _inputs(spec: archspec.Spec, generator: torch.Generator) -> dict[str, Any]:
    """A case's inputs: ids [2, 12] (plus the placeholders of one image per row for vision specs), and the forward
    calls to compare: plain, and per structure the arguments that change its path through the model."""
    vision = spec.vision
    low = 1 if vision is not None and vision.image_token == 0 else 0
    high = spec.vocab_size - 1 if vision is not None and vision.image_token == spec.vocab_size - 1 else spec.vocab_size
    ids = torch.randint(low, high, (2, 12), generator=generator)
    if vision is not None:
        ids[ids == vision.image_token] = low  # the placeholder token appears only where the images go
    prompt_length = 5
    calls: list[dict[str, Any]] = [{}]
    options: dict[str, Any] = {"max_new_tokens": 6}  # eos/pad: both models default to the spec's tokens
    if spec.structure == "encoder-decoder":
        decoder_ids = torch.randint(0, spec.vocab_size, (2, 7), generator=generator)
        calls = [{"decoder_input_ids": decoder_ids}, {"decoder_input_ids": decoder_ids[:, :1]}]
    if spec.structure == "glm":
        calls.append({"prefix_lengths": torch.tensor([4, 9])})
    if vision is not None:
        tokens = vision.tokens_per_image
        assert tokens is not None
        placeholders = torch.full((2, tokens), vision.image_token)
        ids = torch.cat((ids[:, :2], placeholders, ids[:, 2:]), dim=1)
        prompt_length = 2 + tokens + 3
        if vision.tower.kind == "vit":
            tower = vision.tower
            images = {
                "pixel_values": torch.randn(2, tower.channels, tower.image_size, tower.image_size, generator=generator)
            }
        else:
            images = {"image_features": torch.randn(2, vision.tower.patches, vision.tower.width, generator=generator)}
        calls.append(images)
        options.update(images)
    return {"ids": ids, "calls": calls, "prompt": ids[:, :prompt_length], "options": options}


@pytest.fixture(scope="module")
def run_results(all_cases: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Emit every case, save the archspec model's weights and outputs, check them all in one isolated subprocess."""
    directory = tmp_path_factory.mktemp("emitted")
    chosen, alias = distinct(all_cases)
    cases, expected = [], {}
    for key, data in chosen.items():
        spec = spec_from_dict(data)
        torch.manual_seed(0)
        model = archspec.build(spec).eval()
        with torch.no_grad():
            for parameter in model.parameters():  # no weight may hide behind its default value
                parameter.add_(torch.randn_like(parameter) * 0.1)
            for name, buffer in model.named_buffers():  # DeepSeek-V3's selection bias: a learned buffer
                if name.endswith("correction_bias"):
                    buffer.add_(torch.randn_like(buffer) * 0.1)
        inputs = _inputs(spec, torch.Generator().manual_seed(len(cases)))
        reference = {"eos_token_id": spec.tokens.eos, "pad_token_id": spec.tokens.pad}
        with torch.no_grad():
            calls = [(kwargs, model(inputs["ids"], **kwargs).logits) for kwargs in inputs["calls"]]
        path = directory / f"{module_name(spec.name)}.py"
        path.write_text(emit_source(spec))
        generated = model.generate(inputs["prompt"], **inputs["options"], **reference).tolist()
        expected[key] = {"names": list(model.state_dict()), "generate": generated}
        cases.append(
            {
                "key": key,
                "module": module_name(spec.name),
                "path": str(path),
                "class": class_name(spec.name),
                "state": model.state_dict(),
                "ids": inputs["ids"],
                "calls": calls,
                "prompt": inputs["prompt"],
                "options": inputs["options"],
                "compile": COMPILED.get(key),
            }
        )
    data_file, out_file, runner = directory / "cases.pt", directory / "results.json", directory / "runner.py"
    torch.save(cases, data_file)
    runner.write_text(RUNNER)
    process = subprocess.run(
        [sys.executable, "-I", str(runner), str(data_file), str(out_file), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=directory,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    results = json.loads(out_file.read_text())
    return {
        "results": {key: results[alias[key]] for key in alias if alias[key] in results},
        "expected": {key: expected[alias[key]] for key in alias if alias[key] in expected},
        "directory": directory,
    }


CASE_KEYS = list(TINY) + [f"specs/{path.stem}" for path in SPECS]


@pytest.mark.parametrize("key", CASE_KEYS)
def test_emitted_file_matches_build_without_archspec(run_results: dict[str, Any], key: str) -> None:
    if key not in run_results["results"]:
        pytest.skip(f"emit does not support {key} yet")
    result, expected = run_results["results"][key], run_results["expected"][key]
    assert "error" not in result, result["error"]
    assert result["names"] == expected["names"]  # same state-dict names, same order
    assert result["logits"] <= 1e-6
    assert result["generate"] == expected["generate"]
    if key in COMPILED:
        assert result["compiled"] <= 1e-6  # of the logit scale


def test_emitted_files_import_only_torch_and_stdlib(run_results: dict[str, Any]) -> None:
    for path in sorted(run_results["directory"].glob("*.py")):
        if path.name == "runner.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for module in modules:
                    top = module.split(".")[0]
                    assert top == "torch" or top in sys.stdlib_module_names, f"{path.name}: import {module}"


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    # ruff is in the test extra: next to this interpreter when its environment is not activated
    beside = Path(sys.executable).parent / "ruff"
    ruff = shutil.which("ruff") or (str(beside) if beside.is_file() else None)
    if ruff is None:
        pytest.skip("ruff is not installed")
    pyproject = REPO / "pyproject.toml"
    config = ["--config", str(pyproject)] if pyproject.exists() else ["--line-length", "120"]
    return subprocess.run([ruff, *args, *config, "--no-cache"], capture_output=True, text=True)


def test_emitted_files_pass_ruff(run_results: dict[str, Any]) -> None:
    files = [str(p) for p in sorted(run_results["directory"].glob("*.py")) if p.name != "runner.py"]
    check = _ruff("check", *files)
    assert check.returncode == 0, check.stdout[-4000:]
    fmt = _ruff("format", "--check", "--diff", *files)
    assert fmt.returncode == 0, fmt.stdout[-4000:] + fmt.stderr[-2000:]


# ------------------------------------------------------------------------------ only what the spec uses
def _source(key: str) -> str:
    return emit_source(spec_from_dict(TINY[key]))


def test_llama_file_has_no_alibi_or_layernorm() -> None:
    src = _source("llama3")
    absent_code = ("alibi", "additive_mask", "LayerNorm", "ParallelBlock", "PostNormBlock", "window", "prefix_l")
    for absent in (*absent_code, "class MoE", "RouterLoss", "router", "RelativePositionBias", "InterleavedPairs"):
        assert absent not in src, absent
    for present in ("class RMSNorm", "llama3_scaled_frequencies", "def apply_rotary", "class PreNormBlock"):
        assert present in src
    code = re.sub(r"^from torch\.nn\.attention\.flex_attention import .*$", "", src, flags=re.MULTILINE)
    for leftover in ("emit-if", "emit-when", "flex", "Flex", "fx.Proxy", "_compiled_step", "use_cache"):
        assert leftover not in code, leftover  # torch's mask combinators are imported from flex_attention
    assert not re.search(r"^\s*(from|import) archspec", src, re.MULTILINE)


def test_bloom_file_has_no_rope() -> None:
    src = _source("bloom")
    for absent in ("apply_rotary", "RotaryEmbedding", "rope_frequencies", "class RMSNorm", "dynamic_ntk", "Rope"):
        assert absent not in src, absent
    for absent in ("def causal_attention", "ChunkedWindow", "window"):  # ALiBi never takes the plain causal path
        assert absent not in src, absent
    for present in ("def alibi_slopes", "def alibi_bias", "nn.LayerNorm", "embed_norm=", "class ToeplitzBias"):
        assert present in src, present


def test_qk_norm_and_dynamic_code_only_when_used() -> None:
    assert "q_norm=RMSNorm" in _source("qwen3") and "self.q_norm(q)" in _source("qwen3")
    assert "q_norm" not in _source("mistral")
    assert "dynamic_ntk_theta" in _source("dynamic-ntk")
    assert "dynamic_ntk" not in _source("mistral")


def test_window_and_distance_bias_code_only_when_used() -> None:
    """ChunkedWindow only in files with a sliding window; ToeplitzBias with ALiBi (a compiled window without ALiBi
    takes the mask path in an emitted file: its Toeplitz path is archspec's CPU-compile speed-up); MLA files carry no
    unused standard Attention class."""
    llama, mistral, bloom, mla = _source("llama3"), _source("mistral"), _source("bloom"), _source("mla-no-q-rank")
    for absent in ("class ChunkedWindow", "class ToeplitzBias", "def distance_table", "windows"):
        assert absent not in llama
    for present in ("class ChunkedWindow", "return ChunkedWindow(window)", "windows=(5, 5)", "sliding_window("):
        assert present in mistral, present
    assert "class ToeplitzBias" not in mistral
    assert "class ToeplitzBias" in bloom and "class ChunkedWindow" not in bloom
    assert "class LatentAttention" in mla and "class Attention(" not in mla


def test_moe_and_mla_code_only_when_used() -> None:
    dense, moe, mla = _source("qwen3"), _source("moe-softmax"), _source("mla-no-q-rank")
    for absent in ("class MoE", "grouped_linear", "custom_op", "class LatentAttention", "yarn_mscale", "RouterStats"):
        assert absent not in dense, absent
    assert "class LatentAttention" not in moe and "class LatentAttention" in mla
    for src in (moe, mla):
        assert "class MoE" in src and "class RouterLoss" in src and "register_autograd" in src
        assert "archspec::" not in src and "torch.ops.archspec" not in src  # the ops live in the file's namespace
    assert '@torch.library.custom_op("tiny_moe_ops::grouped_linear"' in moe
    assert "sigmoid_scores" not in moe and "SequenceBalancingLoss" not in moe and "GroupLimit" not in moe
    grouped = _source("mla-moe-sigmoid-groups")
    for present in ("class SequenceBalancingLoss", "def sigmoid_scores", "class GroupLimit", "def best_two_summed"):
        assert present in grouped, present
    assert "TokenBalancingLoss" not in grouped and "def softmax_scores" not in grouped
    assert "[make_dense_block()] + [make_moe_block()]" in grouped
    assert "[make_moe_block()] + [make_dense_block()]" in mla


def test_structure_code_only_when_used() -> None:
    """T5 files carry no RoPE or decoder-only model; GLM code (prefix masks, 2-D positions) and vision code appear
    only in the files that use them."""
    llama, t5, glm_2d, glm_1d = _source("llama3"), _source("t5-v1.0"), _source("glm-2d"), _source("glm-1d")
    vit, external = _source("vlm-vit-pooled"), _source("vlm-external-mla")
    for absent in ("prefix_l", "glm_positions", "BlockRotaryEmbedding", "inputs_embeds", "VisionTower", "DeepNorm"):
        assert absent not in llama
    for absent in ("apply_rotary", "class DecoderLM", "prefix_l", "VisionTower", "grouped_linear", "AttentionPaths"):
        assert absent not in t5, absent
    for present in ("class EncoderDecoderLM", "class RelativePositionBias", "class CrossAttention"):
        assert present in t5
    assert "head_scale=0.14433756729740643" in t5 and "head_scale" not in _source("t5-v1.1")
    for present in ("def prefix(", "or_masks(", "def glm_positions", "class BlockRotaryEmbedding", "DeepNormBlock"):
        assert present in glm_2d, present
    assert "prefix_lm=True" in glm_2d and "alpha=2.0" in glm_2d
    assert "def prefix(" in glm_1d and "glm_positions" not in glm_1d and "BlockRotaryEmbedding" not in glm_1d
    assert f"alpha={(2 * 2) ** 0.25!r}" in glm_1d  # the spec's resolved value
    for src in (vit, external):
        assert "class VisionLanguageLM" in src and "inputs_embeds" in src and "def splice_image_tokens" in src
    assert "class VisionTower" in vit and "def quick_gelu" in vit and "PatchPool(4, 2)" in vit
    assert "class VisionTower" not in external and "vision_tower=None" in external and "pooling=None" in external


@pytest.mark.parametrize(
    ("changes", "path"),
    [({"moe": {"experts": 4, "top_k": 2}}, "moe"), ({"embeddings": {"norm": True}}, "embeddings.norm")],
)
def test_encoder_decoder_options_the_compiler_ignores_are_invalid_specs(changes: dict[str, Any], path: str) -> None:
    """archspec.compiler's T5 wiring reads neither option: the spec rules refuse them, so nothing can emit them."""
    with pytest.raises(SpecError) as error:
        spec_from_dict({**TINY["t5-v1.0"], **changes})
    assert path in [issue.key_path for issue in error.value.issues]


def test_emitted_moe_file_imports_beside_archspec_and_generate_defaults_to_spec_tokens(tmp_path: Path) -> None:
    """In one process with archspec: the file's custom ops do not replace archspec's, and its generate() stops at
    the spec's eos and pads with the spec's pad, as archspec's does, without being told."""
    data = {key: value for key, value in TINY["moe-softmax"].items() if key != "tokens"}
    torch.manual_seed(0)
    model = archspec.build(spec_from_dict(data)).eval()
    ids = torch.randint(0, data["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    prompt = ids[:, :5]
    with torch.no_grad():
        before = model(ids).logits
    free = model.generate(prompt, max_new_tokens=6)
    eos = int(free[0, 6])  # row 0's second new token: with it as eos, row 0 finishes early
    pad = (eos + 1) % data["vocab_size"]
    expected = model.generate(prompt, max_new_tokens=6, eos_token_id=eos, pad_token_id=pad)
    assert expected.tolist() != free.tolist()

    spec = spec_from_dict({**data, "tokens": {"eos": eos, "pad": pad}})
    emitted = import_emitted(spec, tmp_path).Model()
    emitted.load_state_dict(model.state_dict(), strict=True)
    emitted.eval()
    assert emitted.generate(prompt, max_new_tokens=6).tolist() == expected.tolist()
    rebuilt = archspec.build(spec).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.generate(prompt, max_new_tokens=6).tolist() == expected.tolist()

    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # archspec's own op still runs archspec's code
        assert torch.equal(emitted(ids).logits, before)
    assert hasattr(torch.ops.tiny_moe_ops, "grouped_linear") and hasattr(torch.ops.archspec, "grouped_linear")


def header_spec(source: str) -> archspec.Spec:
    """The spec an emitted file's docstring quotes (its YAML block, indented under the first paragraph)."""
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring is not None
    block = docstring.split("do not edit by hand.\n\n", 1)[1].split("\n\nOnly torch", 1)[0]
    text = "\n".join(line.removeprefix("    ") for line in block.split("\n"))
    return spec_from_dict(yaml.load(text, Loader=SpecYamlLoader))


def test_header_yaml_gives_the_spec_back() -> None:
    for data in TINY.values():
        spec = spec_from_dict(data)
        assert header_spec(emit_source(spec)) == spec


def test_deterministic_across_calls_and_hash_seeds() -> None:
    specs = [spec_from_dict(data) for data in TINY.values()]
    first = [emit_source(spec) for spec in specs]
    assert first == [emit_source(spec) for spec in specs]
    code = (
        "import hashlib, json, sys\n"
        "from archspec.emit import emit_source\nfrom archspec.spec import spec_from_dict\n"
        "print(json.dumps([hashlib.sha256(emit_source(spec_from_dict(d)).encode()).hexdigest()"
        " for d in json.loads(sys.stdin.read())]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    process = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(list(TINY.values())), capture_output=True, text=True, env=env
    )
    assert process.returncode == 0, process.stderr[-3000:]
    import hashlib

    assert json.loads(process.stdout) == [hashlib.sha256(text.encode()).hexdigest() for text in first]


# ----------------------------------------------------------------------------------------- safety
@pytest.mark.parametrize("name", ['x"; import os; #', "a b", "-x", "", "a\nb", "x'", "ünï", "a/b", "a;b", "${x}"])
def test_bad_names_are_rejected_by_validation(name: str) -> None:
    with pytest.raises(SpecError):
        spec_from_dict({**TINY["llama3"], "name": name})


def test_names_assigned_after_validation_are_rejected_by_emit() -> None:
    spec = spec_from_dict(TINY["llama3"])
    spec.name = 'x"; import os; #'
    with pytest.raises(ValueError, match="not a valid name"):
        emit_source(spec)


def test_values_assigned_after_validation_are_revalidated() -> None:
    spec = spec_from_dict(TINY["llama3"])
    spec.d_model = "48); import os; ("  # type: ignore[assignment]
    with pytest.raises(SpecError):
        emit_source(spec)


@pytest.mark.parametrize(
    "description",
    [
        '"""',
        "'''",
        '""""',
        "a\nb\r\nc",
        "\\",
        "ends with a backslash \\",
        '\\"',
        "both ' and \" quotes",
        'more "double" than \'single\' " quotes',
        "{{ name }} {% if x %} {# c #}",
        '"""; import os; """',
        "\x00\x07\t\u2028 ünïcödé 🦙",
    ],
)
def test_descriptions_are_quoted_exactly_in_the_header(description: str, tmp_path: Path) -> None:
    spec = spec_from_dict({**TINY["gpt2"], "description": description})
    src = emit_source(spec)
    tree = ast.parse(src)
    assert [type(node).__name__ for node in tree.body[:1]] == ["Expr"]  # one docstring: nothing escaped from it
    assert header_spec(src).description == description
    path = tmp_path / "described.py"
    path.write_text(src)
    fmt = _ruff("format", "--check", "--diff", str(path))
    assert fmt.returncode == 0, fmt.stdout[-3000:]


@pytest.mark.parametrize(
    ("name", "module", "cls"),
    [
        ("llama3-8b", "llama3_8b", "Llama3_8b"),
        ("qwen2.5-7b", "qwen2_5_7b", "Qwen2_5_7b"),
        ("gpt2", "gpt2", "Gpt2"),
        ("7b", "_7b", "Model_7b"),
        ("class", "class_model", "Class"),
        ("match", "match_model", "Match"),
        ("torch", "torch_model", "Torch"),
        ("none", "none", "NoneModel"),
        ("MLP", "MLP", "MLPModel"),
        ("Model", "Model", "ModelModel"),
    ],
)
def test_sanitised_identifiers(name: str, module: str, cls: str) -> None:
    assert (module_name(name), class_name(name)) == (module, cls)


# ------------------------------------------------------------------------------ writing and staleness
def test_write_generated_and_is_stale(tmp_path: Path) -> None:
    spec = spec_from_dict(TINY["mistral"])
    assert is_stale(spec, tmp_path)  # missing
    path = write_generated(spec, tmp_path)
    assert path == generated_path(spec, tmp_path) == tmp_path / "tiny_mistral.py"
    assert path.read_text() == emit_source(spec) and not is_stale(spec, tmp_path)
    path.write_text(path.read_text() + "# edited\n")
    assert is_stale(spec, tmp_path)
    write_generated(spec, tmp_path)
    assert not is_stale(spec, tmp_path)
    changed = spec_from_dict({**TINY["mistral"], "d_model": 60})
    assert is_stale(changed, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_mistral.py"]  # no temporary files left


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_from_dict(TINY["mistral"])
    path = write_generated(spec, tmp_path)
    before = path.read_bytes()

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_generated(spec_from_dict({**TINY["mistral"], "d_model": 60}), tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_mistral.py"]


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_generated_directory_is_current(spec_path: Path) -> None:
    spec = archspec.load_spec(spec_path)
    assert not is_stale(spec, REPO / "generated"), (
        f"{generated_path(spec, REPO / 'generated')} is stale: run `archspec build {spec_path.relative_to(REPO)}`"
    )


def test_generated_directory_has_no_orphans() -> None:
    expected = {generated_path(archspec.load_spec(p), REPO / "generated").name for p in SPECS}  # supported or not
    assert {p.name for p in (REPO / "generated").glob("*.py")} <= expected
