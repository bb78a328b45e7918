"""The canary: sign a token in-process and verify it against the JWKS as the partner reaches it.

Every `canary.interval`, each replica signs a short-lived token with each keyset's active key (through the
keyring, the same path as /v1/sign, so a KMS signing failure shows too) and verifies it against the JWKS
fetched from `canary.jwks_url` (the public URL through the ingress or CDN). That catches a broken ingress,
a stale CDN and a key that never got published, none of which the replica's own view can see.

`canary.jwks_url` may hold `{keyset}` (`https://keys.example.com/keysets/{keyset}/jwks.json`): every keyset
is then checked at its own URL. Without it the URL is the default keyset's (`/.well-known/jwks.json`)
and only that keyset is checked: guessing other keysets' public URLs would test our guess, not the
partner's path.

The canary token carries `aud: keysvc-canary` and lives at most 60 s; it is never logged or exported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from jwcrypto.common import JWException
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS
from prometheus_client import Counter, Gauge, Info
from prometheus_client.registry import Collector

from keysvc.config import Settings
from keysvc.errors import KeysvcError
from keysvc.feature import Feature, Job
from keysvc.keyring import Keyring
from keysvc.logs import LOG
from keysvc.tls import outbound_context

CANARY_AUDIENCE = "keysvc-canary"
CANARY_TTL = 60

# Every `outcome` label value (bounded): ok, or why the check failed.
OUTCOMES = (
    "ok", "sign_error", "fetch_error", "http_error", "bad_jwks", "kid_missing", "alg_mismatch", "bad_signature",
)


class CanaryMetrics:
    """The canary's metrics (registered by the service through Feature.metrics)."""

    def __init__(self) -> None:
        self.canary_success = Gauge(
            "keysvc_canary_success", "1 when the last canary verification through the public JWKS URL passed",
            ["keyset"], registry=None,
        )
        self.canary_latency = Gauge(
            "keysvc_canary_duration_seconds", "Duration of the last canary (sign, fetch, verify)", ["keyset"],
            registry=None,
        )
        self.canary_last_success = Gauge(
            "keysvc_canary_last_success_timestamp_seconds", "When the canary last passed", ["keyset"], registry=None
        )
        self.canary_runs = Counter("keysvc_canary_runs_total", "Canary runs", ["keyset", "outcome"], registry=None)
        self.canary_etag = Info(
            "keysvc_canary_observed", "ETag the canary saw at the public URL", ["keyset"], registry=None
        )

    def collectors(self) -> list[Collector]:
        """Every metric, for the service's registry."""
        return [self.canary_success, self.canary_latency, self.canary_last_success, self.canary_runs,
                self.canary_etag]

    def prime(self, keyset: str) -> None:
        """Create every outcome's series of `keyset` at 0, so rate() sees the first failure."""
        for outcome in OUTCOMES:
            self.canary_runs.labels(keyset, outcome)

    def ran(self, keyset: str, outcome: str, seconds: float, etag: str | None) -> None:
        """One check of `keyset` ended with `outcome` (one of OUTCOMES) after `seconds`, having seen `etag`."""
        ok = outcome == "ok"
        self.canary_runs.labels(keyset, outcome).inc()
        self.canary_success.labels(keyset).set(1.0 if ok else 0.0)
        self.canary_latency.labels(keyset).set(seconds)
        if ok:
            self.canary_last_success.labels(keyset).set(time.time())
        if etag is not None:
            self.canary_etag.labels(keyset).info({"etag": etag.removeprefix("W/").strip('"')[:128]})


