"""Build tiny random `transformers` reference models, perturb every weight, save them, and compare logits.

The reference is transformers (5.x; written against 5.23.0) run with eager attention in float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

import archspec


def make_reference(
    config: transformers.PretrainedConfig, directory: Path, seed: int = 0
) -> transformers.PreTrainedModel:
    """A tiny model from `config` with every parameter re-randomised, saved to `directory`.

    HF initialises biases to 0 and norm weights to 1: left alone, a missing bias or norm weight would go unnoticed.
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
                param.copy_(noise * 0.1)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's selection bias: zero at init
                buffer.copy_(0.5 * torch.randn(buffer.shape, generator=generator))
    model.save_pretrained(directory)
    return model


def archspec_from(directory: Path) -> torch.nn.Module:
    """spec_from_hf + build + load_hf_weights: what a user does with a Hugging Face directory."""
    spec = archspec.spec_from_hf(directory)
    model = archspec.build(spec)
    archspec.load_hf_weights(model, directory)
    return model.eval()


def max_logit_diff(reference: transformers.PreTrainedModel, model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    with torch.no_grad():
        expected = reference(input_ids).logits
        actual = model(input_ids).logits
    return (expected - actual).abs().max().item()
