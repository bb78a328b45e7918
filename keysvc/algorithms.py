"""JOSE signature algorithms: one table from name to key type, hash and signature shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


@dataclass(frozen=True)
class Algorithm:
    """How one JOSE `alg` signs: key family, hash, EC curve and signature width."""

    name: str
    family: str  # "RSA", "RSA-PSS", "EC", "OKP"
    hash_name: str | None  # "SHA256", ... (None for EdDSA)
    curve: str | None = None  # JWK crv: P-256, P-384, P-521, Ed25519
    coord_size: int = 0  # EC: bytes per R and S in the JOSE signature

    def hash(self) -> hashes.HashAlgorithm:
        """A fresh `cryptography` hash object for this algorithm."""
        return _HASHES[self.hash_name or "SHA256"]()

    def ec_curve(self) -> ec.EllipticCurve:
        """The `cryptography` curve object of an EC algorithm."""
        return _CURVES[self.curve or ""]()


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}
_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("RS256", "RSA", "SHA256"),
        Algorithm("RS384", "RSA", "SHA384"),
        Algorithm("RS512", "RSA", "SHA512"),
        Algorithm("PS256", "RSA-PSS", "SHA256"),
        Algorithm("PS384", "RSA-PSS", "SHA384"),
        Algorithm("PS512", "RSA-PSS", "SHA512"),
        Algorithm("ES256", "EC", "SHA256", "P-256", 32),
        Algorithm("ES384", "EC", "SHA384", "P-384", 48),
        Algorithm("ES512", "EC", "SHA512", "P-521", 66),
        Algorithm("EdDSA", "OKP", None, "Ed25519"),
    )
}

RSA_KEY_BITS = 2048  # what every JOSE verifier and AWS KMS accept; NIST SP 800-57: acceptable through 2030


def der_to_jose(der: bytes, coord_size: int) -> bytes:
    """Convert a DER ECDSA signature to JOSE's fixed-width R||S, keeping leading zeros (RFC 7518 §3.4)."""
    # SEQUENCE { INTEGER r, INTEGER s } with one-byte lengths (every P-256 and P-384 signature) is sliced
    # here, four times faster than decode_dss_signature (it is on the /v1/sign hot path); anything else
    # (P-521's long-form length, or a malformed input) goes to decode_dss_signature.
    size = len(der)
    if size > 8 and der[0] == 0x30 and der[1] == size - 2 < 0x80 and der[2] == 0x02:
        r_end = 4 + der[3]
        if r_end + 2 < size and der[r_end] == 0x02 and der[r_end + 1] == size - r_end - 2:
            r, s = der[4:r_end], der[r_end + 2:]
            if len(r) <= coord_size + 1 and len(s) <= coord_size + 1:  # + 1: DER's leading zero byte
                return r[-coord_size:].rjust(coord_size, b"\0") + s[-coord_size:].rjust(coord_size, b"\0")
    r_int, s_int = decode_dss_signature(der)
    return r_int.to_bytes(coord_size, "big") + s_int.to_bytes(coord_size, "big")
