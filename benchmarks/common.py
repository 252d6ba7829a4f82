"""Shared harness of the benchmarks: model pairs with identical weights, interleaved timing, result files.

Every comparison is a ratio measured in one process: the variants run in turn (A, B, C, A, B, C, ...) so that
noise from other processes on the machine hits them alike, and each variant's median is reported.

A "pair" is a `transformers` model built from a config, saved, and imported by archspec
(`spec_from_hf` + `build` + `load_hf_weights`), so both sides hold the same weights in the same dtype.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import archspec

RESULTS = Path(__file__).parent / "results"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------- configs
def hf_config(family: str, size: str, **overrides: Any) -> Any:
    """A `transformers` config of a family (llama3, mixtral, t5, gemma2, gpt_oss) at a size: `small` (CPU), `1b`
    (GPU), `8b`."""
    import transformers

    if family == "llama3":
        sizes = {
            "small": dict(
                hidden_size=256,
                intermediate_size=704,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                vocab_size=8192,
            ),
            # Llama-3.2-1B's shape (untied here so that both libraries compute the same head matmul).
            "1b": dict(
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=128256,
            ),
            "8b": dict(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=128256,
            ),
        }
        kw = dict(
            sizes[size],
            max_position_embeddings=8192,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        kw.update(overrides)
        return transformers.LlamaConfig(**kw)
    if family == "mixtral":
        sizes = {
            "small": dict(
                hidden_size=256,
                intermediate_size=512,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                vocab_size=8192,
                num_local_experts=8,
                num_experts_per_tok=2,
            ),
        }
        kw = dict(
            sizes[size],
            max_position_embeddings=8192,
            rope_theta=1e6,
            rms_norm_eps=1e-5,
            sliding_window=None,
            tie_word_embeddings=False,
            output_router_logits=True,
            router_aux_loss_coef=0.02,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        kw.update(overrides)
        return transformers.MixtralConfig(**kw)
    if family == "t5":
        sizes = {
            "small": dict(
                d_model=256, d_kv=32, d_ff=704, num_layers=4, num_decoder_layers=4, num_heads=8, vocab_size=8192
            ),
        }
        kw = dict(
            sizes[size],
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
        kw.update(overrides)
        return transformers.T5Config(**kw)
    if family == "gemma2":  # soft-capped scores and logits, sliding and full layers, sandwich norms
        sizes = {
            "small": dict(
                hidden_size=256,
                intermediate_size=704,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=32,
                query_pre_attn_scalar=32,
                vocab_size=8192,
            ),
            # Gemma-2-2B's shape
            "1b": dict(
                hidden_size=2304,
                intermediate_size=9216,
                num_hidden_layers=26,
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=256,
                query_pre_attn_scalar=256,
                vocab_size=256000,
            ),
        }
        kw = dict(
            sizes[size],
            max_position_embeddings=8192,
            sliding_window=256 if size == "small" else 4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        kw.update(overrides)
        return transformers.Gemma2Config(**kw)
    if family == "gpt_oss":  # attention sinks, sliding and full layers, clamped-SwiGLU experts with biases
        sizes = {
            "small": dict(
                hidden_size=256,
                intermediate_size=256,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=32,
                num_local_experts=8,
                vocab_size=8192,
            ),
            # 4 layers of gpt-oss-20b's shape
            "1b": dict(
                hidden_size=2880,
                intermediate_size=2880,
                num_hidden_layers=4,
                num_attention_heads=64,
                num_key_value_heads=8,
                head_dim=64,
                num_local_experts=32,
                vocab_size=201088,
            ),
        }
        kw = dict(sizes[size], num_experts_per_tok=4, sliding_window=128, tie_word_embeddings=False)
        kw.update(overrides)
        return transformers.GptOssConfig(**kw)
    raise ValueError(f"unknown family {family!r}")


def hf_model(config: Any, dtype: torch.dtype, attn: str = "sdpa") -> Any:
    import transformers

    if config.model_type == "t5":
        return transformers.T5ForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)


def make_pair(
    config: Any, dtype: torch.dtype, device: str, attn: str = "sdpa", seed: int = 0
) -> tuple[Any, torch.nn.Module]:
    """(transformers model, archspec model) with the same random weights, both in `dtype` on `device`."""
    torch.manual_seed(seed)
    with torch.device(device):  # random init where the model runs (seconds for 8B on a GPU, not minutes)
        reference = hf_model(config, dtype, attn)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        spec = archspec.spec_from_hf(directory)
        model = archspec.build(spec, device="meta")
        archspec.load_hf_weights(model, directory)
    return reference.eval(), model.to(device=device, dtype=dtype).eval()


def check_same_logits(reference: Any, model: torch.nn.Module, vocab: int, device: str, tol: float) -> float:
    """Max |logit difference| of the pair on a short random input; raises if above `tol` (weights not shared)."""
    ids = torch.randint(0, vocab, (2, 16), device=device)
    with torch.no_grad():
        if getattr(reference.config, "model_type", "") == "t5":
            dec = torch.randint(0, vocab, (2, 8), device=device)
            expected = reference(input_ids=ids, decoder_input_ids=dec).logits
            actual = model(ids, decoder_input_ids=dec).logits
        else:
            expected = reference(ids).logits
            actual = model(ids).logits
    diff = (expected.float() - actual.float()).abs().max().item()
    if not diff <= tol:
        raise RuntimeError(f"archspec and transformers disagree: max |logit diff| {diff:.3g} > {tol}")
    return diff


# ------------------------------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    cases: dict[str, Callable[[], Any]], device: str, repeats: int = 5, warmup: int = 2
) -> dict[str, dict[str, Any]]:
    """Warm every case up, then time them in turn `repeats` times (A, B, C, A, B, C, ...).

    Returns per case: median seconds, all samples, and the spread (max / min). A case that raises during warm-up
    is reported with its error and left out of the rounds.

    On CPU with one torch thread, the CPU time of the calling thread (`time.thread_time`) is recorded as well
    (`cpu_median_s`, `cpu_min_s`): every op then runs on this thread, and its CPU time leaves out the time the
    scheduler gave to other processes, which on a shared machine is most of the wall-clock noise.
    """
    errors: dict[str, str] = {}
    for name, fn in cases.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
        except Exception as error:  # noqa: BLE001 (reported, not hidden)
            errors[name] = f"{type(error).__name__}: {error}"[:400]
    samples: dict[str, list[float]] = {name: [] for name in cases if name not in errors}
    cpu_samples: dict[str, list[float]] = {name: [] for name in samples}
    thread_cpu = device == "cpu" and torch.get_num_threads() == 1
    for _ in range(repeats):
        for name in samples:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.thread_time()
            cases[name]()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
            cpu_samples[name].append(time.thread_time() - start_cpu)
    out: dict[str, dict[str, Any]] = {}
    for name in cases:
        if name in errors:
            out[name] = {"error": errors[name]}
        else:
            times = samples[name]
            out[name] = {
                "median_s": statistics.median(times),
                "min_s": min(times),
                "samples_s": times,
                "spread": max(times) / min(times),
            }
            if thread_cpu:
                cpu = cpu_samples[name]
                out[name].update(cpu_median_s=statistics.median(cpu), cpu_min_s=min(cpu), cpu_samples_s=cpu)
    return out


# ------------------------------------------------------------------------------------------- results
def environment(device: str) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device,
        "host": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def append_result(benchmark: str, record: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Append one record to results/<benchmark>.json (a JSON list; created when missing)."""
    directory = results_dir or Path(os.environ.get("ARCHSPEC_BENCH_RESULTS", RESULTS))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{benchmark}.json"
    records = json.loads(path.read_text()) if path.exists() else []
    records.append(record)
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def common_arguments(parser: argparse.ArgumentParser, default_repeats: int = 5) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--size", default=None, help="small (CPU default) or 1b (GPU default)")
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to results/")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on a shared, busy machine 2 OpenMP threads stall at every barrier whenever "
        "another process holds a core, which swamps the measurement; both libraries get the same count)",
    )


