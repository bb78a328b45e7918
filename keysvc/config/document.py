"""YAML text -> plain data and the line of each field, refusing what PyYAML lets through silently: a key
given twice in one mapping (the later one would win, e.g. a keyset defined twice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from keysvc.errors import ConfigError, ConfigProblem

MAX_DEPTH = 64  # deeper than any configuration; the line map stops there


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings record each key given twice, naming both lines."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[ConfigProblem] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    self.duplicates.append(ConfigProblem(
                        "config", f"{key!r} is defined twice in one mapping (first at line {first[key]})", line))
                else:
                    first[key] = line
            except TypeError:  # an unhashable key: construct_mapping below says so
                continue
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


@dataclass(frozen=True)
class Document:
    """A YAML document's data, and the line of each key by dotted field name (`keysets.zapier.alg`)."""

    data: object
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No document at all (an empty file, or only comments)."""
        return self.data is None

    def line(self, name: str) -> int | None:
        """The line of field `name`, else of the closest enclosing field given (a missing key: its mapping)."""
        while name:
            if name in self.lines:
                return self.lines[name]
            name = name.rpartition(".")[0]
        return None


def _key_lines(root: yaml.Node) -> dict[str, int]:
    """The line of each key by dotted name. Each node is visited once: a node reached again through a YAML
    alias keeps the lines of its first path (so an alias "bomb" costs no more than its text)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    todo: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    while todo:
        node, path, depth = todo.pop()
        if not isinstance(node, yaml.MappingNode) or id(node) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(node))
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                name = f"{path}.{key_node.value}" if path else str(key_node.value)
                out.setdefault(name, key_node.start_mark.line + 1)
                todo.append((value_node, name, depth + 1))
    return out


def _syntax_error(exc: yaml.YAMLError) -> ConfigError:
    """The parser's own problem and where (line and column), as a ConfigError."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else str(problem)
    if mark is None:
        return ConfigError("config", f"invalid YAML: {text}")
    return ConfigError("config", f"invalid YAML: {text} (column {mark.column + 1})", line=mark.line + 1)


def read_document(text: str) -> Document:
    """Parse YAML text; ConfigError("config", ...) with the parser's problem, line and column for invalid
    YAML, and every key given twice."""
    try:
        loader = _UniqueKeyLoader(text)  # its reader already refuses control characters
    except yaml.YAMLError as exc:
        raise _syntax_error(exc) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc) from None
    except RecursionError:
        raise ConfigError("config", "YAML nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a value PyYAML cannot build: a 5000-digit integer, a bad date
        raise ConfigError("config", f"a value cannot be read ({type(exc).__name__}): a number thousands of digits "
                                    "long, or an impossible date?") from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError.collected(loader.duplicates)
    return Document(data, _key_lines(node) if node is not None else {})


def load_document(text: str) -> object:
    """The data of one YAML document (see `read_document`)."""
    return read_document(text).data
