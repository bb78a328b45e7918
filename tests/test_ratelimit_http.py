"""Per-client rate limits over HTTP: 429 with Retry-After, before any signature is made."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, base_config, sha256_hex

pytestmark = pytest.mark.system

Start = Callable[..., KeysvcProcess]
SIGN = {"keyset": "zapier", "claims": {"sub": "u-1", "aud": "connect.zapier.com"}}


def counter(proc: KeysvcProcess, name: str, **labels: str) -> float:
    """Sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", httpx.get(proc.internal + "/metrics").text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_rate_limited_client_gets_429_with_retry_after_and_no_signature(keysvc: Start, tmp_path: object) -> None:
    """burst 3 at 1 request per 100 s: three signatures, then 429 rate_limited with Retry-After (seconds,
    >= 1) even for a body that would be invalid (the limit is checked first, before parsing or signing);
    keysvc_tokens_signed_total and the audit log count exactly the three; the refusals are counted in
    keysvc_rate_limited_total; another client is not affected."""
    from pathlib import Path

    config = base_config(Path(str(tmp_path)) / "keys")
    config["clients"]["limited"] = {"api_key_sha256": sha256_hex(api_key("limited")), "keysets": ["zapier"],
                                    "audiences": ["connect.zapier.com"], "max_ttl": "5m",
                                    "rate_limit": {"rate": 0.01, "burst": 3}}
    proc = keysvc(config)
    headers = {"Authorization": f"Bearer {api_key('limited')}"}
    with httpx.Client(base_url=proc.internal, headers=headers, timeout=10) as http:
        assert [http.post("/v1/sign", json=SIGN).status_code for _ in range(3)] == [200, 200, 200]
        refused = [http.post("/v1/sign", json=SIGN) for _ in range(5)]
        refused.append(http.post("/v1/sign", content=b"{not json", headers={"Content-Type": "application/json"}))
    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"] == "rate_limited"
        assert int(answer.headers["retry-after"]) >= 1
    assert counter(proc, "keysvc_tokens_signed_total") == 3
    assert counter(proc, "keysvc_rate_limited_total", client="limited") == 6
    signs = [line for line in proc.lines() if line.get("event") == "token.sign" and line.get("client") == "limited"]
    assert len(signs) == 3
    assert proc.sign().status_code == 200  # `signer` has no limit and its own budget
