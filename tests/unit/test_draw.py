"""`archspec.draw`: every spec's picture renders with Graphviz, and its labels carry the spec's own numbers.

The numbers are read back from the rendered SVG (what a reader sees) and compared with the spec's fields (heads,
kv heads, head_dim, d_ff, experts, top-k, windows, layer counts), which the picture never reads: it is drawn from
the compiled plan. The per-layer strip is compared layer by layer with the spec's own per-layer rules.
"""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archspec.draw import diagram, diff_diagram, picture, to_dot, to_mermaid
from archspec.spec import Spec, load_spec
from archspec.spec.schema import LatentAttentionSpec, NoPositionSpec, ViTSpec
from tests.tiny import spec_files

SPECS = {path.stem: path for path in spec_files()}
SVG = "{http://www.w3.org/2000/svg}"


def require_dot() -> None:
    """Skip without Graphviz on a developer's machine; in CI (CI or ARCHSPEC_REQUIRE_GRAPHVIZ set, as .ci/run
    does) a missing `dot` is a failure."""
    if shutil.which("dot") is None:
        if os.environ.get("CI") or os.environ.get("ARCHSPEC_REQUIRE_GRAPHVIZ"):
            pytest.fail("Graphviz's dot is not installed; .ci/run installs the Debian package graphviz")
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")


@pytest.fixture(scope="module", params=sorted(SPECS), ids=str)
def spec(request: pytest.FixtureRequest) -> Spec:
    return load_spec(SPECS[request.param])


def svg_texts(svg: bytes) -> list[str]:
    """Every text element of a well-formed SVG (ElementTree raises on a malformed one)."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return ["".join(element.itertext()) for element in root.iter(f"{SVG}text")]


def expected_lines(spec: Spec) -> list[str]:
    """Text the picture must show, written from the spec's own fields."""
    want: list[str] = []
    attn = spec.attention
    if isinstance(attn, LatentAttentionSpec):
        want.append(f"{attn.heads} heads · kv latent rank {attn.kv_rank}")
        want.append(f"head_dim {attn.nope_dim + attn.rope_dim} = {attn.nope_dim} + {attn.rope_dim} rotary")
    else:
        kv = f"{spec.kv_heads} kv head" + ("s" if spec.kv_heads > 1 else "")
        want.append(f"{attn.heads} heads · {kv} · head_dim {spec.head_dim}")
    layers = range(spec.n_layers)
    dense = [index for index in layers if not spec.is_moe_layer(index)]
    if dense:
        want.append(f"{spec.d_model} → d_ff {spec.mlp.d_ff} → {spec.d_model}")
    moe = getattr(spec, "moe", None)
    if moe is not None and len(dense) < spec.n_layers:
        want += [f"MoE · {moe.experts} experts · top {moe.top_k}", f"d_ff {moe.d_ff}"]
        if moe.shared_experts:
            want.append(f"d_ff {moe.shared_experts * moe.shared_d_ff}")
    for window in {spec.window_for_layer(index) for index in layers} - {None}:
        want.append(f"window {window}")
    if 0 < len(dense) < spec.n_layers:  # two frames, one per kind, with their layer counts
        want += [f"× {len(dense)}", f"× {spec.n_layers - len(dense)}"]
    else:
        want.append(f"× {spec.n_layers}")
    if getattr(spec, "n_decoder_layers", None):
        want.append(f"Decoder block × {spec.n_decoder_layers}")
    vision = getattr(spec, "vision", None)
    if vision is not None and isinstance(vision.tower, ViTSpec):
        tower = vision.tower
        width = tower.width
        want += [f"{tower.heads} heads · {tower.heads} kv heads · head_dim {width // tower.heads}"]
        grid = tower.image_size // tower.patch_size
        want += [f"{grid}×{grid} patches of {tower.patch_size}×{tower.patch_size} pixels"]
        want += [f"{width} → d_ff {tower.d_ff} → {width}", f"ViT block × {tower.depth}"]
    return want


