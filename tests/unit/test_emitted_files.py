"""What an emitted file is as a model a person reads and uses (issue: "one wiring").

- It runs: a forward pass, a training step (loss and backward), an eval forward, greedy and sampled generation of
  every spec in specs/ (shrunk) execute at least 90% of the file's statements, measured by coverage.py: the file
  holds only the code its spec runs.
- It is short: llama3-8b's file is at most 570 lines with KV-cache generation (it was 449 before padding masks,
  packed documents and left-padded batched generation added about 115).
- It starts where `archspec.build` starts: from the same torch seed, the emitted model's constructor gives the same
  weights, every one finite, and a training step a finite loss (it used to leave MoE experts `torch.empty`).
- It names nothing of archspec's below its header: no library paths, no test files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import import_emitted, shrink, spec_files

import archspec
from archspec.emit import emit_source

COVERAGE_TARGET = 0.90
SPECS = spec_files()


def workload_inputs(spec: archspec.Spec, generator: torch.Generator) -> dict[str, Any]:
    """The inputs the model's kind takes: token ids, and images or decoder inputs."""
    ids = torch.randint(0, spec.vocab_size - 1, (2, 9), generator=generator)
    extra: dict[str, Any] = {}
    if spec.structure == "encoder-decoder":
        extra["decoder_input_ids"] = torch.randint(0, spec.vocab_size, (2, 5), generator=generator)
    vision = spec.vision
    if vision is not None:
        per_image = vision.tokens_per_image
        ids = torch.cat((torch.full((2, per_image), vision.image_token), ids), dim=1)  # one image per row
        tower = vision.tower
        if tower.kind == "vit":
            extra["pixel_values"] = torch.randn(
                2, tower.channels, tower.image_size, tower.image_size, generator=generator
            )
        else:
            extra["image_features"] = torch.randn(2, tower.patches, tower.width, generator=generator)
    return {"ids": ids, **extra}


def run_workload(model: torch.nn.Module, spec: archspec.Spec) -> torch.Tensor:
    """Forward, training step, eval forward, greedy and sampled generation, then padded and packed batches; returns
    the first training loss."""
    inputs = workload_inputs(spec, torch.Generator().manual_seed(0))
    ids = inputs.pop("ids")
    model.train()
    labels = inputs["decoder_input_ids"] if "decoder_input_ids" in inputs else ids
    out = model(ids, labels=labels, **inputs)
    out.loss.backward()
    model.eval()
    with torch.no_grad():
        model(ids, **inputs)
    generate_inputs = {key: value for key, value in inputs.items() if key != "decoder_input_ids"}
    generate_inputs["eos_token_id"] = spec.vocab_size - 1  # a stop token, as real specs have
    model.generate(ids, max_new_tokens=4, **generate_inputs)
    model.generate(ids, max_new_tokens=4, do_sample=True, top_k=5, top_p=0.9, temperature=0.8, **generate_inputs)
    if spec.structure != "encoder-decoder":
        run_padded_workload(model, spec, ids, inputs, generate_inputs)
    return out.loss.detach()


def run_padded_workload(
    model: torch.nn.Module, spec: archspec.Spec, ids: torch.Tensor, inputs: dict[str, Any], generate_inputs: dict
) -> None:
    """A left-padded batch (its loss and generation) and packed documents, as a server and a trainer call them."""
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # the second prompt is two tokens shorter, on the left
    model.train()
    model(ids, attention_mask=mask, labels=ids, **inputs).loss.backward()
    model.eval()
    half = ids.shape[1] // 2
    with torch.no_grad():
        documents = (torch.arange(ids.shape[1]) >= half).long().expand_as(ids)
        model(ids, document_ids=documents, **inputs)
        restarting = torch.cat((torch.arange(half), torch.arange(ids.shape[1] - half)))
        model(ids, position_ids=restarting.expand_as(ids), labels=ids, **inputs)
    model.generate(ids, max_new_tokens=3, attention_mask=mask, **generate_inputs)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_workload_executes_most_of_the_file(path: Path, tmp_path: Path) -> None:
    coverage = pytest.importorskip("coverage")
    spec = shrink(archspec.load_spec(path))
    measure = coverage.Coverage(data_file=None, include=[str(tmp_path / "*.py")], branch=False)
    measure.start()
    try:  # the import too: definitions are statements
        source_module = import_emitted(spec, tmp_path)
        torch.manual_seed(0)
        run_workload(source_module.Model(), spec)
    finally:
        measure.stop()
    _, statements, _, missing, _ = measure.analysis2(source_module.__file__)
    share = 1 - len(missing) / len(statements)
    lines = Path(source_module.__file__).read_text().splitlines()
    unexecuted = [f"{number}: {lines[number - 1].strip()}" for number in missing]
    assert share >= COVERAGE_TARGET, f"{share:.1%} of {len(statements)} statements; not run:\n" + "\n".join(unexecuted)


def test_llama3_8b_file_is_short() -> None:
    lines = emit_source(archspec.load_spec(Path(__file__).resolve().parents[2] / "specs" / "llama3-8b.yaml"))
    assert len(lines.splitlines()) <= 570


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_constructor_initialises_as_build_does(path: Path, tmp_path: Path) -> None:
    spec = shrink(archspec.load_spec(path))
    module = import_emitted(spec, tmp_path)
    torch.manual_seed(1)
    built = archspec.build(spec)
    torch.manual_seed(1)
    emitted = module.Model()
    expected, actual = built.state_dict(), emitted.state_dict()
    assert list(actual) == list(expected)
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[name]), name
        assert torch.isfinite(tensor).all(), name
    loss = run_workload(emitted, spec)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in emitted.parameters() if p.grad is not None)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_no_archspec_names_below_the_header(path: Path) -> None:
    source = emit_source(archspec.load_spec(path))
    body = source.split('"""\n', 2)[2]  # after the module docstring
    for pattern in (r"archspec\.", r"archspec/", r"\btests?/", r"test_\w+\.py"):
        found = re.findall(rf".*{pattern}.*", body)
        assert not found, found[:3]
