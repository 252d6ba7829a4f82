"""The parity reference: tiny random `transformers` models with every weight perturbed, compared in float64.

Reference: transformers 5.25.0 (pyproject.toml pins 5.25.x). Both sides run in float64: the
checkpoint is written in float32 (make_reference) and read into float64 by transformers
(`from_pretrained(dtype=torch.float64)`, sdpa attention where the model class supports it, i.e. every family here
but BLOOM, which runs eager; eager experts) and by archspec (`build(spec, dtype=torch.float64)` + `load_hf_weights`),
so both start from the same values. The check is max|Δ| <= 1e-10 * max|expected| (RELATIVE_TOLERANCE): float64
rounding shows as ~1e-15 and a real bug as ~1e-3, whatever the SIMD width of the CPU (float32 at a fixed 1e-5 failed
on AVX-512 machines). RoPE tables are float32 on both sides by design (archspec's and transformers' alike).

Some reference functions round to float32 even in a float64 model, where archspec keeps float64 (its RMSNorm, router
and balance loss compute in float32 *at least*). `lift_float32_roundings` (autouse, conftest.py) patches exactly
these, by the name the transformers module calls them by, and only for calls with a float64 tensor argument (float32
runs are untouched):

- wrapped by `keep_float64` (inside, every float32 that is asked for is float64: `.float()`, `.to(torch.float32)`,
  `.type(torch.float32)` and any `dtype=torch.float32` argument, e.g. of softmax or zeros):
  the RMSNorm of every RMSNorm family (`LlamaRMSNorm.forward` ... `DeepseekV3RMSNorm.forward`; its statistics in
  float32; Gemma's `GemmaRMSNorm`, `Gemma2RMSNorm`, `Gemma3RMSNorm` alike) and `T5LayerNorm.forward` (its variance
  in float32), Cohere's LayerNorms alike; Cohere's and ERNIE 4.5's RoPE (`apply_rotary_pos_emb`: q and k rotated in
  float32); BLOOM's and Gemma 2's eager attention (`BloomAttention.forward`, `modeling_gemma2.eager_attention_forward`:
  softmax in float32); DeepSeek-V2's complex RoPE (`modeling_deepseek_v2.apply_rotary_emb`: q/k rotated in
  complex64); the routers (`MixtralTopKRouter`, `Qwen2MoeTopKRouter`, `Qwen3MoeTopKRouter`: softmax in float32;
  `DeepseekV2TopkRouter`, `DeepseekV3TopkRouter`: float32 inputs and a float32 gate weight); the Switch balance
  loss (`load_balancing_loss_func` of mixtral, qwen2_moe, qwen3_moe and granitemoe: float32 accumulators);
  GLM-4.5's and Granite-MoE's routers (`Glm4MoeTopkRouter` as DeepSeek-V3's, `GraniteMoeTopKRouter`: float32 logits).
- `DeepseekV2RotaryEmbedding.forward`: its torch.polar computes cos/sin with a kernel up to one float32 ulp away from
  Tensor.cos/sin (which every other family's rotary and archspec use); inside, polar(r, angle) is
  r * (angle.cos() + i angle.sin()), so the float32 tables are the same.
- `HunYuanMoEV1Gate.forward` keeps its `wg` weight in float32 in a float64 model and casts its input to it
  (`_float32_weights_widened`): the weight is widened to float64 (exactly) and the softmax kept in float64.
- BLOOM's GELU (`modeling_bloom.bloom_gelu_forward`) uses 0.79788456, sqrt(2/pi) truncated (relative error 1e-9);
  for float64 inputs the same tanh formula is evaluated with math.sqrt(2 / math.pi) (Hendrycks & Gimpel 2016).

Not patched: the cross-entropy. archspec computes it from float32 logits (`logits.float()`), as transformers'
ForCausalLMLoss does (T5's loss keeps float64), so losses are compared at LOSS_RELATIVE_TOLERANCE.

float32 checks stay where float32-specific code matters (archspec's float32 norm statistics, router and RoPE tables
against the reference's own float32 eager path, the model make_reference returns), at FLOAT32_RELATIVE_TOLERANCE of
the values' magnitude.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import transformers
from torch.overrides import TorchFunctionMode

import archspec

RELATIVE_TOLERANCE = 1e-10  # float64, of max|expected|
FLOAT32_RELATIVE_TOLERANCE = 1e-5  # float32 (eager reference), of max|expected|
LOSS_RELATIVE_TOLERANCE = 1e-6  # a cross-entropy computed from float32 logits (see above)


def make_reference(
    config: transformers.PretrainedConfig, directory: Path, seed: int = 0, scale: float = 0.1
) -> transformers.PreTrainedModel:
    """A tiny model from `config` with every parameter re-randomised, saved to `directory`; float32, eager.

    HF initialises biases to 0 and norm weights to 1: left alone, a missing bias or norm weight would go unnoticed.
    `scale`: the standard deviation of matrices and biases (larger: attention patterns weigh more in the logits).
    """
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if (
                param.ndim == 1
                and "norm" in name
                or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "ln_attn.weight", "ln_mlp.weight"))
            ):
                param.copy_(1.0 + 0.2 * noise)
            elif "embed" in name or "wte" in name or "wpe" in name or "word_embeddings.weight" in name:
                param.copy_(noise * 0.3)
            else:
                param.copy_(noise * scale)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's selection bias: zero at init
                buffer.copy_(0.5 * torch.randn(buffer.shape, generator=generator))
    model.save_pretrained(directory)
    return model


class Reference(NamedTuple):
    """One saved tiny checkpoint and transformers' two readings of it."""

    name: str
    directory: Path
    float32: transformers.PreTrainedModel  # the model make_reference saved: float32, eager attention
    float64: transformers.PreTrainedModel  # load_reference: float64, sdpa where supported


