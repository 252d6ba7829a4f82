"""`diff_specs` and its renderings, against facts worked out by hand (see each test's comments)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import archspec
from archspec.analysis import ABSENT, AnalysisError, FieldDiff, diff_specs, flatten
from archspec.analysis.render import diff_json, diff_tables, tables_markdown, to_rich

SPECS = Path(__file__).resolve().parents[2] / "specs"

# vocab 100, d 64, 2 layers, 8 heads of 8, SwiGLU 128, RMSNorm, untied, RoPE
BASE: dict[str, Any] = {
    "name": "a",
    "vocab_size": 100,
    "d_model": 64,
    "n_layers": 2,
    "context_length": 32,
    "attention": {"heads": 8, "kv_heads": 8},
    "position": "rope",
    "mlp": {"activation": "swiglu", "d_ff": 128},
}


def spec(**changes: Any) -> archspec.Spec:
    return archspec.spec_from_dict({**BASE, **changes})


def figures(diff: Any) -> dict[str, tuple[Any, ...]]:
    return {figure.key: figure.values for figure in diff.figures}


def test_specs_differing_in_kv_heads_differ_in_exactly_that_field() -> None:
    a, b = spec(), spec(name="b", attention={"heads": 8, "kv_heads": 2})
    diff = diff_specs([a, b])
    assert diff.fields == (FieldDiff("attention.kv_heads", (8, 2)),)
    values = figures(diff)
    # per layer: attention 4 * 64 * 64 = 16384 (MHA) or 2 * 64 * 64 + 2 * 64 * 16 = 10240 (2 kv heads of 8);
    # MLP 3 * 64 * 128 = 24576; norms 2 * 64. Embeddings 2 * 100 * 64 = 12800, final norm 64.
    assert values["params_total"] == (2 * (16384 + 24576 + 128) + 12800 + 64, 2 * (10240 + 24576 + 128) + 12800 + 64)
    assert values["params_total"] == (95040, 82752)
    assert values["params_active"] == values["params_total"]
    assert values["params_embeddings"] == (12800, 12800)
    # context 32 (both specs' context_length); bf16: 2 bytes * (k + v) * 2 layers * kv_heads * 8
    assert diff.context == 32
    assert values["kv_bytes_per_token"] == (2 * 2 * 2 * 8 * 8, 2 * 2 * 2 * 2 * 8)
    assert values["kv_bytes_total"] == (512 * 32, 128 * 32)
    # matmul 2 * (2 layers * (attn + mlp) + head 6400); attention 2 layers * 4 * 8 heads * 8 * (32 * 33 / 2) / 32
    attention_per_token = 2 * 4 * 8 * 8 * 528 / 32
    assert values["flops_forward_per_token"] == (176640 + attention_per_token, 152064 + attention_per_token)
    assert values["flops_train_per_token"] == (3 * (176640 + 8448), 3 * (152064 + 8448))
    ratios = {figure.key: figure.ratios for figure in diff.figures}
    assert ratios["kv_bytes_per_token"] == (1.0, 0.25)
    assert ratios["params_total"] == (1.0, 82752 / 95040)


def test_identical_architectures_differ_in_nothing_but_their_names() -> None:
    diff = diff_specs([spec(), spec(name="renamed", description="same model, other name")])
    assert diff.fields == ()
    assert all(figure.ratios == (1.0, 1.0) for figure in diff.figures)
    assert diff.names == ("a", "renamed")


def test_keys_only_one_spec_has_are_absent_on_the_other() -> None:
    rope = spec(position={"kind": "rope", "theta": 500000.0, "scaling": {"kind": "linear", "factor": 2.0}})
    alibi = spec(name="b", position="alibi")
    diff = diff_specs([rope, alibi])
    by_path = {f.path: f.values for f in diff.fields}
    assert by_path == {
        "position.kind": ("rope", "alibi"),
        "position.theta": (500000.0, ABSENT),
        "position.fraction": (1.0, ABSENT),
        "position.pairing": ("half", ABSENT),
        "position.block_positions": (False, ABSENT),
        "position.scaling.kind": ("linear", ABSENT),
        "position.scaling.factor": (2.0, ABSENT),
        "position.scaled": (ABSENT, False),
        "position.precision": (ABSENT, "float32"),
    }
    document = diff_json(diff)
    theta = next(f for f in document["fields"] if f["path"] == "position.theta")
    assert theta == {"path": "position.theta", "values": [500000.0, None], "absent": [False, True]}


def test_an_unset_optional_section_shows_as_its_keys_absent() -> None:
    scaled = spec(position={"kind": "rope", "scaling": {"kind": "linear", "factor": 4.0}})
    diff = diff_specs([spec(name="plain"), scaled])
    assert [f.path for f in diff.fields] == ["position.scaling.kind", "position.scaling.factor"]
    assert diff.fields[0].values == (ABSENT, "linear")


def test_three_specs_give_one_column_each_and_ratios_to_the_first() -> None:
    # layers 2, 4, 1: the block parameters scale with the layer count, the embeddings do not
    specs = [spec(), spec(name="b", n_layers=4), spec(name="c", n_layers=1)]
    diff = diff_specs(specs)
    assert diff.fields == (FieldDiff("n_layers", (2, 4, 1)),)
    per_layer, rest = 16384 + 24576 + 128, 12800 + 64
    assert figures(diff)["params_total"] == (2 * per_layer + rest, 4 * per_layer + rest, per_layer + rest)
    kv = {figure.key: figure for figure in diff.figures}["kv_bytes_per_token"]
    assert kv.ratios == (1.0, 2.0, 0.5)
    fields_table, figures_table = diff_tables(diff)
    assert fields_table.headers == ["key path", "a", "b", "c"]
    assert figures_table.headers == ["figure", "a", "b", "c", "b / a", "c / a"]
    kv_row = next(row for row in figures_table.rows if row[0] == "KV cache / token")
    assert kv_row == [
        "KV cache / token",
        "512 B",
        "1 KiB",
        "256 B",
        "2x",
        "0.5x",
    ]  # bf16 2 B * (k+v) * 2 layers * 8 * 8


def test_common_context_defaults_to_the_shortest_and_can_be_set() -> None:
    short, long = spec(context_length=16), spec(name="b", context_length=64)
    assert diff_specs([short, long]).context == 16
    assert diff_specs([short, long], context=48).context == 48
    values = figures(diff_specs([short, long], context=10, batch=3, dtype="fp32"))
    assert values["kv_bytes_total"] == (2 * 4 * 2 * 8 * 8 * 10 * 3,) * 2  # fp32, k+v, 2 layers, 8 kv heads of 8


def test_diff_needs_two_specs() -> None:
    with pytest.raises(AnalysisError, match="at least two"):
        diff_specs([spec()])


def test_json_keys_are_stable() -> None:
    document = diff_json(diff_specs([spec(), spec(name="b", attention={"heads": 8, "kv_heads": 4})]))
    assert list(document) == ["version", "specs", "settings", "fields", "figures"]
    assert document["version"] == 1
    assert document["specs"] == ["a", "b"]
    assert document["settings"] == {"context": 32, "batch": 1, "dtype": "bfloat16", "attention_count": "causal"}
    assert document["fields"] == [{"path": "attention.kv_heads", "values": [8, 4], "absent": [False, False]}]
    assert [figure["key"] for figure in document["figures"]] == [
        "params_total",
        "params_active",
        "params_embeddings",
        "flops_forward_per_token",
        "flops_train_per_token",
        "kv_bytes_per_token",
        "kv_bytes_total",
        "kv_bytes_windowed",
    ]
    for figure in document["figures"]:
        assert list(figure) == ["key", "label", "unit", "values", "ratio_to_first"]
    kv = next(f for f in document["figures"] if f["key"] == "kv_bytes_per_token")
    assert kv["values"] == [512, 256] and kv["ratio_to_first"] == [
        1.0,
        0.5,
    ]  # bf16, k+v, 2 layers, 8 or 4 kv heads of 8
    json.dumps(document)  # serialisable as is


def test_markdown_rendering() -> None:
    diff = diff_specs(
        [
            spec(),
            spec(
                name="b", attention={"heads": 8, "kv_heads": 4}, mlp={"activation": "gelu", "d_ff": 128, "bias": True}
            ),
        ]
    )
    text = tables_markdown(diff_tables(diff)[:1])
    assert text == (
        "**fields that differ**\n"
        "\n"
        "| key path | a | b |\n"
        "|---|---|---|\n"
        "| attention.kv_heads | 8 | 4 |\n"
        "| mlp.activation | swiglu | gelu |\n"
        "| mlp.bias | false | true |\n"
    )
    figures_md = tables_markdown(diff_tables(diff)[1:])
    assert "|---|---:|---:|---:|" in figures_md
    assert "| KV cache / token | 512 B | 256 B | 0.5x |" in figures_md


def test_rich_rendering_has_every_column() -> None:
    from rich.console import Console

    diff = diff_specs([spec(), spec(name="b", n_layers=3)])
    console = Console(width=200, record=True)
    for table in diff_tables(diff):
        console.print(to_rich(table))
    text = console.export_text()
    assert "n_layers" in text and "b / a" in text and "1.5x" in text


def test_flatten_uses_dotted_paths_and_keeps_lists_whole() -> None:
    flat = flatten(spec(n_layers=4, attention={"heads": 8, "window": 4, "window_layers": [0, 2]}))
    assert flat["attention.window_layers"] == [0, 2]
    assert flat["attention.bias.q"] is False
    assert flat["norm.kind"] == "rmsnorm"
    assert "attention" not in flat


def test_llama3_alias_is_llama3_8b() -> None:
    alias, base = SPECS / "llama3.yaml", SPECS / "llama3-8b.yaml"
    if not (alias.is_file() and base.is_file()):
        pytest.skip("specs/llama3.yaml or specs/llama3-8b.yaml not written yet")
    diff = diff_specs([archspec.load_spec(base), archspec.load_spec(alias)])
    assert diff.fields == ()
    assert all(figure.ratios[1] == 1.0 for figure in diff.figures)
