"""save_hf is the inverse of the import: transformers (5.25.0) loads what archspec writes, with no missing or
unexpected keys, and reproduces archspec's logits: in float64 within 1e-10 of max|logit| (sdpa attention where the
class has it, eager experts, the reference's float32 roundings lifted as hf_reference describes), and in float32
(the round trips, against transformers' eager path) within 1e-5 of max|logit|.

Two directions: tiny versions of every spec in specs/ that has a transformers counterpart (random archspec
weights, every tensor and DeepSeek-V3's correction bias perturbed), and every tiny transformers config of the
parity suites (dense, MoE/MLA, T5, LLaVA) round-tripped HF -> archspec -> HF (the written tensors equal the
original checkpoint's). Specs without a counterpart fail with an error naming the field.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from hf_reference import archspec_from, assert_matches, attention_for, make_reference
from safetensors.torch import load_file
from test_hf_parity import CONFIGS
from test_llava_parity import CONFIGS as LLAVA_CONFIGS
from test_llava_parity import perturb as perturb_llava
from test_moe_parity import CONFIGS as MOE_CONFIGS
from test_t5_parity import CONFIGS as T5_CONFIGS
from test_t5_parity import make_t5_reference
from tiny import shrink, spec_files

import archspec
from archspec.interop.hf_export import ExportError, auto_class, export_hf, hf_config


def tiny_specs() -> dict[str, archspec.Spec]:
    """One tiny spec per distinct architecture in specs/."""
    specs: dict[str, archspec.Spec] = {}
    signatures: set[str] = set()
    for path in spec_files():
        tiny = shrink(archspec.load_spec(path))
        signature = tiny.model_copy(update={"name": "x", "description": ""}).model_dump_json()
        if signature not in signatures:
            signatures.add(signature)
            specs[path.stem] = tiny
    return specs


def _with_mlp_width(spec: archspec.Spec, d_ff: int) -> archspec.Spec:
    return spec.model_copy(update={"mlp": spec.mlp.model_copy(update={"d_ff": d_ff})})


TINY = tiny_specs()
# BLOOM's MLP width is always 4 d_model in transformers, and Mixtral's, Granite-MoE's, Hunyuan-MoE's, MiniMax's and
# gpt-oss's experts are intermediate_size wide: their tiny specs must say so to have a counterpart (shrink gives every MLP 96 and every
# expert 24)
TINY["bloom-176b"] = _with_mlp_width(TINY["bloom-176b"], 256)
_EXPERTS_ARE_THE_MLP = ("mixtral-8x7b", "mixtral-8x22b", "granite-3.1-3b-a800m", "hunyuan-a13b", "minimax-m2")
for _name in (*_EXPERTS_ARE_THE_MLP, "gpt-oss-20b", "gpt-oss-120b"):
    if _name in TINY:
        TINY[_name] = _with_mlp_width(TINY[_name], TINY[_name].moe.d_ff)
NO_COUNTERPART = {
    "gpt": "block.kind = 'post-norm'",  # post-norm GPT-1 has no transformers causal-LM class with these names
    "chatglm-6b": "structure = 'glm'",  # prefix-bidirectional attention: transformers' glm/glm4 are causal
    "glm-130b": "structure = 'glm'",  # the same, with DeepNorm blocks
    "deepseek-moe-16b": "moe.shared_experts",  # ungated shared experts with MHA (remote code only)
    "vlm-pooled-example": "vision.tower.kind = 'external'",
}
EXPORTABLE = sorted(set(TINY) - set(NO_COUNTERPART))


def perturbed(spec: archspec.Spec, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """archspec initialises biases to 0 and norms to 1; perturb everything so a dropped tensor shows. The values are
    float32 ones in a `dtype` model (transformers keeps DeepSeek's gate weight in float32 whatever the dtype)."""
    torch.manual_seed(seed)
    model = archspec.build(spec)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        for name, buffer in model.named_buffers():
            if name.endswith("correction_bias"):  # DeepSeek-V3's selection bias: zero at init
                buffer.copy_(0.5 * torch.randn_like(buffer))
    if dtype != torch.float32:
        widened = archspec.build(spec, dtype=dtype)
        widened.load_state_dict(model.state_dict())
        model = widened
    return model.eval()


def load_transformers(directory, dtype: torch.dtype = torch.float64) -> T.PreTrainedModel:
    """The exported directory through the auto class of its model type, with nothing missing or unexpected: in
    float64 with sdpa where the class has it, in float32 with eager attention (as hf_reference's references)."""
    config = T.AutoConfig.from_pretrained(directory)
    model_class = getattr(T, auto_class(config.model_type))._model_mapping[type(config)]
    attention = attention_for(model_class) if dtype == torch.float64 else "eager"
    model, info = model_class.from_pretrained(
        directory, attn_implementation=attention, experts_implementation="eager", dtype=dtype, output_loading_info=True
    )
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    return model.eval()


def assert_reproduces(model: torch.nn.Module, hf_model: T.PreTrainedModel, spec: archspec.Spec) -> None:
    """The same logits (hf_reference.assert_matches) on random ids: with decoder inputs for T5, with two images
    for LLaVA."""
    dtype = next(model.parameters()).dtype
    assert next(hf_model.parameters()).dtype == dtype
    generator = torch.Generator().manual_seed(3)
    vocab = spec.vocab_size
    ids = torch.randint(0, vocab, (2, 11), generator=generator)
    with torch.no_grad():
        if spec.structure == "encoder-decoder":
            target = torch.randint(0, vocab, (2, 9), generator=generator)
            ours, theirs = model(ids, decoder_input_ids=target), hf_model(input_ids=ids, decoder_input_ids=target)
        elif spec.vision is not None:
            n, tower = spec.vision.tokens_per_image, spec.vision.tower
            ids = torch.randint(0, min(vocab, spec.vision.image_token), (2, n + 7), generator=generator)
            ids[:, 2 : 2 + n] = spec.vision.image_token
            pixels = torch.randn(
                2, tower.channels, tower.image_size, tower.image_size, generator=generator, dtype=dtype
            )
            ours, theirs = model(ids, pixel_values=pixels), hf_model(input_ids=ids, pixel_values=pixels)
        else:
            ours, theirs = model(ids), hf_model(ids)
    assert_matches(theirs.logits, ours.logits)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_transformers_reproduces_an_exported_spec(name, tmp_path):
    spec = TINY[name]
    model = perturbed(spec)
    archspec.save_hf(model, tmp_path)
    assert_reproduces(model, load_transformers(tmp_path), spec)


def _reference(name: str, directory) -> T.PreTrainedModel:
    """A saved tiny transformers model of one of the parity suites' configs, every weight perturbed."""
    suite, key = name.split(":", 1)
    if suite == "t5":
        config, untie = T5_CONFIGS[key]
        return make_t5_reference(config, directory, untie)
    if suite == "llava":
        torch.manual_seed(0)
        model = T.LlavaForConditionalGeneration._from_config(LLAVA_CONFIGS[key], attn_implementation="eager").eval()
        perturb_llava(model, seed=0)
        model.save_pretrained(directory)
        return model
    return make_reference((MOE_CONFIGS if suite == "moe" else CONFIGS)[key], directory)


def _model_type(name: str) -> str:
    suite, key = name.split(":", 1)
    return suite if suite in ("t5", "llava") else (MOE_CONFIGS if suite == "moe" else CONFIGS)[key].model_type


def _one_per_model_type() -> list:
    """Every config of the parity suites runs; the first of each model type by default, the others under -m slow."""
    names = [f"dense:{k}" for k in CONFIGS] + [f"moe:{k}" for k in MOE_CONFIGS]
    names += [f"t5:{k}" for k in T5_CONFIGS] + [f"llava:{k}" for k in LLAVA_CONFIGS]
    seen: set[str] = set()
    params = []
    for name in sorted(names, key=lambda n: n.split(":", 1)[1]):
        model_type = _model_type(name)
        params.append(name if model_type not in seen else pytest.param(name, marks=pytest.mark.slow))
        seen.add(model_type)
    return params


@pytest.mark.parametrize("name", _one_per_model_type())
def test_hf_archspec_hf_round_trip_is_exact(name, tmp_path):
    """In float32 (the checkpoint's dtype): the written tensors equal the original's, and transformers' eager
    float32 path reproduces archspec's logits; then both read the export in float64."""
    original = _reference(name, tmp_path / "original")
    model = archspec_from(tmp_path / "original", torch.float32)
    archspec.save_hf(model, tmp_path / "exported")
    exported = load_transformers(tmp_path / "exported", torch.float32)
    assert exported.config.model_type == original.config.model_type
    assert archspec.spec_from_hf(tmp_path / "exported", name=model.spec.name) == model.spec
    assert_reproduces(model, exported, model.spec)
    theirs, ours = original.state_dict(), exported.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(theirs[k].dtype == ours[k].dtype and torch.equal(theirs[k], ours[k]) for k in theirs)
    assert_reproduces(archspec_from(tmp_path / "exported"), load_transformers(tmp_path / "exported"), model.spec)


def test_moe_experts_are_written_per_expert_as_the_hub_does(tmp_path):
    """save_pretrained's layout (per-expert tensors; Mixtral's block_sparse_moe.experts.{e}.w1/w2/w3), which
    from_pretrained fuses into transformers 5.x's 3-D gate_up_proj / down_proj."""
    for name, expert in (
        ("mixtral-8x7b", "block_sparse_moe.experts.7.w3.weight"),
        ("qwen3-30b-a3b", "mlp.experts.7.up_proj.weight"),
    ):
        archspec.save_hf(perturbed(TINY[name]), tmp_path / name)
        tensors = load_file(tmp_path / name / "model.safetensors")
        spec = TINY[name]
        assert tensors[f"model.layers.1.{expert}"].shape == (spec.moe.d_ff, spec.d_model)
        assert not any("gate_up_proj" in key for key in tensors)


def test_large_models_are_sharded_with_an_index(tmp_path):
    spec = TINY["llama3-70b"]
    model = perturbed(spec)
    archspec.save_hf(model, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (tmp_path / "model.safetensors").exists()
    assert sum(len(load_file(tmp_path / f)) for f in files) == len(index["weight_map"])
    assert_reproduces(model, load_transformers(tmp_path), spec)
    reloaded = archspec.build(spec, dtype=torch.float64)
    archspec.load_hf_weights(reloaded, tmp_path)
    assert_reproduces(reloaded.eval(), load_transformers(tmp_path), spec)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(("name", "field"), sorted(NO_COUNTERPART.items()))
def test_spec_without_counterpart_names_the_field(name, field):
    spec = TINY.get(name) or shrink(archspec.load_spec(spec_files()[0].parent / f"{name}.yaml"))
    with pytest.raises(ExportError, match=_escaped(field)):
        hf_config(spec)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def _changed(name: str, **updates: dict) -> archspec.Spec:
    """TINY[name] with some sections updated (e.g. block={"kind": "deepnorm"})."""
    data = TINY[name].model_dump(mode="json")
    for section, values in updates.items():
        if isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return archspec.spec_from_dict(data)


def _router(name: str, **values) -> dict:
    moe = TINY[name].model_dump(mode="json")["moe"]
    moe["router"].update(values)
    return moe


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param(
            lambda: _changed("llama3-70b", block={"kind": "deepnorm"}), "block.kind = 'deepnorm'", id="deepnorm"
        ),
        pytest.param(
            lambda: _changed("llama3-70b", block={"kind": "sandwich"}),
            "block.kind = 'sandwich'",
            id="sandwich-half-rope",
        ),
        pytest.param(
            lambda: _changed("t5-base", attention={"scale": None}), "attention.scale", id="t5-scaled-attention"
        ),
        pytest.param(  # BLOOM's ALiBi is float32, Falcon-RW's bfloat16 is also divided by sqrt(head_dim)
            lambda: _changed("bloom-176b", position={"precision": "bfloat16"}),
            "position.precision = 'bfloat16'",
            id="unscaled-bfloat16-alibi",
        ),
        pytest.param(
            lambda: _changed("llama3-70b", attention={"inverse_layer_scale": True}),
            "attention.inverse_layer_scale = True",
            id="llama-inverse-layer-scale",
        ),
        pytest.param(
            lambda: _changed("t5-base", embeddings={"scale_head": False}), "embeddings.", id="t5-tied-unscaled"
        ),
        pytest.param(lambda: _changed("t5-base", mlp={"activation": "geglu"}), "mlp.activation", id="t5-exact-geglu"),
        pytest.param(
            lambda: _changed("mixtral-8x7b", moe=_router("mixtral-8x7b", z_loss_coef=0.01)),
            "moe.router.z_loss_coef",
            id="z-loss",
        ),
        pytest.param(
            lambda: _changed("qwen3-30b-a3b", moe=_router("qwen3-30b-a3b", jitter=0.1)),
            "moe.router.jitter",
            id="qwen-jitter",
        ),
        pytest.param(
            lambda: _changed("deepseek-v2-lite", position={"pairing": "half"}),
            "position.pairing = 'half'",
            id="v2-half-rope",
        ),
        pytest.param(
            lambda: _changed(
                "deepseek-v2-lite", moe={**TINY["deepseek-v2-lite"].moe.model_dump(), "shared_experts": 0}
            ),
            "moe.shared_experts = 0",
            id="mla-without-shared-expert",
        ),
        pytest.param(
            lambda: _changed("deepseek-v3", attention={"latent_norm_eps": 1e-5}),
            "attention.latent_norm_eps",
            id="mla-latent-eps",
        ),
        pytest.param(
            lambda: _changed(
                "llava-1.5-7b", vision={"pooling": {"kind": "average", "tokens": 4}, "tokens_per_image": 4}
            ),
            "vision.pooling",
            id="llava-pooling",
        ),
    ],
)
def test_options_without_counterpart_name_the_field(spec, field):
    with pytest.raises(ExportError, match=_escaped(field)):
        hf_config(spec())


