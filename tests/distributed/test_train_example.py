"""examples/train.py: trains a tiny spec, and a run interrupted and resumed from its DCP checkpoint produces the
same losses, bit for bit, as an uninterrupted run; the run directory exports to transformers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import shrink

import archspec

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train.py"


def _train_module():
    spec = importlib.util.spec_from_file_location("archspec_example_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("train")
    spec = shrink(archspec.load_spec(ROOT / "specs" / "gpt2.yaml"))
    spec = spec.model_copy(update={"vocab_size": 256})  # raw bytes
    (directory / "tiny.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    (directory / "text.txt").write_bytes((ROOT / "archspec" / "distributed.py").read_bytes())
    return directory


def _args(inputs: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        str(inputs / "tiny.yaml"),
        str(inputs / "text.txt"),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch",
        "2",
        "--seq",
        "32",
        "--warmup",
        "2",
        "--lr",
        "3e-3",
        "--checkpoint-every",
        "3",
        *extra,
    ]


def test_resume_reproduces_the_uninterrupted_run(inputs, tmp_path):
    train = _train_module()
    straight = train.main(_args(inputs, tmp_path / "straight", 6))
    first = train.main(_args(inputs, tmp_path / "resumed", 3))
    rest = train.main(_args(inputs, tmp_path / "resumed", 6, "--resume"))
    assert len(straight) == 6 and straight[-1] < straight[0]
    assert first + rest == straight
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5, 6]


def test_run_directory_exports_to_transformers(inputs, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from archspec.interop.hf_export import export_hf

    _train_module().main(_args(inputs, tmp_path / "run", 3, "--activation-checkpointing"))
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    model = archspec.build(archspec.spec_from_hf(tmp_path / "hf"))
    archspec.load_hf_weights(model, tmp_path / "hf")
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert (hf_model(ids).logits - model.eval()(ids).logits).abs().max().item() <= 1e-5


def test_packed_rows_hold_whole_documents_with_restarting_positions():
    import torch

    train = _train_module()
    documents = [torch.arange(n) + 10 * n for n in (3, 5, 2)]
    ids, positions = train.get_packed_batch(documents, batch=4, seq=7, seed=0, step=0, data_rank=0)
    assert ids.shape == positions.shape == (4, 7)
    for row, where in zip(ids, positions, strict=True):
        starts = (where == 0).nonzero().flatten().tolist()
        assert starts[0] == 0
        for begin, end in zip(starts, [*starts[1:], 7], strict=True):  # each piece is a document's beginning
            length = end - begin
            assert any(torch.equal(row[begin:end], d[:length]) for d in documents)
            assert torch.equal(where[begin:end], torch.arange(length))


def test_pack_trains_on_documents(inputs, tmp_path):
    losses = _train_module().main(_args(inputs, tmp_path / "packed", 6, "--pack"))
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_small_vocab_is_clamped_with_a_message(inputs, tmp_path, capsys):
    spec = archspec.load_spec(inputs / "tiny.yaml").model_copy(update={"vocab_size": 128})
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    args = _args(inputs, tmp_path / "run", 1)
    args[0] = str(tmp_path / "small.yaml")
    _train_module().main(args)
    assert "byte values >= 128 are clamped to 127" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--tp"]], ids=["fsdp", "tp"])
def test_torchrun_two_processes(inputs, tmp_path, mode):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TRAIN)]
    subprocess.run([*command, *_args(inputs, tmp_path / "run", 3, *mode)], check=True, env=env, cwd=ROOT)
    subprocess.run([*command, *_args(inputs, tmp_path / "run", 4, "--resume", *mode)], check=True, env=env, cwd=ROOT)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def moe_inputs(tmp_path_factory):
    """A tiny Mixtral (8 experts, dense width = expert width: transformers' Mixtral has one) on raw bytes."""
    directory = tmp_path_factory.mktemp("train-moe")
    data = shrink(archspec.load_spec(ROOT / "specs" / "mixtral-8x7b.yaml")).model_dump(mode="json")
    data.update(vocab_size=256)
    data["mlp"]["d_ff"] = data["moe"]["d_ff"]
    (directory / "tiny.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (directory / "text.txt").write_bytes((ROOT / "archspec" / "distributed.py").read_bytes())
    return directory


@pytest.mark.slow
def test_torchrun_expert_parallel_resumes_and_exports(moe_inputs, tmp_path):
    """--ep 2: an interrupted and resumed run logs the losses of an uninterrupted one, and its run directory
    exports to a transformers Mixtral whose logits are those of the checkpoint loaded in one process."""
    transformers = pytest.importorskip("transformers")
    import torch
    import torch.distributed.checkpoint as dcp

    from archspec.interop.hf_export import export_hf

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))  # this checkout's archspec
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TRAIN)]
    for run, steps, extra in (("straight", 4, []), ("resumed", 2, []), ("resumed", 4, ["--resume"])):
        args = _args(moe_inputs, tmp_path / run, steps, "--ep", "2", *extra)
        subprocess.run([*command, *args], check=True, env=env, cwd=ROOT)
    losses = {
        run: [json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("straight", "resumed")
    }
    assert losses["resumed"] == losses["straight"]

    export_hf(tmp_path / "resumed", tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    model = archspec.build(archspec.load_spec(tmp_path / "resumed" / "spec.yaml")).eval()
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(tmp_path / "resumed" / "step-4"))
    model.load_state_dict(state["model"])
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert (hf_model(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
