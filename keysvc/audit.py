"""The audit log as an observer of domain events: each key operation becomes its `key.<kind>` line.

The line is written when `notify` returns, that is inside the operation, before its caller answers (an
HTTP admin call or a CLI command), in the layout keysvc.logs gives every audit line:
`{"event": "key.rotate", "audit": true, "actor": ..., "keyset": ..., "kid": ..., <details>}`.
"""

from __future__ import annotations

from keysvc.events import Event, KeyEvent
from keysvc.logs import audit


class AuditLog:
    """Writes key operations to the audit trail (`keysvc.audit` logger); other events are not audited."""

    def __repr__(self) -> str:
        return "AuditLog()"

    def notify(self, event: Event) -> None:
        """Write the audit line of a KeyEvent."""
        if isinstance(event, KeyEvent):
            audit(f"key.{event.kind}", actor=event.actor, keyset=event.keyset, kid=event.kid, **event.details)
