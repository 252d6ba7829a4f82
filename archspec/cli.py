"""The `archspec` command line: check, build, import-hf, schema (DESIGN.md section 2).

Every error a user can cause (a bad spec, a missing file, weights that do not fit) ends in one readable message on
stderr and exit code 1, never a traceback. Set `ARCHSPEC_TRACEBACK=1` to see the traceback of an unexpected
(internal) error.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from archspec.analysis.render import human_count
from archspec.spec import ArchspecError, Spec, SpecError, load_spec, spec_from_dict
from archspec.spec.describe import describe, describe_pattern, describe_scaling
from archspec.spec.writer import spec_to_yaml

if TYPE_CHECKING:
    from torch import nn

app = typer.Typer(
    name="archspec",
    help="Say what a transformer is in YAML; get it as an exact, compile-ready PyTorch module.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# soft_wrap: never break a `file:line: key.path: message` line; markup/highlight off: messages are plain text.
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str) -> NoReturn:
    """Print one readable message on stderr and exit 1."""
    err.print(message, markup=False)
    raise typer.Exit(1)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one message and exit code 1; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise
        except SpecError as exc:
            fail(_spec_error_text(exc))
        except ArchspecError as exc:
            fail(f"error: {exc}")
        except OSError as exc:  # FileNotFoundError, IsADirectoryError, PermissionError, ...
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            fail(f"error{where}: {exc.strerror or exc}")
        except Exception as exc:  # a bug in archspec, not in the input: still one line unless asked for more
            if os.environ.get("ARCHSPEC_TRACEBACK"):
                raise
            fail(
                f"internal error: {type(exc).__name__}: {exc} "
                "(please report it; set ARCHSPEC_TRACEBACK=1 to see the traceback)"
            )

    return wrapper


def _spec_error_text(exc: SpecError) -> str:
    issues = exc.issues or []
    if not issues:
        return f"error: {exc}"
    return "\n".join(f"error: {issue}" for issue in issues)


# ------------------------------------------------------------------------------------------------ check
@app.command()
@user_errors
def check(
    specs: list[Path] = typer.Argument(
        ..., metavar="SPEC...", help="Spec files to validate (a directory: every .yaml / .yml file in it)."
    ),
) -> None:
    """Validate specs: every problem of every file, as file:line: key.path: message (hint). Exit 1 if any is invalid."""
    specs = _spec_files(specs)
    invalid = 0
    for path in specs:
        try:
            load_spec(path)
        except SpecError as exc:
            invalid += 1
            err.print(_spec_error_text(exc), markup=False)
            continue
        except OSError as exc:
            invalid += 1
            err.print(f"error: {path}: {exc.strerror or exc}", markup=False)
            continue
        out.print(f"ok: {path}", markup=False)
    if invalid:
        noun = "spec" if len(specs) == 1 else "specs"
        err.print(f"{invalid} of {len(specs)} {noun} {'is' if invalid == 1 else 'are'} invalid", markup=False)
        raise typer.Exit(1)


def _spec_files(paths: list[Path]) -> list[Path]:
    """The paths, with each directory replaced by the YAML files in it (sorted); a directory without any is an
    error, not an empty success."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not found:
            fail(f"error: {path}: a directory with no .yaml or .yml files in it")
        files += found
    return files


# ------------------------------------------------------------------------------------------------ build
@app.command()
@user_errors
def build(
    spec_paths: list[Path] = typer.Argument(..., metavar="SPEC...", help="The spec files to compile."),
    output: Path = typer.Option(
        Path("generated"), "--output", "-o", metavar="DIR", help="Where the emitted source is written."
    ),
    check_only: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if an emitted source on disk is missing or stale."
    ),
) -> None:
    """Validate each SPEC, compile it on the meta device, print a summary, and write DIR/<name>.py.

    `archspec build --check specs/*.yaml` checks every file and exits 1 if any is stale (what CI runs).
    """
    import archspec

    emit = _emitter()
    stale = []
    for spec_path in spec_paths:
        spec = load_spec(spec_path)
        model = archspec.build(spec, device="meta")
        if not check_only:
            out.print(summary_table(spec, model))
        stale += _write_or_check(emit, spec, spec_path, output, check_only)
    if stale:
        fail("\n".join(stale))


def _write_or_check(emit: ModuleType, spec: Spec, spec_path: Path, output: Path, check_only: bool) -> list[str]:
    """Write the emitted source, or check it; returns the error line of a stale or missing file."""
    target = emit.generated_path(spec, output)
    if not check_only:
        out.print(f"wrote {emit.write_generated(spec, output)}", markup=False)
    elif emit.is_stale(spec, output):
        problem = "is stale" if target.is_file() else "does not exist"
        return [f"error: {target} {problem}; run `archspec build {spec_path} -o {output}` to write it"]
    else:
        out.print(f"up to date: {target}", markup=False)
    return []


