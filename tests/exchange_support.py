"""What the token-exchange tests share: run an ASGI app on 127.0.0.1 in a thread, and a stand-in for keysvc
(a signer and the JWKS that publishes its keys) for the tests that do not start `keysvc serve`.

The stand-in signs exactly as the README says `/v1/sign` does: it sets iss, iat, nbf = iat, exp, jti and
the kid header; the caller's claims are used as given.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from keysvc.config import Secret, TokenExchangeSettings
from keysvc.records import SignedToken
from tests.helpers import wait_for
from tests.partner_server import PartnerServer, PartnerState

ISSUER = "https://partner.example.com"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run `app` with uvicorn on an ephemeral 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", ws="none", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start", interval=0.01)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def new_key(alg: str) -> PrivateKey:
    """A fresh private key for `alg` (RS* -> RSA 2048, ES256/384/512 -> P-256/384/521)."""
    if alg.startswith("RS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]()
    return ec.generate_private_key(curve)


def public_jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of `key`, as a JWKS publishes it."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@dataclass
class FakeSigner:
    """A `TokenSigner` holding one key in memory; `clock` (epoch seconds) lets a test sign in the past."""

    key: PrivateKey
    kid: str
    alg: str
    issuer: str = ISSUER
    clock: Callable[[], float] = time.time
    calls: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None, **kw: Any) -> FakeSigner:
        """A signer with a fresh key of `alg`."""
        return cls(new_key(alg), kid or f"test-{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, **kw)

    def jwk(self) -> dict[str, Any]:
        """This signer's public JWK."""
        return public_jwk(self.key, self.kid, self.alg)

    async def sign(self, claims: Mapping[str, Any], ttl: int, keyset: str | None = None) -> SignedToken:
        """Sign like keysvc's /v1/sign: iss, iat, nbf = iat, exp, jti and the kid header are ours."""
        self.calls.append({"claims": dict(claims), "ttl": ttl, "keyset": keyset})
        now = int(self.clock())
        payload = {
            **claims,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(payload, self.key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})
        return SignedToken(token, self.kid, self.alg, now + ttl)


@dataclass
class FakeJwks:
    """The public half of the stand-in keysvc: serves the JWKs it holds at /.well-known/jwks.json."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def app(self) -> Starlette:
        """A Starlette app serving the JWKS."""

        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": self.keys}, headers={"Cache-Control": "public, max-age=300"})

        return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


@dataclass
class World:
    """A stand-in keysvc (signers + JWKS over HTTP) and the partner's token server, both on 127.0.0.1."""

    signers: dict[str, FakeSigner]
    jwks: FakeJwks
    partner: PartnerState
    token_url: str

    def settings(self, **overrides: Any) -> TokenExchangeSettings:
        """TokenExchangeSettings pointing at the partner, short timeouts, overridable."""
        values: dict[str, Any] = {
            "client_id": self.partner.client_id,
            "client_secret": Secret(self.partner.client_secret),
            "token_url": self.token_url,
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "total_timeout": 10.0,
        }
        return TokenExchangeSettings(**(values | overrides))


@contextmanager
def running_world(algs: tuple[str, ...] = ("ES256", "RS256", "ES512")) -> Iterator[World]:
    """Start the JWKS server and the partner server; one published signer per alg."""
    signers = {alg: FakeSigner.generate(alg) for alg in algs}
    jwks = FakeJwks([s.jwk() for s in signers.values()])
    with serve(jwks.app()) as jwks_url:
        state = PartnerState(jwks_url=f"{jwks_url}/.well-known/jwks.json", issuer=ISSUER)
        with serve(PartnerServer(state).app()) as partner_url:
            yield World(signers, jwks, state, f"{partner_url}/oauth/token")
