"""Broken checkpoints give a `WeightLoadError` naming the broken file, and leave the model untouched.

Truncated, empty and garbage-header safetensors files, a damaged shard of a sharded checkpoint, a shard missing
from the index, and an index that is not JSON: each must say which file is at fault (with fifty shards a bare
`SafetensorError: incomplete metadata` tells the user nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import shrink

import archspec
from archspec import WeightLoadError

SPEC = Path(__file__).resolve().parents[2] / "specs" / "llama3-8b.yaml"


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return archspec.build(shrink(archspec.load_spec(SPEC)))


def _saved(model: torch.nn.Module, directory: Path, **options: object) -> Path:
    archspec.save_hf(model, directory, **options)
    return directory


def _damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\xff" * 64, "header": data[:6]}[how]
    file.write_bytes(damaged)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "header"])
def test_damaged_single_file_names_it_and_changes_nothing(tiny_model, tmp_path, how):
    directory = _saved(tiny_model, tmp_path)
    _damage(directory / "model.safetensors", how)
    target = archspec.build(tiny_model.spec)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightLoadError) as error:
        archspec.load_hf_weights(target, directory)
    assert str(directory / "model.safetensors") in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_damaged_shard_is_the_one_named(tiny_model, tmp_path):
    directory = _saved(tiny_model, tmp_path, max_shard_bytes=20_000)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    broken = directory / shards[1]
    _damage(broken, "truncated")
    with pytest.raises(WeightLoadError) as error:
        archspec.load_hf_weights(archspec.build(tiny_model.spec), directory)
    message = str(error.value)
    assert str(broken) in message
    assert all(str(directory / other) not in message for other in shards if other != shards[1])


def test_missing_shard_and_bad_index(tiny_model, tmp_path):
    directory = _saved(tiny_model, tmp_path, max_shard_bytes=20_000)
    index_file = directory / "model.safetensors.index.json"
    shard = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))[0]
    (directory / shard).unlink()
    with pytest.raises(WeightLoadError, match="shard files are missing"):
        archspec.load_hf_weights(archspec.build(tiny_model.spec), directory)
    index_file.write_text('{"weight_map": ')
    with pytest.raises(WeightLoadError, match=r"model\.safetensors\.index\.json:1: invalid JSON"):
        archspec.load_hf_weights(archspec.build(tiny_model.spec), directory)
    index_file.write_text("[1, 2]")
    with pytest.raises(WeightLoadError, match="weight_map"):
        archspec.load_hf_weights(archspec.build(tiny_model.spec), directory)


def test_index_listing_a_tensor_its_shard_lacks(tiny_model, tmp_path):
    directory = _saved(tiny_model, tmp_path, max_shard_bytes=20_000)
    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in index["weight_map"].values() if s != shard)
    index["weight_map"][name] = other  # the index now points at a shard without that tensor
    index_file.write_text(json.dumps(index))
    with pytest.raises(WeightLoadError, match=f"lists tensors its shards lack: {name}"):
        archspec.load_hf_weights(archspec.build(tiny_model.spec), directory)
