"""config.json <-> Spec through one family: what `spec_from_hf` and export's round trip share.

Given the `Family`, not the model type's name, so that a family may convert through another (LLaVA through its
text model's) without a way round through the registry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from archspec.interop.families.common import Getter, read_tokens
from archspec.interop.family import Family
from archspec.spec.errors import ArchspecError
from archspec.spec.loader import spec_from_dict
from archspec.spec.schema import NAME_PATTERN, Spec


def read_hf_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The config dict of a model directory (its config.json), a config.json path, or a dict."""
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise ArchspecError(f"{path}: no config.json here (expected a Hugging Face model directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArchspecError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def spec_of(
    family: Family, config: dict[str, Any], source: str | Path | dict[str, Any], name: str | None = None
) -> Spec:
    """The spec of `config` (read from `source`), whose model type is one of `family`'s."""
    model_type = config["model_type"]
    get = Getter(config, family.defaults[model_type])
    data = family.to_spec(get, model_type)
    data["name"] = name or _spec_name(source, config)
    data["description"] = f"imported from a transformers '{model_type}' config"
    data["tokens"] = _in_vocabulary({**read_tokens(get), **data.get("tokens", {})}, data["vocab_size"])
    return spec_from_dict(data, source=str(source) if not isinstance(source, dict) else "<hf config>")


def _in_vocabulary(tokens: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The token ids a model of `vocab_size` rows can produce: the config classes' default ids (GLM's 151329, ...)
    stay in tiny test configs whose vocabulary is far smaller, where no token can ever have them."""
    kept: dict[str, Any] = {}
    for key, value in tokens.items():
        if isinstance(value, list):
            inside = [token for token in value if token < vocab_size]
            kept[key] = inside or None
        else:
            kept[key] = value if value is None or value < vocab_size else None
    return kept


def _spec_name(source: Any, config: dict[str, Any]) -> str:
    raw = (
        config.get("_name_or_path")
        or (Path(source).name if not isinstance(source, dict) else "")
        or config["model_type"]
    )
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(raw).split("/")[-1]).strip("-._")
    return cleaned if re.match(NAME_PATTERN, cleaned or "") else f"{config['model_type']}-import"


def config_of(family: Family, model_type: str, spec: Spec) -> dict[str, Any]:
    """The config.json `family` writes for `spec` as `model_type` (raises `NoCounterpart` when it has no key for a
    spec field); whether it reads back as `spec` is the caller's to check."""
    config: dict[str, Any] = {"model_type": model_type, "architectures": [family.architectures[model_type]]}
    config |= family.to_config(spec, model_type)
    config |= {"bos_token_id": spec.tokens.bos, "eos_token_id": spec.tokens.eos, "pad_token_id": spec.tokens.pad}
    return config


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys ("attention.heads")."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat |= flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): data}


def differences(spec: Spec, other: Spec) -> list[str]:
    """The dotted fields in which two specs differ, name and description aside."""
    ours, theirs = flatten(spec.model_dump(mode="json")), flatten(other.model_dump(mode="json"))
    skip = {"name", "description"}
    return sorted(k for k in ours.keys() | theirs.keys() if k not in skip and ours.get(k) != theirs.get(k))
