"""keysvc.jwks and keysvc.tokens: thumbprints, public-only JWKS, the claims policy, and minted tokens
verified by independent implementations (jwcrypto, PyJWT, cryptography)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto.jwk import JWK

from keysvc.algorithms import ALGORITHMS, der_to_jose
from keysvc.backends import keys
from keysvc.config import ClientSettings, KeysetSettings
from keysvc.errors import Forbidden, InvalidRequest
from keysvc.jwks import b64url, build, thumbprint
from keysvc.records import KeyRecord
from keysvc.tokens import RESERVED_CLAIMS, Minter, SignRequest, check_sign_request

pytestmark = pytest.mark.unit

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}
NOW = 1_764_300_000

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJE"
         "CPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Q"
         "vzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6"
         "WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture(scope="module")
def private_keys() -> dict[str, keys.PrivateKey]:
    """One fresh private key per algorithm (RSA generation is slow: shared by the whole module)."""
    return {alg: keys.generate(alg) for alg in ALGORITHMS}


def record_of(alg: str, key: keys.PrivateKey, seq: int = 1,
              jwk: Mapping[str, str] | None = None) -> KeyRecord:
    """The record a backend would store for a key."""
    return KeyRecord(keyset="ks", kid=keys.kid_of(key), seq=seq, alg=alg, created_at=NOW, activates_at=NOW,
                     public_jwk=dict(jwk if jwk is not None else keys.public_jwk(key)))


# ------------------------------------------------------------------------------------------ thumbprint


def test_thumbprint_of_the_rfc7638_example() -> None:
    """The RFC's own example key gives the RFC's value; jwcrypto agrees; non-required members are ignored."""
    assert thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT
    assert JWK(**RFC7638_JWK).thumbprint() == RFC7638_THUMBPRINT


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_thumbprint_equals_jwcrypto(private_keys: dict[str, keys.PrivateKey], alg: str) -> None:
    """For every key type, our thumbprint of the public JWK, and of the private JWK (whose extra members
    must not count), equals jwcrypto's JWK.thumbprint()."""
    key = private_keys[alg]
    private_jwk = JWK.from_pyca(key)
    expected = private_jwk.thumbprint()
    assert expected == thumbprint(keys.public_jwk(key))
    assert expected == thumbprint({k: str(v) for k, v in private_jwk.export_private(as_dict=True).items()})
    assert expected == keys.kid_of(key)


def test_thumbprint_refuses_an_unknown_key_type() -> None:
    """A symmetric (oct) or unknown key type has no place in a JWKS: refused, not hashed."""
    with pytest.raises(ValueError, match="oct"):
        thumbprint({"kty": "oct", "k": "c2VjcmV0"})


