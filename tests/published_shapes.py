"""What the fakes of Zapier's two published APIs (tests/zapier_fake: the Partner API; tests/trigger_inbox_fake:
the Trigger Inbox API) share: the records a test reads back, and how a request's query and JSON body are
checked against a transcribed schema.

Each mismatch is recorded as a `Violation` whatever the fake then answers. A mismatch with the document is
also refused with the API's own 400; a member the document does not name (`closed`) is recorded only,
since Zapier ignores it, but it is a mistake in the caller (a misspelt parameter is silently ignored
upstream). A fake mixes in `ShapeChecks` and says how its API words an error (`_error`, `_invalid`).
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

Schema = dict[str, Any]

User = tuple[str, str]
"""Whom a request is for: the access token's (sub, tenant)."""


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the fake saw it (no Authorization header), and the status it answered."""

    method: str
    path: str
    endpoint: str
    query: dict[str, Any]
    body: Any
    status: int
    user: User | None


@dataclass(frozen=True)
class Violation:
    """A request that did not match the published shapes: where (`path`, `header`, `query`, `body`) and how."""

    endpoint: str
    where: str
    message: str


def closed(schema: Schema) -> Schema:
    """`schema` with every object that lists its properties closed to others (`additionalProperties: false`)."""
    out = copy.deepcopy(schema)
    stack: list[Any] = [out]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _describe(error: Any) -> str:
    return "/" + "/".join(str(p) for p in error.absolute_path) + f": {error.message}"


@dataclass(frozen=True)
class Shape:
    """A schema as the document gives it, and the same closed to unknown members."""

    published: Draft202012Validator
    strict: Draft202012Validator

    @classmethod
    def of(cls, schema: Schema) -> Shape:
        """Both validators of `schema`, checking formats (uuid, date-time, uri)."""
        checker = Draft202012Validator.FORMAT_CHECKER
        return cls(Draft202012Validator(schema, format_checker=checker),
                   Draft202012Validator(closed(schema), format_checker=checker))

    def problems(self, value: Any) -> tuple[list[str], list[str]]:
        """(mismatches with the document, members the document does not name)."""
        published = [_describe(e) for e in self.published.iter_errors(value)]
        strict = [] if published else [_describe(e) for e in self.strict.iter_errors(value)]
        return published, strict


class Endpoint(Protocol):
    """What the checks need of a fake's operation."""

    @property
    def name(self) -> str: ...

    @property
    def query(self) -> Schema: ...

    @property
    def body(self) -> Schema | None: ...


class ShapeChecks:
    """Checks and records for a fake's dataclass, which holds `log`, `violations`, `_lock` and `_shapes`."""

    integer_parameters: ClassVar[frozenset[str]]  # query parameters converted from text before validation
    log: list[LoggedRequest]
    violations: list[Violation]
    _lock: threading.RLock
    _shapes: dict[int, Shape]  # by id() of the schema: built once each

    def _error(self, status: int, code: str, detail: str) -> Response:
        """The API's error answer."""
        raise NotImplementedError

    def _invalid(self, where: str, problems: list[str]) -> Response:
        """The 400 for mismatches with the document in the query or the body."""
        return self._error(400, "invalid", "; ".join(problems))

    def _violation(self, op: Endpoint, where: str, message: str) -> None:
        self.violations.append(Violation(op.name, where, message))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """No route for this path (404) or method (405): answered in the API's words, and a violation."""
        assert isinstance(exc, HTTPException)
        name = f"{request.method} {request.url.path}"
        with self._lock:
            self.violations.append(Violation(name, "path", f"no such endpoint ({exc.status_code})"))
            self.log.append(LoggedRequest(request.method, request.url.path, name, {}, None, exc.status_code, None))
        if exc.status_code == 405:
            return self._error(405, "method_not_allowed", str(exc.detail))
        return self._error(404, "not_found", str(exc.detail))

    def _check_query(self, op: Endpoint, request: Request) -> tuple[dict[str, Any], Response | None]:
        """The query string, one value per name (the last; integers as ints), and its refusal if any."""
        query: dict[str, Any] = {}
        for name in request.query_params:
            values = request.query_params.getlist(name)
            if len(values) > 1:
                self._violation(op, "query", f"{name} given {len(values)} times")
            value: Any = values[-1]
            if name in self.integer_parameters and value.lstrip("-").isdigit():
                value = int(value)
            query[name] = value
        return query, self._check(op, "query", op.query, query)

    def _check_body(self, op: Endpoint, request: Request, raw: bytes) -> tuple[Any, Response | None]:
        """The JSON body (the raw text when it is not JSON), and its refusal if any."""
        assert op.body is not None
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            self._violation(op, "header", "Content-Type must be application/json")
            return raw.decode(errors="replace"), self._error(415, "unsupported_media_type", "JSON bodies only.")
        try:
            body = json.loads(raw)
        except ValueError:
            self._violation(op, "body", "not JSON")
            return raw.decode(errors="replace"), self._error(400, "parse_error", "Malformed request.")
        return body, self._check(op, "body", op.body, body)

    def _check(self, op: Endpoint, where: str, schema: Schema, value: Any) -> Response | None:
        shape = self._shapes.get(id(schema))
        if shape is None:
            shape = self._shapes[id(schema)] = Shape.of(schema)
        published, strict = shape.problems(value)
        for problem in published + strict:
            self._violation(op, where, problem)
        return self._invalid(where, published) if published else None
