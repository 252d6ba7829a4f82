"""GGUF (llama.cpp's file format) in and out, through the families' Hugging Face mappings.

Import: the GGUF metadata (`general.architecture` and its `<arch>.*` keys) becomes an HF-style config dict that
the family's `spec_from_hf` path turns into the spec, and each GGUF tensor is found under the HF name the family's
key map asks for (`gguf.tensor_mapping` gives llama.cpp's name of every HF name), dequantised by
`gguf.quants.dequantize` and fixed by the family (`GgufMapping.from_gguf`: llama's Q/K row permutation). Loading is
the same strict, shape-checked-first loader as for safetensors (`weights.load_from_reader`), one tensor at a time.

Export: the HF config `save_hf` would write becomes the metadata llama.cpp's converter writes, and the HF tensors
(`hf_export.hf_tensors`, made one at a time) are written under llama.cpp's names, quantised by
`gguf.quants.quantize`. The GGUF parsing, (de)quantisation and writing are the `gguf` package's (llama.cpp's own).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from archspec.interop.convert import spec_of
from archspec.interop.errors import ExportError, UnsupportedConfigError
from archspec.interop.family import Family, GgufMapping
from archspec.interop.registry import FAMILIES, FAMILY_OF, archspec_sources, key_map
from archspec.spec.errors import ArchspecError, WeightLoadError
from archspec.spec.schema import Spec

# `<arch>.<suffix>` metadata every architecture writes the same way (llama.cpp's `TextModel.set_gguf_parameters`),
# as HF config keys. A family's `GgufMapping.config` / `.metadata` add or override its own.
SHARED_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "attention.key_length": "head_dim",  # the converter writes it (and value_length) whenever a config has head_dim
}
TOKEN_KEYS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}
EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0")


def _gguf() -> Any:
    """The `gguf` package, imported on first use (the CLI's other commands start without numpy's import cost)."""
    import gguf

    return gguf


# ================================================================================================== reading
class GgufFile:
    """One GGUF file's metadata and tensors (`gguf.GGUFReader`), every failure a `WeightLoadError` naming it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightLoadError(f"{self.path}: no such GGUF file")
        try:
            self.reader = _gguf().GGUFReader(self.path)
        except Exception as exc:  # the reader raises ValueError, struct/numpy errors, ... on a damaged file
            raise WeightLoadError(f"{self.path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self.tensors = {tensor.name: tensor for tensor in self.reader.tensors}

    def value(self, key: str) -> Any:
        """A metadata value (None if absent): a number, a string or a list."""
        field = self.reader.fields.get(key)
        if field is None:
            return None
        try:
            value = field.contents()
        except Exception as exc:
            raise WeightLoadError(f"{self.path}: metadata {key!r} cannot be read ({exc})") from None
        if isinstance(value, float) and field.types == [_gguf().GGUFValueType.FLOAT32]:
            return float(str(np.float32(value)))  # the shortest decimal of that float32: 1e-06, not 9.99999997e-07
        return value

    @property
    def arch(self) -> str:
        arch = self.value("general.architecture")
        if not isinstance(arch, str):
            raise WeightLoadError(f"{self.path}: no 'general.architecture' (not a llama.cpp model file)")
        return arch

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape in PyTorch order (GGUF stores ggml's reversed order)."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape.tolist()))

    def dequantized(self, name: str) -> np.ndarray:
        """A tensor as float32 (or its own float type), dequantised by `gguf.quants`."""
        gguf = _gguf()
        tensor = self.tensors[name]
        try:
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise WeightLoadError(
                f"{self.path}: tensor {name!r} has type {tensor.tensor_type.name}, which gguf.quants cannot dequantise"
            ) from None
        except Exception as exc:
            raise WeightLoadError(f"{self.path}: tensor {name!r} cannot be read ({exc})") from None
        data = np.asarray(data).reshape(self.shape(name))
        return data.copy() if data.base is not None or not data.flags.writeable else data


def family_of_arch(file: GgufFile) -> tuple[Family, GgufMapping, str]:
    """The family, its GGUF mapping and the model type of a file's `general.architecture`."""
    arch = file.arch
    for family in FAMILIES:
        if family.gguf is not None and arch in family.gguf.archs:
            return family, family.gguf, family.gguf.archs[arch]
    known = sorted(a for f in FAMILIES if f.gguf is not None for a in f.gguf.archs)
    raise UnsupportedConfigError(
        f"{file.path}: general.architecture = {arch!r} cannot be expressed by archspec; supported: {', '.join(known)}"
    )


def gguf_config(file: GgufFile) -> dict[str, Any]:
    """The HF-style config dict of a GGUF file: shared keys, the family's own, and facts the tensors tell."""
    family, mapping, model_type = family_of_arch(file)
    arch = file.arch

    def get(suffix: str) -> Any:
        return file.value(f"{arch}.{suffix}")

    config: dict[str, Any] = {"model_type": model_type}
    for suffix, key in SHARED_KEYS.items():
        if (value := get(suffix)) is not None:
            config[key] = value
    for key, gguf_key in TOKEN_KEYS.items():  # absent: none (not the config class's default id)
        config[key] = file.value(gguf_key)
    if "token_embd.weight" not in file.tensors:
        raise WeightLoadError(f"{file.path}: no token_embd.weight tensor")
    config["vocab_size"] = file.shape("token_embd.weight")[0]
    config["tie_word_embeddings"] = "output.weight" not in file.tensors
    config["rope_parameters"] = _rope_parameters(get, file)
    config |= mapping.config(get, set(file.tensors), model_type)
    if (name := file.value("general.name")) is not None:
        config["_name_or_path"] = name
    return config


def _rope_parameters(get: Callable[[str], Any], file: GgufFile) -> dict[str, Any]:
    """HF `rope_parameters` from `rope.freq_base` and `rope.scaling.*` (llama.cpp writes linear and yarn)."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(get("rope.freq_base") or 10000.0)}
    kind = get("rope.scaling.type")
    if kind in (None, "none"):
        if "rope_freqs.weight" in file.tensors:
            raise UnsupportedConfigError(
                f"{file.path}: a rope_freqs.weight tensor (llama 3 frequency factors) cannot be mapped back to a "
                "rope scaling that archspec expresses"
            )
        return params
    factor = get("rope.scaling.factor")
    if kind == "linear":
        return params | {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        return params | {
            "rope_type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": int(get("rope.scaling.original_context_length")),
        }
    raise UnsupportedConfigError(f"{file.path}: {file.arch}.rope.scaling.type = {kind!r} is not supported")


def spec_from_gguf(path: str | Path, name: str | None = None) -> Spec:
    """The spec of a GGUF file, from its metadata (and which tensors it has: biases, a separate output head)."""
    file = GgufFile(path)
    config = gguf_config(file)
    family = FAMILY_OF[config["model_type"]]  # the arch's family may read it as another's (Mixtral as "llama")
    try:
        spec = spec_of(family, config, config, name=name or _spec_name(file))
    except ArchspecError as exc:
        raise type(exc)(f"{file.path}: {exc}") from None
    return spec.model_copy(update={"description": f"imported from a GGUF file (general.architecture = {file.arch!r})"})


def _spec_name(file: GgufFile) -> str:
    raw = str(file.value("general.name") or file.path.stem)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._")
    return cleaned or f"{file.arch}-import"


# ================================================================================================== loading
class GgufTensors:
    """A `GgufFile`'s tensors under HF names: the reader `weights.load_from_reader` checks and streams from.

    `hf_names` are the names the family's key map asks for; each is looked up under llama.cpp's name for it. GGUF
    tensors no asked-for name maps to are listed under their own names, so the loader reports them as unexpected.
    """

    def __init__(self, file: GgufFile, hf_names: list[str], config: dict[str, Any], base_prefix: str = "") -> None:
        self.file = file
        self.config = config
        _, self.mapping, _ = family_of_arch(file)
        names = _names(file.arch, int(config["num_hidden_layers"]), base_prefix)
        self.to_gguf: dict[str, str] = {}
        self.expert: dict[str, tuple[str, int]] = {}  # a per-expert HF name -> (the stacked GGUF tensor, its index)
        for hf_name in hf_names:
            gguf_name = names(hf_name)
            if gguf_name is not None and gguf_name in file.tensors:
                self.to_gguf[hf_name] = gguf_name
            elif (stacked := _stacked_expert(hf_name)) is not None:
                gguf_name = names(stacked[0])
                if gguf_name is not None and gguf_name in file.tensors:
                    self.expert[hf_name] = (gguf_name, stacked[1])
        mapped = set(self.to_gguf.values()) | {name for name, _ in self.expert.values()}
        self.own = {name: name for name in file.tensors if name not in mapped}
        self.files = dict.fromkeys([*self.to_gguf, *self.expert, *self.own], file.path)
        self._last: tuple[str, torch.Tensor] | None = None  # the last stacked expert tensor, read once for all experts

    def names(self) -> set[str]:
        return set(self.files)

    def check_types(self) -> None:
        """Every tensor type used can be dequantised (one row of each type is tried), before any tensor is loaded:
        a file that fails half-way would leave the model half-loaded."""
        used = {*self.to_gguf.values(), *(name for name, _ in self.expert.values())}
        tried: dict[Any, bool] = {}
        failing = []
        for name in sorted(used):
            tensor = self.file.tensors[name]
            if tensor.tensor_type not in tried:
                row = tensor.data[:1] if tensor.data.ndim > 1 else tensor.data
                try:
                    _gguf().quants.dequantize(row, tensor.tensor_type)
                    tried[tensor.tensor_type] = True
                except Exception:
                    tried[tensor.tensor_type] = False
            if not tried[tensor.tensor_type]:
                failing.append(f"{name} ({tensor.tensor_type.name})")
        if failing:
            raise WeightLoadError(
                f"{self.file.path}: gguf.quants cannot dequantise these tensors' types: {', '.join(failing)}"
            )

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape in HF's layout (the family's fix applied to an empty tensor of the file's shape)."""
        if name in self.expert:
            return self.file.shape(self.expert[name][0])[1:]
        stored = torch.empty(self.file.shape(self.to_gguf.get(name, name)), device="meta")
        return tuple(self.mapping.from_gguf(name, stored, self.config).shape)

    def get(self, name: str) -> torch.Tensor:
        if name in self.expert:
            gguf_name, index = self.expert[name]
            if self._last is None or self._last[0] != gguf_name:
                self._last = None  # release the previous one first: one stacked tensor held at a time
                self._last = (gguf_name, torch.from_numpy(self.file.dequantized(gguf_name)))
            return self._last[1][index]
        tensor = torch.from_numpy(self.file.dequantized(self.to_gguf.get(name, name)))
        return self.mapping.from_gguf(name, tensor, self.config)


_EXPERT = re.compile(r"(?P<module>.+\.experts)\.(?P<index>\d+)\.(?P<part>[^.]+)\.weight")


def _stacked_expert(hf_name: str) -> tuple[str, int] | None:
    """`...experts.{e}.gate_proj.weight` -> (`...experts.gate_proj.weight`, e): llama.cpp stores routed experts
    stacked in one [experts, rows, columns] tensor (`ffn_gate_exps`), under the name of the merged HF tensor."""
    match = _EXPERT.fullmatch(hf_name)
    if match is None:
        return None
    return f"{match['module']}.{match['part']}.weight", int(match["index"])


def _names(arch: str, layers: int, base_prefix: str) -> Callable[[str], str | None]:
    """llama.cpp's name of an HF tensor name (`gguf.tensor_mapping`), tried as it is and without the base model's
    prefix (BLOOM's converter strips `transformer.` before it looks names up)."""
    table = _gguf().get_tensor_name_map(_gguf_arch(arch), layers)

    def name(hf_name: str) -> str | None:
        found = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None and base_prefix and hf_name.startswith(base_prefix):
            found = table.get_name(hf_name.removeprefix(base_prefix), try_suffixes=(".weight", ".bias"))
        return found

    return name


def _gguf_arch(arch: str) -> Any:
    gguf = _gguf()
    for member, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return member
    raise UnsupportedConfigError(f"general.architecture = {arch!r} is not known to the gguf package")


def _hf_names(model_type: str, spec: Spec, keys: list[str]) -> list[str]:
    """Every HF tensor name the family's key map may ask for (each layout of each source), and the head's."""
    names = ["lm_head.weight"]
    for source in archspec_sources(model_type, spec, keys).values():
        while source is not None:
            names.extend(source.stack or (source.name,))
            source = source.alternative
    return names


def load_gguf_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a GGUF file's tensors, dequantised to the model's dtype, into a model built by `archspec.build`.

    Strict as `load_hf_weights`: every model tensor found with the right shape and every GGUF tensor used, all
    checked from the file's tensor index before anything is read; then tensors are dequantised one at a time
    (peak memory: the model plus one tensor), with a progress bar. Works on a meta-device model too.
    """
    from archspec.interop.weights import load_from_reader

    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise WeightLoadError("this model has no .spec: build it with archspec.build(spec)")
    file = GgufFile(path)
    config = gguf_config(file)
    model_type = config["model_type"]
    keys = list(model.state_dict())
    base_prefix = key_map(model_type, spec).base_prefix
    reader = GgufTensors(file, _hf_names(model_type, spec, keys), config, base_prefix)
    reader.check_types()
    return load_from_reader(model, reader, model_type, file.path, progress=True)


# ================================================================================================== writing
def save_gguf(model: nn.Module, path: str | Path, type: str = "f32", tokenizer_dir: str | Path | None = None) -> Path:
    """Write a model built by `archspec.build` as a GGUF file llama.cpp loads, as llama.cpp's converter would.

    `type`: f32, f16, bf16 (matrices; vectors stay f32, as the converter keeps them) or q8_0 (matrices whose rows
    are whole 32-value blocks; others f16). `tokenizer_dir`: a directory with `tokenizer.json` whose vocabulary is
    carried over (None: the file says it has no vocabulary, `tokenizer.ggml.model = "none"`; llama.cpp then runs
    on token ids). Tensors are made, quantised and written one at a time.
    """
    from archspec.interop.hf_export import hf_config, hf_tensors

    gguf = _gguf()
    spec: Spec | None = getattr(model, "spec", None)
    if spec is None:
        raise ExportError("this model has no .spec: build it with archspec.build(spec)")
    if type not in EXPORT_TYPES:
        raise ExportError(f"GGUF type {type!r} cannot be written: use one of {', '.join(EXPORT_TYPES)}")
    config = hf_config(spec)
    model_type, arch, mapping = gguf_arch(spec)
    names = _names(arch, spec.n_layers, key_map(model_type, spec).base_prefix)
    placed: dict[str, tuple[str, Any]] = {}
    for hf_name, lazy in _stack_experts(hf_tensors(model, model_type)).items():
        gguf_name = names(hf_name)
        if gguf_name is None:
            raise ExportError(f"model_type {model_type!r}: llama.cpp has no name for tensor {hf_name!r}")
        placed[gguf_name] = (hf_name, lazy)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(spec.name)
    writer.add_file_type(_FILE_TYPES[type]())
    for suffix, value in metadata(config, mapping, model_type).items():
        _add(writer, f"{arch}.{suffix}", value)
    _add_tokenizer(writer, spec, tokenizer_dir)

    qtypes: dict[str, Any] = {}
    for gguf_name, (hf_name, lazy) in placed.items():
        stored = tuple(mapping.to_gguf(hf_name, torch.empty(lazy.shape, device="meta"), config).shape)
        qtype = _qtype(type, stored)
        qtypes[gguf_name] = qtype
        shape = gguf.quant_shape_to_byte_shape(stored, qtype) if _quantized(qtype) else stored
        itemsize = 1 if _quantized(qtype) else np.dtype(_NUMPY[qtype.name]).itemsize
        writer.add_tensor_info(
            gguf_name,
            shape,
            np.dtype(np.uint8 if _quantized(qtype) else _NUMPY[qtype.name]),
            _prod(shape) * itemsize,
            qtype,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(f"writing {out.name}", total=len(placed))
        for gguf_name, (hf_name, lazy) in placed.items():
            tensor = mapping.to_gguf(hf_name, lazy.make(), config)
            writer.write_tensor_data(_encode(tensor, qtypes[gguf_name]))
            progress.advance(task)
    writer.close()
    return out


def _stack_experts(tensors: dict[str, Any]) -> dict[str, Any]:
    """Per-expert HF tensors stacked into one [experts, ...] tensor under the merged HF name, made when written."""
    from archspec.interop.safetensors_writer import Lazy

    out: dict[str, Any] = {}
    groups: dict[str, list[tuple[int, Any]]] = {}
    for name, lazy in tensors.items():
        stacked = _stacked_expert(name)
        if stacked is None:
            out[name] = lazy
        else:
            groups.setdefault(stacked[0], []).append((stacked[1], lazy))
    for name, parts in groups.items():
        lazies = [lazy for _, lazy in sorted(parts, key=lambda part: part[0])]
        shape = (len(lazies), *lazies[0].shape)
        out[name] = Lazy(shape, lazies[0].dtype, lambda lazies=lazies: torch.stack([lazy.make() for lazy in lazies]))
    return out


def metadata(config: dict[str, Any], mapping: GgufMapping, model_type: str) -> dict[str, Any]:
    """The `<arch>.*` metadata (suffix -> value) of an HF config: shared keys, RoPE, then the family's own."""
    data: dict[str, Any] = {}
    for suffix, key in SHARED_KEYS.items():
        if config.get(key) is not None:
            data[suffix] = config[key]
    data["vocab_size"] = config["vocab_size"]  # llama.cpp reads it before the token list, which may be absent
    if "attention.key_length" in data:
        data["attention.value_length"] = data["attention.key_length"]
    rope = config.get("rope_parameters") or {}
    if "full_attention" in rope:  # per layer type (Gemma 3): the family's metadata writes them
        rope = {}
    if "rope_theta" in rope:
        data["rope.freq_base"] = float(rope["rope_theta"])
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        data |= {"rope.scaling.type": "linear", "rope.scaling.factor": float(rope["factor"])}
    elif kind == "yarn":
        data |= {
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": float(rope["factor"]),
            "rope.scaling.original_context_length": int(rope["original_max_position_embeddings"]),
        }
    elif kind != "default":
        raise ExportError(f"rope_type {kind!r} has no GGUF counterpart that archspec writes")
    return data | mapping.metadata(config, model_type)


_FILE_TYPES: dict[str, Callable[[], int]] = {
    "f32": lambda: _gguf().LlamaFileType.ALL_F32,
    "f16": lambda: _gguf().LlamaFileType.MOSTLY_F16,
    "bf16": lambda: _gguf().LlamaFileType.MOSTLY_BF16,
    "q8_0": lambda: _gguf().LlamaFileType.MOSTLY_Q8_0,
}
_NUMPY = {"F32": np.float32, "F16": np.float16}


def _qtype(type: str, shape: tuple[int, ...]) -> Any:
    """The GGML type of one tensor: vectors f32; matrices the chosen type (q8_0 only for whole blocks, else f16)."""
    q = _gguf().GGMLQuantizationType
    if len(shape) < 2 or type == "f32":
        return q.F32
    if type == "q8_0":
        block, _ = _gguf().GGML_QUANT_SIZES[q.Q8_0]
        return q.Q8_0 if shape[-1] % block == 0 else q.F16
    return {"f16": q.F16, "bf16": q.BF16}[type]


def _quantized(qtype: Any) -> bool:
    return qtype.name not in _NUMPY


def _encode(tensor: torch.Tensor, qtype: Any) -> np.ndarray:
    data = tensor.detach().to(torch.float32).contiguous().numpy()
    if qtype.name in _NUMPY:
        return data.astype(_NUMPY[qtype.name], copy=False)
    return _gguf().quants.quantize(data, qtype)


def _prod(shape: Any) -> int:
    total = 1
    for n in shape:
        total *= int(n)
    return total


def _add(writer: Any, key: str, value: Any) -> None:
    """One metadata key, typed as llama.cpp's converter types it (counts uint32, floats float32, strings)."""
    kinds = _gguf().GGUFValueType
    if isinstance(value, bool):
        writer.add_key_value(key, value, kinds.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, kinds.UINT32)
    elif isinstance(value, float):
        writer.add_key_value(key, value, kinds.FLOAT32)
    elif isinstance(value, str):
        writer.add_key_value(key, value, kinds.STRING)
    elif isinstance(value, list) and all(isinstance(v, bool) for v in value):
        writer.add_key_value(key, value, kinds.ARRAY, kinds.BOOL)
    elif isinstance(value, list):
        writer.add_key_value(key, value, kinds.ARRAY, kinds.INT32)
    else:
        raise ExportError(f"metadata {key!r}: cannot write {value!r}")


def _add_tokenizer(writer: Any, spec: Spec, tokenizer_dir: str | Path | None) -> None:
    """The vocabulary of `tokenizer_dir/tokenizer.json` (a BPE one, as llama.cpp's "gpt2" model), or none."""
    tokens = spec.tokens
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        writer.add_tokenizer_model("none")
    else:
        _add_bpe(writer, Path(tokenizer_dir), spec.vocab_size)
    ids = (
        (writer.add_bos_token_id, tokens.bos),
        (writer.add_eos_token_id, tokens.eos),
        (writer.add_pad_token_id, tokens.pad),
    )
    for setter, value in ids:
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            setter(int(value))


def _add_bpe(writer: Any, directory: Path, vocab_size: int) -> None:
    """tokens, types and merges of a byte-level BPE `tokenizer.json`, padded to the model's rows as the converter
    pads (`[PAD{i}]`, unused)."""
    gguf = _gguf()
    file = directory / "tokenizer.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"{file}: not a tokenizer.json with a BPE vocabulary ({exc})") from None
    if model.get("type") != "BPE" or not _byte_level(data.get("pre_tokenizer")):
        raise ExportError(
            f"{file}: only byte-level BPE vocabularies (GPT-2's kind: a ByteLevel pre-tokenizer) are carried over; "
            "this one is not (SentencePiece-style vocabularies are not mapped yet)"
        )
    added = {entry["id"]: entry["content"] for entry in data.get("added_tokens", [])}
    by_id = {index: token for token, index in vocab.items()} | added
    kinds = gguf.TokenType
    tokens, types = [], []
    for index in range(vocab_size):
        if index in by_id:
            tokens.append(by_id[index])
            types.append(kinds.CONTROL if index in added else kinds.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(kinds.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


def _byte_level(pre_tokenizer: Any) -> bool:
    """Whether a tokenizer.json pre-tokenizer is (or contains) ByteLevel, as llama.cpp's "gpt2" vocabulary needs."""
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_byte_level(inner) for inner in pre_tokenizer.get("pretokenizers", []))


def export_gguf(source: str | Path, out: str | Path, type: str = "f32") -> Path:
    """What `archspec export-gguf SPEC|RUN_DIR|HF_DIR -o FILE.gguf` runs: a spec's fresh model, a training run's
    newest checkpoint or an HF model directory, written by `save_gguf` (the tokenizer carried over from a
    directory's `tokenizer.json`)."""
    from archspec.builder import build
    from archspec.interop.hf import load_hf_weights, spec_from_hf
    from archspec.spec.loader import load_spec

    path = Path(source)
    if not path.exists():
        raise ArchspecError(f"{path}: no such file or directory")
    if type not in EXPORT_TYPES:
        raise ExportError(f"GGUF type {type!r} cannot be written: use one of {', '.join(EXPORT_TYPES)}")
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(type, torch.float32)  # what the file keeps exactly
    if path.is_dir() and (path / "config.json").is_file() and not (path / "spec.yaml").is_file():
        spec = spec_from_hf(path)
        gguf_arch(spec)
        model = load_hf_weights(build(spec, device="meta", dtype=dtype), path)
        return save_gguf(model, out, type, tokenizer_dir=path)
    if path.is_dir():
        import tempfile

        from archspec.interop.hf_export import export_hf

        with tempfile.TemporaryDirectory() as scratch:  # a run directory: read as export-hf reads it
            export_hf(path, scratch, dtype="float32")
            spec = load_spec(path / "spec.yaml")
            model = load_hf_weights(build(spec, device="meta", dtype=dtype), scratch)
            return save_gguf(model, out, type, tokenizer_dir=path)
    spec = load_spec(path)
    gguf_arch(spec)  # refuse before allocating: a spec without a GGUF counterpart may be 671B parameters
    return save_gguf(build(spec, dtype=dtype), out, type)


def gguf_arch(spec: Spec) -> tuple[str, str, GgufMapping]:
    """The transformers model type, GGUF architecture and family mapping a spec is written as (or `ExportError`)."""
    from archspec.interop.hf_export import hf_config

    model_type = hf_config(spec)["model_type"]
    mapping = FAMILY_OF[model_type].gguf
    if mapping is None or model_type not in mapping.export_arch:
        raise ExportError(f"spec '{spec.name}' is a transformers {model_type!r} model, which has no GGUF mapping here")
    return model_type, mapping.export_arch[model_type], mapping