# ------------------------------------------------------------------------------------------------ JWKS


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_jwks_never_carries_a_private_member(private_keys: dict[str, keys.PrivateKey], alg: str) -> None:
    """Even when a record's JWK holds the private key (d, p, q, ...), the JWKS body carries only kty,
    the public members, kid, alg and use=sig."""
    key = private_keys[alg]
    leaked = {k: str(v) for k, v in JWK.from_pyca(key).export_private(as_dict=True).items()}
    assert PRIVATE_MEMBERS & set(leaked)  # the input really has private members
    for record in (record_of(alg, key), record_of(alg, key, jwk=leaked)):
        document = build([record])
        (jwk,) = json.loads(document.body)["keys"]
        assert set() == PRIVATE_MEMBERS & set(jwk)
        assert set() == PRIVATE_MEMBERS & set(json.loads(document.body.decode()).keys())
        assert (jwk["kid"], jwk["alg"], jwk["use"]) == (record.kid, alg, "sig")
        assert keys.public_jwk(key) == {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")}
        assert (record.kid,) == document.kids


def test_etag_changes_if_and_only_if_the_body_changes(private_keys: dict[str, keys.PrivateKey]) -> None:
    """Same published keys -> same bytes and ETag (whatever else differs in the records); any change of
    the keys or their order -> different bytes and a different strong ETag."""
    a = record_of("ES256", private_keys["ES256"], 1)
    b = record_of("EdDSA", private_keys["EdDSA"], 2)
    c = record_of("RS256", private_keys["RS256"], 3)
    docs = {
        "a": build([a]),
        "a again": build([a]),
        "a, other times": build([a.replace(activates_at=NOW + 99, created_at=NOW - 5, revoked_at=1.0)]),
        "a b": build([a, b]),
        "b a": build([b, a]),
        "a b c": build([a, b, c]),
        "a as RS256": build([a.replace(alg="ES384")]),
        "none": build([]),
    }
    for name, doc in docs.items():
        assert doc.etag.startswith('"') and doc.etag.endswith('"') and not doc.etag.startswith('W/')
        for other_name, other in docs.items():
            assert (doc.body == other.body) == (doc.etag == other.etag), (name, other_name)
    assert docs["a"].etag == docs["a again"].etag == docs["a, other times"].etag
    assert len({d.etag for d in docs.values()}) == len(docs) - 2
    assert docs["none"].body == b'{"keys":[]}'


# ----------------------------------------------------------------------------------- the claims policy

ONE = ClientSettings(name="one", api_key_digests=("0" * 64,), keysets=("zapier",),
                     audiences=("connect.zapier.com", "other.example"), max_ttl=60.0)
MANY = ClientSettings(name="many", api_key_digests=("1" * 64,), keysets=("zapier", "internal"),
                      audiences=("connect.zapier.com",), max_ttl=600.0)
KEYSETS = {
    name: KeysetSettings(name=name, issuer=f"https://{name}.example", alg="ES256",
                         rotation_period=30 * 86400.0, publish_ahead=2 * 86400.0, retain_after=86400.0,
                         max_token_ttl=ttl)
    for name, ttl in (("zapier", 300.0), ("internal", 900.0), ("secret", 300.0))
}
AUD = {"sub": "u-1", "aud": "connect.zapier.com"}

ACCEPTED: list[tuple[str, ClientSettings, dict[str, Any], SignRequest]] = [
    ("one keyset: keyset defaults to it, ttl to the cap", ONE, {"claims": AUD},
     SignRequest("zapier", AUD, 60)),
    ("ttl below the caps is kept", ONE, {"claims": AUD, "ttl": 30}, SignRequest("zapier", AUD, 30)),
    ("ttl capped by the client's max_ttl", ONE, {"claims": AUD, "ttl": 3600}, SignRequest("zapier", AUD, 60)),
    ("ttl capped by the keyset's max_token_ttl", MANY, {"keyset": "zapier", "claims": AUD, "ttl": 3600},
     SignRequest("zapier", AUD, 300)),
    ("no ttl: the smaller cap", MANY, {"keyset": "internal", "claims": AUD},
     SignRequest("internal", AUD, 600)),
    ("aud as a list of allowed audiences", ONE,
     {"claims": {"aud": ["connect.zapier.com", "other.example"]}, "ttl": 1},
     SignRequest("zapier", {"aud": ["connect.zapier.com", "other.example"]}, 1)),
    ("explicit keyset", ONE, {"keyset": "zapier", "claims": AUD}, SignRequest("zapier", AUD, 60)),
    ("other claims pass through", ONE, {"claims": {**AUD, "org_id": "t-9", "nested": {"exp": 1}}},
     SignRequest("zapier", {**AUD, "org_id": "t-9", "nested": {"exp": 1}}, 60)),
]


@pytest.mark.parametrize(("client", "body", "expected"), [r[1:] for r in ACCEPTED],
                         ids=[r[0] for r in ACCEPTED])
def test_sign_request_accepted(client: ClientSettings, body: dict[str, Any], expected: SignRequest) -> None:
    """A valid body yields the keyset, the claims unchanged and the ttl capped by client and keyset."""
    assert expected == check_sign_request(body, client, KEYSETS)


REFUSED: list[tuple[str, ClientSettings, object, type[Exception]]] = [
    *[(f"reserved claim {c}", ONE, {"claims": {**AUD, c: 1}}, InvalidRequest)
      for c in sorted(RESERVED_CLAIMS)],
    ("aud missing", ONE, {"claims": {"sub": "u-1"}}, InvalidRequest),
    ("aud null", ONE, {"claims": {"aud": None}}, InvalidRequest),
    ("aud empty list", ONE, {"claims": {"aud": []}}, InvalidRequest),
    ("aud a number", ONE, {"claims": {"aud": 5}}, InvalidRequest),
    ("aud an object", ONE, {"claims": {"aud": {"connect.zapier.com": True}}}, InvalidRequest),
    ("aud list with a non-string", ONE, {"claims": {"aud": ["connect.zapier.com", 5]}}, InvalidRequest),
    ("aud empty string", ONE, {"claims": {"aud": ""}}, Forbidden),
    ("aud not allowed", ONE, {"claims": {"aud": "evil.example"}}, Forbidden),
    ("aud list with one not allowed", ONE, {"claims": {"aud": ["connect.zapier.com", "evil.example"]}},
     Forbidden),
    ("aud allowed only by case folding", ONE, {"claims": {"aud": "CONNECT.zapier.com"}}, Forbidden),
    ("keyset required with several", MANY, {"claims": AUD}, InvalidRequest),
    ("keyset not a string", MANY, {"keyset": ["zapier"], "claims": AUD}, InvalidRequest),
    ("keyset unknown", ONE, {"keyset": "nope", "claims": AUD}, Forbidden),
    ("keyset exists but not the client's", ONE, {"keyset": "secret", "claims": AUD}, Forbidden),
    ("keyset unknown to the config", MANY, {"keyset": "gone", "claims": AUD}, Forbidden),
    ("ttl a bool", ONE, {"claims": AUD, "ttl": True}, InvalidRequest),
    ("ttl a float", ONE, {"claims": AUD, "ttl": 30.5}, InvalidRequest),
    ("ttl a whole float", ONE, {"claims": AUD, "ttl": 30.0}, InvalidRequest),
    ("ttl a string", ONE, {"claims": AUD, "ttl": "30"}, InvalidRequest),
    ("ttl zero", ONE, {"claims": AUD, "ttl": 0}, InvalidRequest),
    ("ttl negative", ONE, {"claims": AUD, "ttl": -30}, InvalidRequest),
    ("body not an object", ONE, [AUD], InvalidRequest),
    ("claims missing", ONE, {"ttl": 30}, InvalidRequest),
    ("claims not an object", ONE, {"claims": "sub=u-1"}, InvalidRequest),
    ("unknown field", ONE, {"claims": AUD, "header": {"alg": "none"}}, InvalidRequest),
]


@pytest.mark.parametrize(("client", "body", "error"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_sign_request_refused(client: ClientSettings, body: object, error: type[Exception]) -> None:
    """Malformed bodies are InvalidRequest (400); what the client may not do is Forbidden (403)."""
    with pytest.raises(error) as info:
        check_sign_request(body, client, KEYSETS)
    assert type(info.value) is error


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
                | st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
AUDIENCES = st.sampled_from(["connect.zapier.com", "other.example", "evil.example", ""])
CLAIM_NAMES = st.sampled_from([*sorted(RESERVED_CLAIMS), "aud", "sub", "org_id"]) | st.text(max_size=4)
CLAIMS = st.dictionaries(CLAIM_NAMES, JSON_VALUES | AUDIENCES | st.lists(AUDIENCES, max_size=3), max_size=5)
BODIES = (
    st.fixed_dictionaries({}, optional={
        "keyset": st.sampled_from(["zapier", "internal", "secret", "nope"]) | JSON_VALUES,
        "claims": CLAIMS | JSON_VALUES,
        "ttl": st.integers(-5, 10**6) | JSON_VALUES,
    })
    | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)
    | JSON_VALUES
)


@settings(max_examples=400, deadline=None)
@given(body=BODIES, client=st.sampled_from([ONE, MANY]))
def test_claims_policy_property(body: object, client: ClientSettings) -> None:
    """For any JSON-like body, check_sign_request either refuses (InvalidRequest or Forbidden, nothing
    else) or returns a request for one of the client's keysets whose claims hold no reserved claim,
    whose aud values are all allowed, and whose ttl is between 1 and min(client, keyset) cap."""
    try:
        request = check_sign_request(body, client, KEYSETS)
    except (InvalidRequest, Forbidden):
        return
    assert request.keyset in client.keysets
    assert set() == RESERVED_CLAIMS & set(request.claims)
    aud = request.claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    assert audiences and all(a in client.audiences for a in audiences)
    cap = min(client.max_ttl, KEYSETS[request.keyset].max_token_ttl)
    assert 1 <= request.ttl <= cap


# ------------------------------------------------------------------------------------------- minting


def signer_of(private_keys: dict[str, keys.PrivateKey], alg: str) -> keys.LocalSigner:
    """The in-process signer of the module's key for `alg`."""
    key = private_keys[alg]
    return keys.LocalSigner(keys.kid_of(key), alg, key)


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_minted_token_verifies_with_pyjwt(private_keys: dict[str, keys.PrivateKey], alg: str) -> None:
    """For every algorithm, PyJWT verifies the token with the public key (signature, iss, aud, exp, nbf,
    iat) and sees the header alg/kid/typ=JWT and the claims the service sets."""
    signer = signer_of(private_keys, alg)
    minter = Minter(signer, "https://issuer.example")
    token = minter.mint({"sub": "u-1", "aud": "connect.zapier.com", "org_id": "t-9"}, now=NOW, ttl=300)
    assert (signer.kid, alg, NOW + 300) == (token.kid, token.alg, token.expires_at)
    assert {"alg": alg, "kid": signer.kid, "typ": "JWT"} == jwt.get_unverified_header(token.token)
    claims = jwt.decode(
        token.token, private_keys[alg].public_key(), algorithms=[alg], audience="connect.zapier.com",
        issuer="https://issuer.example", leeway=10**10,  # NOW is a fixed instant, not the wall clock
        options={"require": ["iss", "iat", "nbf", "exp", "jti", "aud"]},
    )
    expected = {"sub": "u-1", "aud": "connect.zapier.com", "org_id": "t-9", "iss": "https://issuer.example",
                "iat": NOW, "nbf": NOW, "exp": NOW + 300, "jti": token.jti}
    assert expected == claims
    assert len(token.jti) == 24  # 144 random bits, base64url


def test_tampered_token_or_another_key_fails(private_keys: dict[str, keys.PrivateKey]) -> None:
    """The verification above is meaningful: a changed payload, or another key, fails to verify."""
    minter = Minter(signer_of(private_keys, "ES256"), "https://issuer.example")
    token = minter.mint({"aud": "a"}, now=NOW, ttl=60).token
    header, _, signature = token.split(".")
    forged = f"{header}.{b64url(json.dumps({'aud': 'a', 'admin': True}).encode())}.{signature}"
    opts: dict[str, Any] = {"verify_exp": False, "verify_aud": False}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, private_keys["ES256"].public_key(), algorithms=["ES256"], options=opts)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, keys.generate("ES256").public_key(), algorithms=["ES256"], options=opts)


