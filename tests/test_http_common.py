"""keysvc.http.common: strict JSON bodies, media type and length checks, error bodies, request ids."""

from __future__ import annotations

import json

import pytest

from keysvc.errors import Forbidden, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from keysvc.http.common import MAX_BODY, check_content_type, check_length, error_body, parse_json, request_id

ACCEPTED = [
    (b'{"claims": {"aud": "a"}, "ttl": 60}', {"claims": {"aud": "a"}, "ttl": 60}),
    (b"[1, 2.5, -3e10, true, null]", [1, 2.5, -3e10, True, None]),
    ('{"sub": "\u00e9l\u00e8ve \u2603"}'.encode(), {"sub": "\u00e9l\u00e8ve \u2603"}),
    (b'{"emoji": "\\ud83d\\ude00"}', {"emoji": "\U0001f600"}),  # an escaped surrogate *pair* is fine
    (b'{"big": ' + b"9" * 4000 + b"}", {"big": int("9" * 4000)}),
    (b'{"a": {"b": 1}, "c": {"b": 2}}', {"a": {"b": 1}, "c": {"b": 2}}),  # same key in different objects
    (b"[" * 500 + b"]" * 500, json.loads(b"[" * 500 + b"]" * 500)),
]


@pytest.mark.unit
@pytest.mark.parametrize(("raw", "expected"), ACCEPTED, ids=[str(i) for i in range(len(ACCEPTED))])
def test_parse_json_accepts_strict_json(raw: bytes, expected: object) -> None:
    """Plain UTF-8 JSON parses to the same value json.loads gives."""
    assert expected == parse_json(raw)


REFUSED = [
    ("duplicate key", b'{"aud": "a", "aud": "b"}'),
    ("duplicate key nested", b'{"claims": {"sub": "u", "sub": "v"}}'),
    ("NaN", b'{"ttl": NaN}'),
    ("Infinity", b'{"ttl": Infinity}'),
    ("-Infinity", b"[-Infinity]"),
    ("number overflowing to inf", b'{"x": 1e999}'),
    ("negative number overflowing to -inf", b"[-1.5e400]"),
    ("invalid UTF-8", b'{"sub": "\xff\xfe"}'),
    ("UTF-16", '{"a": 1}'.encode("utf-16")),
    ("overlong UTF-8", b'{"sub": "\xc0\xaf"}'),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"a": 1}'),
    ("escaped lone surrogate", b'{"sub": "\\ud800"}'),
    ("escaped lone low surrogate in a list", b'["\\udc00x"]'),
    ("deep nesting of lists", b"[" * 100000 + b"]" * 100000),
    ("deep nesting of objects", b'{"a":' * 100000 + b"1" + b"}" * 100000),
    ("giant int (5000 digits)", b'{"ttl": ' + b"9" * 5000 + b"}"),
    ("trailing garbage", b'{"a": 1} x'),
    ("trailing comma", b'{"a": 1,}'),
    ("empty body", b""),
    ("single quotes", b"{'a': 1}"),
]


@pytest.mark.unit
@pytest.mark.parametrize("raw", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_parse_json_refuses_with_invalid_request(raw: bytes) -> None:
    """Everything that is not strict JSON is an InvalidRequest (400), never another exception (500),
    and the description stays short (no echo of a large body)."""
    with pytest.raises(InvalidRequest) as info:
        parse_json(raw)
    assert len(info.value.description) < 200


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
     'application/json; charset="utf-8"', "application/json ;  charset = utf-8"],
)
def test_check_content_type_accepts_json_in_utf8(value: str) -> None:
    """application/json, any case, with no charset or charset=utf-8."""
    check_content_type(value)


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "application/json-seq",
     "application/json; charset=latin-1", "application/json; charset=utf-16", "multipart/form-data; boundary=x"],
)
def test_check_content_type_refuses_anything_else(value: str | None) -> None:
    """Missing, other media types, and other charsets are 415."""
    with pytest.raises(UnsupportedMediaType):
        check_content_type(value)


@pytest.mark.unit
@pytest.mark.parametrize("value", [None, "0", "1", str(MAX_BODY), "000065536"])
def test_check_length_accepts_up_to_the_limit(value: str | None) -> None:
    """No Content-Length (chunked: checked while reading) or one up to 64 KiB passes."""
    check_length(value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (str(MAX_BODY + 1), PayloadTooLarge),
        ("99999999999999999999999", PayloadTooLarge),
        ("9" * 5000, PayloadTooLarge),  # int() would refuse it: still a 413, not a 500
        ("-1", InvalidRequest),
        ("1.5", InvalidRequest),
        ("", InvalidRequest),
        (" 12", InvalidRequest),
        ("0x10", InvalidRequest),
        ("\u00b2", InvalidRequest),  # '²' is a digit for str.isdigit() but not for int()
        ("\u0661\u0662", InvalidRequest),  # Arabic-Indic digits
    ],
)
def test_check_length_refuses(value: str, error: type[Exception]) -> None:
    """Over 64 KiB is 413; anything but ASCII digits is 400 (never an exception escaping as a 500)."""
    with pytest.raises(error):
        check_length(value)


@pytest.mark.unit
def test_error_body_is_the_oauth_shape() -> None:
    """Errors answer {"error": code, "error_description": text}, nothing else."""
    expected = {"error": "forbidden", "error_description": "not yours"}
    assert expected == json.loads(error_body(Forbidden("not yours")))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("a" * 64, True), ("req-1:2_3", True), (None, False), ("", False), ("a" * 65, False),
     ("bad id", False), ("x\r\ny", False), ("abc\n", False), ("a" * 64 + "\n", False), ("é", False),
     ("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.sig", False)],
)
def test_request_id_keeps_only_sane_ids(given: str | None, kept: bool) -> None:
    """A caller's X-Request-ID is echoed only when short and plain (no dots, so never a JWT), all of it:
    a trailing newline (which a `$` anchor lets through) is refused too; otherwise a fresh random one is
    made."""
    rid = request_id(given)
    assert (rid == given) is kept
    if not kept:
        assert len(rid) == 24 and rid != request_id(given)


@pytest.mark.system
def test_fresh_request_ids_are_unique_in_a_process_and_across_a_fork() -> None:
    """Fresh ids never repeat: 10,000 in a row are distinct hex, and a forked child (its own prefix) does
    not make the ids its parent makes next."""
    import os

    ids = [request_id(None) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, ",".join(request_id(None) for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = set(os.read(read, 1 << 16).decode().split(","))
    os.close(read)
    parent = {request_id(None) for _ in range(100)}
    assert len(child) == 100
    assert not child & parent
    assert {i[:12] for i in child} != {i[:12] for i in parent}
