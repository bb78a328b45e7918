"""Push delivery through real `keysvc serve` replicas sharing a SQLite gateway store, against the fake
Partner API and Trigger Inbox API and a receiver that verifies every request with `standardwebhooks`:
ensure sets the inbox's notification_url to replica A's public listener, Zapier's notification makes A
deliver, A is killed with SIGKILL in the middle of a delivery, and replica B's sweep delivers every
message once A's lease has expired; none is acked before the receiver's 2xx."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.exchange_support import serve
from tests.helpers import KeysvcProcess, api_key, base_config, remember_secret, sha256_hex, write_config
from tests.trigger_inbox_fake import TriggerInboxFake, partner_tokens, running_trigger_inbox
from tests.zapier_fake import running_zapier

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
SECRET = "whsec_" + base64.b64encode(b"r" * 32).decode()
USER = {"user_id": "u-push", "tenant_id": "t-9"}


@dataclass
class Receiver:
    """The partner's service: verifies, holds the ids in `hang`, records what it answered 2xx and whether
    Zapier still held each message when it came."""

    inbox_api: TriggerInboxFake
    hang: set[str] = field(default_factory=set)
    attempts: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    acked_early: list[str] = field(default_factory=list)
    bad: int = 0

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:
            self.bad += 1
            return Response(status_code=400)
        message_id = request.headers["webhook-id"]
        self.attempts.append(message_id)
        if not any(m.id == message_id for m in self.inbox_api.inboxes[event["inbox"]["id"]].messages):
            self.acked_early.append(message_id)
        for _ in range(600):
            if message_id not in self.hang:
                break
            await asyncio.sleep(0.05)
        self.delivered.append(message_id)
        return Response(status_code=204)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_replica_killed_mid_delivery_and_the_other_delivers(tmp_path: Path) -> None:
    """The whole push path through two processes: notification_url on A's public listener, A delivering
    on Zapier's notification, kill -9 of A mid-delivery, B's sweep delivering everything after the lease,
    a forged notification URL 404 on B; 0 schema violations; no token in the logs."""
    with running_zapier() as zapier, running_trigger_inbox(tokens=partner_tokens(zapier.partner)) as inbox_api:
        receiver = Receiver(inbox_api)
        with serve(Starlette(routes=[Route("/events", receiver.endpoint, methods=["POST"])])) as receiver_url:
            remember_secret(zapier.partner.client_secret)
            (tmp_path / "client-secret").write_text(zapier.partner.client_secret + "\n")
            (tmp_path / "webhook-secret").write_text(SECRET + "\n")

            def config(name: str, port: int) -> Path:
                cfg = base_config(tmp_path / "keys")
                cfg["listen"]["public"] = f"127.0.0.1:{port}"
                cfg["clients"]["web"] = {"api_key_sha256": sha256_hex(api_key("web")), "keysets": ["zapier"],
                                         "audiences": ["connect.zapier.com"], "max_ttl": "5m", "zapier": True}
                cfg["token_exchange"] = {
                    "keyset": "zapier", "token_url": zapier.token_url, "api_url": zapier.api_url,
                    "trigger_inbox_url": inbox_api.api_url, "client_id": zapier.partner.client_id,
                    "client_secret_file": str(tmp_path / "client-secret"), "total_timeout": "5s",
                    "store": {"url": f"sqlite:///{tmp_path}/gateway.db"},
                    "trigger_delivery": {"url": receiver_url + "/events",
                                         "secret_file": str(tmp_path / "webhook-secret"), "lease": "3s",
                                         "sweep_interval": "1s", "public_url": f"http://127.0.0.1:{port}"},
                }
                return write_config(tmp_path / f"{name}.yaml", cfg)

            port_a, port_b = free_port(), free_port()
            a = KeysvcProcess(config("a", port_a), name="push-a").start()
            try:
                with KeysvcProcess(config("b", port_b), name="push-b") as b:
                    zapier.trust(f"{a.public}/.well-known/jwks.json", ISSUER)
                    made = httpx.put(f"{a.internal}/v1/zapier/trigger-inboxes/pushed", json={
                        **USER, "app": "SlackCLIAPI", "trigger": "new_message", "connection": "4711", "wait": 5},
                        headers={"Authorization": f"Bearer {api_key('web')}"}, timeout=30)
                    assert made.status_code == 200, made.text
                    inbox_id = made.json()["inbox"]["id"]
                    url = inbox_api.inboxes[inbox_id].notification_url or ""
                    assert url.startswith(f"http://127.0.0.1:{port_a}/zapier/inbox-notifications/")
                    assert USER["user_id"] not in url

                    ids = inbox_api.inject(inbox_id, {"n": 1}, {"n": 2}, {"n": 3})
                    receiver.hang = set(ids)
                    assert until(lambda: receiver.attempts, 10), "no delivery after the notification"
                    a.kill()  # SIGKILL in the middle of a delivery: nothing acked, nothing released
                    assert inbox_api.pending(inbox_id) == 3
                    receiver.hang = set()
                    assert until(lambda: inbox_api.pending(inbox_id) == 0, 20), "B never delivered"
                    assert set(ids) <= set(receiver.delivered)
                    assert receiver.acked_early == [] and receiver.bad == 0
                    forged = httpx.post(f"{b.public}/zapier/inbox-notifications/AAAA{url[-20:]}", json={})
                    assert forged.status_code == 404 and forged.json()["error"] == "not_found"
                    assert inbox_api.notifications, "Zapier's notification was never sent"
                    for token in zapier.partner.issued:
                        assert token not in b.log_text() and token not in a.log_text()
            finally:
                if a.proc is not None and a.proc.poll() is None:
                    a.kill()
        assert inbox_api.violations == [] and zapier.violations == []

