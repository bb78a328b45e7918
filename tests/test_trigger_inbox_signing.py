"""Standard Webhooks signing (keysvc.partner.triggers.signing), checked by an independent verifier: the
`standardwebhooks` package from PyPI, the reference implementation's Python library."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from keysvc.partner.triggers.signing import WebhookSecret, WebhookSecretError, webhook_headers

pytestmark = pytest.mark.unit

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
BODY = b'{"type":"zapier.trigger","message":{"id":"3fa85f64-5717-4562-b3fc-2c963f66afa6","payload":{"t":"\xc3\xa9"}}}'


def test_a_signed_delivery_verifies_with_the_standardwebhooks_package() -> None:
    """The headers keysvc makes are exactly what an independent Standard Webhooks verifier accepts."""
    headers = webhook_headers(WebhookSecret.parse(SECRET), "msg-1", int(time.time()), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "zapier.trigger", "message": {"id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "payload": {"t": "é"}}
    }


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda h, b: (h, b + b" "), "one byte more in the body"),
        (lambda h, b: ({**h, "webhook-id": "msg-2"}, b), "another message id"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b), "another time"),
    ],
)
def test_the_verifier_refuses_a_changed_delivery(change: Any, why: str) -> None:
    """The signature covers the id, the timestamp and every byte of the body: changing any one fails."""
    headers = webhook_headers(WebhookSecret.parse(SECRET), "msg-1", int(time.time()), BODY)
    changed_headers, changed_body = change(headers, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(changed_body, changed_headers)


def test_a_delivery_signed_under_another_secret_is_refused() -> None:
    """A receiver holding only the other secret rejects the delivery."""
    headers = webhook_headers(WebhookSecret.parse(SECRET), "msg-1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, headers)


def test_during_a_rotation_both_secrets_sign_and_either_receiver_accepts() -> None:
    """Two secrets give two space-separated signatures; a receiver on the old or the new secret verifies."""
    keys = (WebhookSecret.parse(SECRET), WebhookSecret.parse(OTHER))
    headers = webhook_headers(keys, "msg-1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(BODY, headers)
    Webhook(OTHER).verify(BODY, headers)


@pytest.mark.parametrize(
    "text",
    ["", "whsec_", "secret", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode(),
     "whsec_" + base64.b64encode(bytes(65)).decode(), "WHSEC_" + SECRET[6:]],
)
def test_a_malformed_secret_is_refused_without_echoing_it(text: str) -> None:
    """Only `whsec_` + standard base64 of 24 to 64 bytes is a secret; the error never contains the text."""
    with pytest.raises(WebhookSecretError) as caught:
        WebhookSecret.parse(text)
    assert text[6:] == "" or text[6:] not in str(caught.value)


def test_the_secret_does_not_show_in_its_repr() -> None:
    """A WebhookSecret in a log line or a traceback shows no key bytes."""
    secret = WebhookSecret.parse(SECRET)
    assert repr(secret) == "WebhookSecret()"


@pytest.mark.parametrize(("message_id", "timestamp"), [("", 1), ("a b", 1), ("a\nb", 1), ("x" * 257, 1),
                                                        ("m", -1), ("m", True), ("m", 2**40)])
def test_an_unusable_id_or_timestamp_is_refused(message_id: str, timestamp: int) -> None:
    """Ids that would break a header or the signed text, and timestamps that are not epoch seconds, fail."""
    with pytest.raises(ValueError, match="webhook"):
        webhook_headers(WebhookSecret.parse(SECRET), message_id, timestamp, BODY)
