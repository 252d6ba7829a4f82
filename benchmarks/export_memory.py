"""Peak memory of `archspec export-hf` on a 1.1B-parameter spec: it must stay within 1.3x the checkpoint it writes.

Runs the real command (`python -m archspec export-hf`) in a child process per case and reads that child's peak
resident memory (`os.wait4`'s rusage: ru_maxrss of that process alone), next to the bytes of the safetensors files
it wrote:

- `random`: `benchmarks/export-1b.yaml` (llama-style, TinyLlama-1.1B's shape), random init, in bfloat16 and float32;
- `run`: a run directory as examples/train.py writes it (spec.yaml + a DCP checkpoint `step-1/` of the float32
  model; written by another child first, without the optimizer state, which export never reads), exported in
  bfloat16: the checkpoint is read into a bfloat16 model.

`baseline` is the same command on a tiny spec: the process's floor (Python, torch, archspec). The parent imports
no torch, so it passes no memory on to its children (Linux keeps ru_maxrss across fork and exec).
Run: python benchmarks/export_memory.py (about 2 minutes and 5 GB of memory on 2 cores).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SPEC = HERE / "export-1b.yaml"
TINY = {
    "name": "export-memory-tiny",
    "vocab_size": 256,
    "d_model": 64,
    "n_layers": 2,
    "context_length": 64,
    "attention": {"heads": 4},
    "position": "rope",
    "norm": "rmsnorm",
    "mlp": {"activation": "swiglu", "d_ff": 128},
}
RESULTS = HERE / "results" / "export_memory.json"
LIMIT = 1.3  # the bound: peak RSS <= 1.3x the checkpoint written


def _peak_of(command: list[str]) -> tuple[int, float]:
    """Run `command`; its peak RSS in bytes (that child alone) and its wall time."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{output}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def _export(source: Path, out: Path, dtype: str) -> list[str]:
    return [sys.executable, "-m", "archspec", "export-hf", str(source), "-o", str(out), "--dtype", dtype]


def _checkpoint_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def make_run(directory: str) -> None:
    """In a child: a float32 run directory of SPEC (what examples/train.py writes with its default --dtype)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    import yaml

    import archspec

    spec = archspec.load_spec(SPEC)
    torch.manual_seed(0)
    model = archspec.build(spec)
    run = Path(directory)
    run.mkdir(parents=True, exist_ok=True)
    (run / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(run / "step-1"), no_dist=True)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"parameters": params}))


def _case(name: str, dtype: str, command: list[str], out: Path, baseline: int) -> dict[str, Any]:
    peak, wall = _peak_of(command)
    checkpoint = _checkpoint_bytes(out)
    written = json.loads((out / "config.json").read_text())["dtype"]
    assert written == dtype, (written, dtype)
    result = {
        "case": name,
        "dtype": dtype,
        "checkpoint_bytes": checkpoint,
        "peak_rss_bytes": peak,
        "peak_over_checkpoint": round(peak / checkpoint, 3),
        "peak_above_baseline_over_checkpoint": round((peak - baseline) / checkpoint, 3),
        "within_limit": peak <= LIMIT * checkpoint,
        "wall_s": round(wall, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tiny.yaml").write_text(json.dumps(TINY))  # JSON is YAML
        baseline, _ = _peak_of(_export(root / "tiny.yaml", root / "tiny-out", "bfloat16"))
        cases = []
        for dtype in ("bfloat16", "float32"):
            out = root / f"random-{dtype}"
            cases.append(_case("random", dtype, _export(SPEC, out, dtype), out, baseline))
            for path in out.iterdir():  # keep the disk (and the page cache) small
                path.unlink()
        make = subprocess.run(
            [sys.executable, __file__, "--make-run", str(root / "run")],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, PYTHONPATH=str(HERE.parent)),
        )
        parameters = json.loads(make.stdout.strip().splitlines()[-1])["parameters"]
        out = root / "run-bfloat16"
        cases.append(_case("run (float32 DCP)", "bfloat16", _export(root / "run", out, "bfloat16"), out, baseline))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": SPEC.name,
        "parameters": parameters,
        "baseline_rss_bytes": baseline,
        "limit": LIMIT,
        "cases": cases,
        "torch": version("torch"),
        "transformers": version("transformers"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*history, result], indent=2) + "\n")
    print("\n".join(table([result])))


def table(records: list[dict[str, Any]]) -> list[str]:
    """The RESULTS.md section of the latest record (summarize.py's format): what is measured, then the table."""
    lines = [
        "`archspec export-hf` in a child process, its peak RSS (`os.wait4`) over the bytes of the safetensors it "
        "wrote; the baseline is the same command on a tiny spec (Python + torch + archspec). The model is built (or "
        "the run read) directly in the target dtype and written tensor by tensor, so the peak is the checkpoint plus "
        "the process floor; a run directory is read largest tensor first, so DCP's float32 read buffer comes while "
        "little of the model is resident. `specs/mistral-7b.yaml` (7.24B, bfloat16, 3 shards), run once by hand: "
        "peak 14.74 GB for 14.48 GB written (1.02x).",
        "",
        "| spec | case | dtype | checkpoint GB | peak RSS GB | peak / checkpoint | (peak − baseline) / checkpoint | ≤ 1.3× | s | where |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    r = records[-1]
    where = f"CPU ({r['cpu_count']} cores), torch {r['torch']}, transformers {r['transformers']}, {r['date'][:10]}"
    for c in r["cases"]:
        lines.append(
            f"| {r['spec']} ({r['parameters'] / 1e9:.2f}B) | {c['case']} | {c['dtype']} | "
            f"{c['checkpoint_bytes'] / 1e9:.2f} | {c['peak_rss_bytes'] / 1e9:.2f} | {c['peak_over_checkpoint']:.2f} | "
            f"{c['peak_above_baseline_over_checkpoint']:.2f} | {'yes' if c['within_limit'] else '**no**'} | "
            f"{c['wall_s']:.0f} | {where} |"
        )
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-run"]:
        make_run(sys.argv[2])
    elif sys.argv[1:2] == ["--table"]:
        print("\n".join(table(json.loads(RESULTS.read_text()))))
    else:
        main()
