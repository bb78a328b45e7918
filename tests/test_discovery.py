"""OpenID discovery on the public listener: the pure document (keysvc.discovery), its configuration
(`public_url`, a keyset's `jwks_uri`), and independent verifiers that start from the issuer alone (PyJWT,
node `jose`) against a real `keysvc serve`."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from keysvc import discovery
from keysvc.config import Settings, parse_settings
from keysvc.errors import ConfigError
from keysvc.http.public import PublicApp
from keysvc.metrics import Metrics
from tests.conftest import LogStream
from tests.helpers import KeysvcProcess, base_config, wait_for, write_config

NODE_DIR = Path(__file__).parent / "node"
FIELDS = ["issuer", "jwks_uri", "id_token_signing_alg_values_supported", "response_types_supported",
          "subject_types_supported"]


def settings_with(tmp_path: Path, public_url: str | None = None, **keyset: Any) -> Settings:
    """base_config's settings (keyset `zapier`, ES256, default) with `public_url` and keyset fields added."""
    config = base_config(tmp_path / "keys")
    if public_url is not None:
        config["public_url"] = public_url
    config["keysets"]["zapier"].update(keyset)
    return parse_settings(config)


@pytest.mark.unit
def test_jwks_uri_is_the_keysets_own_else_public_url_plus_its_jwks_path_else_none(tmp_path: Path) -> None:
    """A keyset's `jwks_uri` wins; without it `public_url` + `/keysets/<name>/jwks.json`; with neither,
    nothing is derived (no document: keysvc never guesses its own URL from a request's Host)."""
    own = "https://cdn.example.com/zapier/jwks.json"
    assert discovery.jwks_uri(settings_with(tmp_path, "https://k.example", jwks_uri=own).keysets["zapier"],
                              "https://k.example") == own
    ks = settings_with(tmp_path, "https://k.example/").keysets["zapier"]
    assert discovery.jwks_uri(ks, "https://k.example") == "https://k.example/keysets/zapier/jwks.json"
    assert discovery.build(settings_with(tmp_path).keysets["zapier"], None) is None


@pytest.mark.unit
def test_the_document_names_issuer_jwks_uri_alg_and_the_fixed_members(tmp_path: Path) -> None:
    """The body holds exactly the five members, in order, from the keyset's settings; its ETag is strong
    and changes with the body."""
    settings = settings_with(tmp_path, "https://keys.example.com")
    assert settings.public_url == "https://keys.example.com"
    doc = discovery.build(settings.keysets["zapier"], settings.public_url)
    assert doc is not None
    assert json.loads(doc.body) == {
        "issuer": "https://issuer.example/zapier",
        "jwks_uri": "https://keys.example.com/keysets/zapier/jwks.json",
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }
    assert list(json.loads(doc.body)) == FIELDS
    assert doc.etag.startswith('"') and not doc.etag.startswith("W/")
    other = discovery.build(settings.keysets["zapier"], "https://other.example.com")
    assert other is not None and other.etag != doc.etag


@pytest.mark.unit
@pytest.mark.parametrize(("value", "accepted"), [
    ("https://keys.example.com", True),
    ("https://keys.example.com:8443/base/", True),
    ("http://127.0.0.1:8080", True),
    ("http://localhost:8080", True),
    ("http://[::1]:8080", True),
    ("http://keys.example.com", False),  # plain http beyond loopback
    ("keys.example.com", False),  # not absolute
    ("/keysets/zapier", False),
    ("https://keys.example.com/?a=1", False),
    ("https://keys.example.com/#x", False),
    ("https://user:pw@keys.example.com", False),
    ("https://keys.example.com:port", False),
    ("ftp://keys.example.com", False),
    (42, False),
])
def test_public_url_and_jwks_uri_are_absolute_https_or_loopback_http(tmp_path: Path, value: object,
                                                                     accepted: bool) -> None:
    """Both settings take an absolute https URL (plain http only to a loopback host), no user info, query
    or fragment; anything else is a ConfigError naming the field."""
    for field, build in (("public_url", lambda: settings_with(tmp_path, value)),  # type: ignore[arg-type]
                         ("keysets.zapier.jwks_uri", lambda: settings_with(tmp_path, jwks_uri=value))):
        if accepted:
            build()
            continue
        with pytest.raises(ConfigError) as refused:
            build()
        assert refused.value.field == field


