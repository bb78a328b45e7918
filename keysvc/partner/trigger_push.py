"""Push delivery of trigger-inbox messages: lease an inbox's messages (through TriggerInboxes, so within the
Partner API budget) and POST each one to the partner's own service as a Standard Webhooks request; ack a
message only after that service answered 2xx.

    push = PushDelivery(inboxes, http, directory, target)
    await push.deliver(record)        one inbox: lease, POST each message, ack the 2xx ones, release the rest
    await push.sweep()                every inbox the directory (the gateway store) knows
    push.notified(sealer, token)      a notification for a sealed inbox token: deliver it in the background

At least once, never zero times: a 2xx acks that message; any other answer releases it (Zapier offers it
again at once); a timeout, an unreachable service or a crash leaves it leased, and Zapier offers it again
when the lease expires. Replicas share the work through Zapier's exclusive leases. `webhook-id` is the
message id: the receiver deduplicates redeliveries by it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from keysvc.client.retry import Failure
from keysvc.errors import Conflict, RequestError
from keysvc.partner.outbound import PartnerHttp
from keysvc.partner.store.base import InboxRecord
from keysvc.partner.trigger_inboxes import TriggerInboxes
from keysvc.partner.triggers.answers import Inbox, Subscription
from keysvc.partner.triggers.delivery import delivery
from keysvc.partner.triggers.inputs import InboxRef, LeaseCall, SettleCall, User
from keysvc.partner.triggers.sealing import NotificationSealer
from keysvc.partner.triggers.signing import WebhookSecret

log = logging.getLogger("keysvc.zapier")
RECEIVER = "the trigger delivery receiver"
PUSH_CLIENT = "keysvc-push"  # the audit events' client for what push delivery acks
MAX_ROUNDS = 10  # leases of one inbox per delivery, so one busy inbox cannot hold a worker for ever


class InboxDirectory(Protocol):
    """Where the inboxes keysvc ensured are recorded (the gateway store)."""

    async def inbox(self, inbox_id: str) -> InboxRecord | None:
        """One recorded inbox, or None."""

    async def inboxes(self) -> list[InboxRecord]:
        """Every recorded inbox."""


@dataclass(frozen=True)
class Target:
    """The partner's service and how to reach it."""

    url: str
    secrets: tuple[WebhookSecret, ...]
    lease_seconds: int = 300
    batch: int = 10
    connect_timeout: float = 5.0
    timeout: float = 10.0  # one POST, connect to last byte


@dataclass
class Delivered:
    """What one delivery did."""

    leased: int = 0
    acked: int = 0
    released: int = 0
    left: int = 0  # timed out or unreachable: left leased, back when the lease expires


class PushObserver(Protocol):
    """Where push delivery reports (keysvc feeds Prometheus)."""

    def pushed(self, outcome: str, seconds: float, *, lag: float | None = None, redelivered: bool = False) -> None:
        """One POST to the receiver: `delivered` (2xx), `refused` (another status), `failed` (no answer);
        `lag`: seconds from the message's creation at Zapier to its 2xx (delivered only, when Zapier dated it);
        `redelivered`: Zapier had leased this message before (a failed or crashed earlier attempt)."""


class NullPushObserver:
    def pushed(self, outcome: str, seconds: float, *, lag: float | None = None, redelivered: bool = False) -> None:
        """Drop it."""


