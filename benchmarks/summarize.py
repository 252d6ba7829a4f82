"""Write benchmarks/RESULTS.md from benchmarks/results/*.json (the latest record of each configuration).

python benchmarks/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import paired_ratio
from export_memory import table as export_table

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _latest(records: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        latest[tuple(record.get(k) for k in keys)] = record
    return list(latest.values())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(q: dict[str, Any], key: str) -> str:
    """'median ratio (ratio of minima; ratio of thread CPU times; paired)', the last two where recorded."""
    labels = [label for label in ("cpu", "paired") if q.get(f"{key} ({label})") is not None]
    tail = "".join(f"; {label} {_fmt(q[f'{key} ({label})'])}" for label in labels)
    return f"{_fmt(q.get(key))} ({_fmt(q.get(f'{key} (min)'))}{tail})"


def _where(record: dict[str, Any]) -> str:
    device = record.get("gpu") or f"CPU ({record.get('cpu_count')} cores)"
    return f"{device}, torch {record['torch']}, transformers {record['transformers']}, {record['date'][:10]}"


def _speed(record: dict[str, Any], name: str, per_call: float) -> str:
    result = record["results"].get(name, {})
    if "median_s" not in result:
        return "error" if "error" in result else "–"
    return f"{per_call / result['median_s']:,.0f}"


def train_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | dtype | batch × seq | archspec eager | archspec compile | hf sdpa | hf sdpa compile | eager / hf sdpa (min) | compile / hf compile (min) | where |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _latest(records, ("family", "size", "dtype", "batch", "seq", "device", "gpu")):
        tokens = r["batch"] * r["seq"]
        q = r["ratios"]
        lines.append(
            f"| {r['family']}-{r['size']} | {r['dtype']} | {r['batch']} × {r['seq']} | "
            + " | ".join(
                _speed(r, n, tokens) for n in ("archspec-eager", "archspec-compile", "hf-sdpa", "hf-sdpa-compile")
            )
            + f" | {_ratio(q, 'archspec-eager / hf-sdpa')}"
            + f" | {_ratio(q, 'archspec-compile / hf-sdpa-compile')}"
            + f" | {_where(r)} |"
        )
    return lines


def decode_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | dtype | batch | archspec eager | archspec compile | hf default | hf static | eager / hf default (min) | best archspec / best hf | where |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _latest(records, ("size", "dtype", "batch", "device", "gpu")):
        tokens = r["batch"] * r["new_tokens"]
        q = r["ratios"]
        times = {n: v["median_s"] for n, v in r["results"].items() if "median_s" in v}
        ours = [t for n, t in times.items() if n.startswith("archspec")]
        theirs = [t for n, t in times.items() if n.startswith("hf")]
        best = min(theirs) / min(ours) if ours and theirs else None
        lines.append(
            f"| llama3-{r['size']} | {r['dtype']} | {r['batch']} | "
            + " | ".join(
                _speed(r, n, tokens) for n in ("archspec-eager", "archspec-compile", "hf-default", "hf-static")
            )
            + f" | {_ratio(q, 'archspec-eager / hf-default')}"
            + f" | {_fmt(best)} | {_where(r)} |"
        )
    return lines


def prefill_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per family, size, dtype and shape; transformers runs sdpa, or eager where that is its only path
    (Gemma 2's soft-capped scores)."""
    lines = [
        "| model | dtype | batch × seq | archspec eager ms | archspec compile ms | hf ms (attention) | hf compile ms | eager / hf (min) | compile / hf compile (min) | where |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("family", "size", "dtype", "batch", "seq", "device", "gpu")
    for r in _latest([{"family": "llama3", **record} for record in records], keys):
        q = r["ratios"]
        hf = "hf-eager" if "hf-eager" in r["results"] else "hf-sdpa"

        def ms(name: str, r: dict[str, Any] = r) -> str:
            result = r["results"].get(name, {})
            return f"{result['median_s'] * 1e3:.1f}" if "median_s" in result else "–"

        lines.append(
            f"| {r['family']}-{r['size']} | {r['dtype']} | {r['batch']} × {r['seq']} | "
            + f"{ms('archspec-eager')} | {ms('archspec-compile')} | {ms(hf)} ({hf.removeprefix('hf-')}) | "
            + f"{ms(hf + '-compile')} | {_ratio(q, f'archspec-eager / {hf}')}"
            + f" | {_ratio(q, f'archspec-compile / {hf}-compile')}"
            + f" | {_where(r)} |"
        )
    return lines


def moe_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| experts | top-k | tokens × d_model, d_ff | dtype | grouped ms | loop ms | grouped / loop (min) | where |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _latest(records, ("experts", "top_k", "d_model", "d_ff", "tokens", "dtype", "device", "gpu")):
        q = r["ratios"]
        g, loop = r["results"].get("grouped", {}), r["results"].get("loop", {})
        lines.append(
            f"| {r['experts']} | {r['top_k']} | {r['tokens']} × {r['d_model']}, {r['d_ff']} | {r['dtype']} | "
            f"{_fmt(g.get('median_s', 0) * 1e3, 1)} | {_fmt(loop.get('median_s', 0) * 1e3, 1)} | "
            f"{_ratio(q, 'grouped / loop')} | {_where(r)} |"
        )
    return lines


def attention_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per variant: median time, speed over the part's baseline (dense causal for windows, the materialised
    bias for ALiBi and T5) as ratio of medians (ratio of minima; of thread CPU times), peak memory of one call."""
    lines = [
        "| pattern | seq (window) | batch × heads × dim | dtype | variant | ms | speed vs baseline (min; cpu; paired) | peak MiB | where |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baselines = {
        "window": "dense causal",
        "window-train": "dense causal",
        "alibi": "materialised bias",
        "t5": "materialised bias",
    }
    keys = ("part", "seq", "window", "batch", "heads", "head_dim", "dtype", "device", "gpu")
    for r in _latest(records, keys):
        base = r["results"].get(baselines.get(r["part"], ""), {})
        for name, result in r["results"].items():
            if "median_s" not in result:
                continue

            def speed(key: str, result: dict[str, Any] = result, base: dict[str, Any] = base) -> float | None:
                return base[key] / result[key] if key in base and key in result else None

            peak = r.get("peak_bytes", {}).get(name)
            window = f" ({r['window']})" if r.get("window") else ""
            lines.append(
                f"| {r['part']} | {r['seq']}{window} | {r['batch']} × {r['heads']} × {r['head_dim']} | {r['dtype']} | "
                f"{name} | {result['median_s'] * 1e3:.1f} | {_fmt(speed('median_s'))} ({_fmt(speed('min_s'))}; "
                f"{_fmt(speed('cpu_median_s'))}; {_fmt(paired_ratio(r['results'], name, baselines[r['part']]))}) | "
                f"{_fmt(peak / 2**20 if peak is not None else None, 1)} | {_where(r)} |"
            )
    return lines


def padding_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | dtype | documents (tokens; padded) | archspec padded | archspec packed | hf padded | hf packed | padded: archspec / hf | packed: archspec / hf | archspec packed / padded | where |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _latest(records, ("family", "size", "dtype", "real_tokens", "device", "gpu")):
        tokens, q = r["real_tokens"], r["ratios"]
        lines.append(
            f"| {r['family']}-{r['size']} | {r['dtype']} | {len(r['document_lengths'])} ({tokens}; {r['padded_tokens']}) | "
            + " | ".join(_speed(r, n, tokens) for n in ("archspec-padded", "archspec-packed", "hf-padded", "hf-packed"))
            + f" | {_ratio(q, 'archspec-padded / hf-padded')} | {_ratio(q, 'archspec-packed / hf-packed')}"
            + f" | {_ratio(q, 'archspec-packed / archspec-padded')} | {_where(r)} |"
        )
    return lines


TABLES = {
    "train_step": ("Training step (forward + backward), tokens/s", train_table),
    "decode": ("Greedy decode, prompt 128 + 128 new tokens, tokens/s (whole `generate` call)", decode_table),
    "prefill": ("Prefill (forward, no grad) latency", prefill_table),
    "moe_dispatch": ("MoE dispatch, forward + backward", moe_table),
    "attention": (
        "Attention patterns, one call (forward, no grad; `window-train`: forward + backward)",
        attention_table,
    ),
    "padding": (
        "Documents of different lengths, training step: padded batch vs one packed row, real tokens/s",
        padding_table,
    ),
    "export_memory": ("`archspec export-hf` peak memory (target: at most 1.3x the checkpoint written)", export_table),
}


def main() -> None:
    intro = (HERE / "RESULTS.intro.md").read_text() if (HERE / "RESULTS.intro.md").exists() else ""
    out = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/summarize.py` from `benchmarks/results/*.json`; "
        "ratios are archspec's speed over the reference's, measured in the same process with the variants "
        "interleaved (medians; in parentheses the ratio of minima, the least-disturbed runs, on one-thread CPU runs the ratio of the calling thread's CPU times, and `paired`, the median of the ratios within each round of the interleaving).",
        "",
    ]
    if intro:
        out += [intro.rstrip(), ""]
    for name, (title, table) in TABLES.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        out += [f"## {title}", "", *table(json.loads(path.read_text())), ""]
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