def test_every_token_has_a_fresh_jti(private_keys: dict[str, keys.PrivateKey]) -> None:
    """jti is random per token, never repeated."""
    minter = Minter(signer_of(private_keys, "EdDSA"), "https://issuer.example")
    assert len({minter.mint({"aud": "a"}, now=NOW, ttl=60).jti for _ in range(200)}) == 200


@pytest.mark.parametrize(("alg", "width"), [("ES256", 64), ("ES384", 96), ("ES512", 132)])
def test_ecdsa_signatures_have_fixed_width(private_keys: dict[str, keys.PrivateKey], alg: str,
                                           width: int) -> None:
    """ECDSA signatures are JOSE R||S of fixed width, including when R or S is short and must be
    zero-padded (signing until that case has occurred at least once, and at least 300 times). Each
    verifies with cryptography once converted back to DER."""
    signer = signer_of(private_keys, alg)
    public = private_keys[alg].public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    half, padded, count = width // 2, 0, 0
    while count < 300 or (padded == 0 and count < 5000):
        message = f"message {count}".encode()
        signature = signer.sign(message)
        assert width == len(signature)
        r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        if min(r.bit_length(), s.bit_length()) <= 8 * (half - 1):  # DER would be shorter: padded
            padded += 1
        public.verify(encode_dss_signature(r, s), message, ec.ECDSA(ALGORITHMS[alg].hash()))
        count += 1
    assert padded > 0
    assert count >= 300


