"""`keysvc check-config --connect`: prove, from where keysvc runs, that its backend, IAM and partners work.

Each probe returns `Check` values (one printed line each); the CLI prints them and exits 1 if any failed.
The decisions (which alias is a key slot, which key is the newest, why a TLS handshake failed, what the
exit status is) are pure functions below the probes; the probes only call out and report.

Nothing is created or changed in KMS (ListAliases, DescribeKey, GetPublicKey only). The file backend
gets a temp file created and removed; the S3 mirror a small probe object put and, when DeleteObject is
allowed, deleted. No line carries a secret: AWS failures are named by their error code, transport
failures by their reason, URLs without their query.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from keysvc.config import BackendSettings, KeysetSettings, MirrorSettings, Settings
from keysvc.config.backends import FileSettings, KmsSettings

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient
    from mypy_boto3_s3.client import S3Client

Status = Literal["ok", "warn", "skip", "FAIL"]
PROBE_SUFFIX = ".keysvc-probe"
PROBE_BODY = b"keysvc check-config --connect probe; safe to delete\n"
TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    """One line of the report: `status` (ok, warn, skip or FAIL), what was checked, what was seen."""

    status: Status
    target: str
    detail: str

    def line(self) -> str:
        """`ok   kms: ListAliases under alias/keysvc/prod (3 aliases)`."""
        return f"{self.status:<4} {self.target}: {self.detail}"


def ok(target: str, detail: str) -> Check:
    """A passed check."""
    return Check("ok", target, detail)


def fail(target: str, detail: str) -> Check:
    """A failed check: `check-config --connect` exits 1."""
    return Check("FAIL", target, detail)


# --- pure decisions ---------------------------------------------------------------------------------------


def exit_status(checks: list[Check]) -> int:
    """0 when nothing failed, else 1 (a warning or a skip does not fail the run)."""
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def slot_aliases(alias_names: list[str], prefix: str) -> dict[str, list[tuple[int, str]]]:
    """keyset -> [(seq, alias name)] sorted by seq, for the aliases named `<prefix>/<keyset>/<seq>`; any
    other alias under the prefix is not a key slot."""
    slots: dict[str, list[tuple[int, str]]] = {}
    for name in alias_names:
        keyset, _, seq = name.removeprefix(prefix + "/").partition("/")
        if name.startswith(prefix + "/") and keyset and seq.isdigit():
            slots.setdefault(keyset, []).append((int(seq), name))
    return {keyset: sorted(found) for keyset, found in slots.items()}


def transport_reason(exc: BaseException) -> str:
    """Why a connection failed, for a one-line report: the certificate error when there is one."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or type(cause).__name__}"
        if isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__:
            return "timed out"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def printable_url(url: str) -> str:
    """The URL without query or fragment (neither is needed to say where keysvc connects)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def partner_urls(settings: Settings) -> list[tuple[str, str]]:
    """(config field, URL) of every partner endpoint keysvc calls; `{keyset}` in the canary's URL is
    filled in with each keyset's name, as the canary does."""
    urls: list[tuple[str, str]] = []
    if settings.token_exchange is not None:
        urls.append(("token_exchange.token_url", settings.token_exchange.token_url))
        urls.append(("token_exchange.api_url", settings.token_exchange.api_url))
    if settings.canary is not None:
        template = settings.canary.jwks_url
        names = list(settings.keysets) if "{keyset}" in template else [""]
        urls += [("canary.jwks_url", template.replace("{keyset}", name)) for name in names]
    return list(dict.fromkeys(urls))


# --- probes -------------------------------------------------------------------------------------------------


def run(settings: Settings, timeout: float = TIMEOUT) -> list[Check]:
    """Every check the configuration calls for, in order: backend, mirror, partner URLs."""
    probe = BACKEND_PROBES[type(settings.backend)]
    checks = probe(settings.backend, settings.keysets, timeout)
    if settings.mirror is not None:
        checks += probe_mirror(settings.mirror, timeout)
    for field, url in partner_urls(settings):
        checks.append(probe_url(field, url, timeout))
    return checks


def _aws_config(timeout: float) -> Any:
    from botocore.config import Config

    return Config(connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 2},
                  user_agent_extra="keysvc-preflight")


def _aws_reason(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__


def _aws_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def probe_kms(backend: BackendSettings, keysets: Mapping[str, KeysetSettings], timeout: float) -> list[Check]:
    """ListAliases under the prefix, DescribeKey of each slot alias, GetPublicKey of each keyset's newest key."""
    import boto3

    assert isinstance(backend, KmsSettings)  # nosec B101 - BACKEND_PROBES is keyed by settings type
    prefix = backend.alias_prefix
    client: KMSClient = boto3.session.Session().client(
        "kms", region_name=backend.region, endpoint_url=backend.endpoint_url, config=_aws_config(timeout)
    )
    try:
        try:
            names = [
                str(alias.get("AliasName", ""))
                for page in client.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 100})
                for alias in page.get("Aliases", [])
                if str(alias.get("AliasName", "")).startswith(prefix + "/")
            ]
        except _aws_errors() as exc:
            return [fail("kms", f"ListAliases under {prefix}: {_aws_reason(exc)}")]
        checks = [ok("kms", f"ListAliases under {prefix} ({len(names)} aliases)")]
        slots = slot_aliases(names, prefix)
        for name in keysets:
            checks += _probe_keyset_keys(client, prefix, name, slots.get(name, []))
        return checks
    finally:
        client.close()


