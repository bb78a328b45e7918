"""The domain events of a replica, and the one protocol that receives them.

The keyring and the lifecycle operations say what happened as typed, frozen events; observers decide what
to do with them: the audit log (keysvc.audit) writes key operations, the metrics (keysvc.metrics.Metrics)
count everything, the S3 mirror (keysvc.mirror.sync) writes each changed JWKS. Nothing else is wired to
the keyring: no hook lists, no logging handler turning messages into metrics.

    KeyEvent            a key operation (create, activate, destroy, rotate, revoke, import): who, which kid
    JwksChanged         a keyset's published JWKS changed (a new view was installed)
    Reconciled          one refresh of a keyset with the backend: its report, or the error it failed with
    BackendOperation    one backend call (sync | sign | write), its error or None, and its duration
    ExpBeyondRetention  a token refused because its exp would outlive its key's retention (must never happen)

`notify` is called synchronously, on the thread where the event happened (key operations run in the
keyring's I/O pool, the others on the event loop): an observer must be quick and thread-safe, and one
that writes an audit line has written it when `notify` returns, before the operation's answer is sent.
The per-request `token.sign` and `token.exchange` audit lines are not events: they are written by the
signing path itself (keysvc.batching), one write per batch, and go through no dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from keysvc.records import ReconcileReport
from keysvc.views import KeysetView

KEY_EVENT_KINDS = ("create", "activate", "destroy", "rotate", "revoke", "import")


@dataclass(frozen=True)
class KeyEvent:
    """A key operation. `details` are the audit line's other fields, in the order they are written."""

    kind: str  # one of KEY_EVENT_KINDS: the audit line is `key.<kind>`
    keyset: str
    kid: str
    actor: str  # a replica's instance id, `client:<name>` (HTTP admin) or `cli:<user>`
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JwksChanged:
    """A keyset's published JWKS changed: `view` is the new view, serving from now on."""

    view: KeysetView


@dataclass(frozen=True)
class Reconciled:
    """One refresh of a keyset: `report` when it succeeded, else `error` (the last-known view keeps serving)."""

    keyset: str
    report: ReconcileReport | None
    error: BaseException | None = None


@dataclass(frozen=True)
class BackendOperation:
    """One backend call: `operation` sync (reconcile + load), sign (remote signature) or write (admin)."""

    operation: str
    error: BaseException | None
    seconds: float


@dataclass(frozen=True)
class ExpBeyondRetention:
    """A token refused because `ttl` exceeds the keyset's max_token_ttl (every caller caps it first)."""

    keyset: str
    ttl: int


Event = KeyEvent | JwksChanged | Reconciled | BackendOperation | ExpBeyondRetention


class Observer(Protocol):
    """Receives every event; ignores the kinds it has no use for."""

    def notify(self, event: Event) -> None: ...


class Observers:
    """Several observers as one, told in the order they were given."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def __repr__(self) -> str:
        return f"Observers({', '.join(type(o).__name__ for o in self._observers)})"

    def notify(self, event: Event) -> None:
        """Tell each observer, in order."""
        for observer in self._observers:
            observer.notify(event)
