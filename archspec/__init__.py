"""archspec: say what a transformer is in YAML, get it as an exact, compile-ready PyTorch module.

The public API (DESIGN.md section 2):

    spec  = archspec.load_spec("specs/llama3.yaml")
    model = archspec.build(spec, device="meta")
    out   = model(input_ids)                      # out.logits
    ids   = model.generate(input_ids, max_new_tokens=20)
    spec  = archspec.spec_from_hf("path/to/hf_dir")
    archspec.load_hf_weights(model, "path/to/hf_dir")
    src   = archspec.emit_source(spec)

The spec layer imports no torch; everything that builds or runs models is imported on first use, so
`archspec check`, `info`, `diff` and `schema` start fast.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from archspec.spec import ArchspecError, Spec, SpecError, WeightLoadError, load_spec, spec_from_dict

_LAZY = {
    "build": "archspec.builder",
    "spec_from_hf": "archspec.interop.hf",
    "load_hf_weights": "archspec.interop.hf",
    "save_hf": "archspec.interop.hf_export",
    "spec_from_gguf": "archspec.interop.gguf",
    "load_gguf_weights": "archspec.interop.gguf",
    "save_gguf": "archspec.interop.gguf",
    "emit_source": "archspec.emit",
    "parallelize": "archspec.distributed",
    "tp_plan": "archspec.distributed",
    "enable_activation_checkpointing": "archspec.distributed",
}

if TYPE_CHECKING:
    from archspec.builder import build
    from archspec.distributed import enable_activation_checkpointing, parallelize, tp_plan
    from archspec.emit import emit_source
    from archspec.interop.gguf import load_gguf_weights, save_gguf, spec_from_gguf
    from archspec.interop.hf import load_hf_weights, spec_from_hf
    from archspec.interop.hf_export import save_hf


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'archspec' has no attribute {name!r}")


__all__ = [
    "ArchspecError",
    "Spec",
    "SpecError",
    "WeightLoadError",
    "build",
    "emit_source",
    "enable_activation_checkpointing",
    "load_gguf_weights",
    "load_hf_weights",
    "load_spec",
    "parallelize",
    "save_gguf",
    "save_hf",
    "spec_from_dict",
    "spec_from_gguf",
    "spec_from_hf",
    "tp_plan",
]
__version__ = "0.1.0"