def test_every_spec_renders_and_carries_its_numbers(spec: Spec) -> None:
    require_dot()
    texts = svg_texts(picture(diagram(spec), "svg"))
    joined = "\n".join(texts)
    for line in expected_lines(spec):
        assert line in joined, f"{spec.name}: {line!r} not in the picture:\n{joined}"
    mermaid = to_mermaid(diagram(spec))
    for line in expected_lines(spec):
        assert line in mermaid, f"{spec.name}: {line!r} not in the Mermaid source"


def test_the_strip_says_each_layers_window_positions_and_mlp(spec: Spec) -> None:
    """Per layer, from the spec's own rules: window or full, NoPE or RoPE, dense or MoE. A strip exactly when
    layers differ in one of them."""
    figure = diagram(spec)
    per_layer = [
        (spec.window_for_layer(i), isinstance(spec.position_for_layer(i), NoPositionSpec), spec.is_moe_layer(i))
        for i in range(spec.n_layers)
    ]
    if spec.structure == "encoder-decoder" or len(set(per_layer)) == 1:
        assert "strip" not in figure.strips
        return
    strip = figure.strips["strip"]
    legend = dict(strip.legend)
    assert len(strip.cells) == spec.n_layers
    for index, (key, (window, nope, moe)) in enumerate(zip(strip.cells, per_layer, strict=True)):
        text = legend[key]
        if len({w for w, _, _ in per_layer}) > 1:
            assert (f"window {window}" if window else "full attention") in text, (index, text)
        if len({n for _, n, _ in per_layer}) > 1:
            assert text.split(" · ")[-1].startswith("NoPE" if nope else "RoPE"), (index, text)
        if len({m for _, _, m in per_layer}) > 1:
            assert ("MoE" if moe else "dense MLP") in text, (index, text)


def test_the_block_layout_is_the_specs(spec: Spec) -> None:
    """The frame of the blocks names the spec's residual layout, and the number of norms drawn per block is that
    layout's (pre/post/deepnorm 2, parallel 1 or 2, sandwich 4, output-norm 2; T5's decoder 3)."""
    figure = diagram(spec)
    names = {
        "pre-norm": "pre-norm",
        "post-norm": "post-norm",
        "deepnorm": "DeepNorm",
        "parallel": "parallel",
        "sandwich": "sandwich",
        "output-norm": "output norms",
    }
    titles = [group.title for group in figure.groups]
    assert any(names[spec.block.kind] in title for title in titles), titles
    group = figure.groups[-1] if spec.structure != "encoder-decoder" else figure.groups[0]
    norms = [node for node in figure.nodes if node.id in group.members and node.kind == "norm"]
    expected = {"sandwich": 4, "output-norm": 2}.get(spec.block.kind, 2)
    if spec.block.kind == "parallel":
        expected = spec.block.parallel_norms
    assert len(norms) == expected, (spec.name, [node.lines for node in norms])


def test_mermaid_is_well_formed(spec: Spec) -> None:
    """Every statement is one Mermaid knows, subgraphs close, arrows join declared nodes, labels hold no quote."""
    assert_mermaid(to_mermaid(diagram(spec)))


@pytest.mark.parametrize(("first", "second"), [("llama3-8b", "deepseek-v3"), ("t5-base", "llava-1.5-7b")])
def test_mermaid_of_a_diff_is_well_formed(first: str, second: str) -> None:
    source = to_mermaid(diff_diagram(load_spec(SPECS[first]), load_spec(SPECS[second])))
    assert_mermaid(source)
    assert "class " in source and " changed" in source


