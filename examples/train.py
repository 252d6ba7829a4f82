"""Train any archspec spec on a text file: AdamW, warmup + cosine schedule, DCP checkpoints, resume.

    # one process (CPU or one GPU)
    python examples/train.py specs/gpt2.yaml input.txt --out runs/gpt2 --steps 200
    # several processes: FSDP2 (default) or tensor parallel, gloo on CPU, nccl on GPUs
    torchrun --nproc_per_node 2 examples/train.py specs/gpt2.yaml input.txt --out runs/gpt2
    torchrun --nproc_per_node 2 examples/train.py specs/llama3.yaml input.txt --out runs/l3 --tp
    # MoE: routed experts split over 2 ranks (expert parallel), the rest FSDP2; with 4 ranks: EP 2 x FSDP 2
    torchrun --nproc_per_node 2 examples/train.py specs/mixtral.yaml input.txt --out runs/mx --ep 2
    # carry on from the newest checkpoint in --out
    python examples/train.py specs/gpt2.yaml input.txt --out runs/gpt2 --steps 400 --resume

Tokens are the file's bytes (0..255) unless `--tokenizer tokenizer.json` (the `tokenizers` library) is given.
Every rank draws its own random windows of the text, seeded by (seed, step, data-parallel rank), so a resumed run
sees exactly the batches the uninterrupted run would have. `--pack` splits the text into documents (at blank lines,
or `--document-separator`) and packs whole documents into each row, positions restarting at each: no token attends
to or predicts across a document boundary (`model(ids, position_ids=...)`; see `benchmarks/padding.py` for packed
against padded throughput). `--out` receives `spec.yaml`, `step-N/` checkpoints
(torch.distributed.checkpoint: model, optimizer) and `log.jsonl`; `archspec.interop.hf_export.export_hf(out_dir, hf_dir)`
turns the newest checkpoint into a transformers model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import archspec

# one process without a process group is a supported DCP mode; its warning would only be noise here
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="spec YAML file")
    parser.add_argument("text", help="UTF-8 (or any) text file to train on")
    parser.add_argument("--out", required=True, help="run directory: spec.yaml, step-N/ checkpoints, log.jsonl")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step per data-parallel rank")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (at most the spec's context)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--min-lr", type=float, default=3e-5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from the newest step-N/ in --out")
    parser.add_argument("--tp", action="store_true", help="tensor parallel over all ranks instead of FSDP2")
    parser.add_argument(
        "--ep",
        type=int,
        default=1,
        help="expert parallel degree (MoE specs): routed experts split over EP ranks; the other weights FSDP2 over "
        "all ranks, the experts also over world / EP ranks",
    )
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--tokenizer", help="a tokenizers tokenizer.json instead of bytes")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pack",
        action="store_true",
        help="rows packed with whole documents (attention and loss stay within each) instead of windows of the text",
    )
    parser.add_argument(
        "--document-separator", default="\n\n", help="what separates documents in the text (--pack; a blank line)"
    )
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- data
def load_tokens(path: str, spec: archspec.Spec, tokenizer: str | None, console: Console) -> torch.Tensor:
    return tokenize(Path(path).read_bytes(), spec, tokenizer, console)


def load_documents(
    path: str, spec: archspec.Spec, tokenizer: str | None, console: Console, separator: str
) -> list[torch.Tensor]:
    """The file's documents (split at `separator`, empty ones dropped), each tokenised on its own."""
    pieces = [piece for piece in Path(path).read_bytes().split(separator.encode()) if piece.strip()]
    return [
        tokenize(piece, spec, tokenizer, console if index == 0 else Console(quiet=True))
        for index, piece in enumerate(pieces)
    ]


def tokenize(data: bytes, spec: archspec.Spec, tokenizer: str | None, console: Console) -> torch.Tensor:
    if tokenizer:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(tokenizer).encode(data.decode("utf-8")).ids
        tokens = torch.tensor(ids, dtype=torch.long)
        if int(tokens.max()) >= spec.vocab_size:
            raise SystemExit(f"tokenizer ids reach {int(tokens.max())} but the spec's vocab_size is {spec.vocab_size}")
        return tokens
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    if spec.vocab_size < 256:
        console.print(
            f"[yellow]vocab_size {spec.vocab_size} < 256: byte values >= {spec.vocab_size} are clamped to "
            f"{spec.vocab_size - 1} (use a spec with vocab_size >= 256 to train on raw bytes)[/]"
        )
        tokens = tokens.clamp(max=spec.vocab_size - 1)
    return tokens


def get_batch(tokens: torch.Tensor, batch: int, seq: int, seed: int, step: int, data_rank: int) -> torch.Tensor:
    """Random windows of the text, determined by (seed, step, data-parallel rank) alone: resumable exactly."""
    generator = torch.Generator().manual_seed(hash((seed, step, data_rank)) % 2**63)
    starts = torch.randint(0, len(tokens) - seq, (batch,), generator=generator)
    return torch.stack([tokens[s : s + seq] for s in starts.tolist()])


