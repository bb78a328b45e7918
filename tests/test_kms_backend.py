"""What only the KMS backend does, against moto's server over HTTP (tests/kms_server.py), with AWS-fidelity
patches: tags and aliases, GetPublicKey caching, key specs, RAW/DIGEST, throttling, outages.

The behaviour every backend shares is tests/test_backend_contract.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwcrypto.jwk import JWK

from keysvc.backends.base import Backend
from keysvc.backends.kms import TAG, KmsBackend, kms_algorithm
from keysvc.config import parse_settings
from keysvc.errors import BackendUnavailable, ConfigError, InvalidKeyMaterial, StoreCorrupt
from keysvc.records import KeyRecord
from tests.helpers import base_config
from tests.kms_server import REGION, MotoServer, aws_env

ALL_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
NOW = 1_764_000_000.0


@pytest.fixture
def kms(moto_server: MotoServer) -> Any:
    """A plain boto3 KMS client on the same server, to look behind the backend's back."""
    client = boto3.client("kms", region_name=REGION, endpoint_url=moto_server.direct_url)
    yield client
    client.close()


@pytest.fixture
def backend(moto_server: MotoServer, kms_alias_prefix: str) -> Iterator[KmsBackend]:
    """A KMS backend on a fresh alias prefix."""
    b = make_backend(moto_server, kms_alias_prefix)
    yield b
    b.close()


def make_backend(server: MotoServer, prefix: str, **kw: Any) -> KmsBackend:
    """A backend on `prefix`, short timeouts so outage tests stay fast."""
    kw.setdefault("instance_id", "test-replica")
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("read_timeout", 5.0)
    return KmsBackend(region=REGION, alias_prefix=prefix, endpoint_url=server.endpoint_url, **kw)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(signer: Any, claims: dict[str, Any]) -> str:
    """A JWS compact token signed through `signer`."""
    header = {"alg": signer.alg, "kid": signer.kid, "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(signer.sign(signing_input.encode()))}"


def verify(token: str, record: KeyRecord) -> dict[str, Any]:
    """PyJWT's verdict on a token, with the record's public JWK."""
    key = jwt.PyJWK({**record.public_jwk, "kid": record.kid, "alg": record.alg, "use": "sig"})
    assert jwt.get_unverified_header(token)["kid"] == record.kid
    return dict(jwt.decode(token, key.key, algorithms=[record.alg], audience="connect.zapier.com"))


def public_key(record: KeyRecord) -> Any:
    return JWK(**record.public_jwk).get_op_key("verify")


# --- contract ---------------------------------------------------------------------------------------


@pytest.mark.system
def test_is_a_backend_and_init_makes_no_kms_call(moto_server: MotoServer, kms_alias_prefix: str) -> None:
    """Building the backend talks to nobody: a replica starts even while KMS is unreachable."""
    moto_server.reset_calls()
    b: Backend = make_backend(moto_server, kms_alias_prefix)
    assert {k: v for k, v in moto_server.calls().items() if v} == {}
    b.close()


@pytest.mark.system
def test_create_stores_record_in_tags_and_alias(backend: KmsBackend, kms: Any) -> None:
    """create() makes one SIGN_VERIFY key, tags it with the record, aliases the slot, and returns a record
    whose kid is the RFC 7638 thumbprint of its public key."""
    record = backend.create("zapier", 1, "ES256", activates_at=NOW + 100, now=NOW)
    assert record is not None
    assert record.kid == JWK(**record.public_jwk).thumbprint()
    assert {"kty", "crv", "x", "y"} == set(record.public_jwk)
    meta = kms.describe_key(KeyId=f"{backend.alias_prefix}/zapier/1")["KeyMetadata"]
    assert (meta["KeyUsage"], meta["KeySpec"]) == ("SIGN_VERIFY", "ECC_NIST_P256")
    assert meta["KeyState"] == "Enabled"
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=meta["KeyId"])["Tags"]}
    expected = {
        "prefix": backend.alias_prefix,
        "keyset": "zapier",
        "seq": "1",
        "kid": record.kid,
        "alg": "ES256",
        "created_at": repr(NOW),
        "activates_at": repr(NOW + 100),
        "created_by": "test-replica",
    }
    assert expected == {k.removeprefix(TAG): v for k, v in tags.items()}


