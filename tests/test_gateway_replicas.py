"""The gateway across replicas: three real `keysvc serve` processes sharing one real PostgreSQL gateway
store (token_exchange.store) in front of the fake Partner API on 127.0.0.1.

The tests run in order on one set of replicas (module-scoped, about 20 s in all): the shared budget
holds across them, the store stopped mid-way leaves the key service and the gateway serving (on the local
fallback, store_up 0) and they come back by themselves, and one replica's 429 stops the other two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, base_config, sha256_hex, wait_for, write_config
from tests.postgres_server import PostgresServer
from tests.zapier_fake import ZapierFake, running_zapier

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
PER_MINUTE, BURST = 30, 3


@dataclass
class Cluster:
    """Three replicas on one store, the fake, and the store's server (to stop and resume)."""

    replicas: list[KeysvcProcess]
    zapier: ZapierFake
    database: PostgresServer

    def connections(self, on: KeysvcProcess, user: str = "u-1") -> httpx.Response:
        params = {"user_id": user, "tenant_id": "t-9", "app": self.app}
        return httpx.get(on.internal + "/v1/zapier/connections", params=params, timeout=15,
                         headers={"Authorization": f"Bearer {api_key('web')}"})

    @property
    def app(self) -> str:
        return next(iter(self.zapier.apps))

    def sent(self) -> int:
        """Every request that reached Zapier: the Partner API's and the token endpoint's."""
        return len(self.zapier.log) + len(self.zapier.partner.calls)


def metric(proc: KeysvcProcess, name: str) -> float:
    for line in httpx.get(proc.internal + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Its own PostgreSQL (a test stops it), the fake, and three replicas with api_rate_limit 30/min burst 3
    for all of them together; store timeout 500 ms."""
    tmp = tmp_path_factory.mktemp("gateway-replicas")
    database = PostgresServer.start()
    try:
        with running_zapier() as zapier:
            zapier.add_app("Slack")
            zapier.budget.per_ip = zapier.budget.per_partner = None  # keysvc's budget is under test, not the fake's
            (tmp / "client-secret").write_text(zapier.partner.client_secret + "\n")
            (tmp / "db-password").write_text(database.password + "\n")
            config = base_config(tmp / "keys")
            config["clients"]["web"] = {
                "api_key_sha256": sha256_hex(api_key("web")), "keysets": ["zapier"],
                "audiences": ["connect.zapier.com"], "max_ttl": "5m", "zapier": True,
            }
            config["token_exchange"] = {
                "keyset": "zapier", "token_url": zapier.token_url, "api_url": zapier.api_url,
                "client_id": zapier.partner.client_id, "client_secret_file": str(tmp / "client-secret"),
                "total_timeout": "3s", "max_attempts": 1,
                "api_rate_limit": {"per_minute": PER_MINUTE, "burst": BURST},
                "store": {"url": database.url, "password_file": str(tmp / "db-password"), "timeout": "500ms"},
            }
            path = write_config(tmp / "keysvc.yaml", config)
            with KeysvcProcess(path, name="replica-a") as a, KeysvcProcess(path, name="replica-b") as b, \
                    KeysvcProcess(path, name="replica-c") as c:
                zapier.trust(f"{a.public}/.well-known/jwks.json", ISSUER)
                yield Cluster([a, b, c], zapier, database)
    finally:
        database.remove()


def test_the_shared_budget_holds_across_three_replicas(cluster: Cluster) -> None:
    """Six callers drive the three replicas flat out for 5 s: everything that reaches Zapier (token
    exchanges included) stays within burst + per_minute * t / 60 of the ONE budget (3 replicas on their
    own budgets would send 3 x that); the rest is 503 with Retry-After, and the store is up on each."""
    stop = time.monotonic() + 5.0
    statuses: list[int] = []
    started = time.monotonic()

    def drive(proc: KeysvcProcess) -> None:
        while time.monotonic() < stop:
            answer = cluster.connections(proc)
            statuses.append(answer.status_code)
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) >= 1

    threads = [threading.Thread(target=drive, args=(p,)) for p in cluster.replicas * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    bound = BURST + PER_MINUTE * elapsed / 60 + 1  # +1: a slot reserved just before the end
    assert set(statuses) == {200, 503}
    assert cluster.sent() <= bound, (cluster.sent(), bound)
    assert cluster.sent() >= BURST  # it did reach Zapier
    assert all(metric(p, "keysvc_gateway_store_up") == 1.0 for p in cluster.replicas)
    assert sum(metric(p, 'keysvc_zapier_api_budget_total{budget="shared",result="refused"}')
               for p in cluster.replicas) > 0


def test_the_store_stopped_leaves_signing_jwks_and_the_gateway_serving(cluster: Cluster) -> None:
    """PostgreSQL stopped: JWKS and /v1/sign answer as ever, the gateway answers on the local fallback
    budget within the store's deadline, keysvc_gateway_store_up is 0; once it is back, the replica returns
    to the shared budget by itself (store_up 1)."""
    a = cluster.replicas[0]
    cluster.database.halt()
    try:
        assert a.jwks().status_code == 200
        assert a.sign().status_code == 200
        started = time.monotonic()
        answer = cluster.connections(a)
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 5
        assert metric(a, "keysvc_gateway_store_up") == 0.0
        assert a.sign().status_code == 200
    finally:
        cluster.database.resume()

    def back() -> bool:
        cluster.connections(a)  # the budget asks the store again past its probe interval
        return metric(a, "keysvc_gateway_store_up") == 1.0

    wait_for(back, 20, "store_up back to 1", interval=1.0)


def test_one_replicas_429_stops_every_replica(cluster: Cluster) -> None:
    """Zapier answers replica A with 429: A answers 503 with Retry-After, and B and C then answer 503 too
    without sending anything to Zapier (the cooldown is the store's)."""
    a, b, c = cluster.replicas
    cluster.zapier.budget.per_ip = 1  # past one request a minute: 429 with a Retry-After
    try:
        time.sleep(60 / PER_MINUTE * 2)  # a slot of the budget for A's call
        first = cluster.connections(a, user="u-2")  # another user: its token exchange counts too
        assert first.status_code == 503, first.text
        before = cluster.sent()
        for proc in (b, c, a):
            answer = cluster.connections(proc)
            assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
            assert "429" in answer.json()["error_description"]
        assert cluster.sent() == before
        assert metric(b, 'keysvc_zapier_api_budget_total{budget="shared",result="cooling"}') >= 1
    finally:
        cluster.zapier.budget.per_ip = None
