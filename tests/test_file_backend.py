"""What only the file backend does, on a real temporary directory (no mocks): file modes, encryption at rest,
the POSIX lock across processes, crash leftovers on disk, corrupt files, and importing PEMs.

The behaviour every backend shares (create/load, compare-and-swap, update, destroy, rotate, revoke, import,
repair) is tests/test_backend_contract.py. Times come from a FixedClock.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keysvc import lifecycle, operations
from keysvc.backends import keys
from keysvc.backends.file import FileBackend
from keysvc.clock import FixedClock
from keysvc.config import KeysetSettings
from keysvc.errors import InvalidKeyMaterial, StoreCorrupt
from keysvc.lifecycle import State
from keysvc.records import KeyRecord
from tests.helpers import ROOT

NOW = 1_764_300_000.0
DAY = 86400.0
KS = KeysetSettings(name="zapier", issuer="https://issuer.example", alg="ES256", rotation_period=30 * DAY,
                    publish_ahead=2 * DAY, retain_after=DAY, max_token_ttl=300.0)
PASSPHRASE = b"correct horse battery staple 1e4a"
# An 8200-bit RSA key made once for the size cap (generating one takes tens of seconds); a test fixture only.
BIG_RSA_PEM = ROOT / "tests" / "data" / "rsa-8200-test-only.pem"


@pytest.fixture
def clock() -> FixedClock:
    """The time, moved only by the test."""
    return FixedClock(NOW)


@pytest.fixture
def backend(keys_dir: Path) -> FileBackend:
    """An unencrypted file backend on a fresh directory."""
    return FileBackend(keys_dir, instance_id="test")


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with umask 0, so that modes observed are the ones the code asked for, not the umask's."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def names(directory: Path) -> set[str]:
    """The file names in a directory (including hidden ones)."""
    return set(os.listdir(directory))


def states(backend: FileBackend, now: float, ks: KeysetSettings = KS) -> dict[int, State]:
    """seq -> state of every key of a keyset at `now`."""
    status = lifecycle.evaluate(backend.load(ks.name), now, operations.policy_of(ks))
    return {k.record.seq: k.state for k in status.keys}


def signs_verifiably(backend: FileBackend, record: KeyRecord) -> bool:
    """The record's private key signs what its published public JWK verifies (checked by PyJWT)."""
    signature = backend.signer(record).sign(b"header.payload")
    public = jwt.PyJWK(dict(record.public_jwk), algorithm=record.alg)
    return bool(public.Algorithm.verify(b"header.payload", public.key, signature))


# ------------------------------------------------------------------------------------- round trip


@pytest.mark.unit
def test_eddsa_keys_round_trip(backend: FileBackend) -> None:
    """EdDSA, which only the file backend offers: the key another replica reads from its PEM signs what
    the published public JWK verifies (the shared create/load contract is tests/test_backend_contract.py)."""
    record = backend.create("ks", 1, "EdDSA", activates_at=NOW, now=NOW)
    assert record is not None
    replica = FileBackend(backend.root)
    (loaded,) = replica.load("ks")
    assert (record, "OKP") == (loaded, loaded.public_jwk["kty"])
    assert signs_verifiably(replica, loaded)


@pytest.mark.unit
def test_a_read_creates_no_directory(backend: FileBackend) -> None:
    """Loading a keyset that has no directory yet finds no key and creates nothing on disk."""
    assert backend.load("nothing-here") == []
    assert not (backend.root / "nothing-here").exists()