@pytest.mark.system
def test_get_public_key_once_per_key(backend: KmsBackend, moto_server: MotoServer) -> None:
    """Repeated loads read tags (mutable) but never GetPublicKey again (public keys are immutable)."""
    backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    backend.create("ks", 2, "ES256", activates_at=NOW, now=NOW)
    other = make_backend(moto_server, backend.alias_prefix)
    moto_server.reset_calls()
    for _ in range(3):
        other.load("ks")
    calls = moto_server.calls()
    assert (calls.get("GetPublicKey"), calls.get("ListResourceTags"), calls.get("ListAliases")) == (2, 6, 3)


@pytest.mark.system
def test_update_writes_activation_and_revocation_disables(
    backend: KmsBackend, moto_server: MotoServer, kms: Any
) -> None:
    """update() persists activates_at; with revoked_at it disables the key at once, so the very next Sign
    fails (DisabledException -> BackendUnavailable) and a fresh replica still loads the revoked record."""
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    backend.update(record.replace(activates_at=NOW + 7))
    assert make_backend(moto_server, backend.alias_prefix).load("ks")[0].activates_at == NOW + 7
    signer = backend.signer(record)
    signer.sign(b"before")
    backend.update(record.replace(activates_at=NOW + 7, revoked_at=NOW + 8))
    key_id = kms.describe_key(KeyId=f"{backend.alias_prefix}/ks/1")["KeyMetadata"]["KeyId"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(BackendUnavailable, match="KMS Sign failed: DisabledException"):
        signer.sign(b"after")
    (reloaded,) = make_backend(moto_server, backend.alias_prefix).load("ks")
    assert (reloaded.revoked_at, dict(reloaded.public_jwk)) == (NOW + 8, {})


@pytest.mark.system
def test_destroy_schedules_deletion_with_window_and_is_idempotent(
    moto_server: MotoServer, kms_alias_prefix: str, kms: Any
) -> None:
    """destroy() tags destroyed_at and schedules deletion with the configured window; twice is harmless;
    the key no longer signs (KMSInvalidStateException -> BackendUnavailable)."""
    backend = make_backend(moto_server, kms_alias_prefix, deletion_window_days=9)
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    destroyed = backend.destroy(record, now=NOW + 60)
    assert destroyed == backend.destroy(record, now=NOW + 60)  # the second ScheduleKeyDeletion is refused
    meta = kms.describe_key(KeyId=f"{kms_alias_prefix}/ks/1")["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    days = (meta["DeletionDate"].timestamp() - time.time()) / 86400
    assert 8.9 < days < 9.1
    with pytest.raises(BackendUnavailable, match="KMSInvalidStateException"):
        backend.signer(record).sign(b"x")
    assert [r.destroyed_at for r in make_backend(moto_server, kms_alias_prefix).load("ks")] == [NOW + 60]


@pytest.mark.system
def test_tampered_kid_tag_is_store_corrupt(backend: KmsBackend, moto_server: MotoServer, kms: Any) -> None:
    """A kid tag that is not the key's thumbprint is refused: a kid is self-verifying."""
    backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    key_id = kms.describe_key(KeyId=f"{backend.alias_prefix}/ks/1")["KeyMetadata"]["KeyId"]
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": TAG + "kid", "TagValue": "forged"}])
    with pytest.raises(StoreCorrupt, match="thumbprint"):
        make_backend(moto_server, backend.alias_prefix).load("ks")


@pytest.mark.system
def test_eddsa_and_import_are_refused(backend: KmsBackend) -> None:
    """KMS has no Ed25519 signing keys, and keysvc does not import key material into KMS."""
    with pytest.raises(ConfigError, match="EdDSA is not available with AWS KMS"):
        backend.create("ks", 1, "EdDSA", activates_at=NOW, now=NOW)
    with pytest.raises(InvalidKeyMaterial, match="file backend"):
        backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW, pem=b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ConfigError):
        kms_algorithm("HS256")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ({"alias_prefix": "keysvc/prod"}, "backend.alias_prefix"),
        ({"alias_prefix": "alias/aws/keysvc"}, "backend.alias_prefix"),
        ({"alias_prefix": "alias/aws"}, "backend.alias_prefix"),
        ({"alias_prefix": "alias/key svc"}, "backend.alias_prefix"),
        ({"alias_prefix": "alias/key:svc"}, "backend.alias_prefix"),
        ({"deletion_window": "6d"}, "backend.deletion_window"),
        ({"deletion_window": "31d"}, "backend.deletion_window"),
        ({"region": ""}, "backend.region"),
        ({"region": "Europe"}, "backend.region"),
        ({"endpoint_url": "127.0.0.1:5000"}, "backend.endpoint_url"),
    ],
)
def test_bad_settings_are_config_errors(backend: dict[str, Any], field: str) -> None:
    """Unusable KMS settings are refused when the configuration is read (check-config sees them too),
    naming the setting; KmsBackend itself takes settings already valid."""
    raw = base_config(Path("/nonexistent/keys"))
    raw["backend"] = {"type": "kms", "region": REGION, "alias_prefix": "alias/keysvc/prod"} | backend
    with pytest.raises(ConfigError) as info:
        parse_settings(raw)
    assert field == info.value.field