def saved_reference(name: str, config: transformers.PretrainedConfig, directory: Path, scale: float = 0.1) -> Reference:
    float32 = make_reference(config, directory, scale=scale)
    return Reference(name, directory, float32, load_reference(directory))


def attention_for(model_class: type) -> str:
    """sdpa where the class supports it (it keeps the input dtype); eager otherwise (BLOOM)."""
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def load_reference(
    directory: Path, model_class: type | None = None, dtype: torch.dtype = torch.float64
) -> transformers.PreTrainedModel:
    """A saved checkpoint read by transformers in `dtype` (sdpa where supported, eager experts)."""
    if model_class is None:
        config = transformers.AutoConfig.from_pretrained(directory)
        model_class = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    model = model_class.from_pretrained(
        directory, attn_implementation=attention_for(model_class), experts_implementation="eager", dtype=dtype
    )
    assert next(model.parameters()).dtype == dtype
    return model.eval()


def archspec_from(directory: Path, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """spec_from_hf + build + load_hf_weights: what a user does with a Hugging Face directory, in `dtype`."""
    spec = archspec.spec_from_hf(directory)
    model = archspec.build(spec, dtype=dtype)
    archspec.load_hf_weights(model, directory)
    return model.eval()


def relative_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| (same shape and dtype required)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    scale = expected.abs().max()
    assert scale > 0
    return ((actual - expected).abs().max() / scale).item()


def assert_matches(expected: torch.Tensor, actual: torch.Tensor, tolerance: float | None = None) -> None:
    """max|actual - expected| <= tolerance * max|expected|; by default RELATIVE_TOLERANCE for float64 values and
    FLOAT32_RELATIVE_TOLERANCE for float32 ones."""
    if tolerance is None:
        assert expected.dtype in (torch.float64, torch.float32), expected.dtype
        tolerance = RELATIVE_TOLERANCE if expected.dtype == torch.float64 else FLOAT32_RELATIVE_TOLERANCE
    difference = relative_difference(expected, actual)
    assert difference <= tolerance, f"max|Δ| / max|expected| = {difference:.3e} > {tolerance:g}"


def assert_logits_match(
    reference: transformers.PreTrainedModel, model: torch.nn.Module, input_ids: torch.Tensor, **kwargs: object
) -> None:
    """The two models' logits on `input_ids` agree (assert_matches; both models in the same dtype)."""
    with torch.no_grad():
        expected = reference(input_ids, **kwargs).logits
        actual = model(input_ids, **kwargs).logits
    assert_matches(expected, actual)


def assert_loss_matches(expected: torch.Tensor, actual: torch.Tensor) -> None:
    """A scalar loss, to LOSS_RELATIVE_TOLERANCE (compared in float64)."""
    expected, actual = expected.double(), actual.double()
    assert abs(actual - expected) <= LOSS_RELATIVE_TOLERANCE * abs(expected), (actual.item(), expected.item())


# ------------------------------------------------------------------------------------ reference patches
def _float64_for_float32(value: object) -> object:
    return torch.float64 if value is torch.float32 else value


class _Float64ForFloat32(TorchFunctionMode):
    """float64 wherever float32 is asked for: `.float()`, `.to(torch.float32)`, `.type(torch.float32)`, and any
    `dtype=torch.float32` argument."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = {key: _float64_for_float32(value) for key, value in (kwargs or {}).items()}
        if func is torch.Tensor.float:
            return args[0].to(torch.float64, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.type):
            args = tuple(_float64_for_float32(arg) for arg in args)
        return func(*args, **kwargs)


class _PolarFromCosSin(TorchFunctionMode):
    """torch.polar(r, angle) as r * (cos(angle) + i sin(angle)), with Tensor.cos and Tensor.sin."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.polar:
            magnitude, angle = args
            return torch.complex(magnitude * angle.cos(), magnitude * angle.sin())
        return func(*args, **(kwargs or {}))


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)


def _under(mode: type[TorchFunctionMode], function: Callable) -> Callable:
    """`function` run under `mode` when one of its arguments is a float64 tensor, unchanged otherwise."""

    @functools.wraps(function)
    def wrapper(*args: object, **kwargs: object) -> object:
        if any(t.dtype == torch.float64 for t in _tensors([*args, *kwargs.values()])):
            with mode():
                return function(*args, **kwargs)
        return function(*args, **kwargs)

    return wrapper


