"""`save_hf` / `export_hf` write tensor by tensor in the dtype asked for: each checkpoint tensor (a fused QKV, a
transposed or cast copy) is made right before it is written and released after, so no second copy of the model
exists; the files read back exactly as `safetensors` reads its own, and run directories are read into a model in
the target dtype (benchmarks/export_memory.py measures the memory)."""

from __future__ import annotations

import gc
import json
import warnings
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import SPECS_DIR, shrink

import archspec
from archspec.interop import hf_export
from archspec.interop.hf_export import ExportError, export_dtype, export_hf, hf_state_dict, save_hf

# transposed Conv1D + fused c_attn, fused MQA QKV, fused gate_up, per-expert stacks, MLA + correction bias, T5
FAMILIES = ["gpt2", "falcon-7b", "glm4-9b", "qwen3-30b-a3b", "deepseek-v3", "flan-t5-xl", "llama3-8b"]


def _tiny(name: str) -> archspec.Spec:
    return shrink(archspec.load_spec(SPECS_DIR / f"{name}.yaml"))


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return archspec.build(_tiny(name))


def _written(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors |= load_file(file)
    return tensors


def _config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_tensors_are_the_models_cast_to_bf16(name, tmp_path):
    model = _model(name)
    save_hf(model, tmp_path, dtype=torch.bfloat16)
    expected = {k: v.to(torch.bfloat16) for k, v in hf_state_dict(model, _config(tmp_path)["model_type"]).items()}
    written = _written(tmp_path)
    assert written.keys() == expected.keys()
    assert all(written[k].dtype == torch.bfloat16 and torch.equal(written[k], expected[k]) for k in expected)
    assert _config(tmp_path)["dtype"] == "bfloat16"


@pytest.mark.parametrize("name", ["gpt2", "qwen3-30b-a3b"])
def test_float32_export_of_a_spec_is_the_built_models_state(name, tmp_path):
    """export_hf(dtype=float32) builds as archspec.build does, with the same random stream: the same tensors."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_tiny(name).model_dump(mode="json"), sort_keys=False))
    torch.manual_seed(3)
    export_hf(spec_file, tmp_path / "out", dtype="float32")
    model = _model(name, seed=3)
    expected = hf_state_dict(model, _config(tmp_path / "out")["model_type"])
    written = _written(tmp_path / "out")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert _config(tmp_path / "out")["dtype"] == "float32"


def test_random_weights_follow_archspecs_init_in_the_target_dtype(tmp_path):
    """The values are archspec.build(spec, dtype=...)'s for the same seed: N(0, 0.02) matrices, zero biases, unit
    norms, drawn directly in bfloat16."""
    spec = _tiny("gpt2")
    torch.manual_seed(5)
    export_hf(spec, tmp_path, dtype="bf16")
    torch.manual_seed(5)
    model = archspec.build(spec, dtype=torch.bfloat16)
    expected = hf_state_dict(model, "gpt2")
    written = _written(tmp_path)
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert torch.equal(written["transformer.ln_f.weight"], torch.ones(64, dtype=torch.bfloat16))
    assert not written["transformer.h.0.attn.c_attn.bias"].any()
    matrix = written["transformer.h.0.mlp.c_fc.weight"].float()
    assert abs(matrix.mean().item()) < 2e-3 and abs(matrix.std().item() - 0.02) < 2e-3


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16),
     ("half", torch.float16), ("float32", torch.float32), ("fp32", torch.float32), (torch.bfloat16, torch.bfloat16)],
)  # fmt: skip
def test_export_dtype_names(name, dtype):
    assert export_dtype(name) == dtype


@pytest.mark.parametrize("name", ["int8", "float64", "fp8", "bfloat", ""])
def test_other_dtypes_are_refused_naming_the_choices(name):
    with pytest.raises(ExportError, match="use float32, float16, bfloat16"):
        export_dtype(name)


def test_streamed_files_read_as_safetensors_own(tmp_path):
    """The writer's files give what `safetensors.torch.save_file` of the same tensors gives (and its metadata)."""
    model = _model("gpt2")
    save_hf(model, tmp_path / "ours", dtype=torch.float16)
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    save_file(ours, tmp_path / "theirs.safetensors", metadata={"format": "pt"})
    theirs = load_file(tmp_path / "theirs.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with safe_open(str(tmp_path / "ours" / "model.safetensors"), framework="pt") as reader:
        assert reader.metadata() == {"format": "pt"}
    header = (tmp_path / "ours" / "model.safetensors").read_bytes()
    assert (8 + int.from_bytes(header[:8], "little")) % 8 == 0  # data 8-byte aligned


def test_sharding_with_a_small_max_shard(tmp_path):
    model = _model("llama3-8b")
    save_hf(model, tmp_path / "one", dtype=torch.bfloat16)
    save_hf(model, tmp_path / "many", dtype=torch.bfloat16, max_shard_bytes=30_000)
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "many" / "model.safetensors").exists()
    one, many = _written(tmp_path / "one"), _written(tmp_path / "many")
    assert one.keys() == many.keys() == index["weight_map"].keys()
    assert all(torch.equal(one[k], many[k]) for k in one)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in one.values())
    for file in files:
        shard = load_file(tmp_path / "many" / file)
        assert sum(t.numel() * t.element_size() for t in shard.values()) <= 30_000 or len(shard) == 1
        assert all(index["weight_map"][k] == file for k in shard)


