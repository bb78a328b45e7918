"""PURE: the rules a partner route's input must follow, each written once, and the strict reading of a
request's fields against them. A rule both checks a value (for the parsers: keysvc.partner.gateway_inputs,
keysvc.partner.triggers.inputs, keysvc.partner.exchange_body) and renders its JSON Schema (for the OpenAPI
entries: keysvc.partner.contracts), so the document states exactly what the parsers accept. A bound set by
configuration (`run_wait_max`, `lease_wait_max`) is named by the rule and filled in from the settings when
the document is built (`Limits`). Every malformed input is an InvalidRequest naming the field.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from keysvc.config import parse_duration
from keysvc.errors import ConfigError, InvalidRequest

JsonObject = dict[str, Any]
Limits = Mapping[str, Any]  # a configured bound by its setting's name: {"run_wait_max": 60.0, ...}
UUID_CHARS = 36
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?")  # a query parameter's plain number of seconds


class Rule(Protocol):
    """What one input must be: its JSON Schema, given the configured limits."""

    def schema(self, limits: Limits) -> JsonObject: ...


@dataclass(frozen=True)
class Text:
    """A string matching `pattern` in full (a regular expression both Python and JSON Schema read alike);
    `what` says it in words, in the error and in the document."""

    pattern: str
    what: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "_re", re.compile(self.pattern))

    def matches(self, value: Any) -> bool:
        return isinstance(value, str) and self._re.fullmatch(value) is not None  # type: ignore[attr-defined]

    def schema(self, limits: Limits) -> JsonObject:
        return {"type": "string", "pattern": f"^{self.pattern}$", "description": self.what}


@dataclass(frozen=True)
class Uuid:
    """A UUID in its 36-character hyphenated form."""

    what: str

    def matches(self, value: Any) -> bool:
        return isinstance(value, str) and is_uuid(value)

    def schema(self, limits: Limits) -> JsonObject:
        return {"type": "string", "format": "uuid", "description": self.what}


@dataclass(frozen=True)
class Integer:
    """An integer from `low` to `high` (in a query, its decimal digits; in JSON, 19.0 is 19 as JSON Schema
    says)."""

    low: int
    high: int

    def schema(self, limits: Limits) -> JsonObject:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class Duration:
    """Seconds (a number, or a number of seconds as text in a query) or a duration such as 10s or 5m,
    from `low` to `high` seconds, or to the configured limit `limit` when it is set; `whole`: whole seconds."""

    low: float
    high: float = 0.0
    limit: str | None = None  # the setting that bounds it (run_wait_max, lease_wait_max)
    whole: bool = False

    def most(self, limits: Limits) -> float:
        return float(limits[self.limit]) if self.limit is not None else self.high

    def schema(self, limits: Limits) -> JsonObject:
        """A number within the bounds, or text: the document's text form is whole seconds with `s` (such as
        30s) of at most as many digits as keep it within the bounds (any longer duration the parser reads,
        such as 5m or 1h30m, is within the description's words but not the pattern: a schema cannot bound
        a duration's text)."""
        most = self.most(limits)
        bound = f" (at most {self.limit})" if self.limit else ""
        number: JsonObject = {"type": "integer" if self.whole else "number", "minimum": self.low, "maximum": most}
        return {"description": f"seconds, or a duration such as 30s or 5m, from {self.low:g} to {most:g}{bound}",
                "oneOf": [number, {"type": "string", "pattern": f"^{self.digits(limits)}s$"}]}

    def digits(self, limits: Limits) -> str:
        """A regular expression of whole numbers within the bounds (not all of them: 0 to 999 of 0 to 3600)."""
        low, high = math.ceil(self.low), math.floor(self.most(limits))
        if high < 10:
            return f"[{low}-{high}]"
        first, more = "[1-9]" if low >= 1 else "[0-9]", len(str(high)) - 2
        return first + (f"[0-9]{{0,{more}}}" if more else "")


@dataclass(frozen=True)
class Choice:
    """One of the `values`."""

    values: tuple[str, ...]

    def schema(self, limits: Limits) -> JsonObject:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True)
