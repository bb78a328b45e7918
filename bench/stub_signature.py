"""`keysvc` with every in-process ECDSA signature replaced by constant bytes: a bench-only server whose
tokens verify nowhere.

    python -m bench.stub_signature serve --config FILE

bench/sign_http.py runs it beside the real service to split POST /v1/sign's cost. Everything else is the
shipped code path: authentication, strict JSON, the claims policy, the signing input, the audit line before
the answer, the access line, the metrics. Its ratio to the bare route is what keysvc's own per-request work
leaves for the signature.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from keysvc.algorithms import Algorithm
from keysvc.backends import keys
from keysvc.cli import main

_real_sign_function = keys._sign_function


def constant_signature(key: keys.PrivateKey, spec: Algorithm) -> Callable[[bytes], bytes]:
    """An ECDSA key's signature function made free (the right length, constant bytes); others unchanged."""
    if spec.family != "EC":
        return _real_sign_function(key, spec)
    signature = b"\x01" * (2 * spec.coord_size)
    return lambda data: signature


if __name__ == "__main__":
    keys._sign_function = constant_signature
    sys.exit(main())