def keep_float64(function: Callable) -> Callable:
    """`function` with float64 wherever it asks for float32, for calls with a float64 tensor argument."""
    return _under(_Float64ForFloat32, function)


def _float32_weights_widened(function: Callable) -> Callable:
    """A module's forward whose float32 parameters (kept so in a float64 model) are widened to float64, exactly,
    on the first call with a float64 argument; float64 wherever it asks for float32 (`keep_float64`)."""
    kept = keep_float64(function)

    @functools.wraps(function)
    def forward(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        if any(t.dtype == torch.float64 for t in _tensors([*args, *kwargs.values()])):
            for param in self.parameters():
                if param.dtype == torch.float32:
                    param.data = param.data.double()
        return kept(self, *args, **kwargs)

    return forward


def _gelu_tanh_for_float64(original: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def gelu(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float64:
            return original(x)
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    return gelu


_RMS_NORMS = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "glm": "Glm",
    "glm4": "Glm4",
    "mixtral": "Mixtral",
    "qwen2_moe": "Qwen2Moe",
    "qwen3_moe": "Qwen3Moe",
    "deepseek_v2": "DeepseekV2",
    "deepseek_v3": "DeepseekV3",
    "glm4_moe": "Glm4Moe",
    "phi3": "Phi3",
    "granite": "Granite",
    "granitemoe": "GraniteMoe",
    "olmo2": "Olmo2",
    "olmo3": "Olmo3",
    "exaone4": "Exaone4",
    "smollm3": "SmolLM3",
    "ernie4_5": "Ernie4_5",
    "hunyuan_v1_dense": "HunYuanDenseV1",
    "hunyuan_v1_moe": "HunYuanMoEV1",
    "minimax_m2": "MiniMaxM2",
    "ernie4_5_moe": "Ernie4_5_Moe",
    "gpt_oss": "GptOss",
}
KEPT_IN_FLOAT64 = [  # (model type, attribute path in transformers.models.<type>.modeling_<type>)
    *((family, f"{prefix}RMSNorm.forward") for family, prefix in _RMS_NORMS.items()),
    ("gemma", "GemmaRMSNorm.forward"),
    ("gemma2", "Gemma2RMSNorm.forward"),
    ("gemma3", "Gemma3RMSNorm.forward"),
    ("gemma2", "eager_attention_forward"),  # Gemma 2 runs eager only: softmax in float32
    ("cohere", "CohereLayerNorm.forward"),
    ("cohere2", "Cohere2LayerNorm.forward"),
    ("cohere", "apply_rotary_pos_emb"),  # q.float(), k.float() rotated
    ("cohere2", "apply_rotary_pos_emb"),
    ("ernie4_5", "apply_rotary_pos_emb"),
    ("ernie4_5_moe", "apply_rotary_pos_emb"),
    ("t5", "T5LayerNorm.forward"),
    ("bloom", "BloomAttention.forward"),
    ("deepseek_v2", "apply_rotary_emb"),
    ("mixtral", "MixtralTopKRouter.forward"),
    ("qwen2_moe", "Qwen2MoeTopKRouter.forward"),
    ("qwen3_moe", "Qwen3MoeTopKRouter.forward"),
    ("deepseek_v2", "DeepseekV2TopkRouter.forward"),
    ("deepseek_v3", "DeepseekV3TopkRouter.forward"),
    ("glm4_moe", "Glm4MoeTopkRouter.forward"),
    ("granitemoe", "GraniteMoeTopKRouter.forward"),
    ("minimax_m2", "MiniMaxM2TopKRouter.forward"),
    ("ernie4_5_moe", "Ernie4_5_MoeTopKRouter.forward"),
    ("mixtral", "load_balancing_loss_func"),
    ("qwen2_moe", "load_balancing_loss_func"),
    ("qwen3_moe", "load_balancing_loss_func"),
    ("granitemoe", "load_balancing_loss_func"),
    ("minimax_m2", "load_balancing_loss_func"),
    ("ernie4_5_moe", "load_balancing_loss_func"),
    ("gpt_oss", "load_balancing_loss_func"),
]


def _patch(monkeypatch: pytest.MonkeyPatch, model_type: str, path: str, wrap: Callable[[Callable], Callable]) -> None:
    owner = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))


def lift_float32_roundings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply the patches of the module docstring (monkeypatch undoes them when the test ends)."""
    for model_type, path in KEPT_IN_FLOAT64:
        _patch(monkeypatch, model_type, path, keep_float64)
    _patch(monkeypatch, "deepseek_v2", "DeepseekV2RotaryEmbedding.forward", functools.partial(_under, _PolarFromCosSin))
    _patch(monkeypatch, "bloom", "bloom_gelu_forward", _gelu_tanh_for_float64)
    _patch(monkeypatch, "hunyuan_v1_moe", "HunYuanMoEV1Gate.forward", _float32_weights_widened)
