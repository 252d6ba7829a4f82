"""GGUF export and import without transformers: round trips, llama.cpp's Q/K row layout, quantised types, errors.

The references: the `gguf` package's own reader and `gguf.quants` (llama.cpp's project), and llama.cpp's RoPE
layout written out by hand (its rotation pairs rows 2i and 2i+1 of each head, HF's pairs rows i and i + d/2).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import archspec
from archspec.cli import app
from archspec.interop.families.llama import from_llama_cpp_rows, to_llama_cpp_rows
from archspec.spec.errors import ArchspecError, WeightLoadError

LLAMA = """
name: tiny-gguf
vocab_size: 64
d_model: 32
n_layers: 2
context_length: 64
attention: {heads: 4, kv_heads: 2, head_dim: 8, bias: {q: true, k: true, v: true, o: true}}
position: {kind: rope, theta: 500000.0}
mlp: {activation: swiglu, d_ff: 48}
norm: {kind: rmsnorm, eps: 1.0e-5}
"""
QWEN2_TIED = """
name: tiny-qwen2
vocab_size: 64
d_model: 32
n_layers: 2
context_length: 64
attention: {heads: 4, kv_heads: 2, bias: {q: true, k: true, v: true, o: false}}
position: {kind: rope, theta: 1000000.0}
mlp: {activation: swiglu, d_ff: 64}
embeddings: {tied: true}
"""


def _model(text: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = archspec.build(archspec.spec_from_dict(__import__("yaml").safe_load(text)), dtype=dtype)
    with torch.no_grad():  # unit norms and zero biases would hide a norm or bias that goes to the wrong place
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: v.contents() for k, v in reader.fields.items() if not k.startswith("GGUF.")}


def _raw(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize(("text", "kind"), [(LLAMA, "f32"), (LLAMA, "f16"), (QWEN2_TIED, "bf16"), (QWEN2_TIED, "f32")])
def test_gguf_to_archspec_to_gguf_is_bit_identical(tmp_path: Path, text: str, kind: str) -> None:
    """Loaded into a float32 model (which holds f16 / bf16 matrices and the f32 vectors beside them exactly)."""
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    archspec.save_gguf(_model(text), first, type=kind)
    spec = archspec.spec_from_gguf(first)
    model = archspec.load_gguf_weights(archspec.build(spec, device="meta"), first)
    archspec.save_gguf(model, second, type=kind)
    assert _fields(first) == _fields(second)
    assert _raw(first) == _raw(second)


def test_imported_spec_and_weights_are_the_exported_model(tmp_path: Path) -> None:
    model = _model(LLAMA)
    archspec.save_gguf(model, tmp_path / "m.gguf")
    spec = archspec.spec_from_gguf(tmp_path / "m.gguf")
    assert spec.model_dump(exclude={"description"}) == model.spec.model_dump(exclude={"description"})
    back = archspec.load_gguf_weights(archspec.build(spec), tmp_path / "m.gguf")
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_q_and_k_rows_are_stored_in_llama_cpps_interleaved_rope_layout(tmp_path: Path) -> None:
    """llama.cpp rotates rows (2i, 2i+1) of a head together, HF rows (i, i + d/2): the file holds HF row i at 2i."""
    model = _model(LLAMA)
    archspec.save_gguf(model, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    hd = 8
    for name, ours, heads in (("attn_q", "attn.q", 4), ("attn_k", "attn.k", 2)):
        hf = model.state_dict()[f"layers.1.{ours}.weight"].numpy()
        file = stored[f"blk.1.{name}.weight"]
        for head in range(heads):
            for i in range(hd // 2):
                np.testing.assert_array_equal(file[head * hd + 2 * i], hf[head * hd + i])
                np.testing.assert_array_equal(file[head * hd + 2 * i + 1], hf[head * hd + i + hd // 2])
        bias = model.state_dict()[f"layers.1.{ours}.bias"].numpy()
        np.testing.assert_array_equal(stored[f"blk.1.{name}.bias"][1], bias[hd // 2])  # head 0, pair 0, second
    v = model.state_dict()["layers.1.attn.v.weight"].numpy()
    np.testing.assert_array_equal(stored["blk.1.attn_v.weight"], v)  # v is not rotated: not permuted


def test_row_permutation_inverts_exactly() -> None:
    config = {"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 2}
    weight = torch.randn(6 * 10, 7)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        part = weight if "q_proj" in name else weight[:20]
        assert torch.equal(from_llama_cpp_rows(name, to_llama_cpp_rows(name, part, config), config), part)
    assert torch.equal(to_llama_cpp_rows("x.q_proj.weight", weight, {**config, "model_type": "qwen2"}), weight)


def test_q8_0_tensors_load_as_gguf_quants_dequantises_them(tmp_path: Path) -> None:
    model = _model(QWEN2_TIED)
    archspec.save_gguf(model, tmp_path / "q.gguf", type="q8_0")
    reader = gguf.GGUFReader(tmp_path / "q.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    loaded = archspec.load_gguf_weights(
        archspec.build(archspec.spec_from_gguf(tmp_path / "q.gguf")), tmp_path / "q.gguf"
    )
    for tensor in reader.tensors:
        if tensor.name == "blk.0.ffn_up.weight":
            expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            assert torch.equal(loaded.layers[0].mlp.up.weight, torch.from_numpy(expected))
            original = model.layers[0].mlp.up.weight
            assert (loaded.layers[0].mlp.up.weight - original).abs().max() <= original.abs().max() / 127 + 1e-6


def _with(
    tmp_path: Path, arch: str = "llama", extra: dict[str, object] | None = None, raw: dict[str, object] | None = None
) -> Path:
    """A copy of a tiny exported llama file with its architecture renamed, tensors added or replaced by raw data of
    another GGML type (`raw`: name -> (bytes array, type))."""
    source = tmp_path / "src.gguf"
    archspec.save_gguf(_model(LLAMA), source)
    reader = gguf.GGUFReader(source)
    out = tmp_path / "edited.gguf"
    writer = gguf.GGUFWriter(out, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value_type = field.types[0]
        sub = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name.replace("llama.", f"{arch}."), field.contents(), value_type, sub)
    for tensor in reader.tensors:
        data, kind = (raw or {}).get(tensor.name, (np.array(tensor.data), tensor.tensor_type))
        writer.add_tensor(tensor.name, data, raw_dtype=kind)
    for name, data in (extra or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_unsupported_architecture_is_named_with_its_metadata_key(tmp_path: Path) -> None:
    with pytest.raises(ArchspecError, match=r"general.architecture = 'mamba' cannot be expressed"):
        archspec.spec_from_gguf(_with(tmp_path, arch="mamba"))


def test_an_unexplained_tensor_fails_the_load_and_leaves_nothing_half_loaded(tmp_path: Path) -> None:
    path = _with(tmp_path, extra={"blk.0.surprise.weight": np.ones((4, 4), dtype=np.float32)})
    model = archspec.build(archspec.spec_from_gguf(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightLoadError, match=r"edited.gguf.*unexpected: blk.0.surprise.weight"):
        archspec.load_gguf_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_llama3_frequency_factors_are_refused_up_front(tmp_path: Path) -> None:
    path = _with(tmp_path, extra={"rope_freqs.weight": np.ones(4, dtype=np.float32)})
    with pytest.raises(ArchspecError, match="rope_freqs.weight"):
        archspec.spec_from_gguf(path)


def test_a_spec_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    archspec.save_gguf(_model(LLAMA), tmp_path / "m.gguf")
    other = archspec.build(_model(LLAMA.replace("d_ff: 48", "d_ff: 40")).spec)
    with pytest.raises(WeightLoadError, match="wrong shape"):
        archspec.load_gguf_weights(other, tmp_path / "m.gguf")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_round_trip(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(LLAMA)
    code, out = _cli("export-gguf", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "m.gguf"), "--type", "q8_0")
    assert code == 0, out
    code, out = _cli("import-gguf", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "back.yaml"))
    assert code == 0, out
    back = archspec.load_spec(tmp_path / "back.yaml")
    assert back.model_dump(exclude={"description"}) == archspec.load_spec(tmp_path / "s.yaml").model_dump(
        exclude={"description"}
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_cli_damaged_files_are_one_line_errors_naming_the_file(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.gguf"
    archspec.save_gguf(_model(LLAMA), good)
    bad = tmp_path / "bad.gguf"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    elif damage == "empty":
        bad.write_bytes(b"")
    code, out = _cli("import-gguf", str(bad), "-o", str(tmp_path / "x.yaml"))
    assert code == 1
    assert out.startswith("error: ") and str(bad) in out and "Traceback" not in out


def test_cli_refuses_an_unknown_type_before_building(tmp_path: Path) -> None:
    code, out = _cli("export-gguf", "specs/llama3-70b.yaml", "-o", str(tmp_path / "m.gguf"), "--type", "q4_k")
    assert code == 1 and "q4_k" in out and "f32, f16, bf16, q8_0" in out


def test_cli_exports_a_run_directory_with_its_weights(tmp_path: Path) -> None:
    """A directory with spec.yaml and model.safetensors in archspec's names (as export-hf reads it)."""
    from safetensors.torch import save_file

    model = _model(LLAMA, seed=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(LLAMA)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    code, out = _cli("export-gguf", str(run), "-o", str(tmp_path / "run.gguf"))
    assert code == 0, out
    back = archspec.load_gguf_weights(archspec.build(model.spec), tmp_path / "run.gguf")
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_a_type_gguf_quants_cannot_dequantise_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    q8_1 = gguf.GGMLQuantizationType.Q8_1  # gguf 0.19's quants has no Q8_1 dequantiser
    raw = np.zeros(gguf.quant_shape_to_byte_shape((48, 32), q8_1), dtype=np.uint8)
    path = _with(tmp_path, raw={"blk.0.ffn_up.weight": (raw, q8_1)})
    model = archspec.build(archspec.spec_from_gguf(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        WeightLoadError, match=r"edited.gguf: gguf.quants cannot dequantise .*blk.0.ffn_up.weight \(Q8_1\)"
    ):
        archspec.load_gguf_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16"])
def test_quantised_tensors_load_as_gguf_quants_dequantises_them(tmp_path: Path, kind: str) -> None:
    qtype = gguf.GGMLQuantizationType[kind]
    values = np.random.default_rng(0).standard_normal((48, 32)).astype(np.float32)
    raw = gguf.quants.quantize(values, qtype)
    path = _with(tmp_path, raw={"blk.0.ffn_up.weight": (raw, qtype)})
    model = archspec.load_gguf_weights(archspec.build(archspec.spec_from_gguf(path)), path)
    expected = torch.from_numpy(np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32))
    assert torch.equal(model.layers[0].mlp.up.weight, expected)
    assert (expected - torch.from_numpy(values)).abs().max() < 0.5  # a quantisation of these values, not noise
