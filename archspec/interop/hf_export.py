"""archspec -> Hugging Face: a `config.json` and safetensors in `transformers`' names, the inverse of `hf.py`.

`save_hf(model, out_dir)` writes what `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads.

Choosing the model type. A spec does not say which `transformers` family it came from, and nothing is guessed
from its name: each family's config is written from the spec and read back with `spec_from_hf`; the first family
whose config reads back as the *same* spec is the one, so a config is only ever written when it is exact. When no
family reproduces the spec, the error names the fields that the closest family has no counterpart for.

Tensor names and fused layouts are not tabulated twice: `hf.archspec_sources` (what loading uses) says where each
archspec tensor comes from, and fused tensors (QKV, GLM's gate_up) are assembled by running its split functions
on a tensor of element indices, which gives every part's position in the fused tensor exactly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from archspec.interop.hf import SUPPORTED_MODEL_TYPES, Source, UnsupportedConfigError, archspec_sources, spec_from_hf
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    DynamicScaling,
    LinearScaling,
    Llama3Scaling,
    RopeSpec,
    Spec,
    YarnScaling,
)

__all__ = ["ExportError", "export_hf", "hf_config", "hf_state_dict", "save_hf"]

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class ExportError(ArchspecError):
    """A spec or model that no `transformers` model type expresses exactly."""


# =================================================================================================== config
def _rope_parameters(spec: Spec, with_fraction: bool = False) -> dict[str, Any]:
    position = spec.position
    assert isinstance(position, RopeSpec)
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": position.theta}
    if with_fraction:
        params["partial_rotary_factor"] = position.fraction
    scaling = position.scaling
    if isinstance(scaling, LinearScaling | DynamicScaling):
        params |= {"rope_type": scaling.kind, "factor": scaling.factor}
    elif isinstance(scaling, Llama3Scaling):
        params |= {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_context,
        }
    elif isinstance(scaling, YarnScaling):
        params |= {
            "rope_type": "yarn",
            "factor": scaling.factor,
            "original_max_position_embeddings": scaling.original_context,
            "beta_fast": scaling.beta_fast,
            "beta_slow": scaling.beta_slow,
            "truncate": scaling.truncate,
        }
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(scaling, key) is not None:
                params[key] = getattr(scaling, key)
    return params


def _needs(condition: bool, field: str) -> None:
    """Early exit for a family that obviously cannot express the spec (the round trip would catch it too)."""
    if not condition:
        raise _NoCounterpart(field)


class _NoCounterpart(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _hf_name(table: dict[str, str], value: str, field: str) -> str:
    if value not in table:
        raise _NoCounterpart(field)
    return table[value]


_GATED_HF = {"swiglu": "silu", "geglu": "gelu", "geglu-tanh": "gelu_pytorch_tanh", "reglu": "relu"}
_PLAIN_HF = {"gelu-tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _tokens(spec: Spec) -> dict[str, Any]:
    return {"bos_token_id": spec.tokens.bos, "eos_token_id": spec.tokens.eos, "pad_token_id": spec.tokens.pad}


def _llama(spec: Spec, model_type: str) -> dict[str, Any]:
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    _needs(spec.mlp.activation in GATED_ACTIVATIONS, "mlp.activation")
    attn = spec.attention
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": attn.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": _GATED_HF[spec.mlp.activation],
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "rope_parameters": _rope_parameters(spec, with_fraction=model_type in ("glm", "glm4")),
    }
    if model_type in ("llama", "qwen3", "glm", "glm4"):
        config["attention_bias"] = attn.bias.q
    if model_type == "llama":
        config["mlp_bias"] = spec.mlp.bias
    if model_type == "mistral":
        config["sliding_window"] = attn.window
    if model_type in ("qwen2", "qwen3"):
        windows = [spec.window_for_layer(i) for i in range(spec.n_layers)]
        sliding = [i for i, w in enumerate(windows) if w is not None]
        config["use_sliding_window"] = bool(sliding)
        config["sliding_window"] = attn.window
        config["max_window_layers"] = sliding[0] if sliding else spec.n_layers
        config["layer_types"] = ["sliding_attention" if w is not None else "full_attention" for w in windows]
    return config


def _gpt2(spec: Spec, model_type: str) -> dict[str, Any]:
    attn = spec.attention
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "n_embd": spec.d_model,
        "n_layer": spec.n_layers,
        "n_head": attn.heads,
        "n_positions": spec.context_length,
        "n_inner": spec.mlp.d_ff,
        "activation_function": _hf_name(_PLAIN_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_epsilon": spec.norm.eps,
        "tie_word_embeddings": spec.embeddings.tied,
        "scale_attn_weights": attn.scale is None,
    }
    return config


def _bloom(spec: Spec, model_type: str) -> dict[str, Any]:
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "n_layer": spec.n_layers,
        "n_head": spec.attention.heads,
        "seq_length": spec.context_length,
        "layer_norm_epsilon": spec.norm.eps,
        "apply_residual_connection_post_layernorm": spec.block.residual_from_norm,
        "tie_word_embeddings": spec.embeddings.tied,
    }


def _falcon(spec: Spec, model_type: str) -> dict[str, Any]:
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    heads, kv_heads, block = spec.attention.heads, spec.kv_heads, spec.block
    old_layout = kv_heads in (1, heads) and not (block.kind == "parallel" and block.parallel_norms == 2)
    config: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "new_decoder_architecture": not old_layout,
        "multi_query": kv_heads == 1,
        "parallel_attn": block.kind == "parallel",
        "num_ln_in_parallel_attn": None if old_layout else block.parallel_norms,
        "bias": spec.attention.bias.q,
        "alibi": False,
        "ffn_hidden_size": spec.mlp.d_ff,
        "activation": _hf_name(_PLAIN_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_epsilon": spec.norm.eps,
        "max_position_embeddings": spec.context_length,
        "rope_parameters": _rope_parameters(spec),
        "tie_word_embeddings": spec.embeddings.tied,
    }
    return config


def _gpt_neox(spec: Spec, model_type: str) -> dict[str, Any]:
    _needs(isinstance(spec.position, RopeSpec), "position.kind")
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.attention.heads,
        "intermediate_size": spec.mlp.d_ff,
        "hidden_act": _hf_name(_PLAIN_HF, spec.mlp.activation, "mlp.activation"),
        "layer_norm_eps": spec.norm.eps,
        "use_parallel_residual": spec.block.kind == "parallel",
        "attention_bias": spec.attention.bias.q,
        "max_position_embeddings": spec.context_length,
        "rope_parameters": _rope_parameters(spec, with_fraction=True),
        "tie_word_embeddings": spec.embeddings.tied,
    }


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "glm": "GlmForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bloom": "BloomForCausalLM",
    "falcon": "FalconForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
}
_WRITERS = {
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
    "qwen3": _llama,
    "glm": _llama,
    "glm4": _llama,
    "gpt2": _gpt2,
    "bloom": _bloom,
    "falcon": _falcon,
    "gpt_neox": _gpt_neox,
}
EXPORTABLE_MODEL_TYPES = tuple(t for t in _WRITERS if t in SUPPORTED_MODEL_TYPES)


def _candidate_config(spec: Spec, model_type: str) -> dict[str, Any]:
    config = {"model_type": model_type, "architectures": [_ARCHITECTURES[model_type]]}
    config |= _WRITERS[model_type](spec, model_type)
    config |= _tokens(spec)
    return config


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): data}


def _differences(spec: Spec, other: Spec) -> list[str]:
    ours, theirs = _flatten(spec.model_dump(mode="json")), _flatten(other.model_dump(mode="json"))
    skip = {"name", "description"}
    return sorted(k for k in ours.keys() | theirs.keys() if k not in skip and ours.get(k) != theirs.get(k))


def hf_config(spec: Spec, model_type: str | None = None) -> dict[str, Any]:
    """The `config.json` of the `transformers` model type that expresses `spec` exactly (or of `model_type`).

    Raises `ExportError` naming the spec fields that have no counterpart when none does.
    """
    candidates = (model_type,) if model_type else EXPORTABLE_MODEL_TYPES
    if model_type is not None and model_type not in _WRITERS:
        raise ExportError(
            f"model_type {model_type!r} cannot be exported; exportable: {', '.join(EXPORTABLE_MODEL_TYPES)}"
        )
    for field, value in (
        ("structure", spec.structure if spec.structure != "decoder" else None),
        ("attention.kind", spec.attention.kind if spec.attention.kind != "mha" else None),
        ("moe", "a mixture of experts" if spec.moe is not None else None),
    ):
        if value is not None:
            raise ExportError(
                f"spec '{spec.name}': {field} = {value!r} has no counterpart in the model types save_hf writes "
                f"({', '.join(EXPORTABLE_MODEL_TYPES)}); encoder-decoder, MLA and MoE export are not written yet"
            )
    misses: list[tuple[int, str, list[str]]] = []
    for candidate in candidates:
        try:
            config = _candidate_config(spec, candidate)
            back = spec_from_hf(config, name=spec.name)
        except _NoCounterpart as miss:  # ranked after families that got as far as the round trip
            misses.append((100, candidate, [miss.field]))
            continue
        except (UnsupportedConfigError, ArchspecError, AttributeError, TypeError, ValueError) as exc:
            misses.append((1000, candidate, [str(exc)]))
            continue
        differences = _differences(spec, back)
        if not differences:
            return config
        misses.append((len(differences), candidate, differences))
    count, closest, fields = min(misses, key=lambda miss: miss[0])
    detail = "; ".join(
        f"{field} = {_value(spec, field)!r}" if field in _flatten(spec.model_dump(mode="json")) else field
        for field in fields
    )
    where = f"model_type {closest!r}" if model_type else f"the closest, {closest!r},"
    raise ExportError(
        f"spec '{spec.name}' has no exact transformers counterpart: {where} has none for {detail}"
        + ("" if model_type else f" (tried {', '.join(candidates)})")
    )


def _value(spec: Spec, field: str) -> Any:
    return _flatten(spec.model_dump(mode="json")).get(field)


# ================================================================================================== weights
def hf_state_dict(model: nn.Module, model_type: str) -> dict[str, torch.Tensor]:
    """The model's tensors under `model_type`'s checkpoint names, fused tensors assembled (the inverse of
    `load_hf_weights`; a tied head is left out, as `transformers` writes it)."""
    spec: Spec = model.spec  # type: ignore[assignment]
    state = model.state_dict()
    keys = [k for k in state if not (spec.embeddings.tied and k == "lm_head.weight")]
    sources = archspec_sources(model_type, spec, keys)
    unplaced = [k for k in keys if k not in sources]
    if unplaced:
        raise ExportError(f"model_type {model_type!r} has no tensor for: {', '.join(unplaced)}")
    tensors: dict[str, torch.Tensor] = {}
    fused: dict[str, list[tuple[Source, torch.Tensor]]] = defaultdict(list)
    for key in keys:
        source, tensor = sources[key], state[key].detach()
        if source.stack:
            for index, name in enumerate(source.stack):
                tensors[name] = tensor[index]
        elif source.split is not None:
            fused[source.name].append((source, tensor))
        else:
            tensors[source.name] = tensor.t() if source.transpose else tensor
    for name, parts in fused.items():
        tensors[name] = _fuse(name, parts)
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def _fuse(name: str, parts: list[tuple[Source, torch.Tensor]]) -> torch.Tensor:
    """Assemble a fused tensor from its parts by running each part's split on the fused tensor's element indices."""
    first_source, first = parts[0]
    transpose = first_source.transpose
    shapes = [tuple(t.t().shape) if transpose else tuple(t.shape) for _, t in parts]
    dim = len(shapes[0]) - 1 if transpose else 0
    fused_shape = list(shapes[0])
    fused_shape[dim] = sum(shape[dim] for shape in shapes)
    numel = int(torch.Size(fused_shape).numel())
    index = torch.arange(numel).reshape(fused_shape)
    flat = torch.empty(numel, dtype=first.dtype, device=first.device)
    covered = torch.zeros(numel, dtype=torch.bool)
    for source, tensor in parts:
        assert source.split is not None
        positions = source.split(index)
        if source.transpose:
            positions = positions.t()
        if positions.shape != tensor.shape:
            raise ExportError(f"{name}: a part of shape {tuple(tensor.shape)} does not fit the fused layout")
        flat[positions.reshape(-1)] = tensor.reshape(-1)
        covered[positions.reshape(-1)] = True
    if not bool(covered.all()):
        raise ExportError(f"{name}: the parts do not cover the fused tensor")
    return flat.reshape(fused_shape)


# ===================================================================================================== files
def save_hf(
    model: nn.Module,
    out_dir: str | Path,
    *,
    model_type: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors` (or shards `model-0000i-of-0000n.safetensors` plus
    `model.safetensors.index.json` above `max_shard_bytes`) that `transformers` loads as this model.

    `model` is a model built by `archspec.build` (plain, not sharded: gather FSDP/TP models first, e.g. with
    `torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)`). Returns out_dir.
    """
    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise ExportError("this model has no .spec: build it with archspec.build(spec)")
    config = hf_config(spec, model_type)
    tensors = hf_state_dict(model, config["model_type"])
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    kinds = {v.dtype for v in tensors.values() if v.is_floating_point()}
    config["dtype"] = str(next(iter(kinds))).removeprefix("torch.") if len(kinds) == 1 else "float32"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _write_safetensors(tensors, out, max_shard_bytes)
    return out


