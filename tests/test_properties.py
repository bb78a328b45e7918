"""Property tests: the config loader takes any YAML to Settings or ConfigError, and a minted token never
carries what the claims policy forbids.

(tests/test_jwks_tokens.py already holds the property of `check_sign_request` alone; here the property is
checked on the token that comes out of the whole path: policy, then minting, then decoding.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keysvc.backends import keys
from keysvc.config import ClientSettings, KeysetSettings, Settings, parse_yaml
from keysvc.errors import ConfigError, Forbidden, InvalidRequest
from keysvc.tokens import RESERVED_CLAIMS, Minter, check_sign_request
from tests.helpers import base_config

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------------------ config loader

SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["30d", "5m", "-1s", "1e999", "0s", "90s ", "ES256", "EdDSA", "kms", "file",
                              "127.0.0.1:0", "[::1]:80", ":", "alias/aws/x", "a" * 70]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=10)
VALID = base_config(Path("/tmp/keysvc-property/keys"))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.extend(_paths(value, (*prefix, key)))
    return found


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    """The valid base config with a few values replaced, removed or added at random places."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=10))] = draw(VALUES)
    return doc


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False)
    except yaml.YAMLError:
        return json.dumps(str(doc))


YAML_NASTIES = st.sampled_from([
    "", "---", "~", "[]", "- a\n- b", "keysets: !!binary aGVsbG8=", "listen: {public: !!set {a, b}}",
    "clock_skew: 2001-01-01", "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]", "{" * 5000, "[" * 200 + "]" * 200,
    "keysets:\n  zapier: &k {alg: ES256, issuer: x}\n  other: *k", "clients: {? [a, b] : c}", "\x00",
    "key: 'unterminated",
])
YAML_TEXTS = (st.builds(_dump, mutated_configs()) | st.builds(_dump, VALUES) | st.text(max_size=200) | YAML_NASTIES)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=YAML_TEXTS)
def test_any_yaml_gives_settings_or_config_error(text: str) -> None:
    """Whatever the YAML (mutations of a valid config, random structures, random text, aliases, deep
    nesting, YAML-only types), the loader returns a Settings or raises ConfigError naming a field:
    never another exception, never a half-validated object."""
    try:
        result = parse_yaml(text)
    except ConfigError as exc:
        assert exc.field and exc.message
        return
    assert isinstance(result, Settings)
    assert result.keysets and all(isinstance(k, KeysetSettings) for k in result.keysets.values())


def test_the_unmutated_base_config_loads() -> None:
    """The property's starting point is itself valid (else every mutation would trivially fail)."""
    assert isinstance(parse_yaml(_dump(VALID)), Settings)


# ----------------------------------------------------------------------------------- policy -> token

KEYSETS = {"zapier": KeysetSettings("zapier", "https://issuer.example", "ES256", 30 * 86400, 2 * 86400, 86400, 300)}
CLIENT = ClientSettings(name="c", api_key_digests=("0" * 64,), keysets=("zapier",), audiences=("connect.zapier.com",),
                        max_ttl=120)
KEY = keys.generate("ES256")
MINTER = Minter(keys.LocalSigner(keys.kid_of(KEY), "ES256", KEY), "https://issuer.example")
NOW = 1_700_000_000

CLAIM_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3), max_leaves=6)
CLAIM_NAMES = st.sampled_from([*sorted(RESERVED_CLAIMS), "aud", "sub", "typ", "kid", "alg"]) | st.text(max_size=5)
AUDS = st.sampled_from(["connect.zapier.com", "evil.example"]) | st.lists(
    st.sampled_from(["connect.zapier.com", "evil.example"]), max_size=3)
BODIES = st.fixed_dictionaries({}, optional={
    "keyset": st.sampled_from(["zapier", "other"]),
    "claims": st.dictionaries(CLAIM_NAMES, CLAIM_VALUES | AUDS, max_size=6),
    "ttl": st.integers(-10, 10**9) | st.floats(allow_nan=False) | st.booleans(),
})


@settings(max_examples=400, deadline=None)
@given(body=BODIES)
def test_no_body_yields_a_token_with_a_chosen_reserved_claim_a_foreign_audience_or_a_late_exp(body: Any) -> None:
    """Through the whole path (policy, minting, decoding with the public key): every token keysvc would
    issue has iss/iat/nbf/exp/jti set by keysvc, not by the caller; an aud the client may use; and
    exp - iat within min(client max_ttl, keyset max_token_ttl)."""
    try:
        request = check_sign_request(body, CLIENT, KEYSETS)
    except (InvalidRequest, Forbidden):
        return
    token = MINTER.mint(request.claims, NOW, request.ttl)
    claims = jwt.decode(token.token, KEY.public_key(), algorithms=["ES256"],
                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False})
    assert claims["iss"] == "https://issuer.example"
    assert claims["iat"] == claims["nbf"] == NOW
    assert claims["jti"] != body.get("claims", {}).get("jti")
    assert 1 <= claims["exp"] - claims["iat"] <= min(CLIENT.max_ttl, KEYSETS["zapier"].max_token_ttl)
    audiences = [claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"]
    assert audiences and set(audiences) <= set(CLIENT.audiences)
    assert jwt.get_unverified_header(token.token) == {"alg": "ES256", "kid": MINTER.signer.kid, "typ": "JWT"}
