"""keysvc.batching: the first signature of an event-loop turn runs at once, the turn's others back to back
when it ends, each for its own request."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from dataclasses import dataclass, field

import pytest

from keysvc.batching import SignBatch
from keysvc.tokens import Minter
from tests.conftest import LogStream

pytestmark = pytest.mark.unit


@dataclass
class RecordingSigner:
    """A fake in-process signer: the signature is the input reversed; every call is recorded."""

    events: list[str]
    kid: str = "k1"
    alg: str = "ES256"
    in_process: bool = True
    refuse: set[bytes] = field(default_factory=set)

    def sign(self, signing_input: bytes) -> bytes:
        if signing_input in self.refuse:
            raise ValueError("refused")
        self.events.append("signed " + signing_input.split(b".")[0].decode())
        return signing_input[::-1]


def test_the_first_request_of_a_turn_is_signed_at_once_and_the_others_together_after_it() -> None:
    """Five requests reaching the signing step in one turn: the first is signed before the second arrives
    (it waits for nothing), the other four are all queued before any of them is signed, and each request
    gets its own token."""
    events: list[str] = []
    minters = [Minter(RecordingSigner(events, kid=f"k{i}"), "https://issuer") for i in range(5)]
    batch = SignBatch()

    async def request(i: int) -> str:
        unsigned = minters[i].signing_input({"n": i}, 1_000, 60)
        events.append(f"queued {i}")
        token = await batch.sign(minters[i], unsigned)
        assert token.kid == f"k{i}"
        assert token.token.startswith(unsigned.signing_input.decode() + ".")
        return token.jti

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(request(i) for i in range(5))))

    jtis = asyncio.run(scenario())
    assert len(set(jtis)) == 5
    assert events[:2] == ["queued 0", "signed " + events[1].split()[1]]
    assert events[2:6] == [f"queued {i}" for i in range(1, 5)]
    assert len([e for e in events[6:] if e.startswith("signed")]) == 4


def test_a_request_alone_in_its_turn_never_suspends() -> None:
    """At light load a request does not wait for the end of its turn: sign() completes without yielding
    to the event loop (the coroutine finishes on its first step)."""
    minter = Minter(RecordingSigner([]), "https://issuer")
    batch = SignBatch()

    async def scenario() -> None:
        await asyncio.sleep(0)  # a fresh turn
        step = batch.sign(minter, minter.signing_input({"n": 0}, 1_000, 60))
        with pytest.raises(StopIteration) as done:
            step.send(None)
        assert done.value.value.kid == "k1"

    asyncio.run(scenario())


def test_a_failed_signature_fails_its_request_only() -> None:
    """An exception from one signature reaches that request; the others in the batch are signed."""
    events: list[str] = []
    signer = RecordingSigner(events)
    minter = Minter(signer, "https://issuer")
    batch = SignBatch()

    async def scenario() -> list[object]:
        unsigned = [minter.signing_input({"n": i}, 1_000, 60) for i in range(3)]
        signer.refuse.add(unsigned[1].signing_input)
        return list(await asyncio.gather(*(batch.sign(minter, u) for u in unsigned), return_exceptions=True))

    results = asyncio.run(scenario())
    assert [type(r).__name__ for r in results] == ["SignedToken", "ValueError", "SignedToken"]


def test_a_cancelled_request_gets_no_signature() -> None:
    """A request cancelled while queued (client gone, shutdown) is skipped: no token is made for it."""
    events: list[str] = []
    minter = Minter(RecordingSigner(events), "https://issuer")
    batch = SignBatch()

    async def scenario() -> None:
        first = asyncio.ensure_future(batch.sign(minter, minter.signing_input({"n": 0}, 1_000, 60)))
        gone = asyncio.ensure_future(batch.sign(minter, minter.signing_input({"n": 1}, 1_000, 60)))
        kept = asyncio.ensure_future(batch.sign(minter, minter.signing_input({"n": 2}, 1_000, 60)))
        await asyncio.sleep(0)  # the first signed, the other two queued
        gone.cancel()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())
    assert len(events) == 2  # the first and the kept one


def test_a_new_event_loop_starts_from_an_empty_queue() -> None:
    """Entries left queued on a loop that stopped never block a later loop (tests, restarts in-process)."""
    events: list[str] = []
    minter = Minter(RecordingSigner(events), "https://issuer")
    batch = SignBatch()
    old = asyncio.new_event_loop()
    signed_at_once = old.create_task(batch.sign(minter, minter.signing_input({"n": 0}, 1_000, 60)))
    orphan = old.create_task(batch.sign(minter, minter.signing_input({"n": 1}, 1_000, 60)))
    old.call_soon(old.stop)
    old.run_forever()  # one turn: the first is signed, the second queues, the loop stops before the batch runs
    assert signed_at_once.done() and not orphan.done()
    old.close()  # the batch's run is dropped with the loop: the entry stays queued on the old loop

    async def later() -> str:
        token = await asyncio.wait_for(batch.sign(minter, minter.signing_input({"n": 1}, 1_000, 60)), 5)
        return token.kid

    assert asyncio.run(later()) == "k1"
    # the orphan task dies with its loop: collect it now, quietly, rather than have asyncio's "Task was
    # destroyed but it is pending!" line land in whichever later test's log the collector runs during
    del signed_at_once, orphan
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.disabled = True
    try:
        gc.collect()
    finally:
        asyncio_log.disabled = False


def test_a_batch_is_audited_in_one_write_before_any_token_is_handed_out(log_stream: LogStream) -> None:
    """Four requests in one turn: the first token's token.sign line is written at once, the three batched
    tokens' lines (caller fields, kid, jti, exp) in a single write; each request finds its own line
    already written when it receives its token."""
    minter = Minter(RecordingSigner([]), "https://issuer")
    batch = SignBatch()

    async def request(i: int) -> bool:
        unsigned = minter.signing_input({"n": i}, 1_000, 60)
        token = await batch.sign(minter, unsigned, {"client": f"svc-{i}", "keyset": "zapier"})
        return f'"jti":"{token.jti}"' in log_stream.getvalue()

    async def scenario() -> list[bool]:
        return list(await asyncio.gather(*(request(i) for i in range(4))))

    assert asyncio.run(scenario()) == [True, True, True, True]
    audit_writes = [w for w in log_stream.writes if "token.sign" in w]
    assert len(audit_writes) == 2
    lines = [[json.loads(line) for line in write.splitlines()] for write in audit_writes]
    assert [[(x["client"], x["kid"], x["exp"], x["audit"]) for x in write] for write in lines] == [
        [("svc-0", "k1", 1_060, True)], [(f"svc-{i}", "k1", 1_060, True) for i in range(1, 4)]]


def test_no_token_is_handed_out_when_its_audit_line_cannot_be_written(log_stream: LogStream) -> None:
    """Fail closed: if the audit write fails, neither the request signed at once nor any request of the
    batch gets a token: each gets the error."""
    minter = Minter(RecordingSigner([]), "https://issuer")
    batch = SignBatch()
    log_stream.broken = True

    async def scenario() -> list[object]:
        unsigned = [minter.signing_input({"n": i}, 1_000, 60) for i in range(3)]
        return list(await asyncio.gather(*(batch.sign(minter, u, {"client": "svc"}) for u in unsigned),
                                         return_exceptions=True))

    assert [type(r).__name__ for r in asyncio.run(scenario())] == ["OSError", "OSError", "OSError"]
