"""The sealed notification token (keysvc.partner.triggers.sealing): it round-trips, and every token it did
not make -- tampered, truncated, extended, sealed under another secret, or spelt non-canonically -- is
refused the same way (404), while a rotated secret is still accepted during its overlap."""

from __future__ import annotations

import base64

import pytest

from keysvc.errors import NotFound
from keysvc.partner.triggers.sealing import MAX_TOKEN_CHARS, BadSealedToken, NotificationSealer, Sealed

pytestmark = pytest.mark.unit

SECRET = b"s" * 32
NEW = b"n" * 32
INBOX = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_a_sealed_token_opens_to_its_triple_and_reads_as_nothing() -> None:
    """seal -> open gives back (inbox, user, tenant); the token is URL-safe and shows none of them."""
    sealer = NotificationSealer(SECRET)
    token = sealer.seal(INBOX, "user@example.com", "tenant-9")
    assert sealer.open(token) == Sealed(INBOX, "user@example.com", "tenant-9")
    assert all(c.isalnum() or c in "-_" for c in token)
    for part in (INBOX, "user", "tenant", base64.urlsafe_b64encode(b"user").decode().rstrip("=")):
        assert part not in token


def test_two_seals_of_the_same_triple_differ() -> None:
    """A fresh nonce each time: the same inbox sealed twice gives two tokens (nothing to correlate)."""
    sealer = NotificationSealer(SECRET)
    assert sealer.seal(INBOX, "u", "t") != sealer.seal(INBOX, "u", "t")


def test_the_longest_triple_fits_the_bound() -> None:
    """Fields of 256 bytes each (the most user_id and tenant_id can hold) seal within MAX_TOKEN_CHARS."""
    sealer = NotificationSealer(SECRET)
    token = sealer.seal("i" * 256, "u" * 256, "t" * 256)
    assert len(token) <= MAX_TOKEN_CHARS
    assert sealer.open(token) == Sealed("i" * 256, "u" * 256, "t" * 256)


def _flip(i: int) -> object:
    def change(token: str) -> str:
        raw = _raw(token)
        raw[i % len(raw)] ^= 0x01
        return _text(raw)

    return change


TOKEN = NotificationSealer(SECRET).seal(INBOX, "u-1", "t-1")
FORGED = [
    ("version byte changed", _flip(0)),
    ("key id changed", _flip(1)),
    ("nonce changed", _flip(5)),
    ("ciphertext changed", _flip(20)),
    ("tag changed", _flip(-1)),
    ("truncated by one byte", lambda t: _text(_raw(t)[:-1])),
    ("truncated to the header", lambda t: _text(_raw(t)[:14])),
    ("one byte appended", lambda t: _text(_raw(t) + b"\x00")),
    ("empty", lambda t: ""),
    ("padding added", lambda t: t + "=" * (-len(t) % 4 or 4)),
    ("standard alphabet", lambda t: t.replace("-", "+").replace("_", "/") if ("-" in t or "_" in t) else t + "+"),
    ("stray bits in the last character", lambda t: t[:-1] + chr(ord(t[-1]) + 1) if len(t) % 4 else t + "A"),
    ("a length no base64 has", lambda t: t + "A"),
    ("too long", lambda t: "A" * (MAX_TOKEN_CHARS + 4)),
    ("whitespace", lambda t: t[:10] + " " + t[10:]),
    ("not a string", lambda t: _raw(t)),
]


@pytest.mark.parametrize(("why", "change"), FORGED, ids=[w for w, _ in FORGED])
def test_a_token_not_made_by_the_sealer_is_refused(why: str, change: object) -> None:
    """Each way of changing a real token gives BadSealedToken (a 404 NotFound), never another error."""
    forged = change(TOKEN)  # type: ignore[operator]
    assert forged != TOKEN
    with pytest.raises(BadSealedToken) as caught:
        NotificationSealer(SECRET).open(forged)
    assert isinstance(caught.value, NotFound)
    assert caught.value.status == 404


def test_a_token_sealed_under_another_secret_is_refused() -> None:
    """Without the secret it was sealed under, a token does not open (wrong key, same format)."""
    with pytest.raises(BadSealedToken):
        NotificationSealer(NEW).open(TOKEN)


def test_a_rotated_secret_still_opens_during_the_overlap_and_new_tokens_use_the_new_one() -> None:
    """`previous` secrets open old tokens; seal uses `current`, which the old sealer cannot open."""
    rotated = NotificationSealer(NEW, previous=[SECRET])
    assert rotated.open(TOKEN) == Sealed(INBOX, "u-1", "t-1")
    fresh = rotated.seal(INBOX, "u-1", "t-1")
    assert NotificationSealer(NEW).open(fresh) == Sealed(INBOX, "u-1", "t-1")
    with pytest.raises(BadSealedToken):
        NotificationSealer(SECRET).open(fresh)


@pytest.mark.parametrize("secret", [b"", b"x" * 31, "s" * 32])
def test_a_short_or_textual_secret_is_refused(secret: object) -> None:
    """The secret is at least 32 bytes (a str is refused rather than guessed at)."""
    with pytest.raises(ValueError, match="32 bytes"):
        NotificationSealer(secret)  # type: ignore[arg-type]


@pytest.mark.parametrize("triple", [("", "u", "t"), (INBOX, "", "t"), (INBOX, "u", "x" * 257)])
def test_an_empty_or_oversized_field_is_not_sealed(triple: tuple[str, str, str]) -> None:
    """Fields are non-empty and at most 256 bytes, so every token stays within the bound."""
    with pytest.raises(ValueError, match="inbox, user and tenant"):
        NotificationSealer(SECRET).seal(*triple)


def test_the_sealer_repr_shows_key_ids_only() -> None:
    """repr names the key ids (for rotation debugging), never key material."""
    text = repr(NotificationSealer(NEW, previous=[SECRET]))
    assert text.startswith("NotificationSealer(key_ids=[") and "n" * 8 not in text
