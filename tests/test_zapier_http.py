"""The embed gateway through real `keysvc serve` processes over HTTP, against the fake Partner API on
127.0.0.1 (token_url and api_url both point at it; it verifies keysvc's partner JWTs against keysvc's own
public JWKS). Two replicas share the key directory: a Connect state from one completes on the other.
No answer or log line holds an access token, the client secret or a partner JWT."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, base_config, remember_secret, sha256_hex, write_config
from tests.partner_server import ACCESS_TOKEN
from tests.zapier_fake import App, InputField, RunBehaviour, ZapierFake, running_zapier

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
USER = {"user_id": "u-1", "tenant_id": "t-9"}
CALLBACK = "https://app.example/zapier/callback"
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


@dataclass
class Replicas:
    """Two keysvc replicas, the fake, and every answer body seen (checked for secrets at the end)."""

    a: KeysvcProcess
    b: KeysvcProcess
    zapier: ZapierFake
    granted: App  # the one app client `narrow` may use (its grant names it and its send_message action)
    answers: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, *, on: KeysvcProcess | None = None, client: str = "web",
             **kw: Any) -> httpx.Response:
        proc = on or self.a
        headers = {"Authorization": f"Bearer {api_key(client)}", **kw.pop("headers", {})}
        response = httpx.request(method, proc.internal + path, headers=headers, timeout=30, **kw)
        self.answers.append(response.text)
        return response


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two replicas with token_exchange pointing at the fake; client `web` may use the gateway."""
    tmp = tmp_path_factory.mktemp("zapier-http")
    with running_zapier() as zapier:
        remember_secret(zapier.partner.client_secret)
        secret_file = tmp / "client-secret"
        secret_file.write_text(zapier.partner.client_secret + "\n")
        config = base_config(tmp / "keys")
        config["clients"]["web"] = {
            "api_key_sha256": sha256_hex(api_key("web")), "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"], "max_ttl": "5m", "zapier": True, "token_exchange": True,
        }
        granted = zapier.add_app("Granted")
        config["clients"]["narrow"] = {
            "api_key_sha256": sha256_hex(api_key("narrow")), "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"], "max_ttl": "5m",
            "zapier": {"apps": [granted.id], "actions": ["send_message"]},
        }
        config["token_exchange"] = {
            "keyset": "zapier", "token_url": zapier.token_url, "api_url": zapier.api_url,
            "client_id": zapier.partner.client_id, "client_secret_file": str(secret_file),
            "redirect_uris": [CALLBACK], "run_wait_max": "20s", "total_timeout": "5s",
        }
        path = write_config(tmp / "keysvc.yaml", config)
        with KeysvcProcess(path, name="zapier-a") as a, KeysvcProcess(path, name="zapier-b") as b:
            zapier.trust(f"{a.public}/.well-known/jwks.json", ISSUER)
            yield Replicas(a, b, zapier, granted)


def test_the_four_steps_across_two_replicas(replicas: Replicas) -> None:
    """List connections (none usable), connect on replica A, complete on replica B, list again (usable),
    list actions, run one and get its result: every answer as documented, zero schema violations."""
    z = replicas.zapier
    slack = z.add_app("Slack")
    z.add_action(slack, "send_message", "Send Message", "WRITE", fields=[InputField("channel", is_required=True)])
    z.add_connection(("u-1", "t-9"), slack, expired=True)
    listed = replicas.call("GET", "/v1/zapier/connections", params={**USER, "app": slack.id})
    assert listed.status_code == 200 and listed.json()["usable"] is None
    expired_id = listed.json()["connections"][0]["id"]

    started = replicas.call("POST", "/v1/zapier/connect", json={
        **USER, "app": slack.id, "connect_app": slack.slug, "redirect_uri": CALLBACK, "reconnect_id": expired_id,
    })
    assert started.status_code == 200, started.text
    assert set(started.json()) == {"connect_url", "state", "expires_in"}
    assert started.headers["cache-control"] == "no-store"
    new_id = z.connect(("u-1", "t-9"), slack, reconnect_id=expired_id)
    done = replicas.call("POST", "/v1/zapier/connect/complete", on=replicas.b, json={
        **USER, "state": started.json()["state"], "authentication_id": new_id,
    })
    assert done.status_code == 200, done.text
    assert done.json()["connection"]["id"] == new_id
    assert replicas.call("GET", "/v1/zapier/connections", params={**USER, "app": slack.id}).json()["usable"] == new_id

    actions = replicas.call("GET", "/v1/zapier/actions", params={**USER, "app": slack.id, "action_type": "WRITE"})
    assert [a["key"] for a in actions.json()["actions"]] == ["send_message"]
    z.queue_runs(RunBehaviour(pending_polls=1))
    run = replicas.call("POST", "/v1/zapier/action-runs", json={
        **USER, "app": slack.id, "action": "send_message", "action_type": "WRITE", "connection": new_id,
        "inputs": {"channel": "C1"}, "wait": "15s",
    })
    assert run.status_code == 200, run.text
    assert run.json()["status"] == "success" and run.json()["results"] == [{"channel": "C1"}]
    again = replicas.call("GET", f"/v1/zapier/action-runs/{run.json()['id']}", params=USER)
    assert again.status_code == 200 and again.json()["status"] == "success"
    assert z.violations == []


