"""File backend: one directory per keyset on a local disk or a shared volume (NFSv4/EFS).

    <path>/<keyset>/.lock            POSIX lock serialising lifecycle writes across processes and hosts
    <path>/<keyset>/key-000001.json  the record of slot 1 (kid, alg, times, public JWK): the commit point
    <path>/<keyset>/key-000001.pem   its private key, PKCS#8, encrypted when a passphrase is set

Every file is written atomically (temp file, fsync, rename or link, fsync dir) with mode 0600 in a 0700
directory. A key is created private-key first, record second, and the record is linked into place with
`link()`, which fails if the slot exists: a crash leaves at most an orphan PEM or temp file, which
`repair` removes under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keysvc.backends import keys
from keysvc.errors import BackendUnavailable, InvalidKeyMaterial, StoreCorrupt
from keysvc.faults import checkpoint
from keysvc.records import KeyRecord, SigningKey

_RECORD = re.compile(r"^key-(\d{6,})\.json$")
_PEM = re.compile(r"^key-(\d{6,})\.pem$")
LOCK_TIMEOUT = 10.0

# POSIX locks belong to the process, not to a file descriptor or an object: a second FileBackend on the
# same directory in this process would be granted the lock too, and closing its descriptor would drop
# ours. So the in-process half of the lock is shared by every FileBackend, keyed by directory.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes) -> Path:
    """Write data to a fresh 0600 temp file in `directory`, fsynced."""
    tmp = directory / f".tmp-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def write_atomic(path: Path, data: bytes, step: str = "file.write") -> None:
    """Replace `path` with data atomically (readers see the old or the new file, never a torn one).
    `step` names the crash checkpoints (keysvc.faults) around the rename."""
    tmp = _write_temp(path.parent, data)
    checkpoint(f"{step}.temp_written")
    os.replace(tmp, path)
    checkpoint(f"{step}.renamed")
    _fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, step: str = "file.create") -> bool:
    """Create `path` atomically with data; False (and nothing written) if it already exists."""
    tmp = _write_temp(path.parent, data)
    checkpoint(f"{step}.temp_written")
    try:
        os.link(tmp, path)
        checkpoint(f"{step}.linked")
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _record_to_json(record: KeyRecord) -> bytes:
    doc = {
        "keyset": record.keyset,
        "kid": record.kid,
        "seq": record.seq,
        "alg": record.alg,
        "created_at": record.created_at,
        "activates_at": record.activates_at,
        "revoked_at": record.revoked_at,
        "destroyed_at": record.destroyed_at,
        "created_by": record.created_by,
        "public_jwk": dict(record.public_jwk),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def _record_from_json(data: bytes, where: str) -> KeyRecord:
    try:
        doc: dict[str, Any] = json.loads(data)
        return KeyRecord(
            keyset=str(doc["keyset"]),
            kid=str(doc["kid"]),
            seq=int(doc["seq"]),
            alg=str(doc["alg"]),
            created_at=float(doc["created_at"]),
            activates_at=float(doc["activates_at"]),
            public_jwk={str(k): str(v) for k, v in doc["public_jwk"].items()},
            revoked_at=None if doc.get("revoked_at") is None else float(doc["revoked_at"]),
            destroyed_at=None if doc.get("destroyed_at") is None else float(doc["destroyed_at"]),
            created_by=str(doc.get("created_by", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreCorrupt(f"key record {where} is unreadable ({type(exc).__name__})") from None


class FileBackend:
    """Keys in files; signs in-process."""

    def __init__(self, path: Path, passphrase: bytes | None = None, *, instance_id: str = "") -> None:
        self.root = Path(path)
        self._passphrase = passphrase
        self.instance_id = instance_id
        # Keysets this object has seen records of. Records are never deleted (a destroyed key keeps its
        # record), so when one of these comes back empty or missing, the directory is gone (an unmounted
        # volume showing its empty mount point), not new: refuse, rather than create a fresh keyset
        # whose new active key no verifier has cached.
        self._seen: set[str] = set()
        # Keys this object has just created, by kid, until their signer is asked for: handed over from
        # memory rather than read back. Loading an RSA key validates it (~28 ms holding the GIL), which
        # stalled every request on the replica right after each rotation (bench/rotation_latency.py).
        self._created: dict[str, keys.PrivateKey] = {}

    def __repr__(self) -> str:
        return f"FileBackend({str(self.root)!r}, encrypted={self._passphrase is not None})"

    def _vanished(self, keyset: str) -> BackendUnavailable:
        return BackendUnavailable(f"the key records of {keyset} vanished from {self.root / keyset} (volume gone?)")

    def _dir(self, keyset: str) -> Path:
        directory = self.root / keyset
        if keyset in self._seen and not directory.is_dir():
            raise self._vanished(keyset)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"key directory {directory} unavailable: {exc.strerror}") from None
        return directory

    def _record_path(self, keyset: str, seq: int) -> Path:
        return self._dir(keyset) / f"key-{seq:06d}.json"

    def _pem_path(self, keyset: str, seq: int) -> Path:
        return self._dir(keyset) / f"key-{seq:06d}.pem"

    # ------------------------------------------------------------------------------------ reads

    def load(self, keyset: str) -> list[KeyRecord]:
        """Every record of the keyset."""
        directory = self.root / keyset
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            if keyset in self._seen:
                raise self._vanished(keyset) from None
            return []
        except OSError as exc:
            raise BackendUnavailable(f"key directory {directory} unreadable: {exc.strerror}") from None
        records = []
        for name in names:
            if _RECORD.match(name):
                try:
                    data = (directory / name).read_bytes()
                except FileNotFoundError:
                    continue  # removed since listed
                except OSError as exc:
                    raise BackendUnavailable(f"key record {name} unreadable: {exc.strerror}") from None
                records.append(_record_from_json(data, f"{keyset}/{name}"))
        if records:
            self._seen.add(keyset)
        elif keyset in self._seen:
            raise self._vanished(keyset)
        return records

    def signer(self, record: KeyRecord) -> SigningKey:
        """Load the private key of a record and check it matches the record's kid (a key this object has
        just created and written is handed over from memory)."""
        created = self._created.pop(record.kid, None)
        if created is not None:
            return keys.LocalSigner(record.kid, record.alg, created)
        path = self._pem_path(record.keyset, record.seq)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise StoreCorrupt(f"private key of {record.kid} unreadable: {exc.strerror}") from None
        try:
            key = keys.from_pem(pem, self._passphrase)
        except TypeError:
            raise StoreCorrupt(f"private key of {record.kid}: passphrase required or not expected") from None
        except ValueError:
            raise StoreCorrupt(
                f"private key of {record.kid} cannot be decrypted (wrong passphrase?) or is corrupt"
            ) from None
        try:
            checked = keys.check_key_fits(key, record.alg)
        except InvalidKeyMaterial:
            raise StoreCorrupt(f"private key of {record.kid} does not fit {record.alg}") from None
        if keys.kid_of(checked) != record.kid:
            raise StoreCorrupt(f"private key file of {record.kid} holds another key")
        return keys.LocalSigner(record.kid, record.alg, checked)

    # ----------------------------------------------------------------------------------- writes

    def create(
        self, keyset: str, seq: int, alg: str, activates_at: float, now: float, pem: bytes | None = None
    ) -> KeyRecord | None:
        """Create the key of slot `seq` unless the slot is taken."""
        if self._record_path(keyset, seq).exists():
            return None
        if pem is None:
            key = keys.generate(alg)
        else:
            try:
                loaded = keys.from_pem(pem, None)
            except (ValueError, TypeError):
                raise InvalidKeyMaterial("not an unencrypted PEM private key") from None
            key = keys.check_key_fits(loaded, alg)
        record = KeyRecord(
            keyset=keyset,
            kid=keys.kid_of(key),
            seq=seq,
            alg=alg,
            created_at=now,
            activates_at=activates_at,
            public_jwk=keys.public_jwk(key),
            created_by=self.instance_id,
        )
        if any(r.kid == record.kid for r in self.load(keyset)):
            raise InvalidKeyMaterial(f"key {record.kid} is already in keyset {keyset}")
        pem_path = self._pem_path(keyset, seq)
        try:
            checkpoint("file.create.begin")
            write_atomic(pem_path, keys.to_pem(key, self._passphrase), "file.create.pem")
            if not create_exclusive(self._record_path(keyset, seq), _record_to_json(record), "file.create.record"):
                pem_path.unlink(missing_ok=True)  # lost the slot: ours is an orphan
                return None
        except OSError as exc:
            raise BackendUnavailable(f"cannot write key files in {keyset}: {exc.strerror}") from None
        self._created[record.kid] = key
        return record

    def _stored(self, record: KeyRecord) -> KeyRecord:
        """The record as stored in the slot of `record`, which must hold the same kid."""
        path = self._record_path(record.keyset, record.seq)
        try:
            current = _record_from_json(path.read_bytes(), path.name)
        except OSError as exc:
            raise BackendUnavailable(f"key record of {record.kid} unreadable: {exc.strerror}") from None
        if current.kid != record.kid:
            raise StoreCorrupt(f"slot {record.seq} of {record.keyset} holds {current.kid}, not {record.kid}")
        return current

    def update(self, record: KeyRecord) -> None:
        """Persist activates_at / revoked_at / destroyed_at of an existing record."""
        path = self._record_path(record.keyset, record.seq)
        self._stored(record)
        try:
            write_atomic(path, _record_to_json(record), "file.update")
        except OSError as exc:
            raise BackendUnavailable(f"cannot write key record of {record.kid}: {exc.strerror}") from None

    def destroy(self, record: KeyRecord, now: float) -> KeyRecord:
        """Delete the private key file (idempotent), then mark the record destroyed."""
        self._created.pop(record.kid, None)
        pem_path = self._pem_path(record.keyset, record.seq)
        try:
            checkpoint("file.destroy.begin")
            pem_path.unlink(missing_ok=True)
            checkpoint("file.destroy.unlinked")
            _fsync_dir(pem_path.parent)
        except OSError as exc:
            raise BackendUnavailable(f"cannot delete private key of {record.kid}: {exc.strerror}") from None
        # Mark the stored record, not the caller's copy: a stale copy (another replica's view) would
        # otherwise move destroyed_at, or write back fields changed since, such as revoked_at.
        current = self._stored(record)
        if current.destroyed_at is not None:
            return current
        destroyed = current.replace(destroyed_at=now)
        self.update(destroyed)
        return destroyed

    @contextlib.contextmanager
    def exclusive(self, keyset: str) -> Iterator[None]:
        """Hold the keyset's lock: a thread lock in this process, a POSIX lock across processes/hosts."""
        with _THREAD_LOCKS_GUARD:
            thread_lock = _THREAD_LOCKS.setdefault(os.path.realpath(self.root / keyset), threading.Lock())
        if not thread_lock.acquire(timeout=LOCK_TIMEOUT):
            raise BackendUnavailable(f"timed out waiting for the lock of keyset {keyset}")
        try:
            lock_path = self._dir(keyset) / ".lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + LOCK_TIMEOUT
                while True:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                            raise BackendUnavailable(f"cannot lock keyset {keyset}: {exc.strerror}") from None
                        time.sleep(0.01)
                try:
                    yield
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            thread_lock.release()

    def repair(self, keyset: str, now: float) -> list[str]:
        """Remove what a crash left: temp files and private keys without a record. Call under `exclusive`."""
        directory = self.root / keyset
        try:
            names = set(os.listdir(directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendUnavailable(f"key directory {directory} unreadable: {exc.strerror}") from None
        done = []
        for name in sorted(names):
            orphan_pem = (m := _PEM.match(name)) and f"key-{m.group(1)}.json" not in names
            if name.startswith(".tmp-") or orphan_pem:
                checkpoint("file.repair.unlink")
                (directory / name).unlink(missing_ok=True)
                done.append(f"removed {'orphan private key' if orphan_pem else 'temp file'} {keyset}/{name}")
        if done:
            _fsync_dir(directory)
        return done

    def close(self) -> None:
        """Nothing to release."""