@pytest.mark.unit
@pytest.mark.parametrize(("issuer", "default", "discoverable"), [
    ("https://keys.example.com", True, True),
    ("https://keys.example.com/", True, True),
    ("https://keys.example.com", False, False),  # only the default keyset is served at the root
    ("https://keys.example.com/keysets/zapier", False, True),
    ("https://keys.example.com/keysets/zapier", True, True),
    ("https://partner.example.com", True, False),
])
def test_an_issuer_is_discoverable_when_its_well_known_url_is_served_here(issuer: str, default: bool,
                                                                         discoverable: bool, tmp_path: Path) -> None:
    """<issuer>/.well-known/openid-configuration must be one of the URLs keysvc answers behind public_url
    (the root for the default keyset, /keysets/<name>/ for each) for a discoverer to find the document."""
    ks = settings_with(tmp_path, issuer=issuer).keysets["zapier"]
    assert discovery.issuer_discoverable(ks, "https://keys.example.com", default) is discoverable


@dataclass
class SettingsOnly:
    """What PublicApp reads of a keyring for the discovery routes: its settings (no key is needed)."""

    settings: Settings


def ask(app: PublicApp, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request to the public ASGI app, in process."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keys.test") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


@pytest.mark.unit
def test_without_an_absolute_jwks_url_discovery_is_a_404_saying_what_to_set(tmp_path: Path) -> None:
    """Neither public_url nor the keyset's jwks_uri: both discovery paths answer 404 `not_found` with a
    description naming the settings (never a document with a guessed URL); an unknown keyset is a 404 too."""
    app = PublicApp(SettingsOnly(settings_with(tmp_path)), Metrics())  # type: ignore[arg-type]
    for path in ("/.well-known/openid-configuration", "/keysets/zapier/.well-known/openid-configuration"):
        answer = ask(app, "GET", path)
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"
        assert "public_url" in answer.json()["error_description"]
        assert "jwks_uri" in answer.json()["error_description"]
    unknown = ask(app, "GET", "/keysets/nope/.well-known/openid-configuration")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")