@dataclass(frozen=True)
class Verdict:
    """The result of one check: `outcome` is one of OUTCOMES; `detail` is safe to log (no token)."""

    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the token verified."""
        return self.outcome == "ok"


def verify(token: str, jwks_body: bytes, *, kid: str, alg: str) -> Verdict:
    """Pure: does the JWKS `jwks_body` hold key `kid` (for `alg`) and does it verify `token`'s signature?"""
    try:
        document = json.loads(jwks_body)
        keys = document["keys"]
        if not isinstance(keys, list):
            raise TypeError("keys is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        return Verdict("bad_jwks", f"not a JWKS: {type(exc).__name__}")
    jwk = next((k for k in keys if isinstance(k, dict) and k.get("kid") == kid), None)
    if jwk is None:
        return Verdict("kid_missing", f"kid {kid} is not in the JWKS ({len(keys)} keys)")
    if jwk.get("alg", alg) != alg:
        return Verdict("alg_mismatch", f"kid {kid} is published for {jwk.get('alg')}, signs {alg}")
    try:
        key = JWK(**jwk)
    except (JWException, ValueError, TypeError) as exc:
        return Verdict("bad_jwks", f"kid {kid} is not a usable JWK: {type(exc).__name__}")
    if key.has_private:
        return Verdict("bad_jwks", f"kid {kid} is published WITH private material")
    try:
        jws = JWS()
        jws.deserialize(token)
        jws.verify(key, alg=alg)
    except (JWException, ValueError, TypeError) as exc:
        return Verdict("bad_signature", f"signature does not verify with kid {kid}: {type(exc).__name__}")
    return Verdict("ok")


def targets(settings: Settings) -> dict[str, str]:
    """Keyset -> public JWKS URL to check (see the module docstring for the `{keyset}` rule)."""
    if settings.canary is None:
        return {}
    url = settings.canary.jwks_url
    if "{keyset}" in url:
        return {name: url.replace("{keyset}", name) for name in settings.keysets}
    default = settings.default_keyset
    return {} if default is None else {default: url}


def _safe_url(url: str) -> str:
    """The URL without userinfo or query, for a log line."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path or "/", "", ""))


class Canary:
    """Runs the checks of one replica and exports them."""

    def __init__(self, settings: Settings, keyring: Keyring, metrics: CanaryMetrics) -> None:
        assert settings.canary is not None  # nosec B101 - only called when configured
        self.keyring = keyring
        self.metrics = metrics
        self.timeout = settings.canary.timeout
        self.targets = targets(settings)
        for keyset in self.targets:
            metrics.prime(keyset)
        if not self.targets:
            LOG.warning("canary: no default keyset and no {keyset} in canary.jwks_url: nothing to check")

    async def run(self) -> Mapping[str, Verdict]:
        """One round over every target keyset (never raises)."""
        results: dict[str, Verdict] = {}
        # aiohttp, the server's one outbound HTTP library: no cookie kept, no redirect followed (below)
        connector = aiohttp.TCPConnector(ssl=outbound_context())
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=self.timeout),
                                         headers={"User-Agent": "keysvc-canary"}) as client:
            for keyset, url in self.targets.items():
                started = time.perf_counter()
                verdict, etag = await self._check(client, keyset, url)
                self.metrics.ran(keyset, verdict.outcome, time.perf_counter() - started, etag)
                if not verdict.ok:
                    LOG.warning("canary failed", extra={
                        "keyset": keyset, "outcome": verdict.outcome, "detail": verdict.detail,
                        "url": _safe_url(url),
                    })
                results[keyset] = verdict
        return results

    async def _check(self, client: aiohttp.ClientSession, keyset: str, url: str) -> tuple[Verdict, str | None]:
        ttl = int(min(CANARY_TTL, self.keyring.settings.keysets[keyset].max_token_ttl))
        claims = {"sub": "keysvc-canary", "aud": CANARY_AUDIENCE}
        try:
            token = await self.keyring.sign(keyset, claims, max(ttl, 1))
        except KeysvcError as exc:
            return Verdict("sign_error", type(exc).__name__), None
        try:
            async with client.get(url, allow_redirects=False) as response:
                status, etag = response.status, response.headers.get("etag")
                content = await response.read() if status == 200 else b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Verdict("fetch_error", type(exc).__name__), None
        if status != 200:
            return Verdict("http_error", f"HTTP {status}"), etag
        return verify(token.token, content, kid=token.kid, alg=token.alg), etag



def canary_feature(settings: Settings, keyring: Keyring) -> Feature:
    """The canary as a feature of the service: its metrics and its scheduled run (when `canary` is configured)."""
    assert settings.canary is not None  # nosec B101 - only called when configured
    metrics = CanaryMetrics()
    canary = Canary(settings, keyring, metrics)
    return Feature("canary", metrics=metrics.collectors(),
                   jobs=[Job("canary", settings.canary.interval, canary.run)], part=canary)