def _probe_keyset_keys(client: KMSClient, prefix: str, keyset: str, slots: list[tuple[int, str]]) -> list[Check]:
    if not slots:
        return [Check("skip", "kms", f"no key under {prefix}/{keyset}/ yet: DescribeKey and GetPublicKey not "
                                     "tried (the first start creates the key)")]
    checks: list[Check] = []
    states: dict[str, int] = {}
    for _, alias in slots:
        try:
            state = str(client.describe_key(KeyId=alias)["KeyMetadata"].get("KeyState", "Unknown"))
        except _aws_errors() as exc:
            checks.append(fail("kms", f"DescribeKey {alias}: {_aws_reason(exc)}"))
            continue
        states[state] = states.get(state, 0) + 1
    if states:
        seen = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        checks.append(ok("kms", f"DescribeKey {prefix}/{keyset}/* ({seen})"))
    newest = slots[-1][1]
    try:
        answer = client.get_public_key(KeyId=newest)
        spec = str(answer.get("KeySpec") or answer.get("CustomerMasterKeySpec") or "?")  # older name, same value
    except _aws_errors() as exc:
        checks.append(fail("kms", f"GetPublicKey {newest}: {_aws_reason(exc)}"))
    else:
        checks.append(ok("kms", f"GetPublicKey {newest} ({spec})"))
    return checks


def probe_file(backend: BackendSettings, keysets: Mapping[str, KeysetSettings], timeout: float) -> list[Check]:
    """The key directory exists or can be created, takes a temp file, and its lock files lock."""
    assert isinstance(backend, FileSettings)  # nosec B101 - BACKEND_PROBES is keyed by settings type
    root = backend.path
    if root.exists() and not root.is_dir():
        return [fail("file", f"{root} exists and is not a directory")]
    home = root if root.is_dir() else _nearest_existing(root)
    where = f"{root} exists" if home == root else f"{root} does not exist yet; {home} is where it would be created"
    try:
        with _temp_file(home) as fd:
            written = f"{where}; created and removed a temp file in {home}"
            lock_error = _lock_error(fd)
    except OSError as exc:
        return [fail("file", f"{where}; cannot create a file in {home}: {exc.strerror}")]
    checks = [ok("file", written)]
    if lock_error:
        return [*checks, fail("file", f"POSIX lock (lockf) refused in {home}: {lock_error}")]
    checks.append(ok("file", f"POSIX lock (lockf) taken and released in {home}"))
    for name in keysets:
        lock = root / name / ".lock"
        if lock.exists():
            checks.append(_probe_lock_file(lock))
    return checks


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")  # pragma: no cover - "/" always exists


@contextlib.contextmanager
def _temp_file(directory: Path) -> Iterator[int]:
    """A fresh 0600 file in `directory`, open for writing; closed and removed on exit."""
    path = directory / f"{PROBE_SUFFIX}-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, PROBE_BODY)
        yield fd
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _lock_error(fd: int) -> str | None:
    """None when an exclusive POSIX lock on `fd` is taken and released (NFS without a lock manager fails)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _probe_lock_file(lock: Path) -> Check:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError as exc:
        return fail("file", f"cannot open {lock}: {exc.strerror}")
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):  # a replica holds it: locking works
                return ok("file", f"{lock} is locked by a running keysvc (locking works)")
            return fail("file", f"cannot lock {lock}: {exc.strerror}")
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return ok("file", f"{lock} locked and released")
    finally:
        os.close(fd)


def probe_mirror(mirror: MirrorSettings, timeout: float) -> list[Check]:
    """PutObject of a small probe object under the mirror's key_prefix, then DeleteObject if allowed."""
    import boto3

    key = f"{mirror.key_prefix}{PROBE_SUFFIX}"
    where = f"s3://{mirror.bucket}/{key}"
    client: S3Client = boto3.session.Session().client(
        "s3", region_name=mirror.region, endpoint_url=mirror.endpoint_url, config=_aws_config(timeout)
    )
    try:
        try:
            client.put_object(Bucket=mirror.bucket, Key=key, Body=PROBE_BODY, ContentType="text/plain")
        except _aws_errors() as exc:
            return [fail("s3", f"PutObject {where}: {_aws_reason(exc)}")]
        checks = [ok("s3", f"PutObject {where}")]
        try:
            client.delete_object(Bucket=mirror.bucket, Key=key)
        except _aws_errors() as exc:
            checks.append(Check("warn", "s3", f"DeleteObject {where}: {_aws_reason(exc)}: the probe object was "
                                              "left (keysvc itself never deletes)"))
        else:
            checks.append(ok("s3", f"DeleteObject {where} (probe removed)"))
        return checks
    finally:
        client.close()


def probe_url(field: str, url: str, timeout: float) -> Check:
    """A TLS handshake (for https) and one GET: any HTTP status means reachable."""
    import httpx

    shown = printable_url(url)
    secure = urlsplit(url).scheme == "https"
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            status = client.get(url).status_code
    except httpx.HTTPError as exc:
        return fail("tls" if secure else "http", f"{field} {shown}: {transport_reason(exc)}")
    how = "TLS handshake ok" if secure else "plain http"
    return ok("tls" if secure else "http", f"{field} {shown}: {how}, HTTP {status}")


Probe = Callable[[BackendSettings, Mapping[str, KeysetSettings], float], list[Check]]
BACKEND_PROBES: dict[type[BackendSettings], Probe] = {FileSettings: probe_file, KmsSettings: probe_kms}
