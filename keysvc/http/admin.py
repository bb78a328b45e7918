"""The admin routes of the internal listener (admin clients only): list keys, rotate a keyset, revoke a key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from keysvc import operations
from keysvc.config import Settings
from keysvc.errors import InvalidRequest, NotFound
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
        self.api.admin(request)
        now = self.keyring.clock.now()
        rows: list[dict[str, object]] = []
        for name, ks in self.settings.keysets.items():
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
        record = await self.keyring.rotate(ks.name, f"client:{client.name}", force=body.get("force", False))
        return JSONResponse({"keyset": name, "active_kid": record.kid, "activated_at": record.activates_at})

    async def revoke(self, request: Request) -> Response:
        """POST /v1/keys/{kid}/revoke (admin)"""
        client = self.api.admin(request)
        await self.api.body(request, optional=True)
        kid = request.path_params["kid"]
        record = await self.keyring.revoke(kid, f"client:{client.name}")
        return JSONResponse({"keyset": record.keyset, "kid": record.kid, "revoked_at": record.revoked_at})