@pytest.mark.parametrize(("r", "s", "size"), [(1, 2, 32), (2**255, 1, 32), (5, 2**383 + 1, 48), (1, 1, 66)])
def test_der_to_jose_keeps_leading_zeros(r: int, s: int, size: int) -> None:
    """der_to_jose left-pads R and S to the curve size (RFC 7518 §3.4)."""
    expected = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert expected == der_to_jose(encode_dss_signature(r, s), size)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([32, 48, 66]), st.data())
def test_der_to_jose_equals_the_reference_conversion(size: int, data: st.DataObject) -> None:
    """The sliced fast path (one-byte DER lengths) and decode_dss_signature's path give the same R||S as
    converting the decoded integers, for every size of R and S a curve can produce (P-521's long-form
    lengths included)."""
    bound = 2 ** (8 * size) - 1 if size != 66 else 2**521 - 1
    r = data.draw(st.integers(1, bound))
    s = data.draw(st.integers(1, bound))
    assert r.to_bytes(size, "big") + s.to_bytes(size, "big") == der_to_jose(encode_dss_signature(r, s), size)


@pytest.mark.parametrize("der", [b"", b"\x30\x06\x02\x01\x01\x02\x01", b"\x31\x06\x02\x01\x01\x02\x01\x01",
                                 b"\x30\x07\x02\x01\x01\x02\x01\x01", b"\x30\x06\x02\x05\x01\x02\x01\x01"])
