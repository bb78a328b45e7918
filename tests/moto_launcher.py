"""Run moto's server (KMS, S3) with fidelity patches and a test-control endpoint.

    python tests/moto_launcher.py PORT

moto differs from AWS KMS where keysvc relies on AWS's behaviour. keysvc must be right for AWS, so the
server the tests talk to is patched to behave like AWS rather than the tests being weakened:

1. Sign with `MessageType=DIGEST`: moto hashes the digest again; AWS signs the given digest.
2. RSASSA_PSS_*: moto uses the maximum salt length; AWS uses salt length = hash length (so do Verify).
3. Sign / GetPublicKey on a key that is not Enabled: moto goes on; AWS answers `DisabledException`
   (Disabled) or `KMSInvalidStateException` (PendingDeletion, ...).
4. CreateAlias: moto checks and inserts without a lock (threaded server); AWS is atomic.
5. Sign with `MessageType=RAW` and a message over 4096 bytes: AWS refuses (ValidationException); moto signs.
6. TagResource on a key pending deletion: AWS refuses (KMSInvalidStateException); moto tags it.

Each patch is verified by a test in tests/test_kms_backend.py that fails without it; to see it fail, set
KEYSVC_MOTO_UNPATCHED to a comma-separated list of `digest,pss,disabled,alias,raw,tag` before running pytest.

The control endpoint `/_keysvc/...` (never reached by keysvc itself) lets tests count KMS calls per
operation and inject faults (`ThrottlingException` on an operation, or a lost response after a
successful operation) — faults that real AWS produces but moto cannot be asked for.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from moto.core.exceptions import JsonRESTError
from moto.kms import utils as kms_utils
from moto.kms.models import KmsBackend
from moto.kms.responses import KmsResponse
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

UNPATCHED = set(os.environ.get("KEYSVC_MOTO_UNPATCHED", "").split(","))

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA_256": hashes.SHA256,
    "SHA_384": hashes.SHA384,
    "SHA_512": hashes.SHA512,
}


def _hash_of(signing_algorithm: str) -> hashes.HashAlgorithm:
    return _HASHES[signing_algorithm[-7:]]()


# --- patch 2: PSS salt length = hash length (AWS), not the maximum (moto) -------------------------------
_orig_padding = kms_utils.RSAPrivateKey._RSAPrivateKey__padding_and_hash_algorithm  # type: ignore[attr-defined]


def _padding_and_hash(self: Any, signing_algorithm: str) -> tuple[Any, Any]:
    pad, algorithm = _orig_padding(self, signing_algorithm)
    if signing_algorithm.startswith("RSASSA_PSS_"):
        pad = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
    return pad, algorithm


if "pss" not in UNPATCHED:
    kms_utils.RSAPrivateKey._RSAPrivateKey__padding_and_hash_algorithm = _padding_and_hash  # type: ignore[attr-defined]


# --- patch 3: a key that is not Enabled neither signs nor gives its public key ---------------------------
def _require_enabled(backend: KmsBackend, key_id: str) -> None:
    key = backend.describe_key(key_id)
    if key.key_state == "Disabled":
        raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
    if key.key_state != "Enabled":
        raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is pending deletion.")


_orig_backend_sign = KmsBackend.sign
_orig_get_public_key = KmsBackend.get_public_key


def _backend_sign(self: KmsBackend, key_id: str, message: bytes, signing_algorithm: str) -> Any:
    _require_enabled(self, key_id)
    return _orig_backend_sign(self, key_id, message, signing_algorithm)


def _backend_get_public_key(self: KmsBackend, key_id: str) -> Any:
    _require_enabled(self, key_id)
    return _orig_get_public_key(self, key_id)


if "disabled" not in UNPATCHED:
    KmsBackend.sign = _backend_sign  # type: ignore[method-assign]
    KmsBackend.get_public_key = _backend_get_public_key  # type: ignore[method-assign]


# --- patch 1: MessageType=DIGEST signs the given digest (moto would hash it again) ----------------------
_orig_response_sign = KmsResponse.sign


_message_types: Counter[str] = Counter()  # Sign calls by MessageType, reported by /_keysvc/calls
_count_lock = threading.Lock()


def _response_sign(self: KmsResponse) -> str:
    message_type = self._get_param("MessageType") or "RAW"
    with _count_lock:
        _message_types[message_type] += 1
    if message_type != "DIGEST" or "digest" in UNPATCHED:
        # patch 5: AWS caps RAW messages at 4096 bytes
        if message_type == "RAW" and "raw" not in UNPATCHED and len(self._get_param("Message") or b"") > 4096:
            raise JsonRESTError(
                "ValidationException",
                "Value at 'message' failed to satisfy constraint: Member must have length less than or "
                "equal to 4096",
            )
        return _orig_response_sign(self)
    key_id = self._get_param("KeyId")
    algorithm = self._get_param("SigningAlgorithm")
    self._validate_key_id(key_id)
    _require_enabled(self.kms_backend, key_id)
    key = self.kms_backend.describe_key(key_id)
    if algorithm not in key.signing_algorithms:
        raise JsonRESTError("ValidationException", f"{algorithm} is not valid for this key")
    digest = self._get_param("Message")  # KmsResponse._get_param base64-decodes blobs
    hash_algorithm = _hash_of(algorithm)
    if len(digest) != hash_algorithm.digest_size:
        # AWS: "Digest is invalid length for algorithm"
        raise JsonRESTError("ValidationException", "Digest is invalid length for algorithm")
    private = key.private_key.private_key
    prehashed = utils.Prehashed(hash_algorithm)
    if algorithm.startswith("ECDSA"):
        signature = private.sign(digest, ec.ECDSA(prehashed))
    elif algorithm.startswith("RSASSA_PSS"):
        pss = padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
        signature = private.sign(digest, pss, prehashed)
    else:
        signature = private.sign(digest, padding.PKCS1v15(), prehashed)
    return json.dumps(
        {"KeyId": key.arn, "Signature": base64.b64encode(signature).decode(), "SigningAlgorithm": algorithm}
    )


KmsResponse.sign = _response_sign  # type: ignore[method-assign]


# --- patch 4: CreateAlias is atomic (AWS); moto checks-then-inserts across server threads -----------------
_alias_lock = threading.Lock()
_orig_create_alias = KmsResponse.create_alias


def _create_alias(self: KmsResponse) -> str:
    with _alias_lock:
        return _orig_create_alias(self)


if "alias" not in UNPATCHED:
    KmsResponse.create_alias = _create_alias  # type: ignore[method-assign]


# --- patch 6: a key pending deletion takes no tags -------------------------------------------------------
_orig_tag_resource = KmsBackend.tag_resource


def _tag_resource(self: KmsBackend, arn: str, tags: dict[str, str]) -> None:
    key_id = self.get_key_id(arn)
    if key_id in self.keys and self.keys[key_id].key_state == "PendingDeletion":
        raise JsonRESTError("KMSInvalidStateException", f"{self.keys[key_id].arn} is pending deletion.")
    _orig_tag_resource(self, arn, tags)


if "tag" not in UNPATCHED:
    KmsBackend.tag_resource = _tag_resource  # type: ignore[method-assign]


# --- test control: call counter and fault injection ------------------------------------------------------
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Control:
    """Counts KMS operations (by X-Amz-Target) and injects faults; reached at /_keysvc/*."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, dict[str, Any]] = {}  # operation -> {"code", "count", "mode"}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_keysvc/"):
            return self.control(path, environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        op = target.split(".")[-1] if target.startswith("TrentService.") else ""
        fault = None
        with self.lock:
            if op:
                self.calls[op] += 1
            spec = self.faults.get(op)
            if spec and spec["count"] != 0:
                spec["count"] -= 1
                fault = spec
        if fault and fault["mode"] == "error":
            body = json.dumps({"__type": fault["code"], "message": "injected by test"}).encode()
            start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.1")])
            return [body]
        if fault and fault["mode"] == "lose_response":
            # The operation takes effect, then the answer is lost (as after a network blip).
            for _ in self.app(environ, lambda *a, **k: None):
                pass
            body = json.dumps({"__type": "KMSInternalException", "message": "injected"}).encode()
            start_response("500 Internal Server Error", [("Content-Type", "application/x-amz-json-1.1")])
            return [body]
        return self.app(environ, start_response)

    def control(self, path: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        with self.lock:
            if path == "/_keysvc/calls":
                with _count_lock:
                    answer: Any = dict(self.calls) | {f"Sign:{k}": v for k, v in _message_types.items()}
            elif path == "/_keysvc/calls/reset":
                self.calls.clear()
                with _count_lock:
                    _message_types.clear()
                answer = {}
            elif path == "/_keysvc/fault":
                self.faults[body["op"]] = {
                    "code": body.get("code", "ThrottlingException"),
                    "count": int(body.get("count", -1)),  # -1: until cleared
                    "mode": body.get("mode", "error"),
                }
                answer = {}
            elif path == "/_keysvc/fault/clear":
                self.faults.clear()
                answer = {}
            else:
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [b"{}"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


def main() -> None:
    """Serve moto on 127.0.0.1:PORT with the patches above."""
    port = int(sys.argv[1])
    app = Control(DomainDispatcherApplication(create_backend_app))  # type: ignore[arg-type]
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
