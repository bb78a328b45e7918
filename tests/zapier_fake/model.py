"""What the Partner API fake holds: apps, actions, per-user connections, action runs, and the records a
test reads back (request log, violations). Plain dataclasses with predictable reprs; no HTTP here."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.published_shapes import User


@dataclass
class App:
    """An app in Zapier's directory. `id` is the canonical UUID; `slug` is the Connect URL's path segment."""

    id: str
    title: str
    slug: str
    needs_auth: bool = True
    description: str = ""
    categories: tuple[str, ...] = ()
    hex_color: str = "#FF4A00"

    def as_json(self) -> dict[str, Any]:
        """The document's `Apps` object."""
        image = f"https://zapier-images.example/{self.slug}.png"
        return {
            "id": self.id,
            "type": "app",
            "title": self.title,
            "description": self.description or f"{self.title} for tests",
            "image": image,
            "images": {f"url_{n}x{n}": f"{image}?s={n}" for n in (16, 32, 64, 128)},
            "hex_color": self.hex_color,
            "categories": [{"slug": c} for c in self.categories],
            "action_types": ["READ", "WRITE", "SEARCH"],
            "links": {},
        }


@dataclass
class InputField:
    """An Input Field of an action; `choices` (value, label) pairs make it a SELECT with a choices endpoint."""

    id: str
    title: str = ""
    is_required: bool = False
    value_type: str = "STRING"
    default_value: str = ""
    choices: list[tuple[str, str]] | None = None

    def as_json(self) -> dict[str, Any]:
        """The document's `InputField` object."""
        return {
            "type": "input_field",
            "id": self.id,
            "title": self.title or self.id,
            "description": f"the {self.id} field",
            "default_value": self.default_value,
            "depends_on": [],
            "format": "SELECT" if self.choices is not None else "MULTILINE",
            "invalidates_input_fields": False,
            "is_required": self.is_required,
            "items": {},
            "placeholder": "",
            "value_type": self.value_type,
        }


@dataclass
class Action:
    """An action of an app: `key` is stable; the `id` callers see is issued per lookup (see ActionIds)."""

    app_id: str
    key: str
    title: str
    action_type: str = "WRITE"
    description: str = ""
    fields: list[InputField] = field(default_factory=list)

    def field(self, input_id: str) -> InputField | None:
        """The input field `input_id`, if the action has one."""
        return next((f for f in self.fields if f.id == input_id), None)


@dataclass
class Connection:
    """A user's authentication (connection) of one app."""

    id: str
    user: User
    app_id: str
    title: str
    is_expired: bool = False


@dataclass
class RunBehaviour:
    """How an action run proceeds: `pending_polls` GETs answer the `pending` statuses in turn, then `outcome`.

    `results=None` echoes the run's inputs as one result. The document's status enum has only `waiting`
    besides the final two; `queued`/`running` may be set to check a caller treats unknown ones as pending.
    """

    pending_polls: int = 2
    pending: tuple[str, ...] = ("waiting",)
    outcome: str = "success"
    results: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def throttled(cls, delay: int = 2, pending_polls: int = 1) -> RunBehaviour:
        """A run the partner throttled: ends `error` with a `throttled` item carrying `delay` seconds."""
        item = {"code": "throttled", "title": "Throttled", "detail": "the partner asked to slow down", "delay": delay}
        return cls(pending_polls=pending_polls, outcome="error", errors=[item])


@dataclass
class Run:
    """An action run: what was asked, how it behaves, how often it has been polled."""

    id: str
    user: User
    action_key: str
    inputs: dict[str, Any]
    behaviour: RunBehaviour
    polls: int = 0

    def poll(self) -> dict[str, Any]:
        """The next GET's `data`: a pending status while polls remain, then the outcome (for good)."""
        self.polls += 1
        b = self.behaviour
        if self.polls <= b.pending_polls:
            return {"type": "run", "status": b.pending[(self.polls - 1) % len(b.pending)], "results": [], "errors": []}
        results = [dict(self.inputs)] if b.results is None else b.results
        return {
            "type": "run",
            "status": b.outcome,
            "results": results if b.outcome == "success" else [],
            "errors": b.errors,
        }


@dataclass(frozen=True)
class IssuedActionId:
    """One action id handed out by a lookup."""

    user: User
    app_id: str
    key: str
    lookup: int
    issued_at: float


@dataclass
class ActionIds:
    """Per-lookup action ids: each lookup by (user, app) supersedes every id an earlier one handed out."""

    ttl: float = 300.0
    issued: dict[str, IssuedActionId] = field(default_factory=dict)
    latest: dict[tuple[User, str], int] = field(default_factory=dict)

    def issue(self, action_id: str, entry: IssuedActionId) -> None:
        """Record an id from lookup number `entry.lookup`, which becomes the latest for (user, app)."""
        self.issued[action_id] = entry
        self.latest[(entry.user, entry.app_id)] = entry.lookup

    def check(self, action_id: str, user: User, now: float) -> IssuedActionId | str:
        """The entry of a fresh id of this user, or why it is refused."""
        entry = self.issued.get(action_id)
        if entry is None or entry.user != user:
            return "unknown action id"
        if self.latest.get((user, entry.app_id)) != entry.lookup:
            return "stale action id: a later lookup replaced it"
        if now - entry.issued_at > self.ttl:
            return "stale action id: expired"
        return entry


@dataclass
class Budget:
    """Requests allowed per `window` seconds (Zapier: 60 per IP and 150 per partner per minute).

    Every request counts, the refused ones too; `cooldown` seconds are added to each Retry-After.
    """

    per_ip: int | None = 60
    per_partner: int | None = 150
    window: float = 60.0
    cooldown: float = 0.0
    _by_ip: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    _all: deque[float] = field(default_factory=deque, repr=False)

    def admit(self, ip: str, now: float) -> int | None:
        """Count one request; None if within budget, else the Retry-After seconds."""
        mine = self._by_ip.setdefault(ip, deque())
        waits = [w for w in (self._record(mine, self.per_ip, now), self._record(self._all, self.per_partner, now)) if w]
        return max(waits) if waits else None

    def _record(self, stamps: deque[float], limit: int | None, now: float) -> int | None:
        stamps.append(now)
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if limit is None or len(stamps) <= limit:
            return None
        # the time until enough stamps leave the window that one more request fits
        frees_at = stamps[len(stamps) - limit] + self.window
        return max(1, math.ceil(frees_at - now + self.cooldown))
