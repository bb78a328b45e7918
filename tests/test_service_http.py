"""End-to-end over HTTP: a real `keysvc serve` process, verified by PyJWT fetching our JWKS URL."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from keysvc.algorithms import ALGORITHMS
from tests.helpers import KeysvcProcess, api_key, base_config

pytestmark = pytest.mark.system

ALL_ALGS = {alg.lower(): alg for alg in ALGORITHMS}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}

Start = Callable[..., KeysvcProcess]


@pytest.fixture(scope="module")
def every_alg(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server with a keyset per algorithm (shared by the tests of this module)."""
    tmp = tmp_path_factory.mktemp("every-alg")
    from tests.helpers import write_config

    path = write_config(tmp / "keysvc.yaml", base_config(tmp / "keys", algs=ALL_ALGS))
    proc = KeysvcProcess(path, name="every-alg").start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("keyset", sorted(ALL_ALGS))
def test_tokens_verify_with_pyjwt_from_jwks_url(every_alg: KeysvcProcess, keyset: str) -> None:
    """A token minted over HTTP verifies with PyJWT's PyJWKClient pointed at our JWKS URL, for every
    algorithm, with signature, iss, aud and exp checked, and the header carries alg, kid and typ."""
    response = every_alg.sign(keyset=keyset, claims={"sub": "u-1", "aud": "connect.zapier.com", "org_id": "t-9"})
    assert response.status_code == 200, response.text
    body = response.json()
    client = jwt.PyJWKClient(f"{every_alg.public}/keysets/{keyset}/jwks.json", cache_keys=False)
    signing_key = client.get_signing_key_from_jwt(body["token"])
    claims = jwt.decode(
        body["token"],
        signing_key.key,
        algorithms=[ALL_ALGS[keyset]],
        audience="connect.zapier.com",
        issuer=f"https://issuer.example/{keyset}",
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "jti"]},
    )
    header = jwt.get_unverified_header(body["token"])
    assert header == {"alg": ALL_ALGS[keyset], "kid": body["kid"], "typ": "JWT"}
    assert (claims["sub"], claims["org_id"], claims["nbf"]) == ("u-1", "t-9", claims["iat"])
    assert claims["exp"] == body["expires_at"] == claims["iat"] + 300
    assert body["alg"] == ALL_ALGS[keyset]


