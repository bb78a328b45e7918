"""The layering of docs/architecture.md, enforced: keysvc's import graph, read from the source with `ast`.

An edge is an import: module level (`mod -> target`), inside a function (lazy, run when the function is),
or under `if TYPE_CHECKING:` (type-only: it loads nothing, but it still ties the two modules together, so
the cycle checks count it; what a module loads, `closure`, does not).

The client/server line is a folder: keysvc/client/ is exactly what `pip install keysvc[client]` ships.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "keysvc"

# the domain at the bottom: pure decisions and records, no I/O (errors and config are below everything)
DOMAIN = ("keysvc.records", "keysvc.lifecycle", "keysvc.jwks", "keysvc.tokens", "keysvc.events",
          "keysvc.views", "keysvc.discovery", "keysvc.algorithms", "keysvc.clock")
# what only the running service may import: the keyring and everything built over it
SERVICE_STACK = ("keysvc.keyring", "keysvc.operations", "keysvc.batching", "keysvc.http", "keysvc.service",
                 "keysvc.serve", "keysvc.cli", "keysvc.partner", "keysvc.metrics", "keysvc.mirror",
                 "keysvc.canary", "keysvc.preflight", "keysvc.audit", "keysvc.logs")
IO_LIBRARIES = ("boto3", "botocore", "httpx", "aiohttp", "starlette", "uvicorn", "prometheus_client",
                "apscheduler")
# the Python clients other services install (`keysvc[client]`: httpx, PyYAML, cryptography): one folder
CLIENT_PACKAGE = "keysvc.client"
SERVER_LIBRARIES = ("boto3", "botocore", "aiohttp", "starlette", "uvicorn", "uvloop", "prometheus_client",
                    "apscheduler", "orjson", "jwcrypto")


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (a keysvc module, or a top-level third-party name); `lazy` inside a function,
    `type_only` under `if TYPE_CHECKING:`."""

    source: str
    target: str
    lazy: bool
    type_only: bool = False


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(name: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name if alias.name.startswith("keysvc") else alias.name.split(".")[0]
        return
    base = node.module or ""
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    if not base.startswith("keysvc"):
        yield base.split(".")[0]
        return
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in modules() else base  # `from pkg import mod` imports the module


def _walk(name: str, statements: Iterable[ast.stmt], lazy: bool, is_package: bool,
          type_only: bool = False) -> Iterator[Edge]:
    for node in statements:
        if isinstance(node, ast.If) and _type_checking(node):
            yield from _walk(name, node.body, lazy, is_package, True)
            yield from _walk(name, node.orelse, lazy, is_package, type_only)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield from (Edge(name, target, lazy, type_only)
                        for target in _targets(name, node, is_package) if target != name)
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _walk(name, [c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)],
                                 inner, is_package, type_only)
            if isinstance(node, ast.ExceptHandler):
                break


@cache
def edges() -> tuple[Edge, ...]:
    """Every import statement of the package, TYPE_CHECKING-only ones included (`type_only`)."""
    found: list[Edge] = []
    for name, path in sorted(modules().items()):
        tree = ast.parse(path.read_text(), str(path))
        found.extend(_walk(name, tree.body, False, path.name == "__init__.py"))
    return tuple(found)


def under(name: str, prefixes: Iterable[str]) -> bool:
    """`name` is one of `prefixes` or inside one of them (a package)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def closure(start: str, *, lazy: bool) -> set[str]:
    """Every name `start` loads, transitively (module level only unless `lazy`; never a type-only import)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        for edge in edges():
            if edge.source == current and (lazy or not edge.lazy) and not edge.type_only and edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    return seen


def test_the_graph_reader_sees_imports_of_every_kind() -> None:
    """The reader finds a module-level import, a `from package import module` as the module, a lazy import
    inside a function, and marks the TYPE_CHECKING-only ones as such (otherwise every rule below proves
    nothing)."""
    found = set(edges())
    assert Edge("keysvc.keyring", "keysvc.lifecycle", False) in found  # from keysvc import jwks, lifecycle, ...
    assert Edge("keysvc.service", "keysvc.partner.wiring", True) in found  # inside build_service
    assert Edge("keysvc.mirror.sync", "boto3", False) not in found
    assert Edge("keysvc.lifecycle", "keysvc.config", False, type_only=True) in found  # if TYPE_CHECKING:
    assert "keysvc.config" not in closure("keysvc.lifecycle", lazy=True)  # ... which loads nothing


