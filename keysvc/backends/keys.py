"""In-process key material: generate, import, export public JWK, and sign (file backend; tests)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwcrypto.jwk import JWK

from keysvc.algorithms import ALGORITHMS, RSA_KEY_BITS, Algorithm, der_to_jose
from keysvc.errors import InvalidKeyMaterial
from keysvc.jwks import public_members, thumbprint

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192
RSA_EXPONENT = 65537


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux applies setpriority to one thread id)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class _KeygenThread:
    """RSA key generation takes tens of milliseconds of CPU with the GIL released. Run at the lowest
    priority, it yields the core to the request-serving thread instead of competing with it: the reconcile
    that creates the next pending key right after an activation adds no latency spike, even on one core.
    The thread starts with the first key generated, not when the module is imported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def run(self, alg: str, rsa_bits: int) -> PrivateKey:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, "keysvc-keygen", initializer=_lower_priority)
            pool = self._pool
        return pool.submit(_generate, alg, rsa_bits).result()


_KEYGEN = _KeygenThread()


def generate(alg: str, rsa_bits: int = RSA_KEY_BITS) -> PrivateKey:
    """A fresh private key for a JOSE algorithm, generated on a low-priority thread (blocks until done)."""
    return _KEYGEN.run(alg, rsa_bits)


def _generate(alg: str, rsa_bits: int) -> PrivateKey:
    spec = ALGORITHMS[alg]
    if spec.family in ("RSA", "RSA-PSS"):
        return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=rsa_bits)
    if spec.family == "EC":
        return ec.generate_private_key(spec.ec_curve())
    return ed25519.Ed25519PrivateKey.generate()


def check_key_fits(key: object, alg: str) -> PrivateKey:
    """Refuse a private key that cannot sign with `alg` (wrong type, curve, or a weak RSA size)."""
    spec = ALGORITHMS[alg]
    if spec.family in ("RSA", "RSA-PSS") and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < RSA_MIN_BITS:
            raise InvalidKeyMaterial(f"RSA key of {key.key_size} bits is too weak ({RSA_MIN_BITS} at least)")
        if key.key_size > RSA_MAX_BITS:
            # every signature costs O(bits^3): a huge imported key would make each /v1/sign a CPU sink
            raise InvalidKeyMaterial(f"RSA key of {key.key_size} bits is too large ({RSA_MAX_BITS} at most)")
        exponent = key.public_key().public_numbers().e
        if exponent != RSA_EXPONENT:
            # e = 3 invites the signature-forgery attacks on lax PKCS#1 v1.5 verifiers (Bleichenbacher 2006)
            raise InvalidKeyMaterial(f"RSA public exponent {exponent} refused ({RSA_EXPONENT} required)")
        return key
    if spec.family == "EC" and isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != spec.ec_curve().name:
            raise InvalidKeyMaterial(f"{alg} needs curve {spec.curve}, the key is on {key.curve.name}")
        return key
    if spec.family == "OKP" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise InvalidKeyMaterial(f"the key's type does not fit algorithm {alg}")


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public JWK members (kty, n/e or crv/x/y) of a private key."""
    exported = JWK.from_pyca(key.public_key()).export_public(as_dict=True)
    return public_members({k: str(v) for k, v in exported.items()})


def kid_of(key: PrivateKey) -> str:
    """The RFC 7638 thumbprint of the key's public half."""
    return thumbprint(public_jwk(key))


def _sign_function(key: PrivateKey, spec: Algorithm) -> Callable[[bytes], bytes]:
    if spec.family == "RSA":
        assert isinstance(key, rsa.RSAPrivateKey)  # nosec B101 - type narrowing, not a security check
        rsa_key, pkcs1, digest = key, padding.PKCS1v15(), spec.hash()
        return lambda data: rsa_key.sign(data, pkcs1, digest)
    if spec.family == "RSA-PSS":
        assert isinstance(key, rsa.RSAPrivateKey)  # nosec B101 - type narrowing, not a security check
        pss_key, digest = key, spec.hash()
        # RFC 7518 §3.5: salt length = hash length (not the cryptography default of maximum)
        pss = padding.PSS(mgf=padding.MGF1(spec.hash()), salt_length=digest.digest_size)
        return lambda data: pss_key.sign(data, pss, digest)
    if spec.family == "EC":
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # nosec B101 - type narrowing, not a security check
        ec_key, ecdsa, size = key, ec.ECDSA(spec.hash()), spec.coord_size
        return lambda data: der_to_jose(ec_key.sign(data, ecdsa), size)
    assert isinstance(key, ed25519.Ed25519PrivateKey)  # nosec B101 - type narrowing, not a security check
    return key.sign


@dataclass(frozen=True)
class LocalSigner:
    """Signs in-process with a private key held in memory."""

    kid: str
    alg: str
    key: PrivateKey = field(repr=False)
    in_process: bool = True
    # The JOSE signature of a signing input: the algorithm's function itself rather than a method calling
    # it (one Python call less per token on the /v1/sign hot path).
    sign: Callable[[bytes], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sign", _sign_function(self.key, ALGORITHMS[self.alg]))


def to_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM, encrypted with the passphrase when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def from_pem(pem: bytes, passphrase: bytes | None) -> object:
    """Load a PEM private key (PKCS#8 or traditional). Raises ValueError or TypeError when it can't."""
    return serialization.load_pem_private_key(pem, password=passphrase)
