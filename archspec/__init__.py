"""archspec: say what a transformer is in YAML, get it as an exact, compile-ready PyTorch module.

The public API (DESIGN.md section 2):

    spec  = archspec.load_spec("specs/llama3.yaml")
    model = archspec.build(spec, device="meta")
    out   = model(input_ids)                      # out.logits
    ids   = model.generate(input_ids, max_new_tokens=20)
    spec  = archspec.spec_from_hf("path/to/hf_dir")
    archspec.load_hf_weights(model, "path/to/hf_dir")
"""

from archspec.compiler import build
from archspec.distributed import enable_activation_checkpointing, parallelize, tp_plan
from archspec.interop.hf import load_hf_weights, spec_from_hf
from archspec.interop.hf_export import save_hf
from archspec.spec import ArchspecError, Spec, SpecError, WeightLoadError, load_spec, spec_from_dict

__all__ = [
    "ArchspecError",
    "Spec",
    "SpecError",
    "WeightLoadError",
    "build",
    "enable_activation_checkpointing",
    "load_hf_weights",
    "load_spec",
    "parallelize",
    "save_hf",
    "spec_from_dict",
    "spec_from_hf",
    "tp_plan",
]
__version__ = "0.1.0"
