"""The AWS KMS backend: private keys that never leave KMS.

Layout (see docs/kms.md):
- one asymmetric KMS key (KeyUsage SIGN_VERIFY) per kid;
- the alias `<alias_prefix>/<keyset>/<seq>` names the slot; `CreateAlias` is the compare-and-swap that
  makes creating a slot's key happen once across replicas;
- the record lives in the key's tags (`keysvc:keyset`, `keysvc:seq`, `keysvc:kid`, ...). The immutable
  public key comes from `GetPublicKey` once per key and stays cached for the life of the object.

A KMS key created by a replica that then loses the alias race, or that crashed before `CreateAlias`,
is an orphan: the loser schedules its deletion at once, `repair()` finds the crashed ones.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives import hashes, serialization
from jwcrypto.jwk import JWK  # type: ignore[import-untyped,unused-ignore]

from keysvc.algorithms import ALGORITHMS, RSA_KEY_BITS, Algorithm, der_to_jose
from keysvc.errors import BackendError, BackendUnavailable, ConfigError, InvalidKeyMaterial, StoreCorrupt
from keysvc.records import KeyRecord

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

TAG = "keysvc:"
MAX_RAW_MESSAGE = 4096  # KMS Sign accepts RAW messages up to 4096 bytes; longer ones are sent as a digest
ORPHAN_GRACE = 600.0  # seconds a key may stay unaliased before repair() deems it orphaned

_KEY_SPECS = {"RSA": f"RSA_{RSA_KEY_BITS}", "RSA-PSS": f"RSA_{RSA_KEY_BITS}"}
_CURVE_SPECS = {"P-256": "ECC_NIST_P256", "P-384": "ECC_NIST_P384", "P-521": "ECC_NIST_P521"}
_SIGNING = {"RSA": "RSASSA_PKCS1_V1_5_SHA_", "RSA-PSS": "RSASSA_PSS_SHA_", "EC": "ECDSA_SHA_"}
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class KmsAlgorithm:
    """How one JOSE `alg` maps onto KMS: key spec and signing algorithm."""

    jose: Algorithm
    key_spec: str
    signing_algorithm: str


def kms_algorithm(alg: str, field: str = "alg") -> KmsAlgorithm:
    """The KMS key spec and signing algorithm of a JOSE `alg`; ConfigError for one KMS cannot do."""
    jose = ALGORITHMS.get(alg)
    if jose is None or jose.family not in _SIGNING or jose.hash_name is None:
        raise ConfigError(
            field, f"{alg} is not available with AWS KMS keys (use RS*, PS* or ES*, or the file backend)"
        )
    spec = _KEY_SPECS.get(jose.family) or _CURVE_SPECS[jose.curve or ""]
    return KmsAlgorithm(jose, spec, _SIGNING[jose.family] + jose.hash_name[3:])


def kms_error(
    operation: str, exc: ClientError | BotoCoreError, missing: type[BackendError] = BackendUnavailable
) -> BackendError:
    """The keysvc error for a botocore failure; its message names only the operation and error code.

    NotFoundException becomes `missing` (StoreCorrupt where a record points at a key that is gone);
    everything else (throttling after retries, disabled or pending-deletion key, access denied, timeouts,
    connection refused) is BackendUnavailable: the request paths answer 503 with Retry-After.
    """
    if isinstance(exc, BotoCoreError):
        return BackendUnavailable(f"KMS {operation} failed: {type(exc).__name__}")
    code = _error_code(exc) or "Unknown"
    error = missing if code == "NotFoundException" else BackendUnavailable
    return error(f"KMS {operation} failed: {code}")


@contextlib.contextmanager
def kms_errors(operation: str, missing: type[BackendError] = BackendUnavailable) -> Iterator[None]:
    """Raise `kms_error(...)` for any botocore failure inside the block."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise kms_error(operation, exc, missing) from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class KmsSigner:
    """Signs with one KMS key, addressed by its exact KeyId (never an alias)."""

    in_process = False

    def __init__(self, client: KMSClient, key_id: str, kid: str, algorithm: KmsAlgorithm) -> None:
        self.kid = kid
        self.alg = algorithm.jose.name
        self.key_id = key_id
        self._client = client
        self._algorithm = algorithm

    def __repr__(self) -> str:
        return f"KmsSigner(kid={self.kid!r}, alg={self.alg!r}, key_id={self.key_id!r})"

    def sign(self, signing_input: bytes) -> bytes:
        """The JOSE signature of `signing_input` (R||S for ECDSA). Raises BackendUnavailable."""
        message, message_type = signing_input, "RAW"
        if len(signing_input) > MAX_RAW_MESSAGE:
            digest = hashes.Hash(self._algorithm.jose.hash())
            digest.update(signing_input)
            message, message_type = digest.finalize(), "DIGEST"
        with kms_errors("Sign"):
            signature = self._client.sign(
                KeyId=self.key_id,
                Message=message,
                MessageType=message_type,  # type: ignore[arg-type]
                SigningAlgorithm=self._algorithm.signing_algorithm,  # type: ignore[arg-type]
            )["Signature"]
        if self._algorithm.jose.family != "EC":
            return signature
        try:
            return der_to_jose(signature, self._algorithm.jose.coord_size)
        except (ValueError, OverflowError) as exc:
            raise BackendUnavailable("KMS Sign returned a malformed ECDSA signature") from exc


