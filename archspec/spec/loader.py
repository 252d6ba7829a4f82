"""Load a spec from YAML: safe loading, `extends:` chains, shorthands, and errors with file:line: key.path.

Line numbers come from the YAML node marks: the document is composed into nodes once, constructed with
PyYAML's *safe* constructor, and every key path is remembered with the file and line that set it. After
`extends` merging, a key path points at whichever file last set it, so an error in an inherited value names the
parent file.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from archspec.spec.errors import SpecError, SpecIssue
from archspec.spec.schema import (
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_IMAGE_SIZE,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    Spec,
)

KeyPath = tuple[str | int, ...]
Origins = dict[KeyPath, tuple[str, int]]

SHORTHAND_KEYS: tuple[KeyPath, ...] = (("norm",), ("position",), ("block",), ("position", "scaling"))
"""Keys whose value may be a bare `kind` string; expanded before merging so `extends` can override one field."""


class SpecYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-5` as the float YAML 1.2 says it is (1.1 wants `1.0e-5`, and would
    otherwise hand the spec a string)."""


SpecYamlLoader.yaml_implicit_resolvers = {
    key: list(resolvers) for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_spec(path: str | Path) -> Spec:
    """Read, merge and validate a spec file. Raises `SpecError` listing every problem with file and line."""
    data, origins = load_yaml_tree(Path(path))
    return validate_spec(data, origins, default_file=str(path))


def spec_from_dict(data: dict[str, Any], source: str = "<dict>") -> Spec:
    """Validate a spec given as plain data (no `extends`), with the same error reporting as files."""
    data = copy.deepcopy(data)  # shorthand expansion rewrites nested sections; never touch the caller's data
    if isinstance(data, dict):
        _expand_shorthands(data)
    return validate_spec(data, {}, default_file=source)


def load_yaml_tree(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """The merged data of `path` and its `extends` chain, and where each key path was set."""
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise SpecError([SpecIssue(("extends",), f"extends cycle: {cycle}", "remove one link", str(path))])
    if not _is_file(path):
        if _is_dir(path):
            hint = f"pass the spec files in it, e.g. {path / '*.yaml'}"
            raise SpecError([SpecIssue((), "is a directory, not a spec file", hint, str(path))])
        raise SpecError([SpecIssue((), "file not found", "check the path", str(path))])
    data, origins = _parse_file(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, origins
    where = origins.get(("extends",), (str(path), 0))
    if not isinstance(parent_ref, str):
        raise SpecError([SpecIssue(("extends",), "must be a relative file path", "", *where)])
    parent_path = path.parent / parent_ref
    chain = (*_chain, resolved)
    if _is_file(parent_path) and parent_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, parent_path.resolve()))
        raise SpecError([SpecIssue(("extends",), f"extends cycle: {cycle}", "remove one link", *where)])
    if not _is_file(parent_path):
        raise SpecError(
            [SpecIssue(("extends",), f"file not found: {parent_path}", "paths are relative to this file", *where)]
        )
    parent_data, parent_origins = load_yaml_tree(parent_path, chain)
    return deep_merge(parent_data, data), {**parent_origins, **origins}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in `override` replaces the one in `base`.

    A section whose `kind` changes is replaced whole: `position: alibi` over a RoPE parent must not inherit `theta`.
    """
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate_spec(data: Any, origins: Origins, default_file: str) -> Spec:
    """Validate merged data; translate pydantic's errors into located `SpecIssue`s."""
    if not isinstance(data, dict):
        raise SpecError([SpecIssue((), "a spec must be a mapping of keys to values", "", default_file, 1)])
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            for issue in _issues_from_error(error, data):
                file, line = _locate(issue.path, origins, default_file)
                issues.append(SpecIssue(issue.path, issue.message, issue.hint, file, line))
        raise SpecError(_in_line_order(_one_per_problem(issues, data))) from None


def _one_per_problem(issues: list[SpecIssue], data: dict[str, Any]) -> list[SpecIssue]:
    """Merge the issues pydantic reports twice for one mistake.

    - A typo'd required key is both "unknown key 'activaton'" and "required key 'activation' is missing": keep
      the unknown key, and say in its hint that the key it resembles is required.
    - A value that fits no member of a union (`eos: -1` for `int | list[int]`) fails once per member: keep the
      member of the value's own type (an int's error, not "should be a valid list").
    """
    missing = {issue.path: issue for issue in issues if issue.message == "required key is missing"}
    merged: list[SpecIssue] = []
    dropped: set[tuple[str | int, ...]] = set()
    for issue in issues:
        suggestion = _suggested_key(issue)
        if suggestion is not None and (*issue.path[:-1], suggestion) in missing:
            dropped.add((*issue.path[:-1], suggestion))
            hint = f"did you mean '{suggestion}'? it is required here"
            issue = SpecIssue(issue.path, issue.message, hint, issue.file, issue.line)
        merged.append(issue)
    merged = [issue for issue in merged if not (issue.message == "required key is missing" and issue.path in dropped)]
    by_path: dict[tuple[str | int, ...], list[SpecIssue]] = {}
    for issue in merged:
        by_path.setdefault(issue.path, []).append(issue)
    kept = []
    for issue in merged:
        rivals = by_path[issue.path]
        expected = _OTHER_TYPE.get(issue.message)
        other_member = expected is not None and not isinstance(_value_at(data, issue.path), expected)
        if len(rivals) > 1 and other_member and any(rival.message not in _OTHER_TYPE for rival in rivals):
            continue  # the value's own type has its message: this one is about another union member
        kept.append(issue)
    return kept


_OTHER_TYPE = {"Input should be a valid list": list, "Input should be a valid dictionary": dict}


def _suggested_key(issue: SpecIssue) -> str | None:
    if issue.message != "unknown key" or not issue.hint.startswith("did you mean '"):
        return None
    return issue.hint.split("'")[1]


def _in_line_order(issues: list[SpecIssue]) -> list[SpecIssue]:
    """Issues file by file, top to bottom (issues without a line first; ties keep pydantic's order)."""
    return sorted(issues, key=lambda issue: (issue.file or "", issue.line or 0))


# ------------------------------------------------------------------------------------------ internals
MAX_FLOW_DEPTH = 64
"""Deepest [ / { nesting accepted; real specs use two or three levels."""


def _flow_depth(text: str) -> tuple[int, int]:
    """The deepest nesting of flow brackets outside quotes, and the line where it is reached (a cheap upper bound)."""
    depth = deepest = 0
    line = deepest_line = 1
    quote = ""
    for char in text:
        if char == "\n":
            line += 1
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest, deepest_line


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _parse_file(path: Path) -> tuple[dict[str, Any], Origins]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([SpecIssue((), f"cannot read the file: {exc.strerror or exc}", "", str(path))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise SpecError([SpecIssue((), message, "save the file as UTF-8", str(path), line)]) from None
    depth, line = _flow_depth(text)
    if depth > MAX_FLOW_DEPTH:
        # PyYAML scans nested [ / { in quadratic time (and composes them recursively): refuse before parsing.
        raise SpecError(
            [
                SpecIssue(
                    (), f"invalid YAML: brackets nested {depth} deep", "a spec is a few levels deep", str(path), line
                )
            ]
        )
    try:
        loader = SpecYamlLoader(text)
    except yaml.reader.ReaderError as exc:  # control characters such as NUL
        line = text.count("\n", 0, exc.position) + 1
        raise SpecError(
            [SpecIssue((), f"invalid YAML: {exc.reason}", "remove control characters", str(path), line)]
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([SpecIssue((), "the file is empty", "", str(path), 1)])
        origins: Origins = {}
        problems: list[SpecIssue] = []
        _record_origins(node, (), str(path), origins, problems, set())
        if problems:
            raise SpecError(problems)
        data = loader.construct_document(node)
    except RecursionError:
        # PyYAML composes and constructs recursively: thousands of nested brackets exhaust the stack.
        raise SpecError(
            [SpecIssue((), "invalid YAML: nested too deeply", "a spec is a few levels deep", str(path))]
        ) from None
    except (ValueError, OverflowError) as exc:
        # Scalars PyYAML cannot convert, e.g. an integer with more digits than Python converts (int_max_str_digits).
        raise SpecError([SpecIssue((), f"invalid YAML value: {exc}", "", str(path))]) from None
    except yaml.constructor.ConstructorError as exc:  # a tag the safe loader does not construct: !!python/...
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        tag = re.search(r"tag '([^']*)'", exc.problem or "")
        shown = (tag.group(1) if tag else "this tag").replace("tag:yaml.org,2002:", "!!")
        kind = "Python object tags are" if "python/" in shown else "this tag is"
        raise SpecError(
            [
                SpecIssue(
                    (),
                    f"YAML tag {shown!r} is not allowed: {kind} never read in a spec",
                    "a spec holds plain mappings, lists, strings and numbers; remove the tag",
                    str(path),
                    line,
                )
            ]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise SpecError(
            [SpecIssue((), f"invalid YAML: {message}", "check indentation and quoting", str(path), line)]
        ) from None
    except yaml.YAMLError as exc:  # unmarked errors, e.g. a ReaderError raised while reading further
        raise SpecError([SpecIssue((), f"invalid YAML: {exc}", "", str(path))]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError([SpecIssue((), "a spec must be a mapping of keys to values", "", str(path), 1)])
    _expand_shorthands(data)
    return data, origins


def _record_origins(
    node: yaml.Node, path: KeyPath, file: str, origins: Origins, problems: list[SpecIssue], visited: set[int]
) -> None:
    origins[path] = (file, node.start_mark.line + 1)
    if id(node) in visited:
        # An alias of a node already walked: walking it again would follow every path of an alias bomb
        # ("billion laughs") or loop forever on a recursive alias (`&a [*a]`). Its first occurrence is recorded.
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    SpecIssue(
                        path,
                        "a key must be a plain word, not a list or mapping",
                        "",
                        file,
                        key_node.start_mark.line + 1,
                    )
                )
                continue
            key = key_node.value
            if key in seen:
                problems.append(
                    SpecIssue(
                        (*path, key),
                        "duplicate key",
                        "YAML would silently keep the last one",
                        file,
                        key_node.start_mark.line + 1,
                    )
                )
            seen.add(key)
            origins[(*path, key)] = (file, key_node.start_mark.line + 1)
            _record_origins_children(value_node, (*path, key), file, origins, problems, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_origins(item, (*path, index), file, origins, problems, visited)


def _record_origins_children(
    node: yaml.Node, path: KeyPath, file: str, origins: Origins, problems: list[SpecIssue], visited: set[int]
) -> None:
    # The key's own line stays the origin of `path`; only its children are recorded from the value node.
    line = origins[path]
    _record_origins(node, path, file, origins, problems, visited)
    origins[path] = line


def _expand_shorthands(data: dict[str, Any]) -> None:
    for key_path in SHORTHAND_KEYS:
        parent: Any = data
        for key in key_path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        last = key_path[-1]
        if isinstance(parent, dict) and isinstance(parent.get(last), str):
            parent[last] = {"kind": parent[last]}


def _issues_from_error(error: dict[str, Any], data: dict[str, Any]) -> list[SpecIssue]:
    if error["type"] == "consistency":
        return list(error["ctx"]["issues"])
    path = _data_path(error["loc"], data)
    message = error["msg"]
    hint = ""
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        key = str(path[-1])
        close = difflib.get_close_matches(key, [name for name in _all_field_names() if name != key], n=1)
        if key in _all_field_names():
            hint = f"'{key}' belongs to another section; see `archspec schema` for the keys allowed here"
        else:
            hint = f"did you mean '{close[0]}'?" if close else "see `archspec schema` for the allowed keys"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] in ("union_tag_invalid", "literal_error"):
        ctx = error.get("ctx", {})
        given = ctx.get("tag", error.get("input"))
        message = f"{given!r} is not allowed" if error["type"] == "literal_error" else f"unknown kind {given!r}"
        if error["type"] == "union_tag_invalid" and path and isinstance(_value_at(data, path), dict):
            path = (*path, "kind")
        hint = "allowed: " + str(ctx.get("expected_tags") or ctx.get("expected", ""))
    elif error["type"] == "string_pattern_mismatch" and path == ("name",):
        message = f"{error['input']!r} is not a valid name"
        hint = "use letters, digits, '.', '_' and '-', starting with a letter or digit, e.g. llama3-8b"
    elif error["type"] in _BOUNDS:
        word, bound = _BOUNDS[error["type"]]
        limit = error["ctx"][bound]
        message = f"must be {word} {limit}"
        hint = f"got {error['input']!r}"
        if bound == "le" and limit in _SIZE_LIMITS:
            hint += f"; {limit} is archspec's limit for this size, far above any published model"
    elif _is_scalar(error.get("input")) and error["type"] not in ("consistency", "value_error"):
        hint = f"got {error['input']!r}"
    return [SpecIssue(path, message, hint)]


_BOUNDS = {
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("greater than", "gt"),
}
_SIZE_LIMITS = frozenset({MAX_WIDTH, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_CONTEXT, MAX_EXPERTS, MAX_IMAGE_SIZE})


def _value_at(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part] if isinstance(data, dict | list) else None
    return data


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _data_path(loc: tuple[Any, ...], data: Any) -> KeyPath:
    """Pydantic's loc with union tags and validator names dropped: the path as the user wrote it."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif index == len(loc) - 1 and isinstance(part, str) and (node is None or isinstance(node, dict)):
            path.append(part)  # a missing key: the path where it should be
    return tuple(path)


def _locate(path: KeyPath, origins: Origins, default_file: str) -> tuple[str, int | None]:
    # Origins hold YAML's key text ("1") where the validated data may hold the key as an int (1): compare as text.
    by_text = {tuple(map(str, key_path)): where for key_path, where in origins.items()}
    for end in range(len(path), -1, -1):
        where = by_text.get(tuple(map(str, path[:end])))
        if where is not None:
            return where
    return default_file, None


def _all_field_names() -> list[str]:
    names: set[str] = set()

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            names.update(schema.get("properties", {}).keys())
            for value in schema.values():
                walk(value)
        elif isinstance(schema, list):
            for value in schema:
                walk(value)

    walk(Spec.model_json_schema())
    return sorted(names)