def resolve(args: argparse.Namespace) -> tuple[str, torch.dtype, str]:
    cuda = args.device.startswith("cuda")
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    size = args.size or ("1b" if cuda else "small")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    return dtype_name, DTYPES[dtype_name], size


def ratio(results: dict[str, dict[str, Any]], numerator: str, denominator: str, key: str = "median_s") -> float | None:
    """Speed of `numerator` over `denominator` (time of denominator / time of numerator), from medians by default.

    On a shared, busy machine the ratio of minima (`key="min_s"`, the least-disturbed runs) is recorded too.
    """
    a, b = results.get(numerator, {}), results.get(denominator, {})
    if key not in a or key not in b:
        return None
    return b[key] / a[key]


def paired_ratio(results: dict[str, dict[str, Any]], numerator: str, denominator: str) -> float | None:
    """Median over rounds of the speed ratio within each round (thread CPU times where recorded, else wall time).

    The variants of a round run back to back, so they share the machine's state of that moment; on a shared
    machine whose load drifts over seconds this pairs away more of the drift than a ratio of two medians.
    """
    a, b = results.get(numerator, {}), results.get(denominator, {})
    key = "cpu_samples_s" if "cpu_samples_s" in a and "cpu_samples_s" in b else "samples_s"
    if key not in a or key not in b:
        return None
    return statistics.median(tb / ta for ta, tb in zip(a[key], b[key], strict=True))


def ratios(results: dict[str, dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, float | None]:
    """'a / b' (ratio of medians) and 'a / b (min)' (ratio of minima) for each pair, on one-thread CPU runs
    'a / b (cpu)', the ratio of median thread CPU times (see `interleaved`), and 'a / b (paired)', the median of
    the per-round ratios (`paired_ratio`)."""
    out: dict[str, float | None] = {}
    for a, b in pairs:
        out[f"{a} / {b}"] = ratio(results, a, b)
        out[f"{a} / {b} (min)"] = ratio(results, a, b, "min_s")
        cpu = ratio(results, a, b, "cpu_median_s")
        if cpu is not None:
            out[f"{a} / {b} (cpu)"] = cpu
        out[f"{a} / {b} (paired)"] = paired_ratio(results, a, b)
    return out


def print_table(title: str, results: dict[str, dict[str, Any]], per_call: float, unit: str) -> None:
    """One line per case: median time, `per_call` units per call / median (e.g. tokens/s), spread."""
    print(f"\n{title}")
    for name, result in results.items():
        if "error" in result:
            print(f"  {name:<34} ERROR {result['error'][:160]}")
        else:
            median = result["median_s"]
            cpu = f"  cpu {result['cpu_median_s'] * 1e3:10.2f} ms" if "cpu_median_s" in result else ""
            print(
                f"  {name:<34} {median * 1e3:10.2f} ms  {per_call / median:12.1f} {unit}  spread {result['spread']:.2f}{cpu}"
            )
