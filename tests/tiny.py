"""Shared test helpers. Tiny versions of real specs: the same architecture (layout, position kind, norms, GQA ratio
kind) at toy sizes; and `import_emitted`, which loads a spec's emitted source as a module in this process."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import archspec
from archspec.emit import emit_source, module_name

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


def spec_files() -> list[Path]:
    return sorted(SPECS_DIR.glob("*.yaml"))


def shrink(spec: archspec.Spec, *, layers: int = 2) -> archspec.Spec:
    """d_model 64, 4 query heads of 16 dims, vocab 128, 64 positions; keeps MHA/GQA/MQA, windows, scalings."""
    data = spec.model_dump(mode="json")
    attention = data["attention"]
    if attention.get("kind") == "mla":
        attention.update(
            heads=4, q_rank=24 if attention["q_rank"] else None, kv_rank=32, nope_dim=16, rope_dim=8, v_dim=12
        )
    else:
        kind = (
            "mha" if attention["kv_heads"] == attention["heads"] else ("mqa" if attention["kv_heads"] == 1 else "gqa")
        )
        attention.update(heads=4, kv_heads={"mha": 4, "mqa": 1, "gqa": 2}[kind], head_dim=16)
    moe = data.get("moe")
    if moe:
        router = moe["router"]
        grouped = router["groups"] > 1
        moe.update(experts=8, top_k=min(moe["top_k"], 3), d_ff=24, shared_d_ff=24)
        router.update(groups=4 if grouped else 1, top_groups=2 if grouped else 1)
        if moe.get("layers") is not None:
            moe["layers"] = [layer for layer in moe["layers"] if layer < layers]
        moe["dense_layers"] = min(moe["dense_layers"], layers - 1)
    if attention.get("window"):
        attention["window"] = 5
    if attention.get("window_layers") is not None:
        attention["window_layers"] = [layer for layer in attention["window_layers"] if layer < layers] or [layers - 1]
    if data.get("layers"):  # every kind within the first layers, windows of 5
        pattern = list(dict.fromkeys(data["layers"]["pattern"]))
        exceptions = {kind: [i for i in listed if i < layers] for kind, listed in data["layers"]["exceptions"].items()}
        data["layers"].update(
            pattern=pattern, exceptions={kind: listed for kind, listed in exceptions.items() if listed}
        )
        for kind in data["layers"]["kinds"].values():
            if kind.get("window"):
                kind["window"] = 5
            scaling = (kind.get("position") or {}).get("scaling")
            if scaling and "original_context" in scaling:
                scaling["original_context"] = 16
        layers = max(layers, len(pattern))
    scaling = (data["position"] or {}).get("scaling")
    if scaling and "original_context" in scaling:
        scaling["original_context"] = 16
    if scaling and scaling.get("kind") == "longrope":  # one factor per frequency of the tiny heads
        pairs = int(16 * data["position"]["fraction"]) // 2
        scaling.update(short_factor=scaling["short_factor"][:pairs], long_factor=scaling["long_factor"][:pairs])
    data.update(name=f"{spec.name}-tiny", vocab_size=128, d_model=64, n_layers=layers, context_length=64)
    data["mlp"]["d_ff"] = 96
    data["tokens"] = {"bos": None, "eos": None, "pad": None, "decoder_start": data["tokens"].get("decoder_start")}
    if data.get("n_decoder_layers") is not None:
        data["n_decoder_layers"] = layers
    if data.get("vision"):
        _shrink_vision(data["vision"], vocab=128)
    return archspec.spec_from_dict(data)


def _shrink_vision(vision: dict, vocab: int) -> None:
    """A 4 x 4 patch grid (pooled to 2 x 2 when the spec pools), width 32, the last token id as placeholder."""
    tower = vision["tower"]
    if tower["kind"] == "vit":
        tower.update(image_size=32, patch_size=8, width=32, depth=2, heads=4, d_ff=64)
        if isinstance(vision["feature_layer"], int) and vision["feature_layer"] < -2:
            vision["feature_layer"] = -2
    else:
        tower.update(width=32, patches=16)
    if vision.get("pooling"):
        vision["pooling"]["tokens"] = 4
    vision["tokens_per_image"] = None
    vision["image_token"] = vocab - 1


def distinct_tiny_specs() -> dict[str, archspec.Spec]:
    """One tiny spec per distinct architecture in specs/ (llama3-8b and llama3-70b shrink to the same thing)."""
    seen: dict[str, archspec.Spec] = {}
    signatures: set[str] = set()
    for path in spec_files():
        tiny = shrink(archspec.load_spec(path))
        signature = tiny.model_copy(update={"name": "x", "description": ""}).model_dump_json()
        if signature not in signatures:
            signatures.add(signature)
            seen[path.stem] = tiny
    return seen


_imports = itertools.count()


def import_emitted(spec: archspec.Spec, directory: Path) -> ModuleType:
    """Write `emit_source(spec)` to `directory/<module_name>.py` and import it in this process, beside archspec,
    under a fresh module name each call (registered in sys.modules, as an import does: its dataclasses resolve their
    annotations there). Its entry point: `Model()`, the spec's model class."""
    path = Path(directory) / f"{module_name(spec.name)}.py"
    path.write_text(emit_source(spec))
    name = f"emitted_{module_name(spec.name)}_{next(_imports)}"
    loader = importlib.util.spec_from_file_location(name, path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module
    loader.loader.exec_module(module)
    return module
