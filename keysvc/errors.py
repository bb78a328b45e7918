"""The one exception tree of keysvc.

    KeysvcError                       root; never escapes as a 500
    ├── ConfigError                   bad configuration (exit status 78, EX_CONFIG, at start-up)
    ├── InvalidKeyMaterial            a key given to `keys import --pem` cannot be used (exit status 1)
    ├── RequestError                  answered to an HTTP client, OAuth-style code + status
    │   ├── InvalidRequest            400 invalid_request
    │   ├── InvalidClient             401 invalid_client (WWW-Authenticate: Bearer)
    │   ├── Forbidden                 403 forbidden
    │   ├── NotFound                  404 not_found
    │   ├── MethodNotAllowed          405 method_not_allowed (Allow)
    │   ├── RequestTimeout            408 request_timeout (a head or body not sent in time)
    │   ├── Conflict                  409 conflict (e.g. rotation not yet safe)
    │   │   ├── ConnectionRequired    409 connection_required (no connection given, none recorded)
    │   │   └── ReconnectRequired     409 reconnect_required (+ "connection": the id Zapier refused)
    │   ├── PayloadTooLarge           413 payload_too_large
    │   ├── UnsupportedMediaType      415 unsupported_media_type
    │   ├── ClientClosedRequest       499 (nginx's code): the client went away mid-body; nobody reads it
    │   ├── RateLimited               429 rate_limited (Retry-After)
    │   ├── UpstreamError             502 upstream_error
    │   └── Unavailable               503 unavailable (Retry-After)
    ├── BackendError                  the key store failed (I/O, KMS); mapped to 503 on request paths
    │   ├── BackendUnavailable        transient: unreachable, throttled, disabled key
    │   └── StoreCorrupt              a record on disk or in KMS cannot be read
    └── StoreUnavailable              the gateway store (keysvc.partner.store) failed or passed its deadline;
                                      the budget falls back to a local one, partner routes answer 503

Messages never contain secret material: callers pass descriptions, not values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class KeysvcError(Exception):
    """Root of every error keysvc raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration: the field (dotted path), what is wrong, and the YAML line."""

    field: str
    message: str
    line: int | None = None

    def describe(self, source: str | None = None) -> str:
        """`source:line: field: message` (each part only when known), one line."""
        if source is None:
            where = f"line {self.line}: " if self.line is not None else ""
        else:
            where = f"{source}:{self.line}: " if self.line is not None else f"{source}: "
        return f"{where}{self.field}: {self.message}"


class ConfigError(KeysvcError):
    """The configuration is invalid. It holds every problem one reading found (`problems`, at least one);
    `field` and `message` are the first one's. `source` names the file when one was read."""

    def __init__(self, field: str, message: str, *, line: int | None = None) -> None:
        self.problems: tuple[ConfigProblem, ...] = (ConfigProblem(field, message, line),)
        self.source: str | None = None
        super().__init__(self._text())

    @classmethod
    def collected(cls, problems: Sequence[ConfigProblem], source: str | None = None) -> ConfigError:
        """One error holding several problems (in the order they were found)."""
        error = cls(problems[0].field, problems[0].message, line=problems[0].line)
        error.problems, error.source = tuple(problems), source
        error.args = (error._text(),)
        return error

    @property
    def field(self) -> str:
        return self.problems[0].field

    @property
    def message(self) -> str:
        return self.problems[0].message

    def lines(self) -> list[str]:
        """One line per problem: `source:line: field: message`."""
        return [problem.describe(self.source) for problem in self.problems]

    def _text(self) -> str:
        return "\n".join(self.lines())

    def __str__(self) -> str:
        return self._text()


class InvalidKeyMaterial(KeysvcError):
    """A private key given to import (`keysvc keys import --pem`) cannot be used: not an unencrypted PEM
    private key, the wrong type or curve for the keyset's algorithm, a weak RSA key, a key already in the
    keyset, or a backend that cannot import. The file is wrong, not the configuration: exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"--pem: {message}")
        self.message = message


class RequestError(KeysvcError):
    """An error answered to an HTTP client as `{"error": code, "error_description": text}`."""

    status = 400
    code = "invalid_request"

    def __init__(self, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Extra response headers this error requires."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def fields(self) -> dict[str, str]:
        """Extra members of the JSON body, after `error` and `error_description` (none by default)."""
        return {}


class InvalidRequest(RequestError):
    status, code = 400, "invalid_request"


class InvalidClient(RequestError):
    status, code = 401, "invalid_client"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="keysvc"'}


class Forbidden(RequestError):
    status, code = 403, "forbidden"


class NotFound(RequestError):
    status, code = 404, "not_found"


class MethodNotAllowed(RequestError):
    """`allow`: the methods the resource does accept (the `Allow` header, RFC 9110 §15.5.6)."""

    status, code = 405, "method_not_allowed"

    def __init__(self, description: str, *, allow: str) -> None:
        super().__init__(description)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class RequestTimeout(RequestError):
    status, code = 408, "request_timeout"


class Conflict(RequestError):
    status, code = 409, "conflict"


class ConnectionRequired(Conflict):
    """The call omitted `connection` and no usable connection of the user's is recorded for the app."""

    code = "connection_required"


class ReconnectRequired(Conflict):
    """Zapier refused the user's connection for its authentication: open Connect with `reconnect_id`."""

    code = "reconnect_required"

    def __init__(self, description: str, connection: str) -> None:
        super().__init__(description)
        self.connection = connection

    def fields(self) -> dict[str, str]:
        """`connection`: the id to reconnect (Zapier's, not a secret)."""
        return {"connection": self.connection}


class PayloadTooLarge(RequestError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(RequestError):
    status, code = 415, "unsupported_media_type"


class ClientClosedRequest(RequestError):
    """The client disconnected before sending its whole body: its own doing, so no error line and no 500;
    the access line and the request counter say 499, as nginx does. The answer reaches no one."""

    status, code = 499, "client_closed_request"


class RateLimited(RequestError):
    status, code = 429, "rate_limited"


class UpstreamError(RequestError):
    status, code = 502, "upstream_error"


class Unavailable(RequestError):
    status, code = 503, "unavailable"


class BackendError(KeysvcError):
    """The key store failed."""


class BackendUnavailable(BackendError):
    """The key store is unreachable or refuses for now (retry later)."""


class StoreCorrupt(BackendError):
    """A stored key record cannot be read or does not match its private key."""


class StoreUnavailable(KeysvcError):
    """The gateway store did not answer `operation` in time or failed: unreachable, refused, timed out, a lock
    not granted in time, a broken connection, an unexpected answer. Every store call raises only this (or
    ValueError for a caller's bug); the budget catches it and falls back to a local budget, the partner routes
    answer 503 `unavailable` with `Retry-After` (hint: `retry_after` seconds). The message names the operation
    and the kind of failure, never a URL with credentials, a password or a value."""

    def __init__(self, operation: str, reason: str, *, retry_after: int = 1) -> None:
        super().__init__(f"gateway store: {operation} failed: {reason}")
        self.operation = operation
        self.reason = reason
        self.retry_after = retry_after