def _write_safetensors(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> None:
    for stale in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    tensors = {k: v.cpu() for k, v in tensors.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    metadata = {"format": "pt"}
    if total <= max_shard_bytes:
        save_file(tensors, out / "model.safetensors", metadata=metadata)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / file, metadata=metadata)
        weight_map |= dict.fromkeys(shard, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def export_hf(
    spec_or_dir: str | Path | Spec, out: str | Path, *, model_type: str | None = None, **options: Any
) -> Path:
    """What `archspec export-hf SPEC|DIR -o OUT` runs.

    - a `Spec` or a spec YAML file: the freshly initialised model of that spec (a starting point for training
      with `transformers`);
    - a directory: one written by `examples/train.py` (`spec.yaml` and DCP checkpoints `step-*/`; the newest is
      exported) or one with `spec.yaml` and `model.safetensors` in archspec's own names.
    """
    from archspec.compiler import build
    from archspec.spec.loader import load_spec

    def checked_build(spec: Spec) -> nn.Module:
        hf_config(spec, model_type)  # refuse before allocating: a spec without counterpart may be 671B parameters
        return build(spec)

    if isinstance(spec_or_dir, Spec):
        return save_hf(checked_build(spec_or_dir), out, model_type=model_type, **options)
    path = Path(spec_or_dir)
    if not path.is_dir():
        return save_hf(checked_build(load_spec(path)), out, model_type=model_type, **options)
    if not (path / "spec.yaml").is_file():
        raise ExportError(f"{path}: no spec.yaml here (expected a directory written by examples/train.py)")
    model = checked_build(load_spec(path / "spec.yaml"))
    steps = sorted((p for p in path.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]))
    if steps:
        import torch.distributed.checkpoint as dcp

        state = {"model": model.state_dict()}
        dcp.load(state, checkpoint_id=str(steps[-1]))
        model.load_state_dict(state["model"])
    elif (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path / "model.safetensors"), strict=not model.spec.embeddings.tied)  # type: ignore[union-attr]
    else:
        raise ExportError(f"{path}: no step-*/ checkpoint and no model.safetensors")
    return save_hf(model, out, model_type=model_type, **options)