# --- signing ----------------------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.parametrize("alg", ALL_ALGS)
def test_every_algorithm_signs_tokens_pyjwt_verifies(backend: KmsBackend, alg: str) -> None:
    """Each JOSE alg maps to the right KMS key spec and signing algorithm: PyJWT verifies the token
    (PyJWT checks PS* with salt = hash length and ES* as fixed-width R||S)."""
    record = backend.create("ks", 1, alg, activates_at=NOW, now=NOW)
    assert record is not None
    signer = backend.signer(record)
    assert (record.kid, alg, False) == (signer.kid, signer.alg, signer.in_process)
    claims = {"sub": "u-1", "aud": "connect.zapier.com", "alg-under-test": alg}
    assert claims == verify(mint(signer, claims), record)


@pytest.mark.system
@pytest.mark.parametrize(("alg", "count"), [("ES256", 2000), ("ES384", 2000), ("ES512", 500)])
def test_ecdsa_signatures_in_bulk_all_verify(backend: KmsBackend, alg: str, count: int) -> None:
    """DER -> R||S keeps leading zeros: every one of many KMS ECDSA signatures verifies with PyJWT,
    including those whose R or S is short (about 1 in 128 for P-256 and P-384, nearly all for P-521;
    2,000 signatures leave a chance of about 1 in 6 million that none is short, where 500 left 1 in 50)."""
    record = backend.create("ks", 1, alg, activates_at=NOW, now=NOW)
    assert record is not None
    signer = backend.signer(record)
    size = kms_algorithm(alg).jose.coord_size

    def one(i: int) -> tuple[bool, bool]:
        token = mint(signer, {"aud": "connect.zapier.com", "n": i})
        signature = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
        short = signature[0] == 0 or signature[size] == 0
        return verify(token, record)["n"] == i, short

    with ThreadPoolExecutor(max_workers=backend.max_workers) as pool:
        results = list(pool.map(one, range(count)))
    assert [True] * count == [ok for ok, _ in results]
    assert any(short for _, short in results), "no signature exercised the leading-zero path"


@pytest.mark.system
def test_raw_up_to_4096_bytes_digest_above(backend: KmsBackend, moto_server: MotoServer) -> None:
    """Signing inputs of at most 4096 bytes go as MessageType=RAW, longer ones are hashed locally and sent
    as DIGEST; both verify (moto is patched to sign a DIGEST as given and to refuse RAW over 4096)."""
    record = backend.create("ks", 1, "RS256", activates_at=NOW, now=NOW)
    assert record is not None
    signer = backend.signer(record)
    key = public_key(record)
    moto_server.reset_calls()
    for size in (1, 4096, 4097, 100_000):
        message = b"x" * size
        key.verify(signer.sign(message), message, padding.PKCS1v15(), hashes.SHA256())
    calls = moto_server.calls()
    assert (calls.get("Sign:RAW"), calls.get("Sign:DIGEST")) == (2, 2)


