"""`archspec import-gguf` and `archspec export-gguf`: llama.cpp's model files in and out (`archspec.interop.gguf`)."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from archspec.cli_output import guarded


def import_gguf(
    file: Path = typer.Argument(..., metavar="FILE.gguf", help="A GGUF model file (as llama.cpp writes them)."),
    output: Path = typer.Option(..., "--output", "-o", metavar="SPEC.yaml", help="Where to write the spec."),
    name: str | None = typer.Option(None, "--name", help="Name of the spec (default: the file's general.name)."),
) -> None:
    """Write the spec of a GGUF file; `archspec.load_gguf_weights` loads its tensors into the built model."""
    from archspec.interop.gguf import spec_from_gguf
    from archspec.spec.loader import spec_from_dict
    from archspec.spec.writer import spec_to_yaml

    def run() -> Path:
        spec = spec_from_gguf(file, name=name)
        target = output / f"{spec.name}.yaml" if output.is_dir() else output
        text = f"# written by `archspec import-gguf {file}`\n" + spec_to_yaml(spec)
        if spec_from_dict(yaml.safe_load(text)) != spec:
            raise RuntimeError("the written spec does not load back to the imported one")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return target

    typer.echo(f"wrote {guarded(run)}")


def export_gguf(
    source: Path = typer.Argument(
        ..., metavar="SPEC|RUN_DIR|HF_DIR", help="A spec file, a training run directory or a HF model directory."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE.gguf", help="Where to write the GGUF file."),
    type: str = typer.Option(
        "f32", "--type", metavar="TYPE", help="f32, f16, bf16 or q8_0 (matrices; vectors stay f32, as llama.cpp's)."
    ),
) -> None:
    """Write a GGUF file that llama.cpp runs, named and laid out as llama.cpp's own converter writes it.

    An HF directory's tokenizer.json vocabulary is carried over; without one the file has no vocabulary and
    llama.cpp runs it on token ids.
    """
    from archspec.interop.gguf import export_gguf as run

    typer.echo(f"wrote {guarded(lambda: run(source, output, type))}")


def register(app: typer.Typer) -> None:
    """Add `import-gguf` and `export-gguf` to the archspec command line."""
    app.command("import-gguf")(import_gguf)
    app.command("export-gguf")(export_gguf)
