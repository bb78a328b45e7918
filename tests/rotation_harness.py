"""Several replicas, continuous signing, verifiers that cache the JWKS like real ones do.

Used by the file-backend rotation test and the load test. Runs until the test has seen what it
needs, within a deadline; loopback only.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import jwt

from tests.helpers import KeysvcProcess, api_key, wait_for


@dataclass
class RunReport:
    """What a rotation run observed."""

    signed: int = 0
    verified: int = 0
    too_late: int = 0  # verified after exp because the machine was slow: not a key failure
    sign_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    kids_used: list[str] = field(default_factory=list)
    etag_samples: list[tuple[float, float, int, str]] = field(default_factory=list)  # sent, answered, replica

    def etag_spreads(self, replicas: int) -> dict[str, float]:
        """For each ETag every replica served: the least number of seconds that can have separated the first
        and the last replica to serve it. A replica first served it after it last answered another ETag
        was asked for, and at the latest when it answered this one: the bound holds however late the
        sampler ran on a loaded machine."""
        first: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
        asked_before: dict[int, float] = {}
        for sent, answered, replica, etag in self.etag_samples:
            if replica in asked_before:
                first[etag].setdefault(replica, (asked_before[replica], answered))
            asked_before[replica] = sent
        return {
            etag: max(0.0, max(lo for lo, _ in seen.values()) - min(hi for _, hi in seen.values()))
            for etag, seen in first.items()
            if len(seen) == replicas
        }


class CachingVerifier:
    """Verifies like PyJWT's PyJWKClient: caches the JWKS for `cache_seconds`, refetches once on an
    unknown kid. Each verification fetches (when needed) from a random replica."""

    def __init__(
        self, replicas: list[KeysvcProcess], keyset: str, issuer: str, cache_seconds: float, algorithms: list[str]
    ) -> None:
        self.clients = [
            jwt.PyJWKClient(f"{r.public}/keysets/{keyset}/jwks.json", cache_jwk_set=True, lifespan=cache_seconds)
            for r in replicas
        ]
        self.issuer = issuer
        self.algorithms = algorithms
        self.lock = threading.Lock()

    def verify(self, token: str) -> None:
        """Raise on any verification failure."""
        client = random.choice(self.clients)
        with self.lock:
            key = client.get_signing_key_from_jwt(token)
        jwt.decode(
            token,
            key.key,
            algorithms=self.algorithms,
            audience="connect.zapier.com",
            issuer=self.issuer,
            leeway=0.2,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )


def run_rotation(
    replicas: list[KeysvcProcess],
    *,
    keyset: str,
    issuer: str,
    until: Callable[[RunReport], bool],
    timeout: float,
    ttl: int,
    verifier_cache: float,
    algorithms: list[str],
    signers: int = 3,
) -> RunReport:
    """Sign continuously on random replicas, verifying every token, until `until(report)` holds (what the
    test needs to have seen; fails the test after `timeout` s), however fast the machine signs."""
    report = RunReport()
    # ordered by when to verify, so a token due later never holds up one due sooner
    tokens: queue.PriorityQueue[tuple[float, str, int]] = queue.PriorityQueue()
    stop = threading.Event()
    verifier = CachingVerifier(replicas, keyset, issuer, verifier_cache, algorithms)
    lock = threading.Lock()

    def sign_loop() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                replica = random.choice(replicas)
                try:
                    response = http.post(
                        f"{replica.internal}/v1/sign",
                        json={"keyset": keyset, "claims": {"sub": "u-1", "aud": "connect.zapier.com"}, "ttl": ttl},
                        headers={"Authorization": f"Bearer {api_key('signer')}"},
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        report.sign_errors.append(f"{type(exc).__name__}")
                    continue
                if response.status_code != 200:
                    with lock:
                        report.sign_errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                body = response.json()
                with lock:
                    report.signed += 1
                    report.kids_used.append(body["kid"])
                # verify at a random moment of the token's life, as a partner might
                # iat is whole seconds, so a token may live only ttl-1 s from now: verify within 80% of that
                now = time.time()
                due = now + random.uniform(0, max(0.0, body["expires_at"] - now) * 0.8)
                tokens.put((due, body["token"], body["expires_at"]))
                time.sleep(0.01)

    def verify_loop() -> None:
        while True:
            when, token, exp = tokens.get()
            if not token:
                return
            delay = when - time.time()
            if delay > 0:
                time.sleep(delay)
            if time.time() > exp:
                with lock:
                    report.too_late += 1
                continue
            try:
                verifier.verify(token)
            except Exception as exc:  # any failure is what this test exists to catch
                if time.time() > exp + 0.2:
                    with lock:
                        report.too_late += 1
                    continue
                with lock:
                    report.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                report.verified += 1

    def etag_loop() -> None:
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                for i, replica in enumerate(replicas):
                    sent = time.time()
                    try:
                        etag = http.head(f"{replica.public}/keysets/{keyset}/jwks.json").headers["etag"]
                    except (httpx.HTTPError, KeyError):
                        continue
                    report.etag_samples.append((sent, time.time(), i, etag))
                time.sleep(0.05)

    threads = [threading.Thread(target=sign_loop) for _ in range(signers)]
    verifiers = [threading.Thread(target=verify_loop) for _ in range(4)]
    sampler = threading.Thread(target=etag_loop)
    for t in [*threads, *verifiers, sampler]:
        t.start()
    try:
        wait_for(lambda: until(report), timeout, "the rotation run to see what the test needs")
    finally:
        stop.set()
        for t in [*threads, sampler]:
            t.join(10)
        for _ in verifiers:
            tokens.put((float("inf"), "", 0))
        for t in verifiers:
            t.join(30)
    return report