def test_jwks_has_public_members_only(every_alg: KeysvcProcess) -> None:
    """No JWK of any algorithm carries a private member; each has kty, kid, alg and use=sig, and the
    kid is the RFC 7638 thumbprint of the key."""
    from jwcrypto.jwk import JWK

    for keyset, alg in ALL_ALGS.items():
        keys = every_alg.jwks(keyset).json()["keys"]
        assert len(keys) == 2  # the active key and its pending successor
        for jwk in keys:
            assert not PRIVATE_MEMBERS & set(jwk), jwk
            assert (jwk["alg"], jwk["use"]) == (alg, "sig")
            assert JWK(**{k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")}).thumbprint() == jwk["kid"]


def test_jwks_cache_headers_etag_304_and_head(every_alg: KeysvcProcess) -> None:
    """The JWKS carries Cache-Control with max-age, stale-while-revalidate and stale-if-error, a strong
    ETag; If-None-Match answers 304 with no body; HEAD answers the headers without a body."""
    first = every_alg.jwks()
    assert first.headers["cache-control"] == "public, max-age=300, stale-while-revalidate=60, stale-if-error=86400"
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["content-type"] == "application/json"
    again = httpx.get(every_alg.public + "/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    other = httpx.get(every_alg.public + "/.well-known/jwks.json", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200 and other.content == first.content
    # RFC 9110 §13.1.2: weak comparison, a list of tags, `*` (beyond the exact tag a verifier sends back)
    for matching in (f"W/{etag}", f'"nope", {etag}', f'W/"nope" ,W/{etag}', "*"):
        answer = httpx.get(every_alg.public + "/.well-known/jwks.json", headers={"If-None-Match": matching})
        assert (matching, answer.status_code) == (matching, 304)
    listed = httpx.get(every_alg.public + "/.well-known/jwks.json", headers={"If-None-Match": '"a", W/"b"'})
    assert listed.status_code == 200
    head = httpx.head(every_alg.public + "/.well-known/jwks.json")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len(first.content)))
    default_name = next(iter(ALL_ALGS))
    assert every_alg.jwks(default_name).content == first.content


def test_health_and_readiness(every_alg: KeysvcProcess) -> None:
    """/healthz says alive, /readyz says ready once every keyset has an active key."""
    assert httpx.get(every_alg.public + "/healthz").json() == {"status": "ok"}
    assert httpx.get(every_alg.public + "/readyz").status_code == 200


def _post(
    proc: KeysvcProcess,
    path: str = "/v1/sign",
    *,
    key: str | None = "signer",
    content: bytes | None = None,
    body: Any = None,
    content_type: str | None = "application/json",
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {api_key(key)}"
    if content_type is not None:
        h["Content-Type"] = content_type
    data = content if content is not None else json.dumps(body).encode() if body is not None else None
    return httpx.request(method, proc.internal + path, content=data, headers=h, timeout=10)


GOOD = {"keyset": "es256", "claims": {"sub": "u-1", "aud": "connect.zapier.com"}}
KS = {"keyset": "es256"}

ERROR_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("no credentials", {"key": None, "body": GOOD}, 401, "invalid_client"),
    ("wrong key", {"key": "nobody", "body": GOOD}, 401, "invalid_client"),
    (
        "basic auth",
        {"key": None, "body": GOOD, "headers": {"Authorization": "Basic Zm9vOmJhcg=="}},
        401,
        "invalid_client",
    ),
    ("bad json", {"content": b'{"claims": '}, 400, "invalid_request"),
    ("invalid utf-8", {"content": b'{"claims": {"sub": "\xff"}}'}, 400, "invalid_request"),
    ("duplicate keys", {"content": b'{"claims": {"aud": "connect.zapier.com", "aud": "x"}}'}, 400, "invalid_request"),
    ("NaN", {"content": b'{"claims": {"aud": "connect.zapier.com", "n": NaN}}'}, 400, "invalid_request"),
    ("deep nesting", {"content": b'{"claims": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}, 413, "payload_too_large"),
    (
        "deep nesting under limit",
        {"content": b'{"claims": {"x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}"},
        400,
        "invalid_request",
    ),
    (
        "huge number",
        {"content": b'{"keyset": "es256", "ttl": ' + b"9" * 5000 + b', "claims": {"aud": "x"}}'},
        400,
        "invalid_request",
    ),
    ("not an object", {"body": [1, 2]}, 400, "invalid_request"),
    ("claims not object", {"body": {**KS, "claims": "x"}}, 400, "invalid_request"),
    ("unknown field", {"body": {**GOOD, "kid": "x"}}, 400, "invalid_request"),
    ("reserved iss", {"body": {**KS, "claims": {"aud": "connect.zapier.com", "iss": "evil"}}}, 400, "invalid_request"),
    (
        "reserved exp",
        {"body": {**KS, "claims": {"aud": "connect.zapier.com", "exp": 9999999999}}},
        400,
        "invalid_request",
    ),
    ("missing aud", {"body": {**KS, "claims": {"sub": "u"}}}, 400, "invalid_request"),
    ("aud not allowed", {"body": {**KS, "claims": {"aud": "evil.example"}}}, 403, "forbidden"),
    ("aud list with one bad", {"body": {**KS, "claims": {"aud": ["connect.zapier.com", "evil"]}}}, 403, "forbidden"),
    (
        "keyset not allowed",
        {"key": "other", "body": {"keyset": "es384", "claims": {"aud": "other.example"}}},
        403,
        "forbidden",
    ),
    ("unknown keyset", {"body": {**GOOD, "keyset": "nope"}}, 403, "forbidden"),
    ("ttl bool", {"body": {**GOOD, "ttl": True}}, 400, "invalid_request"),
    ("ttl negative", {"body": {**GOOD, "ttl": -5}}, 400, "invalid_request"),
    ("keyset needed", {"body": {"claims": GOOD["claims"]}}, 400, "invalid_request"),
    (
        "wrong content type",
        {"content": json.dumps(GOOD).encode(), "content_type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"content": json.dumps(GOOD).encode(), "content_type": None}, 415, "unsupported_media_type"),
    (
        "too large",
        {"content": b'{"claims": {"aud": "connect.zapier.com", "x": "' + b"a" * 70_000 + b'"}}'},
        413,
        "payload_too_large",
    ),
    ("wrong method", {"method": "GET", "body": None}, 405, "method_not_allowed"),
    ("unknown path", {"body": GOOD, "path": "/v1/nope"}, 404, "not_found"),
    ("admin route as non-admin", {"method": "GET", "path": "/v1/keys", "body": None}, 403, "forbidden"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_paths(every_alg: KeysvcProcess, case: str, kwargs: dict[str, Any], status: int, code: str) -> None:
    """Every malformed or unauthorised request gets the documented status and JSON error, with no
    secret (API key) echoed back, and the server keeps serving."""
    response = _post(every_alg, **kwargs)
    assert response.status_code == status, response.text
    doc = response.json()
    assert (doc["error"], set(doc)) == (code, {"error", "error_description"})
    for secret in (api_key("signer"), api_key("other"), api_key("admin")):
        assert secret not in response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status == 405:
        assert "POST" in response.headers["allow"]


def test_ttl_is_capped(every_alg: KeysvcProcess) -> None:
    """A ttl above the client's or keyset's maximum is capped; below, honoured."""
    long = every_alg.sign(keyset="es256", ttl=100_000).json()
    short = every_alg.sign(keyset="es256", ttl=30).json()
    other = every_alg.sign(client="other", claims={"aud": "other.example"}, ttl=100_000).json()
    for body, ttl in ((long, 300), (short, 30), (other, 60)):
        claims = jwt.decode(body["token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == ttl


def test_public_listener_errors(every_alg: KeysvcProcess) -> None:
    """The public port answers JSON 404 for unknown paths/keysets and 405 for other methods, and serves
    nothing of the internal API."""
    for path, status in (("/nope", 404), ("/keysets/nope/jwks.json", 404), ("/v1/sign", 404), ("/metrics", 404)):
        response = httpx.get(every_alg.public + path)
        assert (response.status_code, response.json()["error"]) == (status, "not_found")
    response = httpx.post(every_alg.public + "/.well-known/jwks.json", content=b"{}")
    assert (response.status_code, response.json()["error"], response.headers["allow"]) == (
        405,
        "method_not_allowed",
        "GET, HEAD",
    )


def test_restart_keeps_kids_and_second_process_serves_same_jwks(keysvc: Start, tmp_path: Path) -> None:
    """A restart reuses the same keys (same kids), and a second process on the same directory serves the
    same JWKS bytes and ETag; key files are 0600 in 0700 directories."""
    config = base_config(tmp_path / "keys")
    first = keysvc(config, name="first")
    before = first.jwks()
    first.stop()
    again = keysvc(config, name="again")
    second = keysvc(config, name="second")
    assert again.jwks().content == before.content
    assert second.jwks().headers["etag"] == again.jwks().headers["etag"] == before.headers["etag"]
    kids = [k["kid"] for k in before.json()["keys"]]
    token = second.sign().json()
    assert token["kid"] == kids[0]
    for path in (tmp_path / "keys" / "zapier").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "keys" / "zapier").stat().st_mode) == 0o700


def test_passphrase_encrypts_keys_at_rest(keysvc: Start, tmp_path: Path) -> None:
    """With passphrase_file set, private keys are encrypted PKCS#8 on disk and the service signs; a
    restart with a wrong passphrase does not serve (not ready) and says why without the passphrase."""
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    os.chmod(secret, 0o600)
    config = base_config(tmp_path / "keys")
    config["backend"]["passphrase_file"] = str(secret)
    proc = keysvc(config)
    assert proc.sign().status_code == 200
    pems = sorted((tmp_path / "keys" / "zapier").glob("*.pem"))
    assert pems and all(b"ENCRYPTED PRIVATE KEY" in p.read_bytes() for p in pems)
    proc.stop()
    secret.write_text("Tr0ub4dor-mistyped\n")
    bad = keysvc(config, name="wrong-passphrase")
    assert httpx.get(bad.public + "/readyz").status_code == 503
    assert bad.sign().status_code == 503
    assert "cannot be decrypted" in bad.log_text()
    assert "Tr0ub4dor" not in bad.log_text() and "correct horse" not in bad.log_text()


NODE_DIR = Path(__file__).parent / "node"


def test_tokens_verify_with_node_jose(every_alg: KeysvcProcess) -> None:
    """An independent verifier in another language: node `jose` (createRemoteJWKSet on our JWKS URL,
    as a node partner would) verifies tokens of every algorithm, checking iss, aud, exp, nbf and typ."""
    import subprocess

    assert (NODE_DIR / "node_modules" / "jose").is_dir(), "run `make test` (it installs tests/node)"
    for keyset, alg in ALL_ALGS.items():
        tokens = []
        for i in range(10):
            response = every_alg.sign(keyset=keyset, claims={"sub": f"u-{i}", "aud": "connect.zapier.com"})
            assert response.status_code == 200, response.text
            tokens.append({"token": response.json()["token"], "alg": alg})
        job = {
            "jwks_url": f"{every_alg.public}/keysets/{keyset}/jwks.json",
            "issuer": f"https://issuer.example/{keyset}",
            "audience": "connect.zapier.com",
            "tokens": tokens,
        }
        run = subprocess.run(["node", "verify.mjs"], input=json.dumps(job), capture_output=True, text=True,
                             cwd=NODE_DIR, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == {"verified": 10, "failures": []}, run.stdout
