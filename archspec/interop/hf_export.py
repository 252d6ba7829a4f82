"""archspec -> Hugging Face: a `config.json` and safetensors in `transformers`' names, the inverse of `hf.py`.

`save_hf(model, out_dir)` writes what `transformers` loads with no missing or unexpected keys:
`AutoModelForCausalLM.from_pretrained(out_dir)` for decoder LMs (dense: llama, mistral, qwen2, qwen3, glm, glm4,
gpt2, bloom, falcon, gpt_neox; MoE: mixtral, qwen2_moe, qwen3_moe; MLA: deepseek_v2, deepseek_v3),
`AutoModelForSeq2SeqLM` for T5 and `AutoModelForImageTextToText` for LLaVA (`auto_class` says which).

Choosing the model type. A spec does not say which `transformers` family it came from, and nothing is guessed
from its name: each family's config is written from the spec (the families' `to_config`, in
`archspec.interop.families`) and read back with `spec_from_hf`; the first family whose config reads back as the
*same* spec is the one, so a config is only ever written when it is exact. When no family reproduces the spec,
the error names the fields that the closest family has no counterpart for.

Tensor names and fused layouts are not tabulated twice: `registry.archspec_sources` (what loading uses) says where
each archspec tensor comes from, and fused tensors (QKV, GLM's gate_up) are assembled by running its split
functions on a tensor of element indices, which gives every part's position in the fused tensor exactly. Routed
experts are written per expert (`experts.{e}.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.{e}.w1.weight`),
the hub layout that `save_pretrained` writes and `from_pretrained` fuses into 5.x's 3-D `gate_up_proj` / `down_proj`.

Memory. The files are streamed (`safetensors_writer.py`): each checkpoint tensor (a fused QKV, a transposed or
dtype-cast copy) is made right before its bytes are written and released after, so writing needs about one tensor
beyond the model; `export_hf` builds the model (or reads a run) directly in the dtype written, so there is never a
float32 copy beside it.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archspec.interop.convert import config_of, differences, flatten, spec_of
from archspec.interop.errors import ExportError, NoCounterpart, UnsupportedConfigError
from archspec.interop.family import SpecKind, spec_kind
from archspec.interop.keys import Source
from archspec.interop.registry import FAMILIES, FAMILY_OF, archspec_sources
from archspec.interop.safetensors_writer import Lazy, write_safetensors
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import Spec

__all__ = [
    "DENSE_MODEL_TYPES",
    "EXPORTABLE_MODEL_TYPES",
    "MLA_MODEL_TYPES",
    "MOE_MODEL_TYPES",
    "ExportError",
    "auto_class",
    "export_dtype",
    "export_hf",
    "hf_config",
    "hf_state_dict",
    "save_hf",
]

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def _of_kind(kind: SpecKind) -> tuple[str, ...]:
    """The model types export tries for a spec of `kind` (each is then checked by reading it back), in order."""
    return tuple(model_type for family in FAMILIES if family.kind == kind for model_type in family.model_types)


EXPORTABLE_MODEL_TYPES = tuple(FAMILY_OF)
DENSE_MODEL_TYPES = _of_kind("dense")
MOE_MODEL_TYPES = _of_kind("moe")
MLA_MODEL_TYPES = _of_kind("mla")


# =================================================================================================== config
def auto_class(model_type: str) -> str:
    """The `transformers` auto class whose `from_pretrained` loads an exported `model_type` directory."""
    family = FAMILY_OF.get(model_type)
    return family.auto_class if family is not None else "AutoModelForCausalLM"


def hf_config(spec: Spec, model_type: str | None = None) -> dict[str, Any]:
    """The `config.json` of the `transformers` model type that expresses `spec` exactly (or of `model_type`).

    Raises `ExportError` naming the spec fields that have no counterpart when none does.
    """
    if model_type is not None and model_type not in FAMILY_OF:
        raise ExportError(
            f"model_type {model_type!r} cannot be exported; exportable: {', '.join(EXPORTABLE_MODEL_TYPES)}"
        )
    if spec.structure == "glm":
        raise ExportError(
            f"spec '{spec.name}': structure = 'glm' (a prefix-bidirectional LM) has no counterpart in the model "
            f"types save_hf writes ({', '.join(EXPORTABLE_MODEL_TYPES)}): transformers' glm/glm4 are causal"
        )
    candidates = (model_type,) if model_type else _of_kind(spec_kind(spec))
    misses: list[tuple[int, str, list[str]]] = []
    for candidate in candidates:
        family = FAMILY_OF[candidate]
        try:
            config = config_of(family, candidate, spec)
            back = spec_of(family, config, config, name=spec.name)
        except NoCounterpart as miss:  # ranked after families that got as far as the round trip
            misses.append((100, candidate, [miss.field]))
            continue
        except (UnsupportedConfigError, ArchspecError, AttributeError, KeyError, TypeError, ValueError) as exc:
            misses.append((1000, candidate, [str(exc)]))
            continue
        found = differences(spec, back)
        if not found:
            return config
        misses.append((len(found), candidate, found))
    _, closest, fields = min(misses, key=lambda miss: miss[0])
    values = flatten(spec.model_dump(mode="json"))
    detail = "; ".join(f"{field} = {values[field]!r}" if field in values else field for field in fields)
    where = f"model_type {closest!r}" if model_type else f"the closest, {closest!r},"
    raise ExportError(
        f"spec '{spec.name}' has no exact transformers counterpart: {where} has none for {detail}"
        + ("" if model_type else f" (tried {', '.join(candidates)})")
    )


# ================================================================================================== weights
def hf_state_dict(model: nn.Module, model_type: str) -> dict[str, torch.Tensor]:
    """The model's tensors under `model_type`'s checkpoint names, fused tensors assembled (the inverse of
    `load_hf_weights`; a tied head is left out, as `transformers` writes it)."""
    return {name: lazy.make() for name, lazy in _hf_tensors(model, model_type).items()}


def hf_tensors(model: nn.Module, model_type: str, dtype: torch.dtype | None = None) -> dict[str, Lazy]:
    """The model's tensors under `model_type`'s checkpoint names, each made only when asked for (`Lazy.make`): what
    `save_hf` writes, and what GGUF export (`archspec.interop.gguf`) renames and quantises."""
    return _hf_tensors(model, model_type, dtype)


def _hf_tensors(model: nn.Module, model_type: str, dtype: torch.dtype | None = None) -> dict[str, Lazy]:
    """`hf_state_dict`'s tensors, not made yet: each in `dtype` (floating-point ones; None: the model's), contiguous."""
    spec: Spec = model.spec  # type: ignore[assignment]
    state = model.state_dict()
    keys = [k for k in state if not (spec.embeddings.tied and k == "lm_head.weight")]
    sources = archspec_sources(model_type, spec, keys)
    unplaced = [k for k in keys if k not in sources]
    if unplaced:
        raise ExportError(f"model_type {model_type!r} has no tensor for: {', '.join(unplaced)}")

    def target(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    tensors: dict[str, Lazy] = {}
    fused: dict[str, list[tuple[Source, torch.Tensor]]] = defaultdict(list)
    for key in keys:
        source, tensor = sources[key], state[key].detach()
        if source.stack:
            for index, name in enumerate(source.stack):
                part = tensor[index]
                tensors[name] = Lazy(tuple(part.shape), target(part), partial(_plain, part, False, target(part)))
        elif source.split is not None:
            fused[source.name].append((source, tensor))
        else:
            tensor = tensor.reshape((1,) * source.leading_ones + tuple(tensor.shape))
            shape = tuple(tensor.mT.shape if source.transpose else tensor.shape)
            make = partial(_plain, tensor, source.transpose, target(tensor))
            tensors[source.name] = Lazy(shape, target(tensor), make)
    for name, parts in fused.items():
        kind = target(parts[0][1])
        tensors[name] = Lazy(_fused_shape(name, parts), kind, partial(_fuse, name, parts, kind))
    return tensors


def _plain(tensor: torch.Tensor, transpose: bool, dtype: torch.dtype) -> torch.Tensor:
    """The tensor (transposed) in `dtype`, contiguous: itself when it already is, else one copy."""
    tensor = tensor.mT if transpose else tensor
    if tensor.dtype == dtype and tensor.is_contiguous():
        return tensor
    made = torch.empty(tensor.shape, dtype=dtype, device=tensor.device)  # one copy, cast and laid out at once
    return made.copy_(tensor)


def _fused_shape(name: str, parts: list[tuple[Source, torch.Tensor]]) -> tuple[int, ...]:
    """The shape of a fused tensor, each part's place checked on the meta device (before anything is written)."""
    first_source, _ = parts[0]
    transpose = first_source.transpose
    shapes = [tuple(t.mT.shape) if transpose else tuple(t.shape) for _, t in parts]
    dim = len(shapes[0]) - 1 if transpose else first_source.fuse_dim
    fused_shape = list(shapes[0])
    fused_shape[dim] = sum(shape[dim] for shape in shapes)
    meta = torch.empty(fused_shape, device="meta")
    for source, tensor in parts:
        assert source.split is not None
        positions = source.split(meta)
        if (positions.mT if source.transpose else positions).shape != tensor.shape:
            raise ExportError(f"{name}: a part of shape {tuple(tensor.shape)} does not fit the fused layout")
    return tuple(fused_shape)


