"""Peak memory of `load_hf_weights` on a sharded checkpoint of more than 1 GB (issue 9: streaming shard by shard).

Writes a synthetic llama-style checkpoint with `save_hf` (float32, ~1.3 GB, 256 MB shards), then, in a fresh
process, builds the model on the meta device and loads it, and reports the peak resident memory above the
process's baseline next to the model's size and the largest shard, for a model built on the meta device
(tensors assigned) and one built on the CPU (tensors copied in). Run: python benchmarks/load_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

SPEC = {
    "name": "load-memory",
    "vocab_size": 32000,
    "d_model": 2048,
    "n_layers": 6,
    "context_length": 2048,
    "attention": {"heads": 16, "kv_heads": 4},
    "position": "rope",
    "norm": "rmsnorm",
    "mlp": {"activation": "swiglu", "d_ff": 5632},
}
SHARD_BYTES = 256 * 2**20
RESULTS = Path(__file__).parent / "results" / "load_memory.json"


def write_checkpoint(directory: str) -> None:
    import archspec

    model = archspec.build(archspec.spec_from_dict(SPEC))
    archspec.save_hf(model, directory, max_shard_bytes=SHARD_BYTES)
    print(json.dumps({"model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))


def _child(*args: str) -> dict:
    """Each step in its own process, started from this small one: Linux carries ru_maxrss across exec, so a
    parent that had held the model would set the child's peak."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(directory: str, device: str) -> None:
    """In a fresh process: peak RSS growth while building (on `device`) and loading, with every weight read once
    afterwards (safetensors maps files lazily: untouched pages would not count)."""
    import torch  # (imported before the baseline so torch's own memory is not counted)

    import archspec

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = archspec.build(archspec.spec_from_dict(SPEC), device=device)
    archspec.load_hf_weights(model, directory)
    with torch.no_grad():
        total = sum(float(p.detach().sum()) for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_growth_bytes": (peak - baseline) * 1024, "checksum": total}))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        model_bytes = _child("--write", tmp)["model_bytes"]
        shards = sorted(directory.glob("*.safetensors"))
        largest = max(path.stat().st_size for path in shards)
        growth = {device: _child("--measure", tmp, device)["peak_growth_bytes"] for device in ("meta", "cpu")}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_bytes": model_bytes,
        "shards": len(shards),
        "largest_shard_bytes": largest,
        **{
            f"built_on_{device}": {
                "peak_growth_bytes": value,
                "peak_above_model_bytes": value - model_bytes,
                "peak_above_model_in_shards": round((value - model_bytes) / largest, 2),
            }
            for device, value in growth.items()
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*history, result], indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--write"]:
        write_checkpoint(sys.argv[2])
    else:
        main()