class Schema:
    """A rule only the parser spells out (an object's bounds, a free string): its schema as given."""

    value: JsonObject

    def schema(self, limits: Limits) -> JsonObject:
        return self.value


# The duration text a request may carry (the configuration's own form, such as 10s, 5m or 1h30m); its
# bound in seconds is the rule's.
DURATION_TEXT = Text(r"([0-9]+(\.[0-9]+)?(ms|s|m|h|d)){1,5}", "a duration such as 10s or 5m")
IDENTIFIER = Text(r"[\x21-\x7e]{1,256}", "a non-empty string of printable ASCII (at most 256 characters)")


@dataclass(frozen=True)
class User:
    """Who the call is for: the partner JWT's `sub` and tenant claim."""

    user_id: str
    tenant_id: str


class Fields:
    """A request's fields (a JSON object, or query parameters without repeats) and the names it may have."""

    def __init__(self, raw: Mapping[str, Any], known: Iterable[str], where: str) -> None:
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise InvalidRequest(f"unknown {where} {unknown[0][:64]!r}")
        self.raw, self.where = raw, where

    def text(self, name: str, rule: Text | Uuid, *, required: bool = False, what: str | None = None) -> str | None:
        """The field's string when it follows `rule`; None when absent and not `required`."""
        value = self.raw.get(name)
        what = what or rule.what
        if value is None:
            if required:
                raise InvalidRequest(f"{self.where} {name} is required: {what}")
            return None
        if not rule.matches(value):
            raise InvalidRequest(f"{self.where} {name} must be {what}")
        return str(value)

    def required(self, name: str, rule: Text | Uuid, what: str | None = None) -> str:
        value = self.text(name, rule, required=True, what=what)
        assert value is not None  # nosec B101 - required=True never answers None
        return value

    def user(self) -> User:
        return User(self.required("user_id", IDENTIFIER), self.required("tenant_id", IDENTIFIER))

    def integer(self, name: str, rule: Integer) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
            value = int(value)
        elif isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)  # JSON Schema's integer: 19.0 is 19
        if isinstance(value, bool) or not isinstance(value, int) or not rule.low <= value <= rule.high:
            raise InvalidRequest(f"{self.where} {name} must be an integer from {rule.low} to {rule.high}")
        return value

    def duration(self, name: str, rule: Duration, limits: Limits) -> float | None:
        """The field's seconds within the rule's bounds; None when absent."""
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, str) and _SECONDS.fullmatch(value):
            value = float(value)
        elif isinstance(value, str) and not DURATION_TEXT.matches(value):
            value = None
        try:
            seconds = math.nan if value is None else parse_duration(value, name)
        except (ConfigError, OverflowError, ValueError):
            seconds = math.nan
        most = rule.most(limits)
        if not rule.low <= seconds <= most:
            limit = f" ({rule.limit})" if rule.limit else ""
            raise InvalidRequest(f"{self.where} {name} must be a duration such as 30s or 5m, "
                                 f"from {rule.low:g} to {most:g} seconds{limit}")
        if rule.whole and seconds != int(seconds):
            raise InvalidRequest(f"{self.where} {name} must be whole seconds (Zapier leases by the second)")
        return float(seconds)


def query_fields(items: Iterable[tuple[str, str]], known: Iterable[str]) -> Fields:
    """Fields from query parameters; a parameter given twice is refused (which one would count?)."""
    raw: dict[str, str] = {}
    for name, value in items:
        if name in raw:
            raise InvalidRequest(f"query parameter {name[:64]!r} is repeated")
        raw[name] = value
    return Fields(raw, known, "query parameter")


def body_fields(body: Any, known: Iterable[str]) -> Fields:
    """Fields from a JSON body, which must be an object."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return Fields(body, known, "field")


def is_uuid(value: str) -> bool:
    """True for a UUID in its 36-character hyphenated form."""
    if len(value) != UUID_CHARS or value.count("-") != 4:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
