"""Key rotation across several `keysvc serve` processes sharing one key directory (README, "Key lifecycle")."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, backend_syncs, base_config, run_cli, wait_for, write_config
from tests.rotation_harness import RunReport, run_rotation

pytestmark = pytest.mark.system

# P=4s, A=2s, R=3s, T=2s; M=1s, W=0, C=1s, I=0.5s, S=0.2s: A >= max(M+W, C)+I+S = 1.7, R >= T+I+S = 2.7
FAST_KEYSET = {"rotation_period": "4s", "publish_ahead": "2s", "retain_after": "3s", "max_token_ttl": "2s"}
REFRESH = 0.5


def fast_config(keys: Path, alg: str = "ES256") -> dict[str, Any]:
    """A config whose keys rotate every few seconds with the invariants still satisfied."""
    config = base_config(keys, algs={"zapier": alg}, fast=True)
    config["keysets"]["zapier"].update(FAST_KEYSET)
    config["log"] = {"access": False}
    return config


def start_replicas(tmp_path: Path, config: dict[str, Any], n: int) -> list[KeysvcProcess]:
    """Start n replicas at the same instant on one directory (they race to create the first keys)."""
    path = write_config(tmp_path / "replica.yaml", config)
    procs = [KeysvcProcess(path, name=f"replica{i}") for i in range(n)]
    popen = subprocess.Popen
    env_base = {"PYTHONUNBUFFERED": "1"}
    for proc in procs:
        proc.env.update(env_base)
    # start them all before waiting for any, so their first reconciles overlap
    for proc in procs:
        proc.proc = None
    starters = [lambda p=p: p.start() for p in procs]
    import threading

    threads = [threading.Thread(target=s) for s in starters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    del popen
    return procs


def load_records(keys: Path, keyset: str = "zapier") -> list[dict[str, Any]]:
    """The key records on disk."""
    return sorted((json.loads(p.read_text()) for p in (keys / keyset).glob("key-*.json")), key=lambda r: r["seq"])


def test_three_replicas_ten_rotations_zero_verification_failures(tmp_path: Path) -> None:
    """3 replicas, rotation every 4 s, continuous signing on random replicas until tokens of 10 keys and
    over 1000 verified tokens have been seen, every token verified by PyJWKClient-like verifiers that
    fetch from a random replica and cache for the configured verifier cache: zero verification failures;
    exactly one key per activation slot (slots spaced by exactly the rotation period); no JWKS is proven
    to have reached the replicas further apart than refresh_interval (+ slack); retired keys' private
    material destroyed."""
    keys = tmp_path / "keys"
    replicas = start_replicas(tmp_path, fast_config(keys), 3)

    def seen_enough(report: RunReport) -> bool:
        return len(set(report.kids_used)) >= 10 and report.verified > 1000 and len(report.etag_spreads(3)) >= 10

    try:
        report = run_rotation(
            replicas,
            keyset="zapier",
            issuer="https://issuer.example/zapier",
            until=seen_enough,
            timeout=180,
            ttl=2,
            verifier_cache=1.0,
            algorithms=["ES256"],
        )
    finally:
        for r in replicas:
            r.stop()
    records = load_records(keys)
    activations = [r["activates_at"] for r in records]
    kids_used = list(dict.fromkeys(report.kids_used))
    assert report.failures == [], report.failures[:5]
    assert report.sign_errors == [], report.sign_errors[:5]
    assert report.verified > 1000, report
    assert len(kids_used) >= 10, f"only {len(kids_used)} signing keys seen"
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert len({r["kid"] for r in records}) == len(records)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(activations[1:])]
    assert gaps == [4.0] * len(gaps), gaps  # one key per slot: no slot was filled twice
    spreads = report.etag_spreads(3)
    assert len(spreads) >= 10
    assert max(spreads.values()) <= REFRESH + 0.7, sorted(spreads.values())[-5:]
    now = time.time()
    for record in records:
        pem = keys / "zapier" / f"key-{record['seq']:06d}.pem"
        retired = record["activates_at"] + 4 + 3 + 1.5 < now and record is not records[-1]
        if retired:
            assert not pem.exists() and record["destroyed_at"] is not None, record["seq"]
    for r in replicas:
        assert '"level":"error"' not in r.log_text()


def _admin(proc: KeysvcProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method, proc.internal + path, json=body, headers={"Authorization": f"Bearer {api_key('admin')}"}, timeout=10
    )


def _published(proc: KeysvcProcess) -> list[str]:
    return [k["kid"] for k in proc.jwks().json()["keys"]]


def next_sync(proc: KeysvcProcess) -> None:
    """Wait until `proc` has completed a sync of the key store that began after this call (the one in
    flight may have read the store before the change): "within one refresh interval", counted in syncs
    so that a loaded machine does not turn it into a race with the wall clock."""
    done = backend_syncs(proc, failed=False)
    wait_for(lambda: backend_syncs(proc, failed=False) >= done + 2, 30, f"{proc.name} to sync again")


def audit_lines(proc: KeysvcProcess, event: str) -> list[dict[str, Any]]:
    """The audit lines of `event` in the log so far."""
    return [line for line in proc.lines() if line.get("audit") and line.get("event") == event]


def slow_config(keys: Path) -> dict[str, Any]:
    """Rotation far away (so only emergency operations change keys), fast refresh. A superseded key stays
    retiring for 10 minutes: the tests look at it some seconds after a rotation, however slow the machine."""
    config = base_config(keys, fast=True)
    config["keysets"]["zapier"].update(
        {"rotation_period": "1h", "publish_ahead": "3s", "retain_after": "10m", "max_token_ttl": "2s"}
    )
    return config


def test_emergency_rotate_and_revoke_through_api(tmp_path: Path) -> None:
    """Admin API: a rotation before the pending key has been published for publish_ahead is refused with
    409 and Retry-After; after it, the pending key becomes active on every replica and a new pending key
    appears. Revoking the active key removes it from every replica's JWKS within one refresh interval
    and no token is signed with it afterwards; both are audit-logged."""
    keys = tmp_path / "keys"
    replicas = start_replicas(tmp_path, slow_config(keys), 2)
    a, b = replicas
    try:
        active, pending = _published(a)
        early = _admin(a, "POST", "/v1/keysets/zapier/rotate")
        assert early.status_code == 409, early.text
        assert early.json()["error"] == "conflict" and "safe from" in early.json()["error_description"]
        assert int(early.headers["retry-after"]) >= 1
        time.sleep(float(early.headers["retry-after"]))  # the pause it asks for: then it must be safe
        rotated = _admin(a, "POST", "/v1/keysets/zapier/rotate")
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["active_kid"] == pending
        # the answering replica refreshed before answering; the other one does at its next sync
        assert a.sign().json()["kid"] == pending
        next_sync(b)
        assert b.sign().json()["kid"] == pending
        assert active in _published(b)  # the superseded key stays published (retiring)
        assert len(_published(a)) == 3  # retiring, active, new pending

        revoked = _admin(b, "POST", f"/v1/keys/{pending}/revoke")
        assert revoked.status_code == 200, revoked.text
        # the audit line is on the stream before the answer: read at once, no waiting
        [line] = audit_lines(b, "key.revoke")
        assert (line["kid"], line["was_active"], line["actor"]) == (pending, True, "client:admin")
        assert line["warning"] == "verifiers may reject tokens until they refetch the JWKS"
        assert pending not in _published(b)
        next_sync(a)
        assert pending not in _published(a)
        for r in replicas:
            for _ in range(20):
                response = r.sign()
                assert response.status_code == 200 and response.json()["kid"] != pending
        events = [line["event"] for r in replicas for line in r.lines() if line.get("audit")]
        assert {"key.rotate", "key.revoke", "key.activate", "key.create"} <= set(events)
        listing = _admin(a, "GET", "/v1/keys").json()["keys"]
        assert {k["kid"]: k["state"] for k in listing}[pending] == "revoked"
        assert _admin(a, "POST", "/v1/keys/nope/revoke").status_code == 404
        forced = _admin(a, "POST", "/v1/keysets/zapier/rotate", {"force": True})
        assert forced.status_code == 200, forced.text
        # whether the promoted key is still younger than publish_ahead here depends on the machine's speed,
        # so only the fields that do not are checked (the warning: the next test)
        line = audit_lines(a, "key.rotate")[-1]
        assert (line["kid"], line["forced"], line["actor"]) == (forced.json()["active_kid"], True, "client:admin")
    finally:
        for r in replicas:
            r.stop()


def test_key_operations_audit_lines_precede_their_answers(tmp_path: Path) -> None:
    """Each key operation's audit line is on the log stream before its HTTP answer leaves, so a log read
    right after the answer holds it: a refused rotation writes none; a forced promotion of a pending key
    created moments ago (publish_ahead 10 min, so certainly too early) says forced and that verifiers may
    reject tokens, and the next pending key's creation is logged too; revoking the active key says the
    same; revoking a pending key does not warn."""
    config = slow_config(tmp_path / "keys")
    config["keysets"]["zapier"]["publish_ahead"] = "10m"
    with KeysvcProcess(write_config(tmp_path / "audit.yaml", config), name="audit-order") as proc:
        _, pending = _published(proc)
        refused = _admin(proc, "POST", "/v1/keysets/zapier/rotate")
        assert refused.status_code == 409, refused.text
        assert audit_lines(proc, "key.rotate") == []

        forced = _admin(proc, "POST", "/v1/keysets/zapier/rotate", {"force": True})
        assert forced.status_code == 200, forced.text
        [rotate] = audit_lines(proc, "key.rotate")
        assert (rotate["kid"], rotate["forced"], rotate["actor"]) == (pending, True, "client:admin")
        assert rotate["warning"] == "verifiers may reject tokens until they refetch the JWKS"
        [newest] = [k["kid"] for k in _admin(proc, "GET", "/v1/keys").json()["keys"] if k["state"] == "pending"]
        assert newest in {line["kid"] for line in audit_lines(proc, "key.create")}

        revoked = _admin(proc, "POST", f"/v1/keys/{newest}/revoke")
        assert revoked.status_code == 200, revoked.text
        [revoke] = audit_lines(proc, "key.revoke")
        assert (revoke["kid"], revoke["was_active"], revoke["warning"]) == (newest, False, None)

        revoked = _admin(proc, "POST", f"/v1/keys/{pending}/revoke")
        assert revoked.status_code == 200, revoked.text
        revoke = audit_lines(proc, "key.revoke")[-1]
        assert (revoke["kid"], revoke["was_active"]) == (pending, True)
        assert revoke["warning"] == "verifiers may reject tokens until they refetch the JWKS"


def test_emergency_rotate_and_revoke_through_cli(tmp_path: Path) -> None:
    """The CLI operates the backend through its own keyring (the write API the admin routes use): with no
    server running, `keys rotate` refuses an unsafe rotation (exit 1, says when it becomes safe), `--force`
    promotes and audits it as `cli:<user>`; `keys revoke` removes a key; a running replica picks both up
    within one refresh interval; `keys list --json` shows every state."""
    keys = tmp_path / "keys"
    config_path = write_config(tmp_path / "cli.yaml", slow_config(keys))
    listing = run_cli("keys", "list", "--json", config=config_path)
    assert listing.returncode == 0 and json.loads(listing.stdout) == {"keys": []}
    replica = KeysvcProcess(config_path, name="cli-replica").start()
    try:
        active, pending = _published(replica)
        refused = run_cli("keys", "rotate", "zapier", config=config_path)
        assert refused.returncode == 1 and "safe from" in refused.stderr, refused.stderr
        forced = run_cli("keys", "rotate", "zapier", "--force", config=config_path)
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout)["active_kid"] == pending
        rotated = [json.loads(line) for line in forced.stderr.splitlines() if '"key.rotate"' in line]
        assert [(r["actor"].startswith("cli:"), r["kid"], r["forced"]) for r in rotated] == [(True, pending, True)]
        next_sync(replica)
        assert replica.sign().json()["kid"] == pending
        revoked = run_cli("keys", "revoke", pending, config=config_path)
        assert revoked.returncode == 0, revoked.stderr
        next_sync(replica)
        assert pending not in _published(replica)
        assert replica.sign().json()["kid"] not in (pending, active)
        states = {
            k["kid"]: k["state"]
            for k in json.loads(run_cli("keys", "list", "--json", config=config_path).stdout)["keys"]
        }
        assert states[pending] == "revoked" and states[active] == "retiring"
        assert sorted(states.values()).count("active") == 1
        table = run_cli("keys", "list", config=config_path).stdout
        assert "SUPERSEDED_AT" in table and "REMOVES_AT" in table and pending in table
        unknown = run_cli("keys", "revoke", "nope", config=config_path)
        assert unknown.returncode == 1 and "no such key" in unknown.stderr
        jwks = json.loads(run_cli("jwks", config=config_path).stdout)
        assert [k["kid"] for k in jwks["keys"]] == _published(replica)
    finally:
        replica.stop()


def test_alg_change_takes_effect_with_next_key_and_import(tmp_path: Path) -> None:
    """Changing a keyset's alg never re-keys the active key: the next key uses the new alg and the JWKS
    carries both during the overlap. `keys import` adopts an existing PEM as the next (pending) key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = tmp_path / "keys"
    config = slow_config(keys)
    path = write_config(tmp_path / "a.yaml", config)
    assert run_cli("keys", "list", config=path).returncode == 0
    replica = KeysvcProcess(path, name="alg-a").start()
    first = replica.jwks().json()["keys"]
    replica.stop()
    config["keysets"]["zapier"]["alg"] = "RS256"
    path = write_config(tmp_path / "b.yaml", config)
    run = run_cli("keys", "rotate", "zapier", "--force", config=path)
    assert run.returncode == 0, run.stderr
    replica = KeysvcProcess(path, name="alg-b").start()
    try:
        algs = [k["alg"] for k in replica.jwks().json()["keys"]]
        assert algs == ["ES256", "ES256", "RS256"], algs  # retiring ES256, active ES256 (was pending), new RS256
        assert replica.sign().json()["alg"] == "ES256"
        key = ec.generate_private_key(ec.SECP256R1())
        wrong = tmp_path / "wrong.pem"
        wrong.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        refused = run_cli("keys", "import", "zapier", "--pem", str(wrong), config=path)
        # the key is wrong, not the configuration: exit 1 (not 78, EX_CONFIG), naming --pem
        assert refused.returncode == 1 and "RS256" in refused.stderr and "--pem" in refused.stderr
        from cryptography.hazmat.primitives.asymmetric import rsa

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = tmp_path / "partner.pem"
        pem.write_bytes(
            rsa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        imported = run_cli("keys", "import", "zapier", "--pem", str(pem), config=path)
        assert imported.returncode == 0, imported.stderr
        kid = json.loads(imported.stdout)["kid"]
        assert any(json.loads(line).get("event") == "key.import" and json.loads(line)["kid"] == kid
                   for line in imported.stderr.splitlines() if line.startswith("{"))  # audit before answer
        next_sync(replica)
        assert kid in _published(replica)
        states = {
            k["kid"]: k["state"] for k in json.loads(run_cli("keys", "list", "--json", config=path).stdout)["keys"]
        }
        assert states[kid] == "pending"
        assert list(states.values()).count("pending") == 1
        assert first[0]["kid"] in states
    finally:
        replica.stop()


@pytest.mark.parametrize("n", [6])
def test_simultaneous_reconcile_creates_exactly_one_key(tmp_path: Path, n: int) -> None:
    """N processes reconciling the same empty keyset at the same instant create exactly one key per slot:
    two keys (active + pending), never more."""
    keys = tmp_path / "keys"
    config_path = write_config(tmp_path / "race.yaml", slow_config(keys))
    script = (
        "import sys, time\n"
        "from keysvc.config import load_settings\n"
        "from keysvc.backends.registry import open_backend\n"
        "from keysvc import operations\n"
        "s = load_settings(sys.argv[1]); b = open_backend(s.backend, 'race')\n"
        "t0 = float(sys.argv[2])\n"
        "time.sleep(max(0, t0 - time.time()))\n"
        "r = operations.reconcile(b, s.keysets['zapier'], time.time, 'race')\n"
        "print(r.created, r.lost_races)\n"
    )
    start_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(config_path), str(start_at)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    outputs = [p.communicate(30)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o[0]) for o in outputs) == 2
    records = load_records(keys)
    assert [r["seq"] for r in records] == [1, 2]
    assert not list((keys / "zapier").glob(".tmp-*"))
    assert len(list((keys / "zapier").glob("*.pem"))) == 2