class KmsBackend:
    """Key records in KMS tags and aliases; signing by KMS. Thread-safe; every method blocks.

    `max_workers` is the size the caller's thread pool should have: one per pooled connection.
    A Sign takes at most about max_attempts x read_timeout (KMS hanging) or ~7 s of backoff (KMS
    throttling, 3 attempts) before BackendUnavailable. Region, alias prefix and deletion window are
    taken as given: keysvc.config.backends validated them when the configuration was read.
    """

    def __init__(
        self,
        *,
        region: str,
        alias_prefix: str,
        endpoint_url: str | None = None,
        deletion_window_days: int = 30,
        max_pool_connections: int = 10,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        instance_id: str = "",
        max_attempts: int = 3,
        retry_mode: Literal["standard", "adaptive"] = "adaptive",
        orphan_grace: float = ORPHAN_GRACE,
    ) -> None:
        self.alias_prefix = alias_prefix
        self.deletion_window_days = deletion_window_days
        self.instance_id = instance_id
        self.orphan_grace = orphan_grace
        self.max_workers = max_pool_connections
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # adaptive: retries throttling with capped backoff AND rate-limits this client after a throttle
            # (see docs/kms.md for the measured cost); max_attempts bounds the time a Sign may take.
            retries={"mode": retry_mode, "max_attempts": max_attempts},
            max_pool_connections=max_pool_connections,
            user_agent_extra="keysvc",
        )
        self._client: KMSClient = boto3.session.Session().client(
            "kms", region_name=region, endpoint_url=endpoint_url, config=config
        )
        self._lock = threading.Lock()
        self._public: dict[str, dict[str, str]] = {}  # KeyId -> public JWK (immutable)
        self._final: dict[str, KeyRecord] = {}  # KeyId -> record of a destroyed key (no longer changes)
        self._key_ids: dict[tuple[str, int], str] = {}  # (keyset, seq) -> KeyId
        self._foreign: set[str] = set()  # KeyIds that repair() found not to be ours
        self._settled: set[str] = set()  # KeyIds repair() found already disabled / pending deletion

    def __repr__(self) -> str:
        return f"KmsBackend(alias_prefix={self.alias_prefix!r})"

    # --- reads -----------------------------------------------------------------------------------------

    def load(self, keyset: str) -> list[KeyRecord]:
        """Every record of the keyset: ListAliases (paginated), then one ListResourceTags per live key."""
        _check_keyset(keyset)
        return [self._record(keyset, seq, key_id) for seq, key_id in sorted(self._slots(keyset).items())]

    def _slots(self, keyset: str | None) -> dict[int, str]:
        """seq -> KeyId of the aliases of one keyset (or, keyset None, of every alias under the prefix,
        keyed by a running index)."""
        stem = f"{self.alias_prefix}/{keyset}/" if keyset else f"{self.alias_prefix}/"
        slots: dict[int, str] = {}
        with kms_errors("ListAliases"):
            pages = self._client.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 100})
            for page in pages:
                for alias in page.get("Aliases", []):
                    name, target = alias.get("AliasName", ""), alias.get("TargetKeyId")
                    if not name.startswith(stem) or not target:
                        continue
                    tail = name[len(stem) :]
                    if keyset is None:
                        slots[len(slots)] = target
                    elif tail.isdigit():  # anything else under the prefix is not ours to judge
                        slots[int(tail)] = target
        return slots

    def _record(self, keyset: str, seq: int, key_id: str) -> KeyRecord:
        with self._lock:
            final = self._final.get(key_id)
            self._key_ids[(keyset, seq)] = key_id
        if final is not None:
            return final
        where = f"KMS key {key_id} ({self._alias(keyset, seq)})"
        tags = self._tags(key_id, missing=StoreCorrupt)
        record = _parse_tags(tags, where)
        if (record.keyset, record.seq, tags.get(TAG + "prefix")) != (keyset, seq, self.alias_prefix):
            raise StoreCorrupt(f"{where}: tags name another slot")
        unusable = record.revoked_at is not None or record.destroyed_at is not None
        jwk = self._public.get(key_id)
        if jwk is None and not unusable:  # a disabled key has no public key to read, nor needs one
            jwk, kid = self._fetch_public_key(key_id, kms_algorithm(record.alg), where)
            if kid != record.kid:
                raise StoreCorrupt(f"{where}: the kid tag does not match the key's thumbprint")
        record = record.replace(public_jwk=jwk or {})
        if record.destroyed_at is not None:
            with self._lock:
                self._final[key_id] = record
        return record

    def _tags(self, key_id: str, missing: type[BackendError]) -> dict[str, str]:
        tags: dict[str, str] = {}
        with kms_errors("ListResourceTags", missing):
            for page in self._client.get_paginator("list_resource_tags").paginate(KeyId=key_id):
                tags.update({t["TagKey"]: t["TagValue"] for t in page.get("Tags", [])})
        return tags

    def _fetch_public_key(
        self, key_id: str, algorithm: KmsAlgorithm, where: str
    ) -> tuple[dict[str, str], str]:
        """GetPublicKey, once per key: the public JWK (cached) and its RFC 7638 thumbprint."""
        try:
            answer = self._client.get_public_key(KeyId=key_id)
        except ClientError as exc:
            if _error_code(exc) in ("DisabledException", "KMSInvalidStateException"):
                raise StoreCorrupt(
                    f"{where} is disabled or pending deletion but its record is not revoked: "
                    "revoke its kid with keysvc, or enable the key again"
                ) from exc
            raise kms_error("GetPublicKey", exc, StoreCorrupt) from exc
        except BotoCoreError as exc:
            raise kms_error("GetPublicKey", exc) from exc
        if answer.get("KeyUsage") != "SIGN_VERIFY" or algorithm.signing_algorithm not in answer.get(
            "SigningAlgorithms", []
        ):
            raise StoreCorrupt(f"{where}: the key cannot sign {algorithm.jose.name}")
        try:
            public = serialization.load_der_public_key(answer["PublicKey"])
            jwk = JWK.from_pyca(public)
        except (ValueError, TypeError) as exc:
            raise StoreCorrupt(f"{where}: unreadable public key") from exc
        exported = jwk.export_public(as_dict=True)
        members = {k: str(exported[k]) for k in _PUBLIC_MEMBERS[str(exported["kty"])]}
        with self._lock:
            self._public[key_id] = members
        return members, str(jwk.thumbprint())

    # --- the compare-and-swap write ----------------------------------------------------------------------

    def create(
        self, keyset: str, seq: int, alg: str, activates_at: float, now: float, pem: bytes | None = None
    ) -> KeyRecord | None:
        """Create the KMS key of slot `seq` and claim the slot's alias; None if another replica holds it.

        CreateKey (tagged with the record) -> GetPublicKey -> tag the kid -> CreateAlias. The loser of the
        alias race schedules deletion of its key; a crash before CreateAlias leaves an orphan that
        `repair()` removes after the grace period.
        """
        if pem is not None:
            raise InvalidKeyMaterial("keysvc imports keys with the file backend only, not into AWS KMS")
        _check_keyset(keyset)
        algorithm = kms_algorithm(alg, f"keysets.{keyset}.alg")
        alias = self._alias(keyset, seq)
        if self._alias_target(alias) is not None:
            return None  # the common case for a late replica: no KMS key created at all
        tags = {
            "prefix": self.alias_prefix,
            "keyset": keyset,
            "seq": str(seq),
            "alg": alg,
            "created_at": repr(float(now)),
            "activates_at": repr(float(activates_at)),
            "created_by": self.instance_id or "-",
        }
        with kms_errors("CreateKey"):
            key_id = self._client.create_key(
                KeySpec=algorithm.key_spec,  # type: ignore[arg-type]
                KeyUsage="SIGN_VERIFY",
                Description=f"keysvc {keyset} slot {seq} ({alg})",
                Tags=[{"TagKey": TAG + k, "TagValue": v} for k, v in tags.items()],
            )["KeyMetadata"]["KeyId"]
        try:
            jwk, kid = self._fetch_public_key(key_id, algorithm, f"KMS key {key_id} (new)")
            self._tag(key_id, {"kid": kid})
        except BackendError:
            self._schedule_deletion_quietly(key_id)  # not aliased yet: nobody can be using it
            raise
        if not self._claim(alias, key_id):
            self._schedule_deletion_quietly(key_id)
            return None
        with self._lock:
            self._key_ids[(keyset, seq)] = key_id
        return KeyRecord(
            keyset=keyset,
            kid=kid,
            seq=seq,
            alg=alg,
            created_at=float(now),
            activates_at=float(activates_at),
            public_jwk=jwk,
            created_by=tags["created_by"],
        )

    def _claim(self, alias: str, key_id: str) -> bool:
        """CreateAlias; True if the alias now targets our key. A retried CreateAlias whose first
        attempt succeeded but lost its answer sees AlreadyExists, so the target decides, not the code."""
        try:
            self._client.create_alias(AliasName=alias, TargetKeyId=key_id)
            return True
        except ClientError as exc:
            if _error_code(exc) != "AlreadyExistsException":
                # The alias may exist after all: never delete our key here; repair() decides later.
                raise kms_error("CreateAlias", exc) from exc
        except BotoCoreError as exc:
            raise kms_error("CreateAlias", exc) from exc
        return self._alias_target(alias) == key_id

    def _alias_target(self, alias: str) -> str | None:
        try:
            return self._client.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"]
        except ClientError as exc:
            if _error_code(exc) == "NotFoundException":
                return None
            raise kms_error("DescribeKey", exc) from exc
        except BotoCoreError as exc:
            raise kms_error("DescribeKey", exc) from exc

    # --- mutable fields, destruction -------------------------------------------------------------------

    def update(self, record: KeyRecord) -> None:
        """Write `activates_at` and `revoked_at` to the key's tags; a revocation then disables the key.

        Tag first: a crash between the two leaves a record that says revoked (out of every JWKS, never
        chosen to sign) on a key still enabled, which `repair()` disables. The other order would leave a
        disabled key whose record is not revoked, which no replica can load until an operator steps in.
        """
        if record.destroyed_at is not None:
            return  # pending deletion: KMS refuses tag writes, and the key can no longer sign anyway
        key_id = self._key_id(record)
        fields = {"activates_at": repr(float(record.activates_at))}
        if record.revoked_at is not None:
            fields["revoked_at"] = repr(float(record.revoked_at))
        self._tag(key_id, fields)
        if record.revoked_at is not None:
            with kms_errors("DisableKey"):
                self._client.disable_key(KeyId=key_id)

    def destroy(self, record: KeyRecord, now: float) -> KeyRecord:
        """Tag `destroyed_at` (impossible once pending deletion), then ScheduleKeyDeletion. Idempotent."""
        if record.destroyed_at is not None:
            return record
        key_id = self._key_id(record)
        try:
            self._tag(key_id, {"destroyed_at": repr(float(now))})
        except BackendUnavailable as exc:
            if not _caused_by(exc, "KMSInvalidStateException"):
                raise
        self._schedule_deletion(key_id)
        # The record as stored, not the caller's copy: a copy read before a revocation (another replica's
        # view) would otherwise be cached as this key's final record and bring the revoked key back.
        with self._lock:
            self._final.pop(key_id, None)
        return self._record(record.keyset, record.seq, key_id)

    def _schedule_deletion(self, key_id: str) -> None:
        try:
            self._client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=self.deletion_window_days)
        except ClientError as exc:
            if _error_code(exc) == "KMSInvalidStateException":
                return  # already pending deletion
            raise kms_error("ScheduleKeyDeletion", exc) from exc
        except BotoCoreError as exc:
            raise kms_error("ScheduleKeyDeletion", exc) from exc

    def _schedule_deletion_quietly(self, key_id: str) -> None:
        """Best effort for an orphan of ours; if KMS refuses now, repair() finds the key later."""
        with contextlib.suppress(BackendError):
            self._schedule_deletion(key_id)

    def _tag(self, key_id: str, fields: Mapping[str, str]) -> None:
        with kms_errors("TagResource", StoreCorrupt):
            self._client.tag_resource(
                KeyId=key_id, Tags=[{"TagKey": TAG + k, "TagValue": v} for k, v in fields.items()]
            )

    # --- signing ---------------------------------------------------------------------------------------

    def signer(self, record: KeyRecord) -> KmsSigner:
        """A signer bound to the record's exact KeyId."""
        return KmsSigner(self._client, self._key_id(record), record.kid, kms_algorithm(record.alg))

    def _key_id(self, record: KeyRecord) -> str:
        with self._lock:
            key_id = self._key_ids.get((record.keyset, record.seq))
        if key_id is None:
            key_id = self._alias_target(self._alias(record.keyset, record.seq))
            if key_id is None:
                raise StoreCorrupt(f"no KMS alias for {record.keyset} slot {record.seq}")
            with self._lock:
                self._key_ids[(record.keyset, record.seq)] = key_id
        return key_id

    # --- housekeeping ----------------------------------------------------------------------------------

    def exclusive(self, keyset: str) -> AbstractContextManager[None]:
        """No lock needed: `create` is compare-and-swap through CreateAlias."""
        return contextlib.nullcontext()

    def repair(self, keyset: str, now: float) -> list[str]:
        """Schedule deletion of this keyset's orphan keys (tagged ours, no alias, older than the grace
        period) and finish half-done revocations and destructions. Returns what it did."""
        _check_keyset(keyset)
        done: list[str] = []
        aliased = set(self._slots(None).values())
        with kms_errors("ListKeys"):
            key_ids = [
                k["KeyId"]
                for page in self._client.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1000})
                for k in page.get("Keys", [])
            ]
        for key_id in key_ids:
            with self._lock:
                skip = key_id in aliased or key_id in self._foreign or key_id in self._settled
            if skip:
                continue
            try:
                tags = self._tags(key_id, missing=StoreCorrupt)
            except StoreCorrupt:
                continue  # deleted meanwhile
            if tags.get(TAG + "prefix") != self.alias_prefix:
                with self._lock:
                    self._foreign.add(key_id)
                continue
            if tags.get(TAG + "keyset") != keyset or not self._is_old(key_id, tags, now):
                continue
            if self._state(key_id) not in ("PendingDeletion", "PendingReplicaDeletion"):
                self._schedule_deletion(key_id)
                done.append(f"scheduled deletion of orphan KMS key {key_id} (slot {tags.get(TAG + 'seq')})")
            with self._lock:
                self._settled.add(key_id)
        for record in self.load(keyset):
            done.extend(self._finish(record))
        return done

    def _finish(self, record: KeyRecord) -> list[str]:
        if record.revoked_at is None and record.destroyed_at is None:
            return []
        key_id = self._key_id(record)
        with self._lock:
            if key_id in self._settled:
                return []
        state = self._state(key_id)
        action = ""
        if record.destroyed_at is not None and state != "PendingDeletion":
            self._schedule_deletion(key_id)
            action = f"scheduled deletion of destroyed key {record.kid} ({key_id})"
        elif record.destroyed_at is None and state == "Enabled":
            with kms_errors("DisableKey"):
                self._client.disable_key(KeyId=key_id)
            action = f"disabled revoked key {record.kid} ({key_id})"
        with self._lock:
            self._settled.add(key_id)
        return [action] if action else []

    def _is_old(self, key_id: str, tags: Mapping[str, str], now: float) -> bool:
        try:
            created = float(tags[TAG + "created_at"])
        except (KeyError, ValueError):
            with kms_errors("DescribeKey"):
                created = self._client.describe_key(KeyId=key_id)["KeyMetadata"]["CreationDate"].timestamp()
        return now - created >= self.orphan_grace

    def _state(self, key_id: str) -> str:
        with kms_errors("DescribeKey", StoreCorrupt):
            return str(self._client.describe_key(KeyId=key_id)["KeyMetadata"].get("KeyState", ""))

    def _alias(self, keyset: str, seq: int) -> str:
        return f"{self.alias_prefix}/{keyset}/{seq}"

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()