def test_bloom_needs_its_fixed_mlp_width():
    spec = _with_mlp_width(TINY["bloom-176b"], 96)
    with pytest.raises(ExportError, match=r"'bloom', has none for mlp\.d_ff = 96"):
        hf_config(spec)


def test_forcing_a_model_type_that_cannot_express_the_spec_names_the_fields():
    with pytest.raises(ExportError, match=r"model_type 'llama' has none for .*attention\.bias\.o"):
        hf_config(TINY["qwen2.5-7b"], model_type="llama")
    with pytest.raises(ExportError, match=r"model_type 'qwen2_moe' has none for .*moe\.shared_experts"):
        hf_config(TINY["qwen3-30b-a3b"], model_type="qwen2_moe")


def test_deepseek_balance_loss_travels_in_deepseeks_own_keys():
    """transformers computes no DeepSeek aux loss; the coefficient and kind are kept as aux_loss_alpha / seq_aux
    (the keys of DeepSeek's config.json), so the spec reads back exactly."""
    spec = TINY["deepseek-v3"]
    config = hf_config(spec)
    assert (config["aux_loss_alpha"], config["seq_aux"]) == (spec.moe.router.aux_loss_coef, True)
    back = archspec.spec_from_hf(config, name=spec.name)
    assert back == spec.model_copy(update={"description": back.description})


def test_export_hf_from_a_spec_file(tmp_path):
    out = export_hf(_write_tiny_yaml(tmp_path, "gpt2"), tmp_path / "out")
    assert load_transformers(out).config.model_type == "gpt2"


def test_export_hf_of_an_encoder_decoder_spec_file(tmp_path):
    out = export_hf(_write_tiny_yaml(tmp_path, "flan-t5-xl"), tmp_path / "out")
    assert isinstance(load_transformers(out), T.T5ForConditionalGeneration)


def _write_tiny_yaml(tmp_path, name: str):
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(TINY[name].model_dump(mode="json"), sort_keys=False))
    return path
