"""In-process signatures: the first of an event-loop turn at once, the rest of the turn back to back when
it ends, each group audited in one write.

An ES256 signature costs ~16 us when signatures follow each other and ~30 us when each one runs between
HTTP parsing, JSON and logging: the curve's precomputed tables fall out of the CPU cache in between.
Requests that reach the signing step during one event-loop turn therefore queue here, and the queue is
signed in one go when the turn ends; the audit lines of the tokens signed are then written in one write,
before any of them is handed back (measured over HTTP on one core: 25% more ES256 /v1/sign requests per
second for the batch, a few % more for the single write; docs/benchmarks.md). The first request of a
turn does not wait: it is signed (and audited) at once, without suspending, since nothing may follow it;
under load the requests after it in the same turn are the batch, and at light load a request never waits
for the end of its turn (that wait made /v1/sign's p50 at half load 2.75x a bare route's). Remote
signers (KMS) do not come here: they run in the keyring's I/O pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from keysvc.logs import audit_requests
from keysvc.records import SignedToken
from keysvc.tokens import Minter, Unsigned

Audit = Mapping[str, Any] | None  # who asked for a token (client, keyset, claims summary), or None: no line
_Entry = tuple[Minter, Unsigned, Audit, "asyncio.Future[SignedToken]"]


def audit_signed(signed: Sequence[tuple[Mapping[str, Any], SignedToken]]) -> None:
    """The `token.sign` audit lines of tokens signed (the caller's fields, then kid, jti, exp), in one write."""
    audit_requests("token.sign", [{**fields, "kid": t.kid, "jti": t.jti, "exp": t.expires_at} for fields, t in signed])


class SignBatch:
    """Signs the first request of an event-loop turn at once; queues the turn's others and signs them when
    the turn ends."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Entry] = []
        self._turn_started = False  # a signature ran in this turn: later ones queue until it ends

    async def sign(self, minter: Minter, unsigned: Unsigned, audit: Audit = None) -> SignedToken:
        """The signed token (audited, when `audit` is given): at once for the first request of this turn,
        else once the turn's queue has been signed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): nothing queued on the old one runs
            self._loop, self._queue, self._turn_started = loop, [], False
        if not self._turn_started:
            self._turn_started = True
            loop.call_soon(self._run)  # the turn's end: signs what queued behind this one, if anything
            token = minter.sign(unsigned)
            if audit is not None:
                audit_signed([(audit, token)])  # raises, failing closed, when the line cannot be written
            return token
        future: asyncio.Future[SignedToken] = loop.create_future()
        self._queue.append((minter, unsigned, audit, future))
        return await future

    def _run(self) -> None:
        self._turn_started = False
        queue, self._queue = self._queue, []
        results: list[tuple[asyncio.Future[SignedToken], SignedToken | Exception]] = []
        audited: list[tuple[Mapping[str, Any], SignedToken]] = []
        for minter, unsigned, audit, future in queue:
            if future.cancelled():  # the request is gone: no token is made for it
                continue
            try:
                token = minter.sign(unsigned)
            except Exception as exc:  # it belongs to that request, not to the others queued
                results.append((future, exc))
                continue
            results.append((future, token))
            if audit is not None:
                audited.append((audit, token))
        try:
            if audited:
                audit_signed(audited)
        except Exception as exc:  # fail closed: no token is handed out without its audit line
            results = [(future, exc) for future, _ in results]
        for future, result in results:
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
