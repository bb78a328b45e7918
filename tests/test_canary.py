"""The canary: the pure verification against a JWKS, which keysets it checks, and a real replica whose
canary passes through its own public URL and fails against another service's JWKS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from keysvc.canary import Verdict, targets, verify
from keysvc.config import load_settings
from tests.exchange_support import serve
from tests.helpers import KeysvcProcess, base_config, wait_for, write_config


def _signed(kid: str = "k1", alg: str = "ES256") -> tuple[str, JWK]:
    key = JWK.generate(kty="EC", crv="P-256")
    jws = JWS(b'{"sub":"keysvc-canary"}')
    jws.add_signature(key, alg=alg, protected=json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}))
    return jws.serialize(compact=True), key


def _jwks(*keys: JWK, kid: str = "k1", alg: str = "ES256") -> bytes:
    return json.dumps({"keys": [{**json.loads(k.export_public()), "kid": kid, "alg": alg, "use": "sig"}
                                for k in keys]}).encode()


@pytest.mark.unit
def test_verify_accepts_the_signing_key_and_names_each_failure() -> None:
    """ok with the right public key; kid_missing, alg_mismatch, bad_signature (another key under the same
    kid), bad_jwks (not JSON / private member published) otherwise; details never quote the token."""
    token, key = _signed()
    other = JWK.generate(kty="EC", crv="P-256")
    assert verify(token, _jwks(key), kid="k1", alg="ES256") == Verdict("ok")
    assert verify(token, _jwks(key, kid="k2"), kid="k1", alg="ES256").outcome == "kid_missing"
    assert verify(token, _jwks(key, alg="ES384"), kid="k1", alg="ES256").outcome == "alg_mismatch"
    assert verify(token, _jwks(other), kid="k1", alg="ES256").outcome == "bad_signature"
    assert verify(token, b"<html>", kid="k1", alg="ES256").outcome == "bad_jwks"
    private = json.dumps({"keys": [{**json.loads(key.export_private()), "kid": "k1"}]}).encode()
    assert verify(token, private, kid="k1", alg="ES256").outcome == "bad_jwks"
    for body in (_jwks(other), _jwks(key, kid="k2")):
        assert token not in verify(token, body, kid="k1", alg="ES256").detail


@pytest.mark.unit
def test_targets_use_the_url_for_the_default_keyset_unless_it_names_keysets(tmp_path: Path) -> None:
    """Without {keyset} only the default keyset is checked at the URL; with it, every keyset at its own."""
    config = base_config(tmp_path / "keys", algs={"zapier": "ES256", "other": "RS256"})
    config["canary"] = {"jwks_url": "https://keys.example/.well-known/jwks.json"}
    settings = load_settings(write_config(tmp_path / "a.yaml", config))
    assert targets(settings) == {"zapier": "https://keys.example/.well-known/jwks.json"}
    config["canary"] = {"jwks_url": "https://keys.example/keysets/{keyset}/jwks.json", "interval": "30s"}
    settings = load_settings(write_config(tmp_path / "b.yaml", config))
    assert targets(settings) == {"zapier": "https://keys.example/keysets/zapier/jwks.json",
                                 "other": "https://keys.example/keysets/other/jwks.json"}
    assert settings.canary is not None and settings.canary.interval == 30


def _canary_metrics(proc: KeysvcProcess) -> dict[str, float]:
    lines = httpx.get(f"{proc.internal}/metrics", timeout=10).text.splitlines()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("keysvc_canary")}


def _wait_runs(proc: KeysvcProcess, outcome: str, timeout: float = 10.0) -> dict[str, float]:
    series = f'keysvc_canary_runs_total{{keyset="zapier",outcome="{outcome}"}}'
    try:
        return wait_for(lambda: (found := _canary_metrics(proc)).get(series, 0) >= 1 and found, timeout,
                        f"a canary run with outcome {outcome}", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log:\n{proc.log_text()[-3000:]}") from None


@pytest.mark.system
def test_canary_passes_through_the_public_url_and_fails_on_a_foreign_jwks(
    tmp_path: Path, keysvc: Callable[..., KeysvcProcess]
) -> None:
    """Replica A checks its own public URL: success 1, the ETag it observed equals the one it serves, and a
    duration is exported. Replica B (own keys) checks A's URL: its kid is not there, so success 0, outcome
    kid_missing and a 'canary failed' warning naming the keyset, without the token."""
    a_config = base_config(tmp_path / "keys-a")
    a = keysvc(a_config, name="canary-a")
    # A's canary needs A's port, known only once A runs: restart it with the URL configured
    a.stop()
    a_config["listen"]["public"] = a.public.removeprefix("http://")
    a_config["canary"] = {"jwks_url": f"{a.public}/.well-known/jwks.json", "interval": "1s", "timeout": "2s"}
    a = keysvc(a_config, name="canary-a")
    b_config = base_config(tmp_path / "keys-b")
    b_config["canary"] = {"jwks_url": f"{a.public}/keysets/{{keyset}}/jwks.json", "interval": "1s", "timeout": "2s"}
    b = keysvc(b_config, name="canary-b")

    good = _wait_runs(a, "ok")
    assert good['keysvc_canary_success{keyset="zapier"}'] == 1
    assert good['keysvc_canary_duration_seconds{keyset="zapier"}'] > 0
    assert good['keysvc_canary_last_success_timestamp_seconds{keyset="zapier"}'] > time.time() - 60
    etag = a.jwks().headers["etag"].strip('"')
    assert f'keysvc_canary_observed_info{{etag="{etag}",keyset="zapier"}}' in good

    bad = _wait_runs(b, "kid_missing")
    assert bad['keysvc_canary_success{keyset="zapier"}'] == 0
    assert bad.get('keysvc_canary_runs_total{keyset="zapier",outcome="ok"}') == 0
    warnings = [ln for ln in b.lines() if ln.get("event") == "canary failed"]
    assert warnings and warnings[0]["keyset"] == "zapier" and warnings[0]["outcome"] == "kid_missing"
    assert warnings[0]["level"] == "warning" and "eyJ" not in json.dumps(warnings[0])


@pytest.mark.system
def test_canary_does_not_follow_a_redirect(tmp_path: Path, keysvc: Callable[..., KeysvcProcess]) -> None:
    """A canary URL that answers 302 to the replica's own (good) JWKS fails with http_error: the canary checks
    the URL the partner was given, and a redirect there (a hijacked DNS name, a misconfigured CDN) is a
    finding, not something to follow."""
    config = base_config(tmp_path / "keys")
    proc = keysvc(config, name="canary-redirect")
    target = f"{proc.public}/.well-known/jwks.json"

    async def moved(request: Request) -> Response:
        return RedirectResponse(target, status_code=302)

    with serve(Starlette(routes=[Route("/jwks.json", moved)])) as base:
        proc.stop()
        config["listen"]["public"] = proc.public.removeprefix("http://")
        config["canary"] = {"jwks_url": f"{base}/jwks.json", "interval": "1s", "timeout": "2s"}
        proc = keysvc(config, name="canary-redirect")
        found = _wait_runs(proc, "http_error")
    assert found['keysvc_canary_success{keyset="zapier"}'] == 0
    assert found.get('keysvc_canary_runs_total{keyset="zapier",outcome="ok"}') == 0
    failed = [ln for ln in proc.lines() if ln.get("event") == "canary failed"]
    assert failed and failed[0]["detail"] == "HTTP 302"
