"""Which optional install a missing module belongs to: `pip install keysvc` is the client install, and the
`keysvc` command needs `keysvc[server]`. Imports nothing beyond the standard library, so it can speak when
the server's dependencies are absent."""

from __future__ import annotations

# the top-level modules `keysvc[server]` adds to the client install (pyproject.toml, extra "server")
SERVER_MODULES = frozenset({
    "starlette", "uvicorn", "uvloop", "httptools", "jwcrypto", "boto3", "botocore", "apscheduler",
    "prometheus_client", "orjson", "aiohttp",
})
SERVER_EXTRA = "keysvc: the server needs its extra: pip install 'keysvc[server]'"


def missing_server_extra(exc: ModuleNotFoundError) -> bool:
    """Whether `exc` is a server dependency that is not installed (rather than a bug of keysvc's own)."""
    return (exc.name or "").partition(".")[0] in SERVER_MODULES
