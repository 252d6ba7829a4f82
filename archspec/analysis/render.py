"""Presenting analyses: plain tables (rendered as Rich tables or Markdown), JSON documents and a bar plot.

A `Table` is just strings, so the Rich and the Markdown output are the same table. JSON carries exact numbers
(integers where the figure is an integer) under keys that stay stable; `JSON_VERSION` changes if they do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archspec.analysis.diff import ABSENT, SpecDiff
from archspec.analysis.metrics import Analysis, AnalysisError, LayerParams, layer_windows, model_call
from archspec.draw import labels
from archspec.plan import Call, Layers
from archspec.spec.describe import describe

JSON_VERSION = 1


# -------------------------------------------------------------------------------------------- numbers
def _scaled(value: float, units: tuple[tuple[float, str], ...], base: str) -> str:
    """`value` in the largest unit it reaches, with three significant digits and never an exponent: a number a
    person reads at a glance (1000 T, not 1e+03 T)."""
    for size, unit in units:
        if abs(value) >= size:
            scaled = value / size
            decimals = max(0, 2 - math.floor(math.log10(abs(scaled))))
            digits = f"{scaled:.{decimals}f}"
            return f"{digits.rstrip('0').rstrip('.') if '.' in digits else digits} {unit}"
    return f"{value:.4g}{base}"


def human_count(value: float) -> str:
    """8030261248 -> '8.03 B' (thousand, million, billion, trillion; archspec's specs stop at 1e15)."""
    return _scaled(value, ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")), "")


def human_flops(value: float) -> str:
    """1.7157e10 -> '17.2 GFLOP'."""
    units = ((1e21, "ZFLOP"), (1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"))
    return _scaled(value, (*units, (1e3, "KFLOP")), " FLOP")


def human_bytes(value: float) -> str:
    """131072 -> '128 KiB'."""
    units = ((2**60, "EiB"), (2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))
    return _scaled(value, units, " B")


def exact(value: float) -> str:
    """Thousands separators; non-integers keep one decimal place."""
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


HUMAN = {"count": human_count, "flops": human_flops, "bytes": human_bytes}


def spec_value(value: Any) -> str:
    """A spec value as YAML would spell it; ABSENT as an em dash."""
    if value is ABSENT:
        return "—"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(spec_value(item) for item in value) + "]"
    return str(value)


def ratio_text(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.3g}x"


# --------------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # right-aligned (numeric) columns
    caption: str = ""


def to_rich(table: Table) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    rich_table = RichTable(title=table.title, caption=table.caption or None, title_justify="left")
    for index, header in enumerate(table.headers):
        rich_table.add_column(header, justify="right" if index in table.right else "left")
    for row in table.rows:
        rich_table.add_row(*(Text(cell) for cell in row))  # plain text: `[sliding, full]` is not Rich markup
    return rich_table


def to_markdown(table: Table) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"**{cell(table.title)}**", ""] if table.title else []
    lines.append("| " + " | ".join(cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---:" if i in table.right else "---" for i in range(len(table.headers))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", cell(table.caption)]
    return "\n".join(lines)


def tables_markdown(tables: list[Table]) -> str:
    return "\n\n".join(to_markdown(table) for table in tables) + "\n"


# ----------------------------------------------------------------------------------------------- info
def layer_positions(model: Call) -> list[str]:
    """Each layer's positions in words, as the compiler's plan holds them (T5: the encoder's layers, then the
    decoder's)."""
    if model.component == "EncoderDecoderLM":
        words: list[str] = []
        for stack in (model["encoder"], model["decoder"]):
            assert isinstance(stack, Call) and isinstance(stack["layers"], Layers)
            bias = stack["position_bias"]
            assert isinstance(bias, Call)
            table = bias["table"]
            assert isinstance(table, Call)
            text = f"relative bias, {table.positional(0)} buckets, max {bias['max_distance']}"
            words += [text] * len(stack["layers"].pattern)
        return words
    layers, paths = model["layers"], model["attention"]
    assert isinstance(layers, Layers) and isinstance(paths, Call)
    per_layer, rotary, learned = model.get("layer_rotary"), model.get("rotary"), model.get("pos_embed")
    if isinstance(per_layer, Call):
        rotaries, of_layer = per_layer["rotaries"], per_layer["of_layer"]
        assert isinstance(rotaries, tuple) and isinstance(of_layer, tuple)
        return [labels.rotary(rotaries[i]) if i is not None else "none" for i in of_layer]  # type: ignore[arg-type]
    if isinstance(rotary, Call):
        text = labels.rotary(rotary)
    elif paths.get("alibi") is not None:
        text = "ALiBi"
    elif isinstance(learned, Call):
        text = f"learned ({learned.positional(0)})"
    else:
        text = "none"
    return [text] * len(layers.pattern)


def layer_groups(analysis: Analysis) -> list[tuple[int, int, LayerParams, int | None, str]]:
    """Runs of consecutive identical layers: (first, last, params, window, positions), windows and positions as the
    plan holds them."""
    model, groups = model_call(analysis.spec), []
    positions_of = layer_positions(model)
    windows = layer_windows(model) if model.component != "EncoderDecoderLM" else [None] * len(positions_of)
    for index, layer in enumerate(analysis.params.layers):
        window, positions = windows[index], positions_of[index]
        if groups and groups[-1][2:] == (layer, window, positions) and groups[-1][1] == index - 1:
            groups[-1] = (groups[-1][0], index, layer, window, positions)
        else:
            groups.append((index, index, layer, window, positions))
    return groups


def info_tables(analysis: Analysis) -> list[Table]:
    spec, p, f, kv = analysis.spec, analysis.params, analysis.flops, analysis.kv
    summary = describe(spec)
    header = Table(
        f"{spec.name}: {spec.n_layers} layers, d_model {spec.d_model}, vocab {spec.vocab_size}, "
        f"context {spec.context_length}",
        [key for key in summary],
        [list(summary.values())],
    )
    figures = Table("figures", ["figure", "value", "exact"], right={1, 2})
    add = figures.rows.append
    add(["parameters (total)", human_count(p.total), exact(p.total)])
    add(["parameters (active per token)", human_count(p.active), exact(p.active)])
    embedding_parts = f"token {exact(p.token_embedding)}"
    if p.position_embedding:
        embedding_parts += f" + positions {exact(p.position_embedding)}"
    embedding_parts += f" + head {exact(p.head)}" if p.head else " (head tied)"
    add([f"  embeddings: {embedding_parts}", human_count(p.embeddings), exact(p.embeddings)])
    add(["  blocks", human_count(p.layers_total), exact(p.layers_total)])
    add(
        ["  norms outside blocks", human_count(p.embedding_norm + p.final_norm), exact(p.embedding_norm + p.final_norm)]
    )
    add([f"forward FLOPs / token @ {f.context}", human_flops(f.forward_per_token), exact(f.forward_per_token)])
    add(["  matmul (2 x weights, incl. head)", human_flops(f.matmul_per_token), exact(f.matmul_per_token)])
    add([f"  attention scores + values ({f.count})", human_flops(f.attention_per_token), exact(f.attention_per_token)])
    add(["training FLOPs / token (3 x forward)", human_flops(f.train_per_token), exact(f.train_per_token)])
    if f.vision_per_image:
        add(["vision tower + projector / image", human_flops(f.vision_per_image), exact(f.vision_per_image)])
    add([f"KV cache / token ({kv.dtype})", human_bytes(kv.bytes_per_token), exact(kv.bytes_per_token)])
    add([f"KV cache @ {kv.context} x batch {kv.batch}", human_bytes(kv.bytes_total), exact(kv.bytes_total)])
    if kv.bytes_windowed != kv.bytes_total:
        add(["  keeping only each window", human_bytes(kv.bytes_windowed), exact(kv.bytes_windowed)])

    columns = ["layers", "attention", "mlp", "norms", "per layer", "window", "positions"]
    layers = Table("per layer", columns, right={1, 2, 3, 4})
    for first, last, layer, window, positions in layer_groups(analysis):
        span = str(first) if first == last else f"{first}-{last} ({last - first + 1})"
        numbers = [exact(layer.attention), exact(layer.mlp), exact(layer.norms), exact(layer.total)]
        layers.rows.append([span, *numbers, str(window or "—"), positions])
    layers.caption = (
        "FLOPs: 2 x matmul weights per token + attention q.k and weights.v over the keys each query sees "
        f"({'causal, windows capped' if f.count == 'causal' else 'every key'}), averaged over positions "
        f"0..{f.context - 1}; embedding lookups, norms and biases not counted."
    )
    return [header, figures, layers]


def info_json(analysis: Analysis) -> dict[str, Any]:
    spec, p, f, kv = analysis.spec, analysis.params, analysis.flops, analysis.kv
    return {
        "version": JSON_VERSION,
        "name": spec.name,
        "summary": describe(spec),
        "params": {
            "total": p.total,
            "active": p.active,
            "embeddings": p.embeddings,
            "non_embedding": p.non_embedding,
            "token_embedding": p.token_embedding,
            "position_embedding": p.position_embedding,
            "head": p.head,
            "embedding_norm": p.embedding_norm,
            "final_norm": p.final_norm,
            "layers_total": p.layers_total,
            "layers": [
                {
                    "index": i,
                    "attention": layer.attention,
                    "mlp": layer.mlp,
                    "norms": layer.norms,
                    "total": layer.total,
                    "active": layer.active,
                }
                for i, layer in enumerate(p.layers)
            ],
        },
        "flops": {
            "context": f.context,
            "attention_count": f.count,
            "forward_per_token": f.forward_per_token,
            "matmul_per_token": f.matmul_per_token,
            "attention_per_token": f.attention_per_token,
            "forward_per_sequence": f.forward_per_sequence,
            "train_per_token": f.train_per_token,
            "vision_per_image": f.vision_per_image,
        },
        "kv_cache": {
            "dtype": kv.dtype,
            "bytes_per_token": kv.bytes_per_token,
            "context": kv.context,
            "batch": kv.batch,
            "bytes": kv.bytes_total,
            "bytes_windows_capped": kv.bytes_windowed,
        },
    }


# ----------------------------------------------------------------------------------------------- diff
def diff_tables(diff: SpecDiff) -> list[Table]:
    names, ratio_names = list(diff.names), [f"{name} / {diff.names[0]}" for name in diff.names[1:]]
    fields = Table("fields that differ", ["key path", *names])
    fields.rows = [[field_diff.path, *map(spec_value, field_diff.values)] for field_diff in diff.fields]
    if not diff.fields:
        fields.rows = [["(none: same architecture)", *[""] * len(names)]]
    figures = Table(
        f"figures @ context {diff.context}, batch {diff.batch}, KV in {diff.dtype}",
        ["figure", *names, *ratio_names],
        right=set(range(1, 1 + len(names) + len(ratio_names))),
    )
    for figure in diff.figures:
        human = HUMAN[figure.unit]
        figures.rows.append([figure.label, *map(human, figure.values), *map(ratio_text, figure.ratios[1:])])
    return [fields, figures]


def diff_json(diff: SpecDiff) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "specs": list(diff.names),
        "settings": {"context": diff.context, "batch": diff.batch, "dtype": diff.dtype, "attention_count": diff.count},
        "fields": [
            {
                "path": field_diff.path,
                "values": [None if value is ABSENT else value for value in field_diff.values],
                "absent": [value is ABSENT for value in field_diff.values],
            }
            for field_diff in diff.fields
        ],
        "figures": [
            {
                "key": figure.key,
                "label": figure.label,
                "unit": figure.unit,
                "values": list(figure.values),
                "ratio_to_first": list(figure.ratios),
            }
            for figure in diff.figures
        ],
    }


def plot_diff(diff: SpecDiff, path: str | Path) -> None:
    """Grouped bars: one group per figure, one bar per spec, heights relative to the first spec (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AnalysisError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib (or, in a source checkout, pip install '.[plot]')"
        ) from None
    figures = [figure for figure in diff.figures if figure.values[0]]
    count = len(diff.names)
    width = 0.8 / count
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(figures)), 4.5))
    for column, name in enumerate(diff.names):
        heights = [figure.ratios[column] or 0.0 for figure in figures]
        xs = [index + (column - (count - 1) / 2) * width for index in range(len(figures))]
        bars = ax.bar(xs, heights, width, label=name)
        for bar, figure in zip(bars, figures, strict=True):
            ax.annotate(
                HUMAN[figure.unit](figure.values[column]),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
    ax.set_xticks(range(len(figures)), [figure.label for figure in figures], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"relative to {diff.names[0]}")
    ratios = [r for figure in figures for r in figure.ratios if r] or [1.0]
    if max(ratios) / min(ratios) > 20:
        ax.set_yscale("log")
        ax.set_ylim(min(ratios) / 2, max(ratios) * 6)  # room for the value labels above the bars
    else:
        ax.set_ylim(0, max(ratios) * 1.35)
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_title(f"context {diff.context}, batch {diff.batch}, KV in {diff.dtype}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
