"""The one reader every configuration section goes through: dotted field names, unknown keys (with "did you
mean ...?"), durations, strings, flags, lists, and how strict to be about files (`ReadOptions`).

Imports nothing of keysvc but the error tree, so every settings module (backends' included) can use it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keysvc.errors import ConfigError

# The exact duration syntax. helm/keysvc/values.schema.json uses this very pattern for its duration
# strings: change both together.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 10 * 365 * 86400.0
_DURATION_HINT = "expected a duration such as 90s, 15m, 1h30m, 1500ms, 2.5d or a number of seconds"


def parse_duration(value: object, name: str) -> float:
    """`90s`, `1h30m`, `1500ms`, `2.5d` (DURATION_PATTERN) or a non-negative number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ConfigError(name, _DURATION_HINT)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    else:
        raise ConfigError(name, f"{_DURATION_HINT}, got {value!r}")
    if not 0 <= seconds <= MAX_DURATION:  # also refuses NaN
        raise ConfigError(name, "duration out of range (0 to 10 years)")
    return seconds


@dataclass(frozen=True)
class ReadOptions:
    """How a document is read. `offline`: secrets and TLS files must be configured, not readable (an
    operator checking a chart's rendering on a machine without /run/secrets)."""

    offline: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


class Section:
    """One mapping of the YAML document. Each value is read by name (its dotted path names it in errors);
    `done()` refuses every key no reader asked for."""

    def __init__(self, raw: object, path: str, options: ReadOptions | None = None) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(path or "config", "expected a mapping")
        self.raw: Mapping[Any, Any] = raw
        self.path = path
        self.options = options or ReadOptions()
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        """The dotted field name of `key` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def present(self, key: str) -> bool:
        """Whether `key` is given (a null value counts as absent)."""
        return self.raw.get(key) is not None

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        """The raw value of `key`, `default` when absent; ConfigError when absent and `required`."""
        self.seen.add(key)
        if self.raw.get(key) is None:
            if required:
                raise ConfigError(self.name(key), "is required")
            return default
        return self.raw[key]

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        """A non-empty string (surrounding blanks removed), or `default`."""
        value = self.get(key, default, required=required)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(self.name(key), "expected a non-empty string")
        return value.strip() if isinstance(value, str) else value

    def required_text(self, key: str) -> str:
        """A non-empty string that must be given."""
        value: str = self.text(key, required=True)
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        """true or false."""
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.name(key), "expected true or false")
        return value

    def duration(self, key: str, default: object = None, *, required: bool = False) -> float:
        """A duration in seconds (see `parse_duration`)."""
        return parse_duration(self.get(key, default, required=required), self.name(key))

    def positive_duration(self, key: str, default: object) -> float:
        """A duration greater than zero."""
        seconds = self.duration(key, default)
        if seconds <= 0:
            raise ConfigError(self.name(key), "must be greater than 0")
        return seconds

    def number(self, key: str, default: float) -> float:
        """A number (int or float, not a bool) greater than zero."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ConfigError(self.name(key), f"expected a number greater than 0, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        """A whole number from `low` to `high`."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(self.name(key), f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        """One of `allowed` (the first is the default)."""
        value = self.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(self.name(key), f"must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    def str_list(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        """A list of non-empty strings (empty when absent)."""
        value = self.get(key, None, required=required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.name(key), "expected a list of non-empty strings")
        return tuple(value)

    def section(self, key: str) -> Section:
        """The mapping under `key` (empty when absent)."""
        return Section(self.get(key), self.name(key), self.options)

    def named(self) -> list[tuple[str, Section]]:
        """Each entry of a mapping of named sections (keysets, clients), in document order."""
        self.seen.update(str(k) for k in self.raw)
        out = []
        for name in self.raw:
            if not isinstance(name, str):
                raise ConfigError(self.path, f"names must be strings, got {name!r}")
            out.append((name, Section(self.raw[name], self.name(name), self.options)))
        return out

    def done(self) -> None:
        """Refuse the first key no reader asked for, suggesting the closest known key."""
        unknown = sorted(str(k) for k in self.raw if k not in self.seen)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(self.seen), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(self.name(unknown[0]), f"unknown setting{hint}")
