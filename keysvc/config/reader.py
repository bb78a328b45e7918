"""The one reader every configuration section goes through: dotted field names, unknown keys (with "did you
mean ...?"), durations, strings, flags, lists, and how strict to be about files (`ReadOptions`).

Imports nothing of keysvc but the error tree, so every settings module (backends' included) can use it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from keysvc.errors import ConfigError, ConfigProblem

T = TypeVar("T")

# The exact duration syntax. helm/keysvc/values.schema.json uses this very pattern for its duration
# strings: change both together.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 10 * 365 * 86400.0
_DURATION_HINT = "expected a duration such as 90s, 15m, 1h30m, 1500ms, 2.5d or a number of seconds"


MAX_DURATION_TEXT = 64  # characters: "1d23h59m59s999ms" is 16; a longer text is a mistake or an attack


def _shown(value: object) -> str:
    """`value` as an error shows it: its repr, cut short (a configuration or a caller may send megabytes)."""
    if isinstance(value, int) and not -(10**18) < value < 10**18:
        return "an integer of more than 18 digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def parse_duration(value: object, name: str) -> float:
    """`90s`, `1h30m`, `1500ms`, `2.5d` (DURATION_PATTERN) or a non-negative number of seconds -> seconds,
    at most MAX_DURATION. Raises ConfigError(name, ...) for anything else, however long or large."""
    if isinstance(value, bool):
        raise ConfigError(name, _DURATION_HINT)
    if isinstance(value, int):  # compared as an int: float() of a 400-digit integer raises OverflowError
        seconds = float(value) if -1 < value <= MAX_DURATION else float("inf")
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and len(value) > MAX_DURATION_TEXT:
        raise ConfigError(name, f"a duration is at most {MAX_DURATION_TEXT} characters, got {len(value)}")
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    else:
        raise ConfigError(name, f"{_DURATION_HINT}, got {_shown(value)}")
    if not 0 <= seconds <= MAX_DURATION:  # also refuses NaN and infinity
        raise ConfigError(name, "duration out of range (0 to 10 years)")
    return seconds


def unknown_key(key: str, close: str | None) -> str:
    """The message of an unknown key, with the known key it is closest to."""
    return f"unknown setting {key!r}" + (f" (did you mean {close!r}?)" if close else "")


class Collector:
    """The problems one reading of a document found. Each read that fails is recorded (with its YAML line
    when the document has it) and the reading goes on; `check()` then raises one ConfigError holding them
    all."""

    def __init__(self, lines: Callable[[str], int | None] | None = None) -> None:
        self.problems: list[ConfigProblem] = []
        self._lines = lines

    def add(self, error: ConfigError) -> None:
        """Record every problem of `error` (a SectionRefused's are recorded already)."""
        if isinstance(error, SectionRefused):
            return
        for problem in error.problems:
            line = problem.line
            if line is None and self._lines is not None:
                line = self._lines(problem.field)
            found = ConfigProblem(problem.field, problem.message, line)
            if found not in self.problems:
                self.problems.append(found)

    def replace(self, field: str, error: ConfigError) -> None:
        """Put `error` in place of the problem recorded for `field` (a required key found misspelt)."""
        found = [ConfigProblem(p.field, p.message, self._lines(p.field) if self._lines else None)
                 for p in error.problems]
        at = next((i for i, p in enumerate(self.problems) if p.field == field), len(self.problems))
        self.problems[at:at + 1] = found

    def attempt(self, read: Callable[..., T], *args: Any) -> T | None:
        """`read(*args)`, or None when it raised ConfigError (recorded)."""
        try:
            return read(*args)
        except ConfigError as exc:
            self.add(exc)
            return None

    def check(self) -> None:
        """Raise one ConfigError holding every problem recorded, if any, in document order (problems of the
        whole file first, then by line; as found within a line)."""
        if self.problems:
            raise ConfigError.collected(sorted(self.problems, key=lambda p: (p.line is not None, p.line or 0)))


class SectionRefused(ConfigError):
    """A section could not be built; its problems are in the collector already (alone, it lists them)."""


@dataclass(frozen=True)
class ReadOptions:
    """How a document is read. `offline`: secrets and TLS files must be configured, not readable (an
    operator checking a chart's rendering on a machine without /run/secrets)."""

    offline: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


class Section:
    """One mapping of the YAML document. Each value is read by name (its dotted path names it in errors);
    `done()` records every key no reader asked for. All sections of a document share one Collector: a
    section's reads go on past a failed one (`attempt`, `read`), and `done()` refuses the section when
    anything in it failed."""

    def __init__(
        self, raw: object, path: str, options: ReadOptions | None = None, collector: Collector | None = None
    ) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(path or "config", "expected a mapping")
        self.raw: Mapping[Any, Any] = raw
        self.path = path
        self.options = options or ReadOptions()
        self.collector = collector or Collector()
        self.seen: set[str] = set()
        self.missing_keys: list[str] = []  # required keys not given (see `missing`)
        self._start = len(self.collector.problems)

    def name(self, key: str) -> str:
        """The dotted field name of `key` in this section."""
        return f"{self.path}.{key}" if self.path else key

    @property
    def failed(self) -> bool:
        """Whether a problem was recorded since this section was opened (its own, or a nested section's)."""
        return len(self.collector.problems) > self._start

    def attempt(self, read: Callable[..., T], *args: Any) -> T | None:
        """`read(*args)`, or None when it raised ConfigError (recorded; the reading goes on)."""
        return self.collector.attempt(read, *args)

    def read(self, **readers: Callable[[], Any]) -> dict[str, Any]:
        """Every reader run, each failure recorded; then `done()`. The values by name, all of them valid."""
        values = {key: self.attempt(reader) for key, reader in readers.items()}
        self.done()
        return values

    def error(self, key: str, message: str) -> None:
        """Record a problem with `key` of this section and go on."""
        self.collector.add(ConfigError(self.name(key) if key else self.path or "config", message))

    def missing(self, key: str, message: str = "is required") -> ConfigError:
        """The error for a required `key` not given. Should `done()` then find an unknown key that looks like
        its misspelling (`keyset:` for `keysets:`), that one error becomes "unknown key ... did you mean"."""
        self.seen.add(key)
        self.missing_keys.append(key)
        return ConfigError(self.name(key), message)

    def present(self, key: str) -> bool:
        """Whether `key` is given (a null value counts as absent)."""
        return self.raw.get(key) is not None

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        """The raw value of `key`, `default` when absent; ConfigError when absent and `required`."""
        self.seen.add(key)
        if self.raw.get(key) is None:
            if required:
                raise self.missing(key)
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

    def number(self, key: str, default: float, high: float) -> float:
        """A number (int or float, not a bool) greater than zero and at most `high`."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
            raise ConfigError(self.name(key), f"expected a number greater than 0 and at most {high:g}, "
                                              f"got {_shown(value)}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        """A whole number from `low` to `high`."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(self.name(key), f"expected a whole number from {low} to {high}, got {_shown(value)}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        """One of `allowed` (the first is the default)."""
        value = self.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(self.name(key), f"must be one of {', '.join(allowed)}, got {_shown(value)}")
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
        return Section(self.get(key), self.name(key), self.options, self.collector)

    def named(self) -> list[tuple[str, Section]]:
        """Each entry of a mapping of named sections (keysets, clients), in document order; an entry that is
        no mapping is recorded and left out."""
        self.seen.update(str(k) for k in self.raw)
        out = []
        for name in self.raw:
            if not isinstance(name, str):
                self.error("", f"names must be strings, got {_shown(name)}")
                continue
            sec = self.attempt(Section, self.raw[name], self.name(name), self.options, self.collector)
            if sec is not None:
                out.append((name, sec))
        return out

    def skip_rest(self) -> None:
        """The rest of this section cannot be read (no backend type says which keys it has): refuse it
        without calling its other keys unknown, unless one looks like a missing required key."""
        for key in map(str, self.raw):
            if not difflib.get_close_matches(key, self.missing_keys, n=1):
                self.seen.add(key)
        self.done()

    def done(self) -> None:
        """Record every key no reader asked for, suggesting the closest known key: a required key not given
        first (its "is required" is then replaced by this one error), else any key read. Then, if anything
        in this section failed, refuse it (SectionRefused)."""
        missing, known = list(self.missing_keys), sorted(self.seen)
        for key in sorted(str(k) for k in self.raw if str(k) not in self.seen):
            wanted = difflib.get_close_matches(key, missing, n=1)
            if wanted:
                missing.remove(wanted[0])
                self.collector.replace(self.name(wanted[0]), ConfigError(self.name(key), unknown_key(key, wanted[0])))
                continue
            close = difflib.get_close_matches(key, known, n=1)
            self.error(key, unknown_key(key, close[0] if close else None))
        if self.failed:
            raise SectionRefused.collected(self.collector.problems[self._start:])