@pytest.mark.unit
def test_the_document_is_cached_like_the_jwks_and_only_read(tmp_path: Path) -> None:
    """200 with the JWKS's Cache-Control and a strong ETag; If-None-Match -> 304 with the same headers and
    no body; HEAD -> headers only; POST -> 405 with Allow."""
    settings = settings_with(tmp_path, "https://keys.example.com", jwks_uri="https://cdn.example.com/j.json")
    app = PublicApp(SettingsOnly(settings), Metrics())  # type: ignore[arg-type]
    path = "/keysets/zapier/.well-known/openid-configuration"
    first = ask(app, "GET", path)
    assert first.status_code == 200
    assert first.json()["jwks_uri"] == "https://cdn.example.com/j.json"
    assert first.headers["cache-control"] == settings.jwks.cache_control()
    assert first.headers["content-type"] == "application/json"
    etag = first.headers["etag"]
    assert ask(app, "GET", "/.well-known/openid-configuration").content == first.content  # the default keyset
    again = ask(app, "GET", path, {"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    assert again.headers["cache-control"] == first.headers["cache-control"]
    head = ask(app, "HEAD", path)
    assert (head.status_code, head.content, head.headers["content-length"]) == (
        200, b"", str(len(first.content)))
    post = ask(app, "POST", path)
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")


# ------------------------------------------------------------------ real server, independent discoverers


def free_port() -> int:
    """A port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def discoverable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """A server whose issuers are its own public URLs: `zapier` (ES256, default) is the root issuer,
    `rs` (RS256) is `<public_url>/keysets/rs`; `public_url` is set, no keyset names its own jwks_uri."""
    tmp = tmp_path_factory.mktemp("discovery")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = base_config(tmp / "keys", algs={"zapier": "ES256", "rs": "RS256"})
    config["listen"]["public"] = f"127.0.0.1:{port}"
    config["public_url"] = base
    config["keysets"]["zapier"]["issuer"] = base
    config["keysets"]["rs"]["issuer"] = f"{base}/keysets/rs"
    proc = KeysvcProcess(write_config(tmp / "keysvc.yaml", config), name="discovery").start()
    wait_for(lambda: httpx.get(proc.public + "/readyz").status_code == 200, 15, "both keysets to be ready")
    yield proc
    proc.stop()


def issuers(proc: KeysvcProcess) -> dict[str, str]:
    return {"zapier": proc.public, "rs": f"{proc.public}/keysets/rs"}


@pytest.mark.system
@pytest.mark.parametrize("keyset", ["zapier", "rs"])
def test_pyjwt_verifies_a_token_knowing_only_the_issuer(discoverable: KeysvcProcess, keyset: str) -> None:
    """A verifier given only the issuer fetches <issuer>/.well-known/openid-configuration (urllib), checks
    the issuer it names, takes the JWKS from its jwks_uri (PyJWKClient) and verifies a token minted over
    /v1/sign with the algorithms the document lists; no warning is logged for these issuers."""
    issuer = issuers(discoverable)[keyset]
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as answer:
        config = json.load(answer)
    assert config["issuer"] == issuer
    assert config["jwks_uri"] == f"{discoverable.public}/keysets/{keyset}/jwks.json"
    minted = discoverable.sign(keyset=keyset)
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    key = jwt.PyJWKClient(config["jwks_uri"], cache_keys=False).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=config["id_token_signing_alg_values_supported"],
                        issuer=config["issuer"], audience="connect.zapier.com",
                        options={"require": ["exp", "iat", "iss", "aud"]})
    assert claims["sub"] == "u-1"
    assert not any(line.get("event") == "issuer not discoverable here" for line in discoverable.lines())


@pytest.mark.system
def test_node_jose_verifies_tokens_knowing_only_the_issuer(discoverable: KeysvcProcess) -> None:
    """Another language, another discoverer: node `jose` (tests/node/discover.mjs) fetches the discovery
    document from the issuer, then createRemoteJWKSet on its jwks_uri, and verifies with the issuer check,
    for both keysets."""
    assert (NODE_DIR / "node_modules" / "jose").is_dir(), "run `make test` (it installs tests/node)"
    for keyset, issuer in issuers(discoverable).items():
        tokens = []
        for i in range(3):
            minted = discoverable.sign(keyset=keyset, claims={"sub": f"u-{i}", "aud": "connect.zapier.com"})
            assert minted.status_code == 200, minted.text
            tokens.append(minted.json()["token"])
        job = {"issuer": issuer, "audience": "connect.zapier.com", "tokens": tokens}
        run = subprocess.run(["node", "discover.mjs"], input=json.dumps(job), capture_output=True, text=True,
                             cwd=NODE_DIR, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == {"verified": 3, "failures": [],
                                          "jwks_uri": f"{discoverable.public}/keysets/{keyset}/jwks.json"}


@pytest.mark.unit
def test_an_issuer_that_discovery_cannot_reach_is_logged_when_the_app_is_built(tmp_path: Path,
                                                                              log_stream: LogStream) -> None:
    """With public_url set and an issuer elsewhere (`https://issuer.example/zapier`), keysvc still serves
    the document but logs, once at start, which URLs it answers at, so the operator sees why a discoverer
    that starts from the issuer fails; a keyset with no absolute JWKS URL is logged as not discoverable."""
    app = PublicApp(SettingsOnly(settings_with(tmp_path, "https://keys.example.com")), Metrics())  # type: ignore[arg-type]
    PublicApp(SettingsOnly(settings_with(tmp_path)), Metrics())  # type: ignore[arg-type]
    got = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [(line["level"], line["event"]) for line in got] == [
        ("warning", "issuer not discoverable here"), ("info", "openid discovery off")]
    assert (got[0]["keyset"], got[0]["issuer"]) == ("zapier", "https://issuer.example/zapier")
    assert got[0]["served_at"] == ["https://keys.example.com/.well-known/openid-configuration",
                                   "https://keys.example.com/keysets/zapier/.well-known/openid-configuration"]
    assert got[1]["keysets"] == ["zapier"]
    doc = ask(app, "GET", "/.well-known/openid-configuration").json()
    assert doc["jwks_uri"] == "https://keys.example.com/keysets/zapier/jwks.json"
