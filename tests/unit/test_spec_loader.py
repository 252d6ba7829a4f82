"""The YAML loader: `extends` chains and deep merges, shorthands, relative paths, and the YAML round trip."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest

from archspec import Spec, SpecError, load_spec, spec_from_dict
from archspec.cli import spec_to_yaml

BASE = """\
name: base
vocab_size: 64
d_model: 32
n_layers: 2
context_length: 16
attention: {heads: 4, kv_heads: 2}
position:
  kind: rope
  theta: 500000
  scaling: {kind: llama3, factor: 8, original_context: 8}
norm: rmsnorm
mlp: {activation: swiglu, d_ff: 64}
tokens: {bos: 1, eos: 2}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_base_spec_loads_with_shorthands_expanded(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "base.yaml", BASE))
    assert spec.norm.kind == "rmsnorm" and spec.norm.eps == 1e-5 and spec.norm.bias is False
    assert spec.position.kind == "rope" and spec.position.theta == 500000
    assert spec.block.kind == "pre-norm"
    assert spec.kv_heads == 2 and spec.head_dim == 8


def test_extends_chain_of_three_files(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "middle.yaml", "extends: base.yaml\nname: middle\nn_layers: 4\nattention: {kv_heads: 1}\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: middle.yaml\nname: leaf\nd_model: 64\nmlp: {d_ff: 128}\n")
    spec = load_spec(leaf)
    assert spec.name == "leaf"
    assert spec.n_layers == 4  # from middle
    assert spec.d_model == 64 and spec.head_dim == 16  # from leaf; head_dim re-derived from the merged values
    assert (spec.attention.heads, spec.kv_heads) == (4, 1)  # heads from base, kv_heads from middle
    assert (spec.mlp.activation, spec.mlp.d_ff) == ("swiglu", 128)  # deep merge: activation kept
    assert spec.tokens.bos == 1 and spec.vocab_size == 64  # untouched keys come from base


def test_child_equals_the_same_spec_written_out_in_full(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    child = load_spec(write(tmp_path, "child.yaml", "extends: base.yaml\nposition: {theta: 10000}\n"))
    full = load_spec(write(tmp_path, "full.yaml", BASE.replace("theta: 500000", "theta: 10000")))
    assert child == full
    assert child.position.scaling is not None and child.position.scaling.kind == "llama3"  # deep merge keeps it


def test_shorthand_parent_overridden_by_mapping_child(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)  # norm: rmsnorm
    spec = load_spec(write(tmp_path, "child.yaml", "extends: base.yaml\nnorm: {eps: 1.0e-6}\n"))
    assert spec.norm.kind == "rmsnorm" and spec.norm.eps == 1e-6


def test_shorthand_child_overrides_mapping_parent(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE.replace("norm: rmsnorm", "norm: {kind: layernorm, eps: 1.0e-6}"))
    spec = load_spec(write(tmp_path, "child.yaml", "extends: base.yaml\nnorm: layernorm\n"))
    assert spec.norm.kind == "layernorm" and spec.norm.eps == 1e-6 and spec.norm.bias is True


def test_changing_a_kind_replaces_the_section(tmp_path: Path) -> None:
    """`position: alibi` over a RoPE parent must not inherit `theta` and `scaling` (which ALiBi does not have)."""
    write(tmp_path, "base.yaml", BASE)
    spec = load_spec(write(tmp_path, "child.yaml", "extends: base.yaml\nposition: alibi\n"))
    assert spec.position.kind == "alibi"
    spec = load_spec(
        write(tmp_path, "linear.yaml", "extends: base.yaml\nposition: {scaling: {kind: linear, factor: 2}}\n")
    )
    assert spec.position.scaling is not None and spec.position.scaling.kind == "linear"
    assert spec.position.theta == 500000


def test_a_list_in_the_child_replaces_the_parents_list(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE.replace("kv_heads: 2}", "kv_heads: 2, window: 4, window_layers: [0, 1]}"))
    spec = load_spec(write(tmp_path, "child.yaml", "extends: base.yaml\nattention: {window_layers: [1]}\n"))
    assert spec.attention.window_layers == [1] and spec.attention.window == 4


def test_extends_paths_are_relative_to_the_extending_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "families/base.yaml", BASE)
    write(tmp_path, "families/llama/mid.yaml", "extends: ../base.yaml\nname: mid\n")
    leaf = write(tmp_path, "sizes/big/leaf.yaml", "extends: ../../families/llama/mid.yaml\nname: leaf\nn_layers: 8\n")
    monkeypatch.chdir(tmp_path / "sizes")  # the working directory must not matter
    spec = load_spec(Path("big/leaf.yaml"))
    assert (spec.name, spec.n_layers, spec.d_model) == ("leaf", 8, 32)
    assert load_spec(leaf) == spec