@pytest.mark.unit
def test_files_are_0600_and_directories_0700(backend: FileBackend, umask_zero: None) -> None:
    """Even with umask 0, the key directory is 0700 and every file in it (records, private keys, the
    lock) is 0600."""
    backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    with backend.exclusive("ks"):
        pass
    directory = backend.root / "ks"
    assert {"key-000001.json", "key-000001.pem", ".lock"} == names(directory)
    for path in (backend.root, directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in names(directory):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


# ------------------------------------------------------------------------------------------ at rest


@pytest.mark.unit
def test_private_key_is_plain_pkcs8_without_passphrase(backend: FileBackend) -> None:
    """Without a passphrase the PEM is unencrypted PKCS#8."""
    backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert (backend.root / "ks" / "key-000001.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.unit
def test_private_key_is_encrypted_with_a_passphrase(keys_dir: Path) -> None:
    """With a passphrase the PEM says ENCRYPTED, loads with the right passphrase, and a wrong or missing
    passphrase is StoreCorrupt with a clear message that never contains the passphrase."""
    encrypted = FileBackend(keys_dir, PASSPHRASE)
    record = encrypted.create("ks", 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    pem = (keys_dir / "ks" / "key-000001.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert record.kid == keys.kid_of(serialization.load_pem_private_key(pem, PASSPHRASE))  # type: ignore[arg-type]
    assert signs_verifiably(encrypted, record)
    assert "correct horse" not in repr(encrypted)
    for other, reason in ((FileBackend(keys_dir, b"wrong passphrase"), "wrong passphrase"),
                          (FileBackend(keys_dir), "passphrase required")):
        with pytest.raises(StoreCorrupt) as info:
            other.signer(record)
        assert reason in str(info.value)
        assert record.kid in str(info.value)
        assert PASSPHRASE.decode() not in str(info.value)


# ------------------------------------------------------------------------------------------- CAS


@pytest.mark.unit
def test_create_refuses_a_key_already_in_the_keyset(backend: FileBackend) -> None:
    """Importing the same private key into a second slot is refused (kids are unique in a keyset)."""
    key = keys.generate("ES256")
    pem = keys.to_pem(key, None)
    assert backend.create("ks", 1, "ES256", activates_at=NOW, now=NOW, pem=pem) is not None
    with pytest.raises(InvalidKeyMaterial, match="already in keyset"):
        backend.create("ks", 2, "ES256", activates_at=NOW, now=NOW, pem=pem)
    assert {"key-000001.json", "key-000001.pem"} == names(backend.root / "ks")


def _check_bootstrapped(backend: FileBackend) -> None:
    """Exactly seq 1 active at NOW and seq 2 pending, each with its own matching private key, and no
    stray file."""
    records = sorted(backend.load(KS.name), key=lambda r: r.seq)
    assert [r.seq for r in records] == [1, 2]
    assert states(backend, NOW) == {1: State.ACTIVE, 2: State.PENDING}
    assert (NOW, NOW + KS.rotation_period) == (records[0].activates_at, records[1].activates_at)
    assert len({r.kid for r in records}) == 2
    for record in records:
        assert signs_verifiably(backend, record)
    assert {"key-000001.json", "key-000001.pem", "key-000002.json", "key-000002.pem", ".lock"} == names(
        backend.root / KS.name)


RACER = """
import sys, time
from pathlib import Path
from keysvc import operations
from keysvc.backends.file import FileBackend
from keysvc.config import KeysetSettings
ks = KeysetSettings(name="zapier", issuer="https://issuer.example", alg="ES256", rotation_period=30 * 86400.0,
                    publish_ahead=2 * 86400.0, retain_after=86400.0, max_token_ttl=300.0)
backend = FileBackend(Path(sys.argv[1]), instance_id=sys.argv[3])
start = float(sys.argv[2])
while time.time() < start:
    pass
report = operations.reconcile(backend, ks, lambda: 1_764_300_000.0, sys.argv[3])
print(report.created, report.lost_races)
"""


@pytest.mark.system
def test_processes_racing_reconcile_create_exactly_two_keys(keys_dir: Path) -> None:
    """Four OS processes (the POSIX lock, not a thread lock, must serialise them) reconcile an empty
    keyset at the same wall-clock instant: exactly two keys in all, seq 1 active and seq 2 pending."""
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(keys_dir), repr(start), f"p{i}"], cwd=str(ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    created = [int(out.split()[0]) for out, _ in outputs]
    assert sum(created) == 2
    assert time.time() > start
    _check_bootstrapped(FileBackend(keys_dir))


# ---------------------------------------------------------------------------------- repair, destroy


@pytest.mark.unit
def test_repair_removes_orphans_and_temp_files_only(backend: FileBackend) -> None:
    """repair() deletes private keys with no record and temp files left by a crash, and nothing else:
    records, their keys, the lock and unrelated files stay."""
    backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    with backend.exclusive(KS.name):
        pass
    directory = backend.root / KS.name
    (directory / "key-000002.pem").write_bytes(keys.to_pem(keys.generate("ES256"), None))
    (directory / ".tmp-123-456-789").write_bytes(b"half a key")
    (directory / "README").write_text("hands off")
    (directory / "key-000003.json.bak").write_text("{}")
    done = backend.repair(KS.name, NOW)
    assert len(done) == 2
    assert any("key-000002.pem" in d for d in done) and any(".tmp-123-456-789" in d for d in done)
    assert {"key-000001.json", "key-000001.pem", ".lock", "README", "key-000003.json.bak"} == names(directory)
    assert backend.repair(KS.name, NOW) == []


@pytest.mark.unit
def test_destroy_deletes_the_private_key_file(backend: FileBackend) -> None:
    """destroy() removes the PEM from disk (and the creator's copy in memory); the record stays, marked."""
    record = backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    destroyed = backend.destroy(record, NOW + 60)
    assert not (backend.root / KS.name / "key-000001.pem").exists()
    assert [destroyed] == backend.load(KS.name)
    with pytest.raises(StoreCorrupt):
        backend.signer(destroyed)


@pytest.mark.unit
def test_a_pem_holding_another_key_is_store_corrupt(backend: FileBackend) -> None:
    """A record whose PEM file holds another key (swapped files) never signs: StoreCorrupt."""
    one = backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    two = backend.create(KS.name, 2, "ES256", activates_at=NOW, now=NOW)
    assert one is not None and two is not None
    directory = backend.root / KS.name
    (directory / "key-000001.pem").write_bytes((directory / "key-000002.pem").read_bytes())
    replica = FileBackend(backend.root)  # reads the files (the creator hands its fresh keys over from memory)
    with pytest.raises(StoreCorrupt, match="another key"):
        replica.signer(one)
    assert signs_verifiably(replica, two)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "unreadable"), (b'{"kid": "x"}', "unreadable"), (b"[]", "unreadable")],
)
def test_an_unreadable_record_is_store_corrupt(backend: FileBackend, content: bytes, message: str) -> None:
    """A record file that is not a valid record fails load() with StoreCorrupt naming the file."""
    backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    (backend.root / KS.name / "key-000001.json").write_bytes(content)
    with pytest.raises(StoreCorrupt, match=message) as info:
        backend.load(KS.name)
    assert "key-000001.json" in str(info.value)


@pytest.mark.unit
def test_a_key_that_does_not_fit_the_records_alg_is_store_corrupt(backend: FileBackend) -> None:
    """A P-256 private key under a record that says ES384 never signs."""
    record = backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    with pytest.raises(StoreCorrupt, match="does not fit"):
        FileBackend(backend.root).signer(record.replace(alg="ES384"))


@pytest.mark.unit
def test_the_creator_hands_its_fresh_key_over_from_memory(backend: FileBackend) -> None:
    """The replica that created a key gets its signer without reading the PEM back (loading an RSA key
    validates it for ~28 ms holding the GIL: a stall after every rotation), once; every other reader, and
    the creator's next load, read and check the file; destroy forgets the key."""
    record = backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    again = backend.create(KS.name, 2, "ES256", activates_at=NOW, now=NOW)
    assert record is not None and again is not None
    pem = backend.root / KS.name / "key-000001.pem"
    pem.write_bytes(b"not a key")
    assert signs_verifiably(backend, record)  # from memory: the broken file is not read
    with pytest.raises(StoreCorrupt):
        backend.signer(record)  # handed over once; afterwards the file is what counts
    with pytest.raises(StoreCorrupt):
        FileBackend(backend.root).signer(record)
    backend.destroy(again, NOW + 1)
    with pytest.raises(StoreCorrupt):
        backend.signer(again)


# -------------------------------------------------------------------------------------------- import


@pytest.fixture(scope="module")
def rsa_2048() -> rsa.RSAPrivateKey:
    """An RSA key of the minimum accepted size (generated once: slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.unit
def test_import_soon_after_start_still_waits_publish_ahead(backend: FileBackend, clock: FixedClock) -> None:
    """With a short rotation period, the imported key still activates only publish_ahead from now."""
    ks = KeysetSettings(name="short", issuer="https://i", alg="ES256", rotation_period=3 * DAY,
                        publish_ahead=2 * DAY, retain_after=DAY, max_token_ttl=300.0)
    operations.reconcile(backend, ks, clock.now, "test")
    clock.advance(2 * DAY)
    record = operations.import_key(backend, ks, keys.to_pem(keys.generate("ES256"), None), clock.now, "test")
    assert clock.now() + ks.publish_ahead == record.activates_at


@pytest.mark.unit
def test_import_accepts_a_traditional_rsa_pem(backend: FileBackend, clock: FixedClock,
                                              rsa_2048: rsa.RSAPrivateKey) -> None:
    """A PKCS#1 ('BEGIN RSA PRIVATE KEY') PEM, as older tooling writes, is adopted for an RS256 keyset."""
    ks = KeysetSettings(name="rsa", issuer="https://i", alg="RS256", rotation_period=30 * DAY,
                        publish_ahead=2 * DAY, retain_after=DAY, max_token_ttl=300.0)
    pem = rsa_2048.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    record = operations.import_key(backend, ks, pem, clock.now, "test")
    assert keys.kid_of(rsa_2048) == record.kid


def _pem(key: object, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             encryption)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("alg", "make_pem"),
    [
        ("ES256", lambda rsa_key: _pem(ec.generate_private_key(ec.SECP384R1()))),
        ("ES384", lambda rsa_key: _pem(ec.generate_private_key(ec.SECP256R1()))),
        ("ES256", lambda rsa_key: _pem(rsa_key)),
        ("RS256", lambda rsa_key: _pem(ec.generate_private_key(ec.SECP256R1()))),
        ("RS256", lambda rsa_key: _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))),
        ("RS256", lambda rsa_key: _pem(rsa.generate_private_key(public_exponent=3, key_size=2048))),
        ("RS256", lambda rsa_key: BIG_RSA_PEM.read_bytes()),
        ("EdDSA", lambda rsa_key: _pem(ec.generate_private_key(ec.SECP256R1()))),
        ("ES256", lambda rsa_key: _pem(ec.generate_private_key(ec.SECP256R1()), b"secret")),
        ("ES256", lambda rsa_key: b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"),
        ("ES256", lambda rsa_key: rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)),
    ],
    ids=["P-384 for ES256", "P-256 for ES384", "RSA for ES256", "EC for RS256", "RSA 1024", "RSA e=3",
         "RSA 8200 bits", "EC for EdDSA",
         "encrypted PEM", "garbage", "public key only"],
)
def test_import_refuses_a_key_that_does_not_fit(backend: FileBackend, clock: FixedClock,
                                                rsa_2048: rsa.RSAPrivateKey, alg: str, make_pem: object) -> None:
    """Wrong key type or curve, RSA under 2048 or over 8192 bits or with an exponent other than 65537, an
    encrypted PEM, garbage or a public key: refused with InvalidKeyMaterial (the key is wrong, not the
    configuration), and the keyset is left as it was (no new file)."""
    ks = KeysetSettings(name="imp", issuer="https://i", alg=alg, rotation_period=30 * DAY,
                        publish_ahead=2 * DAY, retain_after=DAY, max_token_ttl=300.0)
    operations.reconcile(backend, ks, clock.now, "test")
    before = names(backend.root / "imp")
    with pytest.raises(InvalidKeyMaterial) as info:
        operations.import_key(backend, ks, make_pem(rsa_2048), clock.now, "test")  # type: ignore[operator]
    assert str(info.value).startswith("--pem: ")
    assert before == names(backend.root / "imp")
    assert states(backend, clock.now(), ks) == {1: State.ACTIVE, 2: State.PENDING}


# ------------------------------------------------------------------------------------ rotations


@pytest.mark.unit
def test_scheduled_rotations_on_disk(backend: FileBackend, clock: FixedClock) -> None:
    """Reconciling daily over five rotation periods on the real backend: one key per slot, and private
    key files exactly for the published (retiring, active, pending) keys: retired ones deleted."""
    operations.reconcile(backend, KS, clock.now, "test")
    for _ in range(5 * 30):
        clock.advance(DAY)
        operations.reconcile(backend, KS, clock.now, "test")
    records = backend.load(KS.name)
    assert list(range(1, len(records) + 1)) == sorted(r.seq for r in records)
    assert 6 <= len(records) <= 7
    status = lifecycle.evaluate(records, clock.now(), operations.policy_of(KS))
    published = {f"key-{r.seq:06d}.pem" for r in status.published}
    assert published == {n for n in names(backend.root / KS.name) if n.endswith(".pem")}
    assert published == {f"key-{r.seq:06d}.pem" for r in records if r.destroyed_at is None}
    assert [status.state_of(r.kid) for r in status.published] == [State.RETIRING, State.ACTIVE, State.PENDING]