def test_the_exchange_route_and_the_gateway_share_one_access_token_cache(replicas: Replicas) -> None:
    """One replica has one TokenExchanger: the access token POST /v1/token-exchange obtained for a user
    serves the gateway's next call for that user, so the partner sees one exchange, not two."""
    z = replicas.zapier
    app = z.add_app("Shared cache")
    user = {"user_id": "u-shared", "tenant_id": "t-9"}
    before = z.partner.calls_for(ACCESS_TOKEN)
    # not through replicas.call: this answer carries an access token, which the hygiene test looks for
    exchanged = httpx.post(replicas.a.internal + "/v1/token-exchange", json={**user, "token": "access"},
                           headers={"Authorization": f"Bearer {api_key('web')}"}, timeout=30)
    assert exchanged.status_code == 200, exchanged.text
    listed = replicas.call("GET", "/v1/zapier/connections", params={**user, "app": app.id})
    assert listed.status_code == 200, listed.text
    assert z.partner.calls_for(ACCESS_TOKEN) - before == 1


def test_a_pending_run_answers_202_and_is_polled_later(replicas: Replicas) -> None:
    """Without `wait`, 202 pending; GET with a wait on the other replica returns the final result."""
    z = replicas.zapier
    app = z.add_app("Sheets")
    z.add_action(app, "add_row", "Add Row", "WRITE")
    conn = z.add_connection(("u-1", "t-9"), app).id
    z.queue_runs(RunBehaviour(pending_polls=1))
    run = replicas.call("POST", "/v1/zapier/action-runs", json={
        **USER, "app": app.id, "action": "add_row", "action_type": "WRITE", "connection": conn, "inputs": {},
    })
    assert run.status_code == 202 and run.json()["status"] == "pending"
    final = replicas.call("GET", f"/v1/zapier/action-runs/{run.json()['id']}", on=replicas.b,
                          params={**USER, "wait": "10"})
    assert final.status_code == 200 and final.json()["status"] == "success"
    assert z.count("POST /v2/action-runs") >= 1 and z.violations == []


APP = "6f1c6c0e-2d6e-4b8e-9b8a-3f0a1f7b2c11"


@pytest.mark.parametrize(("method", "path", "kw", "status"), [
    ("GET", "/v1/zapier/connections", {"params": {**USER}}, 400),
    ("GET", "/v1/zapier/connections", {"params": {**USER, "app": "SlackAPI"}}, 400),
    ("GET", "/v1/zapier/connections", {"params": {"tenant_id": "t-9", "app": APP}}, 400),
    ("GET", "/v1/zapier/apps", {"params": {**USER, "limit": "1000"}}, 400),
    ("POST", "/v1/zapier/connect", {"json": {**USER, "app": APP, "redirect_uri": "https://evil.example/"}}, 400),
    ("POST", "/v1/zapier/connect", {"json": {**USER, "app": APP, "surprise": 1}}, 400),
    ("POST", "/v1/zapier/connect", {"content": b"not json", "headers": {"content-type": "application/json"}}, 400),
    ("POST", "/v1/zapier/connect/complete", {"json": {**USER, "state": "v1.forged", "authentication_id": "1"}}, 400),
    ("POST", "/v1/zapier/action-runs", {"json": {**USER, "app": APP, "action": "a", "action_type": "WRITE",
                                                 "wait": 600}}, 400),
    ("POST", "/v1/zapier/action-runs", {"json": {**USER, "app": APP, "action": "a", "action_type": "WRITE",
                                                 "inputs": "x"}}, 400),
    ("GET", "/v1/zapier/action-runs/bad%20id", {"params": USER}, 400),
    ("GET", "/v1/zapier/actions", {"params": {**USER, "app": APP, "action_type": 5}}, 400),
])
def test_malformed_calls_are_json_4xx(replicas: Replicas, method: str, path: str, kw: dict[str, Any],
                                      status: int) -> None:
    """Each malformed call is a 4xx JSON error naming the problem, never a 500, with no upstream call."""
    before = len(replicas.zapier.log)
    response = replicas.call(method, path, **kw)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "error_description"}
    assert len(replicas.zapier.log) == before


def test_a_client_without_the_zapier_flag_is_refused(replicas: Replicas) -> None:
    """A valid client without `zapier: true` gets 403; no API key gets 401."""
    forbidden = replicas.call("GET", "/v1/zapier/connections", client="signer", params={**USER, "app": APP})
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    anonymous = httpx.get(replicas.a.internal + "/v1/zapier/connections", params={**USER, "app": APP})
    assert anonymous.status_code == 401


