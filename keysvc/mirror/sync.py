"""Keep the S3 JWKS mirror in step with a keyring (an observer of its events): every JWKS change is
written, in order, off the loop.

Writes run on one dedicated thread, so two quick changes can never land in the wrong order. A failed
write is retried after each backend refresh until it succeeds; the served JWKS never waits for S3.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from keysvc.config import Settings
from keysvc.errors import BackendError
from keysvc.events import Event, JwksChanged, Reconciled
from keysvc.feature import Feature, sync_hook
from keysvc.jwks import JwksDocument
from keysvc.logs import LOG
from keysvc.mirror.s3 import S3Mirror


class MirrorSync:
    """The latest JWKS per keyset, and what has reached S3."""

    def __init__(self, mirror: S3Mirror, cache_control: str) -> None:
        self.mirror = mirror
        self.cache_control = cache_control
        self._lock = threading.Lock()
        self._wanted: dict[str, tuple[JwksDocument, bool]] = {}
        self._written: dict[str, str] = {}  # keyset -> ETag in S3
        self._worker = ThreadPoolExecutor(1, "keysvc-mirror")

    def notify(self, event: Event) -> None:
        """On the event loop: a changed JWKS is remembered and a write scheduled; after each refresh,
        writes that failed are retried."""
        if isinstance(event, JwksChanged):
            view = event.view
            with self._lock:
                self._wanted[view.settings.name] = (view.document, view.settings.default)
            self._worker.submit(self.flush)
        elif isinstance(event, Reconciled):
            with self._lock:
                behind = any(self._written.get(k) != doc.etag for k, (doc, _) in self._wanted.items())
            if behind:
                self._worker.submit(self.flush)

    def flush(self) -> None:
        """Blocking: write every keyset whose latest document is not yet in S3."""
        with self._lock:
            todo = [(k, d, dflt) for k, (d, dflt) in self._wanted.items() if self._written.get(k) != d.etag]
        for keyset, document, default in todo:
            try:
                self.mirror.put(keyset, document.body, document.etag, self.cache_control, default=default)
            except BackendError as exc:
                LOG.warning("jwks mirror write failed", extra={"keyset": keyset, "error": str(exc)[:300]})
                continue
            with self._lock:
                self._written[keyset] = document.etag
            LOG.info("jwks mirrored", extra={"keyset": keyset, "etag": document.etag})

    def close(self) -> None:
        """Stop the writer thread (pending writes are dropped: the next start rewrites everything)."""
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.mirror.close()


def build_mirror(settings: Settings) -> MirrorSync:
    """The mirror of the configured `mirror` section (the service adds it to the keyring's observers)."""
    assert settings.mirror is not None  # nosec B101 - only called when configured
    m = settings.mirror
    mirror = S3Mirror(m.bucket, m.key_prefix, m.region, m.endpoint_url)
    return MirrorSync(mirror, settings.jwks.cache_control())


def mirror_feature(settings: Settings) -> Feature:
    """The mirror as a feature of the service: a keyring observer, closed with the service."""
    mirror = build_mirror(settings)
    return Feature("mirror", observer=mirror, close=sync_hook(mirror.close), part=mirror)
