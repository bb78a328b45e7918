"""Authorisation matrix: every internal endpoint x every kind of caller -> exactly the documented status.

Callers: no credentials, a wrong key, a revoked client (in the config of the previous run, removed since),
a client of another keyset, a non-admin client, an admin (of both keysets), an admin of the other keyset
only (`admin: true` with `keysets: [second]`) and a client of both keysets that is admin of one
(`admin: [second]`): admin rights cover the client's admin keysets, nothing more. One server (restarted
once to revoke a client); no request in the table changes the key store (the admins' rotations are refused
as not yet safe, their revocations name an unknown kid), so the table can run in any order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, base_config, sha256_hex, write_config

pytestmark = pytest.mark.system


@dataclass(frozen=True, eq=False)  # hashed by identity: a table key
class Endpoint:
    method: str
    path: str
    body: dict[str, object] | None = None


SIGN = Endpoint("POST", "/v1/sign", {"keyset": "zapier", "claims": {"sub": "u-1", "aud": "connect.zapier.com"}})
KEYS = Endpoint("GET", "/v1/keys")
ROTATE = Endpoint("POST", "/v1/keysets/zapier/rotate")
ROTATE_SECOND = Endpoint("POST", "/v1/keysets/second/rotate")
REVOKE = Endpoint("POST", "/v1/keys/no-such-kid/revoke")
METRICS = Endpoint("GET", "/metrics")
HEALTHZ = Endpoint("GET", "/healthz")
OPENAPI = Endpoint("GET", "/openapi.json")

CALLERS = ["none", "wrong", "revoked", "other-keyset", "non-admin", "admin", "second-admin", "subset-admin"]
# endpoint -> status per caller, in CALLERS order
MATRIX: dict[Endpoint, tuple[int, ...]] = {
    SIGN: (401, 401, 401, 403, 200, 200, 403, 200),
    KEYS: (401, 401, 401, 403, 403, 200, 200, 200),  # each admin sees its admin keysets' keys only
    ROTATE: (401, 401, 401, 403, 403, 409, 403, 403),  # admin: allowed, but the pending key is not yet safe
    ROTATE_SECOND: (401, 401, 401, 403, 403, 409, 409, 409),
    REVOKE: (401, 401, 401, 403, 403, 404, 404, 404),  # admins: allowed, no such kid
    METRICS: (200,) * 8,  # the internal port's scrape target: no credentials, nothing secret in it
    HEALTHZ: (200,) * 8,
    OPENAPI: (200,) * 8,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """Keysets zapier and second; clients signer (zapier, not admin), stranger (second only), admin (both),
    second-admin (admin of second, its only keyset), subset-admin (of both, admin of second); and
    `retired`, which the restart removes."""
    tmp = tmp_path_factory.mktemp("authz")
    config = base_config(tmp / "keys", algs={"zapier": "ES256", "second": "ES256"})
    config["clients"]["signer"]["keysets"] = ["zapier"]
    config["clients"]["stranger"] = {"api_key_sha256": sha256_hex(api_key("stranger")), "keysets": ["second"],
                                     "audiences": ["connect.zapier.com"], "max_ttl": "5m"}
    config["clients"]["retired"] = {"api_key_sha256": sha256_hex(api_key("retired")), "keysets": ["zapier"],
                                    "audiences": ["connect.zapier.com"], "max_ttl": "5m", "admin": True}
    config["clients"]["second-admin"] = {"api_key_sha256": sha256_hex(api_key("second-admin")),
                                         "keysets": ["second"], "audiences": ["connect.zapier.com"], "admin": True}
    config["clients"]["subset-admin"] = {"api_key_sha256": sha256_hex(api_key("subset-admin")),
                                         "keysets": ["zapier", "second"], "audiences": ["connect.zapier.com"],
                                         "admin": ["second"]}
    config["log"] = {"access": False}
    path = write_config(tmp / "keysvc.yaml", config)
    with KeysvcProcess(path, name="authz-before") as before:
        assert call(before, SIGN, "retired").status_code == 200  # it worked while configured
    del config["clients"]["retired"]
    write_config(path, config)
    with KeysvcProcess(path, name="authz") as proc:
        yield proc


def credentials(caller: str) -> dict[str, str]:
    key = {"none": None, "wrong": "ks_test_not-a-key", "revoked": api_key("retired"),
           "other-keyset": api_key("stranger"), "non-admin": api_key("signer"), "admin": api_key("admin"),
           "second-admin": api_key("second-admin"), "subset-admin": api_key("subset-admin")}[caller]
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def call(proc: KeysvcProcess, endpoint: Endpoint, caller: str) -> httpx.Response:
    headers = credentials(caller) if caller in CALLERS else {"Authorization": f"Bearer {api_key(caller)}"}
    return httpx.request(endpoint.method, proc.internal + endpoint.path, json=endpoint.body, headers=headers,
                         timeout=10)


CASES = [(e, c, s) for e, statuses in MATRIX.items() for c, s in zip(CALLERS, statuses, strict=True)]


@pytest.mark.parametrize(("endpoint", "caller", "status"), CASES,
                         ids=[f"{e.method} {e.path} as {c}" for e, c, _ in CASES])
def test_authorisation_matrix(server: KeysvcProcess, endpoint: Endpoint, caller: str, status: int) -> None:
    """Exactly the documented status; 401 carries WWW-Authenticate; every error is the JSON error body;
    a refused caller never receives a token."""
    response = call(server, endpoint, caller)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status >= 400:
        assert set(response.json()) == {"error", "error_description"}
        assert "token" not in response.json()


def test_other_keyset_client_signs_its_own_keyset(server: KeysvcProcess) -> None:
    """The client refused on zapier is a working client of its own keyset (the 403 is about the keyset)."""
    body = {"keyset": "second", "claims": {"aud": "connect.zapier.com"}}
    answer = httpx.post(server.internal + "/v1/sign", json=body, headers=credentials("other-keyset"))
    assert answer.status_code == 200, answer.text


def _listed(server: KeysvcProcess, caller: str) -> dict[str, str]:
    answer = call(server, KEYS, caller)
    assert answer.status_code == 200, answer.text
    return {row["kid"]: row["keyset"] for row in answer.json()["keys"]}


def test_admins_list_only_their_admin_keysets(server: KeysvcProcess) -> None:
    """GET /v1/keys lists the keys of the caller's admin keysets: both for the admin of both, `second`'s
    alone for an admin of `second` (whether or not it also signs with zapier)."""
    everything = _listed(server, "admin")
    assert set(everything.values()) == {"zapier", "second"}
    second = {kid: ks for kid, ks in everything.items() if ks == "second"}
    assert second == _listed(server, "second-admin") == _listed(server, "subset-admin")


def test_a_revocation_outside_the_admin_keysets_is_an_unknown_kid(server: KeysvcProcess) -> None:
    """An admin of `second` revoking a real kid of zapier gets exactly the 404 of a kid that exists
    nowhere (same body: nothing tells it the kid exists), and the key stays published."""
    zapier_kid = next(kid for kid, ks in _listed(server, "admin").items() if ks == "zapier")
    unknown = call(server, REVOKE, "second-admin")
    for caller in ("second-admin", "subset-admin"):
        refused = call(server, Endpoint("POST", f"/v1/keys/{zapier_kid}/revoke"), caller)
        assert (refused.status_code, refused.json()) == (404, unknown.json())
        assert zapier_kid not in refused.text
    assert zapier_kid in {k["kid"] for k in server.jwks("zapier").json()["keys"]}