def _check_keyset(keyset: str) -> None:
    if not _NAME.match(keyset):
        raise ConfigError(
            "keysets", f"keyset name {keyset!r} must use letters, digits, _ and - only (KMS aliases)"
        )


def _caused_by(exc: BaseException, code: str) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ClientError) and _error_code(cause) == code


def _parse_tags(tags: Mapping[str, str], where: str) -> KeyRecord:
    """The record stored in a key's tags (public_jwk filled in by the caller)."""

    def number(name: str, required: bool = True) -> float | None:
        value = tags.get(TAG + name)
        if value is None:
            if required:
                raise StoreCorrupt(f"{where}: tag {TAG}{name} is missing")
            return None
        try:
            return float(value)
        except ValueError:
            raise StoreCorrupt(f"{where}: tag {TAG}{name} is not a number") from None

    try:
        keyset, kid, alg, seq = (tags[TAG + n] for n in ("keyset", "kid", "alg", "seq"))
    except KeyError as exc:
        raise StoreCorrupt(f"{where}: tag {exc.args[0]} is missing") from None
    if not seq.isdigit():
        raise StoreCorrupt(f"{where}: tag {TAG}seq is not a number")
    return KeyRecord(
        keyset=keyset,
        kid=kid,
        seq=int(seq),
        alg=alg,
        created_at=number("created_at") or 0.0,
        activates_at=number("activates_at") or 0.0,
        public_jwk={},
        revoked_at=number("revoked_at", required=False),
        destroyed_at=number("destroyed_at", required=False),
        created_by=tags.get(TAG + "created_by", ""),
    )