def assert_mermaid(source: str) -> None:
    lines = source.splitlines()
    assert lines[0] == "flowchart TB"
    declared, frames, depth = set(), set(), 0
    node = re.compile(r'^([A-Za-z0-9_]+)(\["|\(\["|\(\(")([^"]*)("\]|"\]\)|"\)\))$')
    edge = re.compile(r"^([A-Za-z0-9_]+) (-->|-\.->)(\|[^|\"]*\|)? ([A-Za-z0-9_]+)$")
    for raw in lines[1:]:
        line = raw.strip()
        if line.startswith("subgraph "):
            assert re.fullmatch(r'subgraph [A-Za-z0-9_]+\["[^"]*"\]', line), line
            frames.add(line.split()[1].split("[")[0])
            depth += 1
        elif line == "end":
            depth -= 1
            assert depth >= 0
        elif match := node.match(line):
            assert match.group(1) not in declared, f"node {match.group(1)} declared twice"
            declared.add(match.group(1))
        elif match := edge.match(line):
            assert match.group(1) in declared and match.group(4) in declared, line
        else:
            assert re.fullmatch(r"(classDef|class|style) \S+ \S+", line), line
    assert depth == 0
    assert not frames & declared, "a subgraph and a node share an id"


def test_dot_source_parses(spec: Spec) -> None:
    require_dot()
    svg_texts(picture(diagram(spec), "svg"))  # well-formed, and dot exited 0
    assert to_dot(diagram(spec)).startswith("digraph archspec {")


def test_diff_marks_what_differs_and_nothing_else() -> None:
    """llama3-8b against mistral-7b: vocabulary, RoPE θ and mistral's window differ; norms, MLP and layout do not."""
    llama, mistral = load_spec(SPECS["llama3-8b"]), load_spec(SPECS["mistral-7b"])
    assert llama.mlp == mistral.mlp and llama.norm == mistral.norm and llama.block == mistral.block
    assert llama.vocab_size != mistral.vocab_size and llama.position != mistral.position
    figure = diff_diagram(llama, mistral)
    changed = {node.id for node in figure.nodes if node.changed}
    for side in ("a_", "b_"):
        assert {f"{side}embed", f"{side}head", f"{side}position", f"{side}dec.block.attn"} <= changed
        for same in ("dec.block.mlp", "dec.block.attn_norm", "dec.block.mlp_norm", "final_norm", "tokens"):
            assert f"{side}{same}" not in changed
    assert "#cc0000" in to_dot(figure) and "changed" in to_mermaid(figure)


def test_diff_of_dense_and_moe_marks_the_mlp() -> None:
    mistral, mixtral = load_spec(SPECS["mistral-7b"]), load_spec(SPECS["mixtral-8x7b"])
    changed = {node.id for node in diff_diagram(mistral, mixtral).nodes if node.changed}
    assert "a_dec.block.mlp" in changed and "b_dec.block.mlp" in changed
    assert "a_dec.block.attn_norm" not in changed


def test_the_committed_pngs_are_pngs() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "diagrams"
    for name in ("llama3-8b", "mixtral-8x7b", "deepseek-v3", "t5-base", "falcon-7b"):
        assert (docs / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


INTERLEAVED = """\
name: interleaved-moe
vocab_size: 96
d_model: 64
n_layers: 6
context_length: 32
attention: {heads: 4, kv_heads: 2}
position: {kind: none}
norm: rmsnorm
mlp: {activation: swiglu, d_ff: 80}
moe: {experts: 4, top_k: 2, d_ff: 32, layers: [1, 3, 5]}
"""


def test_interleaved_kinds_and_no_positions(tmp_path: Path) -> None:
    """MoE every other layer: both kinds drawn, each entered by the layers the spec routes to it; NoPE drawn."""
    path = tmp_path / "interleaved.yaml"
    path.write_text(INTERLEAVED, encoding="utf-8")
    spec = load_spec(path)
    figure = diagram(spec)
    moe_layers = [i for i in range(spec.n_layers) if spec.is_moe_layer(i)]
    dense_layers = [i for i in range(spec.n_layers) if not spec.is_moe_layer(i)]
    entries = {edge.label for edge in figure.edges if edge.target.endswith(".in")}
    assert entries == {f"layers {', '.join(map(str, moe_layers))}", f"layers {', '.join(map(str, dense_layers))}"}
    assert figure.node("position").lines[0] == "Positions: none"
    assert [legend for _, legend in figure.strips["strip"].legend] == ["dense MLP", "MoE"]