class PushDelivery:
    """Push delivery for one replica; at most `concurrency` inboxes delivered at once."""

    def __init__(self, inboxes: TriggerInboxes, http: PartnerHttp, directory: InboxDirectory, target: Target, *,
                 concurrency: int = 4, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, observer: PushObserver | None = None) -> None:
        self._inboxes = inboxes
        self._http = http
        self._directory = directory
        self._target = target
        self._slots = asyncio.Semaphore(concurrency)
        self._wall = wall
        self._clock = clock
        self._observer = observer or NullPushObserver()
        self._busy: set[str] = set()  # inboxes being delivered by this replica now
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"PushDelivery({len(self._busy)} busy)"

    async def sweep(self) -> Delivered:
        """Deliver every recorded inbox (the sweep job; also catches notifications that never came)."""
        total = Delivered()
        records = await self._directory.inboxes()
        for done in await asyncio.gather(*(self.deliver(r) for r in records)):
            total.leased += done.leased
            total.acked += done.acked
            total.released += done.released
            total.left += done.left
        return total

    def notified(self, sealer: NotificationSealer, token: str) -> str:
        """A notification for `token` (BadSealedToken, a 404, when it is not ours): the inbox is delivered
        in the background; its id is answered."""
        sealed = sealer.open(token)
        task = asyncio.get_running_loop().create_task(self._deliver_id(sealed.inbox_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return sealed.inbox_id

    async def _deliver_id(self, inbox_id: str) -> None:
        try:
            record = await self._directory.inbox(inbox_id)
            if record is not None:
                await self.deliver(record)
        except Exception:  # a background task: logged, never lost silently; the sweep comes by again
            log.exception("trigger push delivery failed", extra={"inbox": inbox_id})

    async def deliver(self, record: InboxRecord) -> Delivered:
        """Lease the inbox's messages and deliver them, batch after batch, until it is empty, a batch did
        not all go through, or MAX_ROUNDS batches."""
        done = Delivered()
        if record.inbox_id in self._busy:
            return done  # this replica is on it already; another replica's lease keeps them apart anyway
        self._busy.add(record.inbox_id)
        try:
            async with self._slots:
                for _ in range(MAX_ROUNDS):
                    if not await self._round(record, done):
                        break
        except Conflict:  # the lease's 409: the inbox is paused (or failed) and drained
            await self._look_at(record)
        except RequestError as exc:
            log.warning("trigger push delivery stopped", extra={"inbox": record.inbox_id, "reason": exc.description})
        finally:
            self._busy.discard(record.inbox_id)
        return done

    async def _look_at(self, record: InboxRecord) -> None:
        """One GET of a paused, drained inbox, so the sweep notices why it is paused without a caller
        touching it: counted by status (keysvc_zapier_inboxes_seen_total{status="paused_authentication"})
        and, when paused for authentication, its connection marked expired in the registry. Costs one
        Partner API call per such inbox per sweep."""
        try:
            await self._inboxes.inbox(InboxRef(User(record.user_id, record.tenant_id), record.inbox_id))
        except RequestError as exc:
            log.warning("trigger push could not look at a paused inbox",
                        extra={"inbox": record.inbox_id, "reason": exc.description})

    async def _round(self, record: InboxRecord, done: Delivered) -> bool:
        """One lease and its messages; True when it was a full batch that all went through."""
        t = self._target
        user = User(record.user_id, record.tenant_id)
        lease = await self._inboxes.lease_messages(LeaseCall(user, record.inbox_id, t.batch, t.lease_seconds, 0.0))
        if not lease.messages or lease.lease_id is None:
            return False
        done.leased += len(lease.messages)
        status = lease.inbox.status if lease.inbox is not None else "active"
        reason = lease.inbox.paused_reason if lease.inbox is not None else None
        inbox = Inbox(record.inbox_id, record.key, status, reason,
                      Subscription(record.app, record.trigger, None, {}), None, None)
        acked: list[str] = []
        refused: list[str] = []
        for message in lease.messages:
            headers, body = delivery(t.secrets, inbox, record.user_id, record.tenant_id, message, int(self._wall()))
            started = self._clock()
            answer = await self._http.attempt(RECEIVER, "POST", t.url, headers=headers, body=body,
                                              deadline=started + t.timeout, connect=t.connect_timeout,
                                              read=t.timeout, clock=self._clock)
            seconds = self._clock() - started
            again = (message.lease_count or 0) > 1  # this lease counts too: more than one is a redelivery
            if isinstance(answer, Failure):
                self._observer.pushed("failed", seconds, redelivered=again)
                done.left += 1
            elif 200 <= answer.status < 300:
                lag = self._wall() - message.created_at.timestamp() if message.created_at is not None else None
                self._observer.pushed("delivered", seconds, lag=lag, redelivered=again)
                acked.append(message.id)
            else:
                self._observer.pushed("refused", seconds, redelivered=again)
                refused.append(message.id)
        if acked:  # only what the receiver answered 2xx, never before its answer
            settled = await self._inboxes.ack(PUSH_CLIENT, SettleCall(user, record.inbox_id, lease.lease_id,
                                                                      tuple(acked)))
            done.acked += len(settled["acked"])
        if refused:
            settled = await self._inboxes.release(PUSH_CLIENT, SettleCall(user, record.inbox_id, lease.lease_id,
                                                                          tuple(refused)))
            done.released += len(settled["released"])
        return len(acked) == len(lease.messages) == t.batch

    async def aclose(self) -> None:
        """Cancel deliveries in flight (their messages come back when their leases expire)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