def test_der_to_jose_refuses_what_is_not_a_der_signature(der: bytes) -> None:
    """Input the fast path does not recognise goes to decode_dss_signature, which refuses it."""
    with pytest.raises(ValueError):
        der_to_jose(der, 32)


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512"])
def test_pss_salt_length_is_the_hash_length(private_keys: dict[str, keys.PrivateKey], alg: str) -> None:
    """RFC 7518 §3.5: the PSS salt is as long as the hash. cryptography checks the salt length exactly,
    so the signature verifies with salt = digest size and not with any other length."""
    public = private_keys[alg].public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    signature = signer_of(private_keys, alg).sign(b"payload")
    h = ALGORITHMS[alg].hash()
    public.verify(signature, b"payload", padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    longest = (public.key_size + 7) // 8 - h.digest_size - 2  # what PSS.MAX_LENGTH signs with
    for wrong in (0, h.digest_size - 1, h.digest_size + 1, longest):
        with pytest.raises(InvalidSignature):
            public.verify(signature, b"payload", padding.PSS(mgf=padding.MGF1(h), salt_length=wrong), h)


def test_jtis_stay_unique_across_threads_batches_and_a_fork(private_keys: dict[str, keys.PrivateKey]) -> None:
    """Ids are drawn from the OS in batches: 8 threads taking 1,000 each (many refills, racing) never get
    the same id, every id is 24 base64url characters, and a forked child does not reuse its parent's
    prepared ids."""
    import os
    import re
    import threading

    minter = Minter(signer_of(private_keys, "EdDSA"), "https://issuer.example")
    taken: list[list[str]] = [[] for _ in range(8)]

    def take(out: list[str]) -> None:
        out.extend(minter.signing_input({"aud": "a"}, NOW, 60).jti for _ in range(1000))

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [jti for out in taken for jti in out]
    assert len(set(every)) == 8000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{24}", jti) for jti in every)
    minter.signing_input({"aud": "a"}, NOW, 60)  # leave prepared ids in the parent's batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(minter.signing_input({"aud": "a"}, NOW, 60).jti for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = set(os.read(read, 1 << 16).decode().split(","))
    os.close(read)
    parent = {minter.signing_input({"aud": "a"}, NOW, 60).jti for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


@pytest.mark.unit
@pytest.mark.parametrize("sub", [1, None, ["u-1"], {"id": "u-1"}, True])
def test_a_sub_that_is_not_a_string_is_refused(sub: object) -> None:
    """`sub` is a StringOrURI (RFC 7519 §4.1.2): any other JSON value is a 400, never a token that verifiers
    such as PyJWT refuse to decode (found by the property test)."""
    body = {"claims": {"sub": sub, "aud": "connect.zapier.com"}}
    with pytest.raises(InvalidRequest, match="'sub' must be a string"):
        check_sign_request(body, ONE, KEYSETS)