@pytest.mark.system
def test_fidelity_raw_over_4096_is_refused(backend: KmsBackend, moto_server: MotoServer) -> None:
    """The patched server refuses RAW above 4096 bytes as AWS does (so the test above can fail)."""
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    client = boto3.client("kms", region_name=REGION, endpoint_url=moto_server.direct_url)
    key_id = backend.signer(record).key_id
    with pytest.raises(client.exceptions.ClientError, match="ValidationException"):
        client.sign(KeyId=key_id, Message=b"x" * 4097, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")


@pytest.mark.system
@pytest.mark.parametrize("alg", ["PS256", "PS512"])
def test_fidelity_pss_salt_is_hash_length(backend: KmsBackend, alg: str) -> None:
    """KMS PSS signatures use salt length = hash length (as AWS; moto unpatched uses the maximum): they
    verify with DIGEST_LENGTH and not with a maximum-length salt."""
    record = backend.create("ks", 1, alg, activates_at=NOW, now=NOW)
    assert record is not None
    key = public_key(record)
    assert isinstance(key, rsa.RSAPublicKey)
    digest = kms_algorithm(alg).jose.hash()
    message = b"header.payload"
    signature = backend.signer(record).sign(message)
    pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH)
    key.verify(signature, message, pss, digest)
    max_salt = (key.key_size + 7) // 8 - digest.digest_size - 2  # what unpatched moto uses
    with pytest.raises(InvalidSignature):
        key.verify(signature, message, padding.PSS(padding.MGF1(digest), max_salt), digest)


@pytest.mark.system
def test_fidelity_digest_is_signed_as_given(backend: KmsBackend, moto_server: MotoServer) -> None:
    """A DIGEST Sign signs the digest itself (unpatched moto hashes it again and this fails)."""
    record = backend.create("ks", 1, "ES384", activates_at=NOW, now=NOW)
    assert record is not None
    message = b"m" * 5000
    h = hashes.Hash(hashes.SHA384())
    h.update(message)
    client = boto3.client("kms", region_name=REGION, endpoint_url=moto_server.direct_url)
    der = client.sign(
        KeyId=backend.signer(record).key_id,
        Message=h.finalize(),
        MessageType="DIGEST",
        SigningAlgorithm="ECDSA_SHA_384",
    )["Signature"]
    from cryptography.hazmat.primitives.asymmetric import ec

    public_key(record).verify(der, message, ec.ECDSA(hashes.SHA384()))


# --- compare-and-swap -------------------------------------------------------------------------------


def check_one_winner(kms: Any, prefix: str, keyset: str, seq: int, kids: list[str | None]) -> None:
    """Exactly one create() won; the alias names its key; every other key of the slot is pending deletion."""
    winners = [k for k in kids if k is not None]
    assert len(winners) == 1, kids
    alias_key = kms.describe_key(KeyId=f"{prefix}/{keyset}/{seq}")["KeyMetadata"]["KeyId"]
    states: dict[str, str] = {}
    for page in kms.get_paginator("list_keys").paginate():
        for k in page["Keys"]:
            tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=k["KeyId"])["Tags"]}
            if tags.get(TAG + "prefix") == prefix:
                states[k["KeyId"]] = kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
    assert states.pop(alias_key) == "Enabled"
    assert all(s == "PendingDeletion" for s in states.values()), states


RACER = """
import json, sys, time
from keysvc.backends.kms import KmsBackend
endpoint, prefix, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
b = KmsBackend(region="eu-west-1", alias_prefix=prefix, endpoint_url=endpoint, instance_id="p")
time.sleep(max(0.0, start - time.time()))
r = b.create("ks", 1, "ES256", activates_at=0.0, now=time.time())
print(json.dumps(r.kid if r else None))
"""


@pytest.mark.system
def test_cas_race_between_processes_one_winner(
    moto_server: MotoServer, kms_alias_prefix: str, kms: Any
) -> None:
    """4 processes create the same slot at the same instant: exactly one wins, losers clean up."""
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, moto_server.endpoint_url, kms_alias_prefix, str(start)],
            stdout=subprocess.PIPE,
            env=aws_env(),
        )
        for _ in range(4)
    ]
    kids = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    check_one_winner(kms, kms_alias_prefix, "ks", 1, kids)


@pytest.mark.system
def test_fidelity_a_key_pending_deletion_takes_no_tags(backend: KmsBackend, kms: Any) -> None:
    """The patched server refuses TagResource on a key pending deletion, as AWS does (unpatched moto
    tags it, and a replica destroying a key with a stale copy would move its destroyed_at)."""
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    backend.destroy(record, now=NOW)
    key_id = backend.signer(record).key_id
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": TAG + "destroyed_at", "TagValue": "1.0"}])


