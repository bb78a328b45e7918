"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure.

A delivery is signed over `"{webhook-id}.{webhook-timestamp}.{body}"` with HMAC-SHA256 under the secret
the partner's service shares with keysvc, given in the `whsec_<base64>` form; the signature header is
`v1,<base64 of the MAC>` (space-separated when several secrets sign during a rotation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field

PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # Standard Webhooks asks for 24 to 64 random bytes
MAX_SECRET_BYTES = 64
# the id goes into a header and into the signed text: printable ASCII without spaces, bounded
MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,256}")
MAX_TIMESTAMP = 2**40  # far beyond any real clock; keeps the header short


class WebhookSecretError(ValueError):
    """The secret is not `whsec_` followed by the base64 of 24 to 64 bytes (the text never echoes it)."""


@dataclass(frozen=True)
class WebhookSecret:
    """The shared secret's bytes; its repr hides them."""

    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """`whsec_<standard base64>` -> the secret; anything else is a WebhookSecretError."""
        if not isinstance(text, str) or not text.startswith(PREFIX):
            raise WebhookSecretError(f"a webhook secret starts with {PREFIX!r}")
        try:
            key = base64.b64decode(text[len(PREFIX) :].strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WebhookSecretError("a webhook secret is whsec_ and standard base64") from exc
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise WebhookSecretError(f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
        return cls(key)

    def signature(self, message_id: str, timestamp: int, body: bytes) -> str:
        """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        mac = hmac.new(self.key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(mac).decode()


def webhook_headers(secrets: WebhookSecret | tuple[WebhookSecret, ...], message_id: str, timestamp: int,
                    body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery. Several secrets (a rotation's overlap) give
    several space-separated signatures; a receiver accepts any one it knows."""
    if not MESSAGE_ID.fullmatch(message_id):
        raise ValueError("a webhook id is 1 to 256 printable ASCII characters without spaces")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < MAX_TIMESTAMP:
        raise ValueError("a webhook timestamp is whole seconds since the epoch")
    keys = secrets if isinstance(secrets, tuple) else (secrets,)
    if not keys:
        raise ValueError("at least one webhook secret signs a delivery")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(k.signature(message_id, timestamp, body) for k in keys),
    }