def get_packed_batch(
    documents: list[torch.Tensor], batch: int, seq: int, seed: int, step: int, data_rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `seq` tokens packed with whole documents from a random one on (the last cut at the row's end), and
    their positions, restarting at 0 at each document: the model attends within documents only."""
    generator = torch.Generator().manual_seed(hash((seed, step, data_rank)) % 2**63)
    firsts = torch.randint(0, len(documents), (batch,), generator=generator).tolist()
    rows, positions = [], []
    for first in firsts:
        parts: list[torch.Tensor] = []
        index = first
        while sum(len(part) for part in parts) < seq:
            parts.append(documents[index % len(documents)])
            index += 1
        rows.append(torch.cat(parts)[:seq])
        positions.append(torch.cat([torch.arange(len(part)) for part in parts])[:seq])
    return torch.stack(rows), torch.stack(positions)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup to --lr, then cosine decay to --min-lr at --steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Global-norm clipping that also works when DTensor (TP-sharded) and plain (replicated) gradients mix, or DTensors
    on different meshes (EP x FSDP: the experts' own), which `torch.nn.utils.clip_grad_norm_` refuses; FSDP-only
    models take the stock path."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    kinds = {isinstance(g, DTensor) for g in grads}
    meshes = {g.device_mesh for g in grads if isinstance(g, DTensor)}  # EP x FSDP: experts on their own mesh
    if len(kinds) == 1 and len(meshes) <= 1:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    squares = [
        (torch.linalg.vector_norm(g).full_tensor() if isinstance(g, DTensor) else torch.linalg.vector_norm(g)) ** 2
        for g in grads
    ]
    total = torch.stack(squares).sum().sqrt()
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0).item()
    for g in grads:
        g.mul_(coefficient)
    return total.item()


# ---------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    steps = [(int(p.name.split("-")[1]), p) for p in out.glob("step-*") if (p / ".metadata").is_file()]
    return max(steps) if steps else None


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, out: Path, step: int) -> None:
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(out / f"step-{step}"))


def load_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[float]:
    """Train; returns the losses of the steps run (rank 0's view of the global mean loss)."""
    args = parse_args(argv)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    console = Console(quiet=rank != 0)
    out = Path(args.out)

    spec = archspec.load_spec(args.spec)
    if args.seq > spec.context_length:
        raise SystemExit(f"--seq {args.seq} exceeds the spec's context_length {spec.context_length}")
    if args.pack:
        documents = load_documents(args.text, spec, args.tokenizer, console, args.document_separator)
        if not documents:
            raise SystemExit(f"{args.text} has no documents (separated by {args.document_separator!r})")
        console.print(f"{len(documents)} documents, {sum(map(len, documents))} tokens, packed into rows of {args.seq}")
    else:
        tokens = load_tokens(args.text, spec, args.tokenizer, console)
        if len(tokens) <= args.seq:
            raise SystemExit(f"{args.text} has {len(tokens)} tokens: fewer than --seq {args.seq} + 1")

    torch.manual_seed(args.seed)  # every rank builds the same initial weights
    model = archspec.build(spec, device=device, dtype=getattr(torch, args.dtype))
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh

        if args.ep > 1 and world % args.ep:
            raise SystemExit(f"--ep {args.ep} does not divide the {world} ranks")
        if args.ep > 1 and args.ep < world:
            mesh = init_device_mesh(device.type, (world // args.ep, args.ep), mesh_dim_names=("dp", "ep"))
        else:
            mesh = init_device_mesh(device.type, (world,))
        try:
            archspec.parallelize(
                model,
                mesh,
                fsdp=not args.tp,
                tp=args.tp,
                ep=args.ep,
                activation_checkpointing=args.activation_checkpointing,
                compile=args.compile,
            )
        except archspec.ArchspecError as exc:
            raise SystemExit(str(exc)) from None
    elif args.ep > 1:
        raise SystemExit(f"--ep {args.ep} needs {args.ep} processes or more (torchrun --nproc_per_node ...)")
    else:
        if args.activation_checkpointing:
            archspec.enable_activation_checkpointing(model)
        if args.compile:
            for block in archspec.distributed.blocks(model):
                block.compile()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    data_rank, data_ranks = (0, 1) if args.tp else (rank, world)

    start = 0
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    if args.resume:
        found = latest_checkpoint(out)
        if found is None:
            console.print(f"[yellow]--resume: no checkpoint in {out}, starting from scratch[/]")
        else:
            start, path = found
            load_checkpoint(model, optimizer, path)
            console.print(f"resumed from {path} (step {start})")

    losses: list[float] = []
    log = (out / "log.jsonl").open("a", encoding="utf-8") if rank == 0 else None
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=rank != 0) as progress:
        task = progress.add_task(spec.name, total=args.steps, completed=start, loss=float("nan"), tps=0.0)
        for step in range(start, args.steps):
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args)
            if args.pack:
                ids, positions = get_packed_batch(documents, args.batch, args.seq, args.seed, step, data_rank)
                ids, positions = ids.to(device), positions.to(device)
                loss = model(ids, position_ids=positions, labels=ids).loss  # restarting positions: documents
            else:
                ids = get_batch(tokens, args.batch, args.seq, args.seed, step, data_rank).to(device)
                loss = model(ids, labels=ids).loss
            loss.backward()
            clip_grad_norm(model, args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.detach().float()
            if distributed:
                dist.all_reduce(value)
                value /= world
            losses.append(value.item())
            tokens_per_s = args.batch * args.seq * data_ranks / (time.perf_counter() - began)
            progress.update(task, advance=1, loss=losses[-1], tps=tokens_per_s)
            if log is not None:
                log.write(
                    json.dumps(
                        {
                            "step": step + 1,
                            "loss": losses[-1],
                            "lr": learning_rate(step, args),
                            "tokens_per_s": tokens_per_s,
                        }
                    )
                    + "\n"
                )
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
                save_checkpoint(model, optimizer, out, step + 1)
    if log is not None:
        log.close()
    if losses:
        console.print(f"done: step {args.steps}, loss {losses[-1]:.4f}; checkpoints in {out}")
    if distributed and argv is None:
        dist.destroy_process_group()
    return losses


def run() -> None:
    """The command line: a bad spec or a missing file is one line on stderr and exit code 1, not a traceback."""
    try:
        main()
    except archspec.ArchspecError as exc:
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        raise SystemExit(f"error: {where}{exc.strerror or exc}") from None


if __name__ == "__main__":
    run()