def _cycles(include_lazy: bool, include_types: bool = False, within: tuple[str, ...] = ("keysvc",)
            ) -> list[list[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules() if under(name, within)}
    for edge in edges():
        if edge.source not in graph:
            continue
        if (include_lazy or not edge.lazy) and (include_types or not edge.type_only) and edge.target in graph:
            graph[edge.source].add(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_the_module_level_import_graph_is_acyclic() -> None:
    """No import cycle at module level: each module can be imported on its own, in any order (lazy imports
    inside functions are allowed and used for what is optional: the mirror, the partner side, the canary)."""
    assert _cycles(include_lazy=False) == []


def test_no_cycle_hides_in_an_import_inside_a_function() -> None:
    """Lazy imports only defer what is optional; they never close a loop (the configuration and the token
    exchange's settings once imported each other that way)."""
    assert _cycles(include_lazy=True) == []


def test_no_cycle_hides_in_a_type_checking_import() -> None:
    """Not even at the type level: an import under `if TYPE_CHECKING:` still makes one module's meaning
    depend on the other's, so it counts (the domain events once named the keyring's view and the
    operations' report that way, from below both)."""
    assert _cycles(include_lazy=True, include_types=True) == []


@pytest.mark.parametrize("module", DOMAIN)
def test_the_domain_imports_only_the_domain_and_no_io_library(module: str) -> None:
    """records, lifecycle, jwks, tokens, events, views, discovery (and algorithms, clock) import, even
    lazily or for types only, only each other, errors and config: never a backend, the keyring, HTTP, the
    service, the CLI or the partner side; and what they load at import reaches no I/O library."""
    direct = {e.target for e in edges() if e.source == module and e.target.startswith("keysvc")}
    assert sorted(t for t in direct if not under(t, (*DOMAIN, "keysvc.errors", "keysvc.config"))) == []
    assert sorted(t for t in closure(module, lazy=False) if under(t, IO_LIBRARIES)) == []


def test_backends_depend_on_the_domain_never_on_what_uses_them() -> None:
    """keysvc.backends.* import the domain (records, jwks, algorithms), errors, config and faults: never the
    keyring, the operations, HTTP, the service, the CLI, metrics or the partner side."""
    above = (*SERVICE_STACK, CLIENT_PACKAGE)
    backends = [e for e in edges() if under(e.source, ("keysvc.backends",))]
    wrong = sorted((e.source, e.target) for e in backends if under(e.target, above))
    assert wrong == []


def test_configuration_loads_no_server_or_aws_library() -> None:
    """Reading the configuration (keysvc.config, module level) loads neither boto3/botocore nor starlette,
    uvicorn, prometheus-client or httpx: `check-config --offline` and the clients can parse it anywhere."""
    reached = closure("keysvc.config", lazy=False)
    assert sorted(t for t in reached if under(t, IO_LIBRARIES)) == []
    assert sorted(t for t in reached if under(t, SERVICE_STACK)) == []


def client_modules() -> list[str]:
    """Every module in the client folder (keysvc/client/)."""
    return sorted(name for name in modules() if under(name, (CLIENT_PACKAGE,)))


def test_the_client_folder_holds_the_python_clients() -> None:
    """keysvc/client/ holds the clients other services use (RemoteSigner, TokenExchanger, ZapierClient, their
    CLIs, the single-flight cache, the Connect URL helpers): the rules below cover them by folder, so a
    client module added there is covered without naming it."""
    names = client_modules()
    assert {f"{CLIENT_PACKAGE}.{m}" for m in ("signer", "exchanger", "cache", "connect", "zapier", "oauth",
                                               "token_endpoint", "exchange_command", "zapier_command")} <= set(names)


@pytest.mark.parametrize("module", client_modules())
def test_client_modules_never_import_the_server_stack(module: str) -> None:
    """The Python clients (every module of keysvc/client/) import no keysvc server module, even lazily: no
    keyring, HTTP app, service, partner server side, metrics or logging setup; and what they load at import
    reaches no server library (tests/test_packaging.py proves it again by importing them)."""
    reached = closure(module, lazy=True)
    assert sorted(t for t in reached if under(t, SERVICE_STACK)) == []
    assert sorted(t for t in closure(module, lazy=False) if under(t, SERVER_LIBRARIES)) == []


def test_backends_build_on_the_configuration_never_the_reverse() -> None:
    """keysvc.config and keysvc.backends depend one way: a backend reads its settings type from
    keysvc.config (keysvc.config.backends), and keysvc.backends.registry opens each one; nothing in
    keysvc.config imports keysvc.backends, not at module level, not lazily, not even under TYPE_CHECKING."""
    back = sorted({(e.source, e.target) for e in edges()
                   if under(e.source, ("keysvc.config",)) and under(e.target, ("keysvc.backends",))})
    forward = {(e.source, e.target) for e in edges()
               if under(e.source, ("keysvc.backends",)) and under(e.target, ("keysvc.config",))}

    assert back == []
    assert ("keysvc.backends.registry", "keysvc.config.backends") in forward  # the rule is about a real edge


def test_the_server_side_imports_no_httpx() -> None:
    """The server's one way out to the partner is aiohttp (keysvc.partner.outbound): no module of the partner
    package, the service or its HTTP apps imports httpx at module level (the clients keep it)."""
    server = [name for name in modules() if under(name, ("keysvc.partner", "keysvc.service", "keysvc.serve",
                                                          "keysvc.http", "keysvc.canary", "keysvc.openapi"))]
    assert sorted(name for name in server if "httpx" in closure(name, lazy=False)) == []


def test_the_partner_wing_has_no_cycle_even_at_the_type_level() -> None:
    """keysvc.client and keysvc.partner import each other in one direction only (partner -> client), and
    no loop closes among their modules even counting imports under TYPE_CHECKING."""
    assert _cycles(include_lazy=True, include_types=True, within=("keysvc.client", "keysvc.partner")) == []
    wrong = sorted((e.source, e.target) for e in edges()
                   if under(e.source, (CLIENT_PACKAGE,)) and under(e.target, ("keysvc.partner",)))
    assert wrong == []


# the classes that define metric objects: each writes its own, and nothing else names one of them
METRICS_OWNERS = {"keysvc.metrics": "Metrics", "keysvc.partner.observers": "PartnerMetrics",
                  "keysvc.canary": "CanaryMetrics"}


def _metric_attributes() -> dict[str, str]:
    """Every metric object's attribute name -> the class that owns it, read from live instances."""
    from prometheus_client import CollectorRegistry

    from keysvc.canary import CanaryMetrics
    from keysvc.metrics import Metrics
    from keysvc.partner.observers import PartnerMetrics

    names: dict[str, str] = {}
    for owner in (Metrics(), PartnerMetrics(), CanaryMetrics()):
        for attribute, value in vars(owner).items():
            if hasattr(value, "collect") and not isinstance(value, CollectorRegistry):
                names[attribute] = type(owner).__name__
    return names


def _names_outside(tree: ast.AST, attributes: dict[str, str], owner: str | None) -> Iterator[tuple[int, str]]:
    """(line, attribute) of each metric attribute named outside the class `owner`."""
    def visit(node: ast.AST, inside: bool) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.ClassDef) and node.name == owner:
            inside = True
        if isinstance(node, ast.Attribute) and node.attr in attributes and not inside:
            yield node.lineno, node.attr
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inside)
    yield from visit(tree, False)


def test_metrics_are_written_only_by_the_class_that_defines_them() -> None:
    """One way to count: code says what happened (a keyring event to the observers, or a call such as
    `Metrics.signed`, `PartnerMetrics.call`, `CanaryMetrics.ran`) and only the metrics class touches its
    counters. No module reaches into a metric object (`metrics.sign_requests.inc(...)`)."""
    attributes = _metric_attributes()
    assert {"sign_requests", "jwks_requests", "zapier_calls", "canary_runs"} <= attributes.keys()  # it sees them
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        found += [f"{name}:{line} {attr}" for line, attr in _names_outside(tree, attributes, METRICS_OWNERS.get(name))]
    assert found == []
