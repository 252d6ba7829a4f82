"""Analysis of specs without building them: exact parameters, FLOPs per token, KV-cache bytes, and diffs.

    from archspec.analysis import analyse, diff_specs
    a = analyse(spec, context=8192, batch=1, dtype="bfloat16")
    a.params.total, a.params.active, a.flops.forward_per_token, a.kv.bytes_per_token
    plan = plan_memory(spec, batch=1, seq=8192, fsdp=8, checkpointing="full")   # memory per device, bounds

See `archspec.analysis.metrics` for the exact conventions (what a FLOP counts, what "active" means).
"""

from archspec.analysis.diff import ABSENT, FieldDiff, Figure, SpecDiff, diff_specs, differing_fields, flatten
from archspec.analysis.metrics import (
    DTYPE_BYTES,
    Analysis,
    AnalysisError,
    FlopCounts,
    KVCacheFigures,
    LayerParams,
    ParamCounts,
    analyse,
    canonical_dtype,
    dtype_bytes,
    flop_counts,
    kv_cache,
    param_counts,
)
from archspec.analysis.planner import DEVICES, Device, Memory, MemoryPlan, Setup, plan_memory

__all__ = [
    "ABSENT",
    "DEVICES",
    "DTYPE_BYTES",
    "Analysis",
    "AnalysisError",
    "Device",
    "FieldDiff",
    "Figure",
    "FlopCounts",
    "KVCacheFigures",
    "LayerParams",
    "Memory",
    "MemoryPlan",
    "ParamCounts",
    "Setup",
    "SpecDiff",
    "analyse",
    "canonical_dtype",
    "diff_specs",
    "differing_fields",
    "dtype_bytes",
    "flatten",
    "flop_counts",
    "kv_cache",
    "param_counts",
    "plan_memory",
]
