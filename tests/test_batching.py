"""keysvc.batching: the signatures of one event-loop turn run back to back, each for its own request."""

from __future__ import annotations

import asyncio
import json
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


def test_a_turns_signatures_run_together_after_every_request_queued() -> None:
    """Five requests reaching the signing step in one turn are all queued before the first signature,
    and each gets its own token (in the order they queued)."""
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
    assert events[:5] == [f"queued {i}" for i in range(5)]
    assert len([e for e in events[5:] if e.startswith("signed")]) == 5


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
    assert [type(r).__name__ for r in results] == ["Token", "ValueError", "Token"]


def test_a_cancelled_request_gets_no_signature() -> None:
    """A request cancelled while queued (client gone, shutdown) is skipped: no token is made for it."""
    events: list[str] = []
    minter = Minter(RecordingSigner(events), "https://issuer")
    batch = SignBatch()

    async def scenario() -> None:
        gone = asyncio.ensure_future(batch.sign(minter, minter.signing_input({"n": 0}, 1_000, 60)))
        kept = asyncio.ensure_future(batch.sign(minter, minter.signing_input({"n": 1}, 1_000, 60)))
        await asyncio.sleep(0)  # both queued
        gone.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())
    assert len(events) == 1


def test_a_new_event_loop_starts_from_an_empty_queue() -> None:
    """Entries left queued on a loop that stopped never block a later loop (tests, restarts in-process)."""
    events: list[str] = []
    minter = Minter(RecordingSigner(events), "https://issuer")
    batch = SignBatch()
    old = asyncio.new_event_loop()
    orphan = old.create_task(batch.sign(minter, minter.signing_input({"n": 0}, 1_000, 60)))
    old.call_soon(old.stop)
    old.run_forever()  # one turn: the request queues, the loop stops before the batch runs
    assert not orphan.done()
    old.close()  # the batch's run is dropped with the loop: the entry stays queued on the old loop

    async def later() -> str:
        token = await asyncio.wait_for(batch.sign(minter, minter.signing_input({"n": 1}, 1_000, 60)), 5)
        return token.kid

    assert asyncio.run(later()) == "k1"


def test_a_batch_is_audited_in_one_write_before_any_token_is_handed_out(log_stream: LogStream) -> None:
    """The three tokens of one turn get their token.sign lines (caller fields, kid, jti, exp) in a single
    write, and each request finds its own line already written when it receives its token."""
    minter = Minter(RecordingSigner([]), "https://issuer")
    batch = SignBatch()

    async def request(i: int) -> bool:
        unsigned = minter.signing_input({"n": i}, 1_000, 60)
        token = await batch.sign(minter, unsigned, {"client": f"svc-{i}", "keyset": "zapier"})
        return f'"jti":"{token.jti}"' in log_stream.getvalue()

    async def scenario() -> list[bool]:
        return list(await asyncio.gather(*(request(i) for i in range(3))))

    assert asyncio.run(scenario()) == [True, True, True]
    audit_writes = [w for w in log_stream.writes if "token.sign" in w]
    assert len(audit_writes) == 1
    lines = [json.loads(line) for line in audit_writes[0].splitlines()]
    assert [(x["client"], x["kid"], x["exp"], x["audit"]) for x in lines] == [
        (f"svc-{i}", "k1", 1_060, True) for i in range(3)]


def test_no_token_is_handed_out_when_its_audit_line_cannot_be_written(log_stream: LogStream) -> None:
    """Fail closed: if the audit write fails, every request of the batch gets the error, not a token."""
    minter = Minter(RecordingSigner([]), "https://issuer")
    batch = SignBatch()
    log_stream.broken = True

    async def scenario() -> list[object]:
        unsigned = [minter.signing_input({"n": i}, 1_000, 60) for i in range(2)]
        return list(await asyncio.gather(*(batch.sign(minter, u, {"client": "svc"}) for u in unsigned),
                                         return_exceptions=True))

    assert [type(r).__name__ for r in asyncio.run(scenario())] == ["OSError", "OSError"]
