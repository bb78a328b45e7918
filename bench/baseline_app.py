"""Baseline servers on keysvc's own uvicorn settings (`keysvc.serve.listener`, uvloop like `keysvc serve`).

    python bench/baseline_app.py KIND BODY_FILE HEADERS_JSON

KIND is `raw` (a bare ASGI app answering every request with the bytes of BODY_FILE and the given headers),
`starlette-get` (one Starlette GET route doing the same) or `starlette-post` (one Starlette POST route that
reads the request body and returns BODY_FILE's bytes as application/json). Prints {"url": ...} once
listening on 127.0.0.1, then serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keysvc.serve import bound_address, listener


def raw_app(body: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    message = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(start)
        await send(message)

    return app


def starlette_app(kind: str, body: bytes, headers: dict[str, str]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def get(request: Request) -> Response:
        return Response(body, headers=headers, media_type="application/json")

    async def post(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    route = Route("/{path:path}", get, methods=["GET"]) if kind == "starlette-get" else Route(
        "/{path:path}", post, methods=["POST"])
    return Starlette(routes=[route])


async def main(kind: str, body: bytes, headers: dict[str, str]) -> None:
    if kind == "raw":
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       *((k.lower().encode(), v.encode()) for k, v in headers.items())]
        app = raw_app(body, raw_headers)
    else:
        app = starlette_app(kind, body, headers)
    server = listener(app, "127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise SystemExit("baseline server failed to start")
        await asyncio.sleep(0.01)
    print(json.dumps({"url": f"http://{bound_address(server)}"}), flush=True)
    await stop.wait()
    server.should_exit = True
    await task


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]).read_bytes(), json.loads(sys.argv[3])))