def _emitter() -> ModuleType:
    """`archspec.emit` (generated_path, is_stale, write_generated): imported when a build needs it."""
    import archspec.emit as emit

    return emit


def summary_table(spec: Spec, model: nn.Module) -> Table:
    """The architecture in one screen: one row per concern, and the exact parameter total."""
    table = Table(title=spec.name, show_header=False, title_justify="left", box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    total = count_parameters(model)
    rows: dict[str, str | None] = {
        "structure": spec.structure,
        "layers": describe_layers(spec),
        "d_model": str(spec.d_model),
        "vocab": str(spec.vocab_size),
        "context": str(spec.context_length),
        "attention": describe_attention(spec),
        "position": describe_position(spec),
        "norm": f"{spec.norm.kind} (eps {spec.norm.eps:g}{', bias' if spec.norm.bias else ''}"
        + (", 1 + w)" if spec.norm.offset else ")"),
        "block": describe_block(spec),
        "mlp": f"{spec.mlp.activation}, d_ff {spec.mlp.d_ff}{', bias' if spec.mlp.bias else ''}",
        "moe": describe_moe(spec),
        "embeddings": ("tied" if spec.embeddings.tied else "untied")
        + (", normed" if spec.embeddings.norm else "")
        + "".join(f", {part}" for part in describe(spec)["embeddings"].split(", ")[1 + spec.embeddings.norm :]),
        "layers pattern": describe_pattern(spec) if spec.layers is not None else None,
        "parameters": f"{human_count(total)} ({total:,})",  # the figure `archspec info` prints
    }
    for key, value in rows.items():
        if value is not None:
            table.add_row(key, value)
    return table


def count_parameters(model: nn.Module) -> int:
    """Total of every distinct parameter tensor (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def describe_layers(spec: Spec) -> str:
    decoder_layers = getattr(spec, "n_decoder_layers", None)  # encoder-decoder specs
    return f"{spec.n_layers} encoder + {decoder_layers} decoder" if decoder_layers else str(spec.n_layers)


def describe_attention(spec: Spec) -> str:
    attn = spec.attention
    if attn.kind == "mla":
        q = f", q latent {attn.q_rank}" if attn.q_rank else ""
        return (
            f"MLA, {attn.heads} heads, kv latent {attn.kv_rank}{q}, head_dim {spec.head_dim} "
            f"({attn.nope_dim} + {attn.rope_dim} rope), v_dim {attn.v_dim}"
        )
    heads, kv = attn.heads, spec.kv_heads
    kind = "MHA" if kv == heads else "MQA" if kv == 1 else "GQA"
    text = f"{kind}, {heads} heads, {kv} kv heads, head_dim {spec.head_dim}"
    if attn.qk_norm:
        text += ", qk-norm"
    biases = [name for name in ("q", "k", "v", "o") if getattr(attn.bias, name)]
    if biases:
        text += f", bias on {'/'.join(biases)}"
    if attn.window is not None:
        layers = "all layers" if attn.window_layers is None else f"layers {attn.window_layers}"
        text += f", window {attn.window} ({layers})"
    if attn.scale is not None:
        text += f", scale {attn.scale:g}"
    if attn.softcap is not None:
        text += f", softcap {attn.softcap:g}"
    return text


def describe_moe(spec: Spec) -> str | None:
    moe = getattr(spec, "moe", None)
    if moe is None:
        return None
    text = f"{moe.experts} experts, top {moe.top_k}, d_ff {moe.d_ff}"
    if moe.shared_experts:
        text += f", {moe.shared_experts} shared"
    if moe.layers is not None:
        text += f", in layers {moe.layers}"
    elif moe.dense_layers:
        text += f", first {moe.dense_layers} layer{'s' if moe.dense_layers > 1 else ''} dense"
    return text


def describe_position(spec: Spec) -> str:
    position = spec.position
    if position.kind != "rope":
        return position.kind
    text = f"rope (theta {position.theta:g}"
    if position.fraction != 1:
        text += f", {spec.rotary_dim} of {spec.head_dim} dims"
    if position.pairing != "half":
        text += f", {position.pairing}"
    if position.scaling is not None:
        text += f", {describe_scaling(position.scaling)} scaling"
    return text + ")"


def describe_block(spec: Spec) -> str:
    block = spec.block
    if block.kind == "parallel":
        return f"parallel ({block.parallel_norms} norm{'s' if block.parallel_norms == 2 else ''})"
    if block.residual_from_norm:
        return f"{block.kind} (residual from norm)"
    if block.residual_scale != 1.0:
        return f"{block.kind} (residual x{block.residual_scale:g})"
    return block.kind


# ---------------------------------------------------------------------------------------- info and diff
def _register_analysis_commands() -> None:
    """`info` and `diff` live in archspec/cli_analysis.py; registered here, between build and import-hf (the order
    of DESIGN.md), and given the same no-traceback error handling as every other command."""
    from archspec.cli_analysis import register
    from archspec.cli_draw import register as register_draw

    known = {id(command.callback) for command in app.registered_commands}
    register(app)
    register_draw(app)
    for command in app.registered_commands:
        if id(command.callback) not in known and command.callback is not None:
            command.callback = user_errors(command.callback)


_register_analysis_commands()


# -------------------------------------------------------------------------------------------- import-hf
@app.command("import-hf")
@user_errors
def import_hf(
    hf_dir: Path = typer.Argument(..., metavar="HF_DIR", help="A Hugging Face model directory (or its config.json)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="SPEC.yaml", help="Where to write the spec."),
    name: str | None = typer.Option(None, "--name", help="Name of the spec (default: chosen by spec_from_hf)."),
) -> None:
    """Write the spec of a Hugging Face model directory; loading it gives the same model."""
    import archspec

    if not hf_dir.exists():
        fail(f"error: {hf_dir}: no such file or directory")
    spec = archspec.spec_from_hf(str(hf_dir), name=name)
    if output.is_dir():  # like cp: into the directory, under the spec's name
        output = output / f"{spec.name}.yaml"
    text = f"# written by `archspec import-hf {hf_dir}`\n" + spec_to_yaml(spec)
    if spec_from_dict(yaml.safe_load(text)) != spec:  # the file must give back exactly this spec
        raise RuntimeError("the written spec does not load back to the imported one")
    write_atomically(output, text)
    out.print(f"wrote {output}", markup=False)


# -------------------------------------------------------------------------------------------- export-hf
@app.command("export-hf")
@user_errors
def export_hf(
    source: Path = typer.Argument(
        ..., metavar="SPEC|DIR", help="A spec file, or a training run directory (spec.yaml + checkpoints)."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT_DIR", help="Where to write the HF model."),
    dtype: str = typer.Option(
        "bfloat16",
        "--dtype",
        metavar="DTYPE",
        help="The dtype written: bfloat16 (the default: specs carry no dtype), float16 or float32 (or bf16, fp16, fp32).",
    ),
) -> None:
    """Write config.json + model.safetensors that transformers' from_pretrained loads (sharded when large).

    Decoder LMs (dense, MoE, MLA) load with AutoModelForCausalLM, T5 with AutoModelForSeq2SeqLM, LLaVA with
    AutoModelForImageTextToText; a spec without an exact transformers counterpart fails, naming the field. The
    model is built (or a run read) in DTYPE and written tensor by tensor: memory is about the checkpoint's size.
    """
    import json

    from archspec.interop.hf_export import auto_class, export_dtype
    from archspec.interop.hf_export import export_hf as export

    target = export_dtype(dtype)
    if not source.exists():
        fail(f"error: {source}: no such file or directory")
    written = export(source, output, dtype=target)
    model_type = json.loads((written / "config.json").read_text(encoding="utf-8"))["model_type"]
    written_dtype = str(target).removeprefix("torch.")
    out.print(
        f"wrote {written} ({model_type}, {written_dtype}; load it with transformers.{auto_class(model_type)})",
        markup=False,
    )


# ------------------------------------------------------------------------------------ import-gguf, export-gguf
def _register_gguf_commands() -> None:
    """`import-gguf` and `export-gguf` live in archspec/cli_gguf.py; registered after export-hf."""
    from archspec.cli_gguf import register

    known = {id(command.callback) for command in app.registered_commands}
    register(app)
    for command in app.registered_commands:
        if id(command.callback) not in known and command.callback is not None:
            command.callback = user_errors(command.callback)


_register_gguf_commands()


# ----------------------------------------------------------------------------------------------- schema
@app.command()
@user_errors
def schema() -> None:
    """Print the JSON Schema of a spec file (for editor completion with yaml-language-server)."""
    from archspec.spec.json_schema import spec_file_schema

    typer.echo(json.dumps(spec_file_schema(), indent=2))


# ---------------------------------------------------------------------------------------------- helpers
def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half of one.

    The directory must exist: a typo in a path is reported, not turned into a new tree of directories."""
    if not path.parent.is_dir():
        fail(f"error: {path.parent}: no such directory (create it first)")
    if path.exists() and not path.is_file():
        fail(f"error: {path}: exists and is not a file")
    with _temporary_sibling(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode `open()` would
        os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _print_version(value: bool) -> None:
    if value:
        from archspec import __version__

        typer.echo(f"archspec {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """Say what a transformer is in YAML; get it as an exact, compile-ready PyTorch module."""


def run() -> None:
    """Entry point of `python -m archspec`."""
    app(prog_name="archspec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
