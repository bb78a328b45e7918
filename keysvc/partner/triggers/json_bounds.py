"""The limits a JSON value must keep to cross keysvc: nesting depth, encoded size and integer range.

I-JSON (RFC 7493) integers (|n| <= 2**53 - 1) survive every JSON library on the way (Zapier, the
partner's service, browsers), and orjson encodes them; floats must be finite. `check_json` walks the
value without recursion, so a hostile depth cannot exhaust the stack.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1


class JsonBoundsError(ValueError):
    """The value breaks a bound; the message says which (and never echoes the value)."""


def check_json(value: Any, *, max_depth: int, max_bytes: int) -> int:
    """Check `value` is plain JSON (dict with str keys, list, str, int, float, bool, None) within the
    bounds; answer its encoded size in bytes. Raises JsonBoundsError."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise JsonBoundsError(f"nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise JsonBoundsError("an object key is not a string")
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            continue
        elif isinstance(node, int):
            if abs(node) > MAX_SAFE_INTEGER:
                raise JsonBoundsError(f"an integer beyond +-{MAX_SAFE_INTEGER}")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise JsonBoundsError("a number that is not finite")
        else:
            raise JsonBoundsError(f"a {type(node).__name__} is not JSON")
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # a lone surrogate in a string, or depth beyond orjson's 255
        raise JsonBoundsError("not encodable as JSON") from exc
    if size > max_bytes:
        raise JsonBoundsError(f"larger than {max_bytes} bytes encoded")
    return size