@pytest.mark.parametrize("name", ["gpt2", "falcon-7b", "qwen3-30b-a3b"])
def test_one_new_tensor_exists_at_a_time(name, tmp_path, monkeypatch):
    """Every checkpoint tensor is a copy here (float32 -> bfloat16, transposes, fused QKV); each one made is gone
    before the next is made."""
    model = _model(name)
    made: list[weakref.ref] = []
    plan = hf_export._hf_tensors

    def tracked(*args, **kwargs):
        def track(make):
            def wrapper():
                gc.collect()
                assert [ref for ref in made if ref() is not None] == [], "an earlier tensor is still alive"
                tensor = make()
                made.append(weakref.ref(tensor))
                return tensor

            return wrapper

        return {k: v._replace(make=track(v.make)) for k, v in plan(*args, **kwargs).items()}

    monkeypatch.setattr(hf_export, "_hf_tensors", tracked)
    save_hf(model, tmp_path, dtype=torch.bfloat16, max_shard_bytes=50_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(made) == len(index) and len(set(index.values())) > 1


def _run_dir(tmp_path: Path, name: str, dtype: torch.dtype = torch.float32) -> tuple[Path, torch.nn.Module]:
    """A run directory as examples/train.py writes it: spec.yaml and a DCP checkpoint of model and optimizer."""
    model = _model(name, seed=7).to(dtype)
    with torch.no_grad():
        for p in [*model.parameters(), *model.buffers()]:
            p.add_(0.01 * torch.randn_like(p))  # "trained": not archspec's init
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(model.spec.model_dump(mode="json"), sort_keys=False))
    optimizer = torch.optim.AdamW(model.parameters())
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(run / "step-2"), no_dist=True)
    return run, model


@pytest.mark.parametrize("name", ["llama3-8b", "gpt2", "deepseek-v3", "flan-t5-xl"])
def test_a_float32_run_exports_as_its_weights_cast_to_bf16(name, tmp_path):
    """Read into an uninitialised bfloat16 model: every tensor comes from the checkpoint (DeepSeek-V3's correction
    bias buffer too), the tied head is tied again."""
    run, model = _run_dir(tmp_path, name)
    export_hf(run, tmp_path / "hf", dtype="bfloat16")
    expected = hf_state_dict(model, _config(tmp_path / "hf")["model_type"])
    written = _written(tmp_path / "hf")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k].to(torch.bfloat16)) for k in expected)
    assert _config(tmp_path / "hf")["dtype"] == "bfloat16"


def test_a_bf16_run_exports_in_float32_exactly(tmp_path):
    run, model = _run_dir(tmp_path, "llama3-8b", dtype=torch.bfloat16)
    export_hf(run, tmp_path / "hf", dtype="fp32")
    expected = hf_state_dict(model, "llama")
    written = _written(tmp_path / "hf")
    assert all(written[k].dtype == torch.float32 and torch.equal(written[k], expected[k].float()) for k in expected)


def test_a_run_with_model_safetensors_is_read_tensor_by_tensor(tmp_path):
    model = _model("gpt2", seed=9)
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(model.spec.model_dump(mode="json"), sort_keys=False))
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: saved once
    save_file({k: v.contiguous() for k, v in state.items()}, run / "model.safetensors")
    export_hf(run, tmp_path / "hf", dtype=torch.bfloat16)
    expected = hf_state_dict(model, "gpt2")
    written = _written(tmp_path / "hf")
    assert all(torch.equal(written[k], expected[k].to(torch.bfloat16)) for k in expected)


def test_a_model_safetensors_that_does_not_fit_names_the_keys(tmp_path):
    model = _model("llama3-8b")
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(model.spec.model_dump(mode="json"), sort_keys=False))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "final_norm.weight"}
    state["extra.weight"] = torch.zeros(2)
    save_file(state, run / "model.safetensors")
    with pytest.raises(ExportError, match=r"missing: final_norm\.weight; unexpected: extra\.weight"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