def test_error_in_an_inherited_value_points_at_the_file_that_set_it(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "sub/mid.yaml", "extends: ../base.yaml\nname: mid\n\nattention: {kv_heads: 3}\n")
    leaf = write(tmp_path, "sub/leaf.yaml", "extends: mid.yaml\nname: leaf\n")
    with pytest.raises(SpecError) as caught:
        load_spec(leaf)
    (issue,) = caught.value.issues
    assert (Path(issue.file).resolve(), issue.line, issue.key_path) == (
        (tmp_path / "sub/mid.yaml").resolve(),
        4,
        "attention.kv_heads",
    )


def test_spec_from_dict_does_not_modify_its_argument() -> None:
    data = {
        "name": "d",
        "vocab_size": 64,
        "d_model": 32,
        "n_layers": 1,
        "context_length": 16,
        "attention": {"heads": 4},
        "position": {"kind": "rope", "scaling": "linear"},  # scaling shorthand without its factor: invalid anyway
        "mlp": {"activation": "gelu", "d_ff": 64},
    }
    before = copy.deepcopy(data)
    with pytest.raises(SpecError):
        spec_from_dict(data)
    assert data == before


# ----------------------------------------------------------------------------------------------- round trip
ROUND_TRIP = {
    "llama-like": BASE,
    "gpt2-like": """\
        name: gpt2-tiny
        vocab_size: 50
        d_model: 24
        n_layers: 3
        context_length: 32
        attention: {heads: 3, bias: true}
        position: learned
        norm: {kind: layernorm, eps: 1.0e-5}
        mlp: {activation: gelu-tanh, d_ff: 96, bias: true}
        embeddings: {tied: true}
        """,
    "falcon-like": """\
        name: falcon.tiny-1
        vocab_size: 64
        d_model: 32
        n_layers: 2
        context_length: 16
        attention: {heads: 4, kv_heads: 1}
        position: {kind: rope, theta: 10000, fraction: 0.5, pairing: interleaved, scaling: {kind: yarn, factor: 4, original_context: 8}}
        norm: layernorm
        block: {kind: parallel, parallel_norms: 2}
        mlp: {activation: gelu, d_ff: 128}
        """,
    "bloom-like": """\
        name: bloom-tiny
        description: "a description: with a colon, and 'quotes'"
        vocab_size: 64
        d_model: 32
        n_layers: 2
        context_length: 16
        attention: {heads: 6, head_dim: 4, bias: {q: true, k: false, v: true, o: false}, window: 3, window_layers: [1], scale: 0.125, qk_norm: false}
        position: alibi
        norm: {kind: layernorm, eps: 1.0e-6, bias: false}
        block: {kind: pre-norm, residual_from_norm: true}
        mlp: {activation: geglu-tanh, d_ff: 48}
        embeddings: {norm: true}
        tokens: {bos: 0, eos: 0, pad: 3}
        """,
}


@pytest.mark.parametrize("text", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_spec_to_yaml_then_load_spec_is_the_identity(tmp_path: Path, text: str) -> None:
    spec = load_spec(write(tmp_path, "in.yaml", text))
    dumped = write(tmp_path, "out.yaml", spec_to_yaml(spec))
    again = load_spec(dumped)
    assert again == spec
    assert again.model_dump() == spec.model_dump()
    assert spec_to_yaml(again) == spec_to_yaml(spec)  # and the YAML is a fixed point


def test_spec_to_yaml_writes_resolved_values_and_omits_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "in.yaml", BASE))
    text = spec_to_yaml(spec)
    assert "kv_heads: 2" in text and "head_dim: 8" in text  # resolved values are explicit
    assert "structure" not in text and "block" not in text  # defaults are not
    assert text.splitlines()[0] == "name: base"  # fields in schema order, not sorted


def test_round_trip_through_a_plain_model_dump() -> None:
    spec = spec_from_dict(
        {
            "name": "d",
            "vocab_size": 64,
            "d_model": 32,
            "n_layers": 1,
            "context_length": 16,
            "attention": {"heads": 4},
            "position": "none",
            "mlp": {"activation": "relu", "d_ff": 64},
        }
    )
    assert isinstance(spec, Spec)
    assert spec_from_dict(spec.model_dump(mode="json")) == spec
