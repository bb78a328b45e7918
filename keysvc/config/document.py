"""YAML text -> plain data, refusing what PyYAML lets through silently: a key given twice in one mapping
(the later one would win, e.g. a keyset defined twice)."""

from __future__ import annotations

from typing import Any

import yaml

from keysvc.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse duplicate keys, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise ConfigError(
                        "config", f"line {line}: {key!r} is defined twice in one mapping (first at line {first[key]})"
                    )
                first[key] = line
            except TypeError:  # an unhashable key: construct_mapping below says so
                continue
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def load_document(text: str) -> object:
    """The data of one YAML document; ConfigError("config", ...) with the line for invalid YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # nosec B506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("config", f"invalid YAML{where}") from None
    except RecursionError:
        raise ConfigError("config", "YAML nested too deeply") from None