def _fuse(name: str, parts: list[tuple[Source, torch.Tensor]], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Assemble a fused tensor from its parts by running each part's split on the fused tensor's element indices."""
    first_source, first = parts[0]
    fused_shape = list(_fused_shape(name, parts))
    numel = int(torch.Size(fused_shape).numel())
    index = torch.arange(numel, dtype=torch.int32 if numel < 2**31 else torch.int64).reshape(fused_shape)
    flat = torch.empty(numel, dtype=dtype or first.dtype, device=first.device)
    covered = torch.zeros(numel, dtype=torch.bool)
    for source, tensor in parts:
        assert source.split is not None
        positions = source.split(index)
        if source.transpose:
            positions = positions.mT
        if positions.shape != tensor.shape:
            raise ExportError(f"{name}: a part of shape {tuple(tensor.shape)} does not fit the fused layout")
        flat[positions.reshape(-1)] = tensor.reshape(-1).to(flat.dtype)
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
    `torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)`). `dtype` casts the
    floating-point tensors (None: as they are); config.json's "dtype" says what was written. Tensors are made one at
    a time, right before they are written, and released after (a fused QKV, a transposed or cast copy): memory above
    the model's own is about its largest tensor, never a second copy of the model. Returns out_dir.
    """
    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise ExportError("this model has no .spec: build it with archspec.build(spec)")
    config = hf_config(spec, model_type)
    tensors = _hf_tensors(model, config["model_type"], dtype)
    kinds = {v.dtype for v in tensors.values() if v.dtype.is_floating_point}
    config["dtype"] = str(next(iter(kinds))).removeprefix("torch.") if len(kinds) == 1 else "float32"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_safetensors(tensors, out, max_shard_bytes)
    return out


# ====================================================================================================== export
EXPORT_DTYPES = ("float32", "float16", "bfloat16")


def export_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name `export_hf` writes: float32, float16, bfloat16 or an alias (fp32, bf16, half, ...,
    `archspec.analysis.metrics`' names); anything else is an `ExportError` naming them."""
    from archspec.analysis.metrics import DTYPE_ALIASES, AnalysisError, canonical_dtype

    name = str(dtype)
    try:
        canonical = canonical_dtype(name)
    except AnalysisError:
        canonical = None
    if canonical not in EXPORT_DTYPES:
        aliases = ", ".join(alias for alias, target in DTYPE_ALIASES.items() if target in EXPORT_DTYPES)
        raise ExportError(f"dtype {name!r} cannot be exported: use {', '.join(EXPORT_DTYPES)} (or {aliases})")
    return getattr(torch, canonical)


def export_hf(
    spec_or_dir: str | Path | Spec,
    out: str | Path,
    *,
    model_type: str | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> Path:
    """What `archspec export-hf SPEC|DIR -o OUT [--dtype D]` runs.

    - a `Spec` or a spec YAML file: the freshly initialised model of that spec (a starting point for training
      with `transformers`);
    - a directory: one written by `examples/train.py` (`spec.yaml` and DCP checkpoints `step-*/`; the newest is
      exported) or one with `spec.yaml` and `model.safetensors` in archspec's own names.

    `dtype` (a torch dtype or a name: "bfloat16", "bf16", "fp16", ...; None: float32) is the dtype the model is
    built in and written in; there is never a float32 copy next to it. Random weights are `archspec.build(spec,
    dtype=dtype)`'s: the same initialisation (N(0, 0.02) matrices and embeddings, zero biases, unit norms,
    DeepNorm's Xavier init), drawn directly in `dtype`: the same seed gives `build(spec, dtype=dtype)`'s values
    (float32: `build(spec)`'s), not those of a float32 build cast to `dtype`. A run directory is read into an uninitialised model in `dtype`, one checkpoint tensor at a time (DCP
    casts a float32 checkpoint into the model's tensors as it reads them). `save_hf` then writes tensor by tensor:
    peak memory is the checkpoint's size plus about its largest tensor (`benchmarks/export_memory.py`).
    """
    from archspec.builder import build
    from archspec.spec.loader import load_spec

    target = export_dtype(dtype) if dtype is not None else torch.float32

    def checked_build(spec: Spec, device: str | None = None) -> nn.Module:
        hf_config(spec, model_type)  # refuse before allocating: a spec without counterpart may be 671B parameters
        return build(spec, device=device, dtype=target)

    def save(model: nn.Module) -> Path:
        return save_hf(model, out, model_type=model_type, dtype=target, **options)

    if isinstance(spec_or_dir, Spec):
        return save(checked_build(spec_or_dir))
    path = Path(spec_or_dir)
    if not path.is_dir():
        return save(checked_build(load_spec(path)))
    if not (path / "spec.yaml").is_file():
        raise ExportError(f"{path}: no spec.yaml here (expected a directory written by examples/train.py)")
    steps = sorted((p for p in path.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]))
    weights = path / "model.safetensors"
    if not steps and not weights.is_file():
        raise ExportError(f"{path}: no step-*/ checkpoint and no model.safetensors")
    model = _uninitialised(checked_build(load_spec(path / "spec.yaml"), device="meta"))
    if steps:
        import torch.distributed.checkpoint as dcp

        state = {"model": _largest_first(model.state_dict())}
        with warnings.catch_warnings():  # a single-process load is what is meant here: nothing for the user to do
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(steps[-1]))
        model.load_state_dict(state["model"])
    else:
        _load_safetensors(model, weights)
    return save(model)


def _largest_first(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state in the order to read it: an uninitialised tensor's pages take no memory until written, so reading
    the largest first puts the biggest read buffer (a whole float32 tensor) where little of the model is resident."""
    return dict(sorted(state.items(), key=lambda item: -item[1].numel()))


def _uninitialised(model: nn.Module) -> nn.Module:
    """A meta-device model given uninitialised CPU tensors (every one is then read from a checkpoint), the tied head
    tied again and the computed buffers (RoPE frequencies, ALiBi slopes) computed."""
    from archspec.builder import materialize_buffers

    model.to_empty(device="cpu")
    if model.spec.embeddings.tied:  # type: ignore[union-attr]
        model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    materialize_buffers(model, "cpu")  # type: ignore[arg-type]
    return model


def _load_safetensors(model: nn.Module, file: Path) -> None:
    """Fill every tensor of `model` from a safetensors file in archspec's names, one tensor at a time, cast to the
    model's dtype; the names and shapes are checked from the header first."""
    from safetensors import safe_open

    state = model.state_dict()
    tied = model.spec.embeddings.tied  # type: ignore[union-attr]
    with safe_open(str(file), framework="pt") as reader:
        names = set(reader.keys())
        wanted = {k: k for k in state if not (tied and k == "lm_head.weight")}
        if tied and "embed.weight" not in names and "lm_head.weight" in names:
            wanted["embed.weight"] = "lm_head.weight"  # a save that kept the head's name for the shared tensor
        missing = sorted(k for k, name in wanted.items() if name not in names)
        unexpected = sorted(names - set(state))
        wrong = sorted(
            f"{k} {tuple(reader.get_slice(name).get_shape())} (model: {tuple(state[k].shape)})"
            for k, name in wanted.items()
            if name in names and tuple(reader.get_slice(name).get_shape()) != tuple(state[k].shape)
        )
        found = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong}
        problems = [f"{label}: {', '.join(keys)}" for label, keys in found.items() if keys]
        if problems:
            raise ExportError(f"{file} does not fit spec '{model.spec.name}': " + "; ".join(problems))  # type: ignore[union-attr]
        with torch.no_grad():
            for key in _largest_first({k: state[k] for k in wanted}):
                state[key].copy_(reader.get_tensor(wanted[key]))
