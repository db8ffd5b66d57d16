"""YAML files loaded as plain data that still know their line numbers.

Operators edit YAML (the mapping, the service configuration) through Helm values; when something in it is
wrong the error must point at the exact file and line.  ``yaml.safe_load`` throws the marks away, so this
module composes the node tree itself (safe tags only: no Python objects), refuses duplicate keys (which
``safe_load`` silently resolves to the last one), builds the same plain values ``safe_load`` would, and keeps
a table from value paths such as ``("rules", 2, "freshpaint", 0, "event")`` to 1-based lines.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from consumer.errors import ConfigError

__all__ = [
    "Located",
    "PathKey",
    "UnknownKey",
    "closest",
    "dotted",
    "find_unknown_keys",
    "load_yaml",
    "load_yaml_text",
    "reject_unknown_keys",
]

PathKey = tuple[Any, ...]
"""A path into the loaded value: mapping keys (usually ``str``) and sequence indexes (``int``)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Located:
    """Plain data loaded from YAML plus the line each key or sequence item came from."""

    value: Any = field(repr=False)
    source: str
    lines: Mapping[PathKey, int] = field(default_factory=dict, repr=False)

    def line_of(self, path: Iterable[Any]) -> int | None:
        """1-based line of the key (or sequence item) at ``path``; ``None`` when the path was not in the file."""
        return self.lines.get(tuple(path))

    def nearest_line(self, path: Iterable[Any]) -> int | None:
        """Line of ``path``, or of its closest ancestor that has one (for values the file leaves out)."""
        parts = tuple(path)
        while True:
            line = self.lines.get(parts)
            if line is not None or not parts:
                return line
            parts = parts[:-1]

    def where(self, path: Iterable[Any]) -> str:
        """``FILE:LINE`` (or just ``FILE``) for messages."""
        line = self.nearest_line(path)
        return f"{self.source}:{line}" if line is not None else self.source

    def get(self, path: Iterable[Any], default: Any = None) -> Any:
        """The value at ``path``, or ``default`` when some step is missing or not a container."""
        value = self.value
        for part in path:
            in_dict = isinstance(value, dict) and part in value
            in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
            if not (in_dict or in_list):
                return default
            value = value[part]
        return value


def load_yaml(path: Path | str) -> Located:
    """Load one YAML document with ``safe_load`` semantics, keeping lines; raise ``ConfigError`` on any fault."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason}", file=source) from None
    return load_yaml_text(text, source=source)


def load_yaml_text(text: str, *, source: str = "<string>") -> Located:
    """Like :func:`load_yaml` for text already in memory; ``source`` names it in errors."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return Located(value=None, source=source, lines={})
            _check_duplicate_keys(loader, node, source)
            value = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", file=source, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=source) from None
    lines: dict[PathKey, int] = {(): node.start_mark.line + 1}
    _record_lines(loader, node, value, (), lines, set())
    return Located(value=value, source=source, lines=lines)


def _scalar_key(loader: yaml.SafeLoader, node: Node) -> Any:
    """The constructed value of a scalar key node (``a`` and ``"a"`` are the same key, ``1`` is not)."""
    return loader.construct_object(node, deep=True)


def _check_duplicate_keys(loader: yaml.SafeLoader, root: Node, source: str) -> None:
    """Refuse a mapping that names the same key twice; merge keys (``<<``) may be overridden on purpose."""
    seen_nodes: set[int] = set()
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                try:
                    key = _scalar_key(loader, key_node)
                    hash(key)
                except (yaml.YAMLError, TypeError):
                    continue  # construction reports it with its own mark
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise ConfigError(
                        f"duplicate key {key!r} (first defined on line {first_line[key]})",
                        file=source, line=line, key=str(key),
                    )
                first_line[key] = line
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)


def _record_lines(loader: yaml.SafeLoader, node: Node, value: Any, path: PathKey,
                  lines: dict[PathKey, int], expanded: set[int]) -> None:
    """Walk nodes and constructed values side by side, noting the line of every key and item.

    An aliased value (``*name``) is located where its anchor (``&name``) defines it, and a node reached
    again through an alias is not walked again (``nearest_line`` answers for paths inside it), which keeps
    recursive and "billion laughs" documents from taking exponential time here.
    """
    if id(node) in expanded:
        return
    expanded.add(id(node))
    if isinstance(node, MappingNode) and isinstance(value, dict):
        # After construction merge keys are flattened into node.value (merged first, own keys last),
        # so the last pair for a key is the one whose value won.
        winners: dict[Any, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            try:
                winners[_scalar_key(loader, key_node)] = (key_node, value_node)
            except (yaml.YAMLError, TypeError):
                continue
        for key, (key_node, value_node) in winners.items():
            if key in value:
                lines[(*path, key)] = key_node.start_mark.line + 1
                _record_lines(loader, value_node, value[key], (*path, key), lines, expanded)
    elif isinstance(node, SequenceNode) and isinstance(value, list):
        for index, (item_node, item) in enumerate(zip(node.value, value, strict=False)):
            lines[(*path, index)] = item_node.start_mark.line + 1
            _record_lines(loader, item_node, item, (*path, index), lines, expanded)


def dotted(path: Iterable[Any]) -> str:
    """Human form of a path: ``rules[2].freshpaint[0].event``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The known name most like ``name`` (for "did you mean"), or ``None`` when nothing is close."""
    matches = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    if matches:
        return matches[0]
    lowered = {str(c).lower(): str(c) for c in choices}
    return lowered.get(name.lower())


@dataclass(frozen=True)
class UnknownKey:
    """One key that is not allowed where it stands."""

    key: str
    path: PathKey
    line: int | None
    suggestion: str | None

    @property
    def message(self) -> str:
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        return f"unknown key {self.key!r}{hint}"

    def to_error(self, source: str) -> ConfigError:
        return ConfigError(self.message, file=source, line=self.line, key=dotted(self.path))


def find_unknown_keys(located: Located, path: Iterable[Any], allowed: Collection[str]) -> list[UnknownKey]:
    """Every key of the mapping at ``path`` that is not in ``allowed``, in file order."""
    base = tuple(path)
    mapping = located.get(base)
    if not isinstance(mapping, dict):
        return []
    found = []
    for key in mapping:
        if key in allowed:
            continue
        text = str(key)
        found.append(UnknownKey(key=text, path=(*base, key), line=located.line_of((*base, key)),
                                suggestion=closest(text, allowed)))
    return found


def reject_unknown_keys(located: Located, path: Iterable[Any], allowed: Collection[str]) -> None:
    """Raise ``ConfigError`` (file, line, dotted key, closest known key) for the first key not in ``allowed``."""
    unknown = find_unknown_keys(located, path, allowed)
    if unknown:
        raise unknown[0].to_error(located.source)