@pytest.mark.system
def test_lost_create_alias_answer_still_wins(
    backend: KmsBackend, moto_server: MotoServer, kms: Any
) -> None:
    """CreateAlias succeeds but its answer is lost; botocore retries and gets AlreadyExists. The backend
    sees the alias targets its own key: it wins, and does not schedule its own key for deletion."""
    moto_server.fault("CreateAlias", count=1, mode="lose_response")
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    meta = kms.describe_key(KeyId=f"{backend.alias_prefix}/ks/1")["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    verify(mint(backend.signer(record), {"aud": "connect.zapier.com"}), record)


@pytest.mark.system
def test_existing_slot_creates_no_key(backend: KmsBackend, moto_server: MotoServer) -> None:
    """A replica arriving after the slot was taken gets None without creating a KMS key."""
    assert backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW) is not None
    moto_server.reset_calls()
    assert make_backend(moto_server, backend.alias_prefix).create("ks", 1, "ES256", NOW, NOW) is None
    assert moto_server.calls().get("CreateKey") is None


@pytest.mark.system
def test_repair_schedules_old_orphans_only(backend: KmsBackend, moto_server: MotoServer, kms: Any) -> None:
    """A crash between CreateKey and CreateAlias leaves an unaliased key tagged as ours; repair() leaves
    it alone during the grace period, then schedules its deletion, and never touches aliased keys or
    keys of another prefix."""
    kept = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    neighbour = make_backend(moto_server, backend.alias_prefix + "x")
    assert neighbour.create("ks", 1, "ES256", activates_at=NOW, now=NOW) is not None
    moto_server.fault("CreateAlias", code="KMSInternalException", count=-1)
    with pytest.raises(BackendUnavailable, match="CreateAlias"):
        backend.create("ks", 2, "ES256", activates_at=NOW, now=NOW)
    moto_server.clear_faults()
    assert backend.repair("ks", now=NOW + 60) == []
    done = backend.repair("ks", now=NOW + backend.orphan_grace + 1)
    assert len(done) == 1 and "orphan" in done[0], done
    orphan_id = re.search(r"key (\S+) ", done[0]).group(1)  # type: ignore[union-attr]
    assert kms.describe_key(KeyId=orphan_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert backend.repair("ks", now=NOW + 10_000) == []
    assert [kept] == backend.load("ks")
    assert kms.describe_key(KeyId=f"{backend.alias_prefix}x/ks/1")["KeyMetadata"]["KeyState"] == "Enabled"


@pytest.mark.system
def test_repair_finishes_half_done_revocation(backend: KmsBackend, kms: Any) -> None:
    """A key whose record says revoked but which is still enabled (revocation interrupted, or someone
    enabled it again) is disabled by repair()."""
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    backend.update(record.replace(revoked_at=NOW + 1))
    key_id = backend.signer(record).key_id
    kms.enable_key(KeyId=key_id)
    assert [f"disabled revoked key {record.kid} ({key_id})"] == backend.repair("ks", now=NOW + 2)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"


# --- failures ---------------------------------------------------------------------------------------


@pytest.mark.system
def test_throttling_is_retried_then_reported(backend: KmsBackend, moto_server: MotoServer) -> None:
    """Two ThrottlingExceptions are absorbed by botocore's retries; persistent throttling becomes
    BackendUnavailable within a bounded time (max_attempts with capped backoff)."""
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    signer = backend.signer(record)
    moto_server.fault("Sign", count=2)
    verify(mint(signer, {"aud": "connect.zapier.com"}), record)
    moto_server.fault("Sign", count=-1)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="KMS Sign failed: ThrottlingException"):
        signer.sign(b"x")
    assert time.monotonic() - started < 20


@pytest.mark.system
def test_unreachable_kms_is_unavailable_and_recovers(backend: KmsBackend, moto_server: MotoServer) -> None:
    """With KMS unreachable, Sign, load and create raise BackendUnavailable quickly (no hang, no other
    exception type); once it is back the same backend object works again with the same keys."""
    record = backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    signer = backend.signer(record)
    moto_server.stop()
    started = time.monotonic()
    calls = (
        lambda: signer.sign(b"x"),
        lambda: backend.load("ks"),
        lambda: backend.create("ks", 2, "ES256", NOW, NOW),
    )
    for call in calls:
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert "testing" not in str(info.value)  # no credential in messages
    assert time.monotonic() - started < 30
    moto_server.start()
    assert [record] == backend.load("ks")
    verify(mint(signer, {"aud": "connect.zapier.com"}), record)
