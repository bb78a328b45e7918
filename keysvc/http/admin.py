"""The admin routes of the internal listener (admin clients only): list keys, rotate a keyset, revoke a key.

An admin client administers the keysets of its `admin_keysets` only (config `admin: true`: every keyset in
its `keysets`; `admin: [a, b]`: those): GET /v1/keys lists their keys, a rotation of another keyset is
403, and a revocation of a kid outside them is 404 "no such key", the answer to a kid that exists nowhere,
so an admin learns nothing about the keys of keysets it does not hold.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from keysvc import operations
from keysvc.config import Settings
from keysvc.errors import Forbidden, InvalidRequest, NotFound
from keysvc.http.context import InternalApi
from keysvc.keyring import Keyring


class AdminRoutes:
    """GET /v1/keys, POST /v1/keysets/{name}/rotate, POST /v1/keys/{kid}/revoke."""

    def __init__(self, api: InternalApi, settings: Settings, keyring: Keyring) -> None:
        self.api = api
        self.settings = settings
        self.keyring = keyring

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes (each handler's name is its `route` label in metrics and access lines)."""
        return [
            Route("/v1/keys", self.list_keys, methods=["GET"]),
            Route("/v1/keysets/{name}/rotate", self.rotate, methods=["POST"]),
            Route("/v1/keys/{kid}/revoke", self.revoke, methods=["POST"]),
        ]

    async def list_keys(self, request: Request) -> Response:
        """GET /v1/keys (admin)"""
        client = self.api.admin(request)
        now = self.keyring.clock.now()
        rows: list[dict[str, object]] = []
        for name, ks in self.settings.keysets.items():
            if name not in client.admin_keysets:
                continue
            view = self.keyring.view(name)
            if view is not None:
                rows.extend(operations.describe(list(view.records), ks, now))
        return JSONResponse({"keys": rows})

    async def rotate(self, request: Request) -> Response:
        """POST /v1/keysets/{name}/rotate (admin): promote the pending key now."""
        client = self.api.admin(request)
        body = await self.api.body(request, optional=True)
        if not isinstance(body, dict) or set(body) - {"force"} or not isinstance(body.get("force", False), bool):
            raise InvalidRequest('the body is optional: {"force": true|false}')
        name = request.path_params["name"]
        ks = self.settings.keysets.get(name)
        if ks is None:
            raise NotFound("no such keyset")
        if name not in client.admin_keysets:
            raise Forbidden("this client is not an admin of this keyset")
        record = await self.keyring.rotate(ks.name, f"client:{client.name}", force=body.get("force", False))
        return JSONResponse({"keyset": name, "active_kid": record.kid, "activated_at": record.activates_at})

    async def revoke(self, request: Request) -> Response:
        """POST /v1/keys/{kid}/revoke (admin)"""
        client = self.api.admin(request)
        await self.api.body(request, optional=True)
        kid = request.path_params["kid"]
        record = await self.keyring.revoke(kid, f"client:{client.name}", keysets=client.admin_keysets)
        return JSONResponse({"keyset": record.keyset, "kid": record.kid, "revoked_at": record.revoked_at})
