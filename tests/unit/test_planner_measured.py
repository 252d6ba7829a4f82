"""The training-memory plan against measured peaks: one optimizer step of tiny models of nine families on CPU.

Measured with PyTorch's own `torch.distributed._tools.mem_tracker.MemTracker`: a TorchDispatchMode that sees
every tensor an operator creates, follows each storage until it is freed (weak references) and records the peak of
the live bytes, by kind (parameters, gradients, optimizer states, activations, temporaries). On CPU there is no
caching allocator, so live tensor bytes are the memory a step holds, and that is what the plan predicts (tensor
bytes; on a GPU `torch.cuda.max_memory_allocated` measures the same). The profiler's memory events would give the
same numbers with less attribution.

The step is forward + backward + AdamW step + zero_grad, in float32 (and bfloat16), with the inputs made inside the step as
a data loader would. Step 1 allocates AdamW's states lazily, so it is run first and step 2, the steady state that
every later step repeats, is measured. The plan is read from the spec alone (`plan_memory`): the test never looks
at the plan's internals nor counts saved tensors; it compares the plan's total with the measured peak.

Shapes: d_model 64, 2 layers, vocab 128 (`tests/tiny.shrink`), so parameters and optimizer states dominate the
smallest point and activations the largest (batch 4 x 64 tokens); with checkpointing the peak moves to the
recomputed block. Every family runs its middle point by default; all three points are @slow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import archspec
from archspec.analysis.planner import DEVICES, plan_memory
from archspec.distributed import enable_activation_checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import shrink  # noqa: E402

SPECS = Path(__file__).resolve().parents[2] / "specs"
FAMILIES = {
    "dense": "llama3-8b",
    "sliding-window": "mistral-7b",
    "alibi": "bloom-560m",
    "moe": "mixtral-8x7b",
    "mla": "deepseek-v2-lite",
    "t5": "t5-small",
    "glm-prefix": "chatglm-6b",
    "vision": "llava-1.5-7b",
    "softcap": "gemma-2-9b",
}
POINTS = [(1, 20), (3, 40), (4, 64)]  # (batch, seq): parameters dominate the first, activations the last
TOLERANCE = 0.10


def _inputs(model: torch.nn.Module, spec: archspec.Spec, batch: int, seq: int) -> tuple[torch.Tensor, dict]:
    """Token ids and labels; decoder inputs (T5), half of each row as GLM's bidirectional prefix, one image per
    row (its placeholder tokens at positions 1 ..) for a vision-language model."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size - 1, (batch, seq), generator=generator)
    options: dict = {"labels": ids}
    if spec.structure == "encoder-decoder":
        options["decoder_input_ids"] = ids
    if spec.structure == "glm":
        options["prefix_lengths"] = torch.full((batch,), seq // 2)
    if spec.vision is not None:
        ids[:, 1 : 1 + model.tokens_per_image] = model.image_token
        size = spec.vision.tower.image_size
        options["pixel_values"] = torch.randn(batch, 3, size, size, generator=generator)
    return ids, options


CHECKPOINTING = ["none", "selective", "full"]  # selective: every other block, from the first


def measured_peak(
    spec: archspec.Spec, batch: int, seq: int, checkpointing: str, dtype: torch.dtype = torch.float32
) -> int:
    """Peak live tensor bytes of the second training step (see the module docstring)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = archspec.build(spec, dtype=dtype)
    if checkpointing != "none":
        enable_activation_checkpointing(model, every=2 if checkpointing == "selective" else 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        ids, options = _inputs(model, spec, batch, seq)
        if "pixel_values" in options:
            options["pixel_values"] = options["pixel_values"].to(dtype)
        model(ids, **options).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    (peaks,) = tracker.get_tracker_snapshot("peak").values()
    return peaks["Total"]


def _check(family: str, batch: int, seq: int, checkpointing: str, dtype: str = "float32") -> None:
    spec = shrink(archspec.load_spec(SPECS / f"{FAMILIES[family]}.yaml"))
    measured = measured_peak(spec, batch, seq, checkpointing, getattr(torch, dtype))
    plan = plan_memory(
        spec,
        batch=batch,
        seq=seq,
        dtype=dtype,
        checkpointing=checkpointing,  # type: ignore[arg-type]
        device=DEVICES["cpu"],
        images=1 if spec.vision is not None else 0,
    )
    error = plan.memory.total / measured - 1
    assert abs(error) <= TOLERANCE, f"{family} b={batch} s={seq}: plan {plan.memory.total} vs measured {measured}"


@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
@pytest.mark.parametrize("family", FAMILIES)
def test_plan_matches_the_measured_peak(family: str, checkpointing: str) -> None:
    _check(family, *POINTS[1], checkpointing)


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS, ids=[f"b{b}-s{s}" for b, s in POINTS])
@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
@pytest.mark.parametrize("family", FAMILIES)
def test_plan_matches_the_measured_peak_at_every_point(family: str, checkpointing: str, point: tuple) -> None:
    _check(family, *point, checkpointing)


@pytest.mark.parametrize("family", ["dense", "moe", "t5"])
def test_plan_matches_the_measured_peak_in_bfloat16(family: str) -> None:
    """bfloat16 weights, activations and AdamW states; norms, the router, the loss and CPU's reference attention
    keep float32 copies, which the plan counts at 4 bytes."""
    _check(family, *POINTS[2], "none", "bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("point", [POINTS[0], POINTS[2]], ids=["b1-s20", "b4-s64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_plan_matches_the_measured_peak_in_bfloat16_at_both_ends(family: str, point: tuple) -> None:
    _check(family, *point, "none", "bfloat16")