def test_a_narrow_client_reaches_only_what_its_grant_names(replicas: Replicas) -> None:
    """Client `narrow` (zapier: {apps: [Granted], actions: [send_message]}): another app's connections, its
    own app's other action, a connect for another app: 403 forbidden, and not one call reached Zapier; its
    own app and action pass; its action list shows only send_message."""
    z, granted = replicas.zapier, replicas.granted
    other = z.add_app("Other")
    z.add_action(granted, "send_message", "Send", "WRITE")
    z.add_action(granted, "delete_everything", "Delete", "WRITE")
    before, exchanges = len(z.log), len(z.partner.calls)
    refused = [
        replicas.call("GET", "/v1/zapier/connections", client="narrow", params={**USER, "app": other.id}),
        replicas.call("POST", "/v1/zapier/connect", client="narrow",
                      json={**USER, "app": other.id, "connect_app": other.slug}),
        replicas.call("POST", "/v1/zapier/action-runs", client="narrow", json={
            **USER, "app": granted.id, "action": "delete_everything", "action_type": "WRITE", "connection": None}),
        replicas.call("POST", "/v1/zapier/actions/send_message/inputs", client="narrow",
                      json={**USER, "app": other.id, "action_type": "WRITE"}),
    ]
    assert [(r.status_code, r.json()["error"]) for r in refused] == [(403, "forbidden")] * 4
    assert len(z.log) == before and len(z.partner.calls) == exchanges  # nothing went to Zapier
    assert replicas.call("GET", "/v1/zapier/connections", client="narrow",
                         params={**USER, "app": granted.id}).status_code == 200
    listed = replicas.call("GET", "/v1/zapier/actions", client="narrow", params={**USER, "app": granted.id})
    assert [a["key"] for a in listed.json()["actions"]] == ["send_message"]


def test_partner_metrics_are_exported_with_fixed_endpoint_names(replicas: Replicas) -> None:
    """/metrics has Partner API calls by our endpoint names (never a path with an id), runs by status."""
    text = httpx.get(replicas.a.internal + "/metrics", timeout=10).text
    endpoints = set(re.findall(r'keysvc_zapier_api_requests_total\{endpoint="([^"]+)"', text))
    assert endpoints and endpoints <= {"apps", "authentications", "actions", "inputs", "choices", "run_create",
                                       "run_get"}
    assert 'keysvc_zapier_action_runs_total{status="success"}' in text
    assert 'keysvc_zapier_api_budget_total{budget="local",result="cooling"} 0.0' in text
    routes = set(re.findall(r'keysvc_http_requests_total\{listener="internal",route="(zapier_[a-z_]+)"', text))
    assert {"zapier_connections", "zapier_connect", "zapier_run"} <= routes  # handler names, never paths


def test_zz_no_token_secret_or_jwt_in_any_answer_or_log(replicas: Replicas) -> None:
    """After every test above: no access token, the client secret or a JWT in an answer or a log line."""
    z = replicas.zapier
    access = [t for t, g in z.partner.issued.items() if g.token_type == ACCESS_TOKEN]
    assert access, "the replicas exchanged no access token: the tests above did not run"
    assert z.partner.calls_for(ACCESS_TOKEN) <= 3  # u-1 once per replica, u-shared once: cached afterwards
    for text in (*replicas.answers, replicas.a.log_text(), replicas.b.log_text()):
        assert not any(token in text for token in access)
        assert z.partner.client_secret not in text
        assert not JWT_SHAPE.search(text)
    lines = [*replicas.a.lines(), *replicas.b.lines()]
    audit = [line for line in lines if str(line.get("event", "")).startswith("zapier.")]
    assert {line["event"] for line in audit} == {"zapier.connect", "zapier.complete", "zapier.run"}
    assert all({"client", "user", "tenant", "app", "outcome"} <= set(line) for line in audit)
    forged = [line for line in audit if line["event"] == "zapier.complete" and line["outcome"] != "ok"]
    assert forged and forged[0]["outcome"] == "invalid_request"  # the forged state of the malformed table


def test_zz_openapi_documents_the_gateway(replicas: Replicas, tmp_path: Path) -> None:
    """The internal OpenAPI document lists every /v1/zapier route the server serves."""
    doc = httpx.get(replicas.a.internal + "/openapi.json", timeout=10).json()
    assert {p for p in doc["paths"] if p.startswith("/v1/zapier/")} == {
        "/v1/zapier/apps", "/v1/zapier/connections", "/v1/zapier/connect", "/v1/zapier/connect/complete",
        "/v1/zapier/actions", "/v1/zapier/actions/{key}/inputs", "/v1/zapier/actions/{key}/inputs/{input_id}/choices",
        "/v1/zapier/action-runs", "/v1/zapier/action-runs/{run_id}",
        "/v1/zapier/trigger-inboxes", "/v1/zapier/trigger-inboxes/{inbox}", "/v1/zapier/trigger-inboxes/{inbox}/pause",
        "/v1/zapier/trigger-inboxes/{inbox}/resume", "/v1/zapier/trigger-inboxes/{inbox}/lease",
        "/v1/zapier/trigger-inboxes/{inbox}/ack", "/v1/zapier/trigger-inboxes/{inbox}/release",
    }
