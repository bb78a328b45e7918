"""keysvc/static/connect.js in a real browser: Debian's chromium, headless, driven by Playwright.

Three real HTTP servers on loopback, three origins: the partner's front end (http://127.0.0.1:P, which
imports /static/connect.js straight from the package), a fake Zapier Connect UI (http://127.0.0.2:Q) and a
foreign site (http://127.0.0.3:R). chromium must be installed: `sh tests/tools/ensure_chromium.sh` (the
Makefile's `test` target runs it). Without it these tests fail, never skip: CI must really run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.helpers import LOG_DIR, ROOT

pytestmark = pytest.mark.system

CHROMIUM = Path("/usr/bin/chromium")
ENSURE_CHROMIUM = ROOT / "tests" / "tools" / "ensure_chromium.sh"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = Path(__file__).parent / "connect_js"
STATE = "st-0123456789abcdef"
AUTH_ID = 123456
FORGED_ID = 666
WAIT_MS = 10_000


def _connect_js() -> bytes:
    """connect.js as the installed package ships it (package data, not a path into the source tree)."""
    return resources.files("keysvc").joinpath("static/connect.js").read_bytes()


def _handler(routes: dict[str, tuple[str, bytes]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                self.send_error(404)
                return
            content_type, body = route
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass(frozen=True)
class Sites:
    partner: str
    connect: str
    foreign: str

    def connect_url(self, auth_id: int = AUTH_ID) -> str:
        """What POST /v1/zapier/connect would answer, pointing at the fake Connect UI."""
        return f"{self.connect}/to/SlackAPI?" + urlencode({"token": "ct-test", "auth_id": auth_id})


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    """The three origins, each a real HTTP server on its own loopback address."""
    html = "text/html; charset=utf-8"
    page = {name: (html, (PAGES / name).read_bytes()) for name in ("partner.html", "connect.html", "poster.html")}
    routes = {
        "127.0.0.1": {"/partner.html": page["partner.html"], "/static/connect.js": ("text/javascript", _connect_js())},
        "127.0.0.2": {"/to/SlackAPI": page["connect.html"], "/poster.html": page["poster.html"]},
        "127.0.0.3": {"/poster.html": page["poster.html"]},
    }
    servers = [ThreadingHTTPServer((host, 0), _handler(table)) for host, table in routes.items()]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ports = [server.server_address[1] for server in servers]
        yield Sites(*(f"http://{host}:{port}" for host, port in zip(routes, ports, strict=True)))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium (installed by tests/tools/ensure_chromium.sh when missing), with the browser's popup
    blocker on (Playwright turns it off by default)."""
    if not os.access(CHROMIUM, os.X_OK):
        subprocess.run(["sh", str(ENSURE_CHROMIUM)], check=False, timeout=600)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `sh {ENSURE_CHROMIUM}` (as root; `make test` does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            ignore_default_args=["--disable-popup-blocking"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, sites: Sites) -> Iterator[Page]:
    """The partner's page, in a fresh browser context, with connect.js loaded."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    try:
        partner = context.new_page()
        partner.goto(f"{sites.partner}/partner.html")
        partner.wait_for_function("window.ready === true")
        yield partner
    finally:
        context.close()


def click_connect(page: Page, **options: Any) -> Page:
    """The user clicks "Connect" (a real user gesture) and openConnect opens the popup, which is returned."""
    page.evaluate("options => { window.connectOptions = options; }", {"state": STATE, **options})
    with page.expect_popup() as popup_info:
        page.click("#connect")
    popup = popup_info.value
    popup.wait_for_load_state()
    return popup


def answer(popup: Page, button: str) -> None:
    """The user clicks one of Connect's buttons. Each answer ends with the popup closed, by itself or by
    openConnect, so Playwright may see the page go before it hears the click's end (TargetClosedError):
    that is not a failure. Whether the click happened is what the test's outcome says."""
    try:
        popup.click(button)
    except PlaywrightError as error:
        if "has been closed" not in error.message:
            raise


def outcome(page: Page) -> dict[str, Any]:
    """How openConnect's promise settled: {"resolved": value} or {"rejected": {name, code, ...}}."""
    settled: dict[str, Any] = page.evaluate("window.outcome")
    return settled


def assert_cleaned_up(page: Page, popup: Page) -> None:
    """No message listener or timer of openConnect is left, and the popup is closed."""
    assert page.evaluate("window.liveCounts()") == {"listeners": 0, "timers": 0}
    if not popup.is_closed():
        popup.wait_for_event("close")
    assert popup.is_closed()


def wait_until_seen(page: Page, origin: str, auth_id: int) -> None:
    """The partner's window has received a message from `origin` carrying `auth_id` (so it was delivered)."""
    page.wait_for_function(
        "([origin, id]) => window.seen.some(m => m.origin === origin && m.data && m.data.authId === id)",
        arg=[origin, auth_id],
    )


def test_success_resolves_with_the_id_as_a_string_and_the_state(page: Page, sites: Sites, tmp_path: Path) -> None:
    """The user allows: the promise resolves with the numeric authId as a string and the caller's state,
    the popup is closed and nothing of openConnect is left running."""
    popup = click_connect(page, connectUrl=sites.connect_url(), timeoutMs=WAIT_MS)
    popup.wait_for_selector("#allow")
    shot = tmp_path / "connect-popup.png"
    popup.screenshot(path=str(shot))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, LOG_DIR / "connect-popup.png")
    assert shot.read_bytes().startswith(b"\x89PNG")

    answer(popup, "#allow")

    assert {"resolved": {"authenticationId": str(AUTH_ID), "state": STATE}} == outcome(page)
    assert_cleaned_up(page, popup)


def test_a_popup_that_answers_then_closes_itself_still_succeeds(page: Page, sites: Sites) -> None:
    """Connect posts success and closes its window at once: the message wins over the closed popup."""
    popup = click_connect(page, connectUrl=sites.connect_url())

    answer(popup, "#allow-close")

    assert {"resolved": {"authenticationId": str(AUTH_ID), "state": STATE}} == outcome(page)
    assert_cleaned_up(page, popup)


def test_partner_error_rejects_authentication_error_with_its_code(page: Page, sites: Sites) -> None:
    """The user denies: a ConnectError with code authentication_error, the partner's error and description."""
    popup = click_connect(page, connectUrl=sites.connect_url())

    answer(popup, "#deny")

    rejected = outcome(page)["rejected"]
    assert (rejected["name"], rejected["code"]) == ("ConnectError", "authentication_error")
    assert (
        rejected["error"],
        rejected["errorDescription"],
        rejected["state"],
    ) == ("access_denied", "The user denied access.", STATE)
    assert_cleaned_up(page, popup)


def test_closing_the_popup_rejects_popup_closed(page: Page, sites: Sites) -> None:
    """The user closes the Connect window without answering: popup_closed, long before the timeout."""
    popup = click_connect(page, connectUrl=sites.connect_url(), timeoutMs=60_000)

    popup.close()

    rejected = outcome(page)["rejected"]
    assert (rejected["code"], rejected["state"]) == ("popup_closed", STATE)
    assert_cleaned_up(page, popup)


def test_no_answer_rejects_timeout_and_closes_the_popup(page: Page, sites: Sites) -> None:
    """Nobody answers within timeoutMs: timeout, and openConnect closes the popup itself."""
    popup = click_connect(page, connectUrl=sites.connect_url(), timeoutMs=1000)

    rejected = outcome(page)["rejected"]

    assert (rejected["code"], rejected["state"]) == ("timeout", STATE)
    assert_cleaned_up(page, popup)


def test_a_popup_opened_outside_a_user_gesture_is_blocked(browser: Browser, sites: Sites) -> None:
    """openConnect called while the page loads (no click): the browser's popup blocker makes window.open
    return null, and the promise rejects popup_blocked at once without opening anything."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    try:
        partner = context.new_page()
        options = json.dumps({"connectUrl": sites.connect_url(), "state": STATE})
        partner.goto(f"{sites.partner}/partner.html?" + urlencode({"autostart": options}))
        partner.wait_for_function("window.ready === true")

        rejected = outcome(partner)["rejected"]

        assert (rejected["code"], rejected["state"]) == ("popup_blocked", STATE)
        assert partner.evaluate("window.liveCounts()") == {"listeners": 0, "timers": 0}
        assert [partner] == context.pages
    finally:
        context.close()


def test_a_message_from_a_foreign_origin_is_ignored(page: Page, sites: Sites) -> None:
    """The popup itself, gone on to another origin (as it does to the app's OAuth page), posts a success with
    a forged id: it is delivered but ignored, and the promise resolves with the id Connect sends afterwards."""
    popup = click_connect(page, connectUrl=sites.connect_url())
    with popup.expect_navigation():
        popup.evaluate("url => { location.href = url; }", f"{sites.foreign}/poster.html?auth_id={FORGED_ID}")
    wait_until_seen(page, sites.foreign, FORGED_ID)

    with popup.expect_navigation():
        popup.evaluate("url => { location.href = url; }", sites.connect_url())
    answer(popup, "#allow")

    assert {"resolved": {"authenticationId": str(AUTH_ID), "state": STATE}} == outcome(page)
    assert_cleaned_up(page, popup)


def test_a_message_from_another_connect_window_is_ignored(page: Page, sites: Sites) -> None:
    """A frame of the Connect origin that is not the popup posts a success with a forged id: delivered,
    same origin, but not from the popup, so ignored; the popup's own answer decides."""
    popup = click_connect(page, connectUrl=sites.connect_url())
    page.evaluate(
        "src => { const frame = document.createElement('iframe'); frame.src = src; document.body.append(frame); }",
        f"{sites.connect}/poster.html?auth_id={FORGED_ID}",
    )
    wait_until_seen(page, sites.connect, FORGED_ID)

    answer(popup, "#allow")

    assert {"resolved": {"authenticationId": str(AUTH_ID), "state": STATE}} == outcome(page)
    assert_cleaned_up(page, popup)


def test_an_explicit_connect_origin_that_differs_ignores_the_popup(page: Page, sites: Sites) -> None:
    """With connectOrigin set to another origin, the popup's own (127.0.0.2) answers are not trusted: the
    flow ends in timeout, not success."""
    popup = click_connect(page, connectUrl=sites.connect_url(), connectOrigin=sites.foreign, timeoutMs=1500)

    answer(popup, "#allow")

    assert outcome(page)["rejected"]["code"] == "timeout"
    assert_cleaned_up(page, popup)


BAD_OPTIONS: list[dict[str, Any]] = [
    {"state": STATE},
    {"connectUrl": "/relative", "state": STATE},
    {"connectUrl": "javascript:alert(1)", "state": STATE},
    {"connectUrl": "https://connect.example/to/x?token=ct-secret"},
    {"connectUrl": "https://connect.example/to/x?token=ct-secret", "state": ""},
    {"connectUrl": "https://connect.example/to/x?token=ct-secret", "state": STATE, "connectOrigin": "*"},
    {
        "connectUrl": "https://connect.example/to/x?token=ct-secret",
        "state": STATE,
        "connectOrigin": "https://c.example/p",
    },
    {"connectUrl": "https://connect.example/to/x?token=ct-secret", "state": STATE, "timeoutMs": 0},
    {"connectUrl": "https://connect.example/to/x?token=ct-secret", "state": STATE, "timeoutMs": 2**31},
    {"connectUrl": "https://connect.example/to/x?token=ct-secret", "state": STATE, "timeoutMs": "60000"},
]


def test_bad_arguments_reject_with_a_type_error_and_open_nothing(page: Page) -> None:
    """Each malformed option set rejects with a TypeError before any popup opens; no message repeats the
    Connect URL (it carries a single-use token)."""
    rejected: list[dict[str, str] | None] = page.evaluate(
        """async table => {
            const { openConnect } = await import('/static/connect.js');
            return Promise.all(table.map(options => openConnect(options).then(
                () => null, e => ({ name: e.name, message: e.message }))));
        }""",
        BAD_OPTIONS,
    )

    assert ["TypeError"] * len(BAD_OPTIONS) == [r and r["name"] for r in rejected]
    assert [r for r in rejected if r and ("ct-secret" in r["message"] or "connect.example" in r["message"])] == []
    assert [page] == page.context.pages


# (message data, what readMessage makes of it)
MESSAGES: list[tuple[Any, dict[str, Any] | None]] = [
    ({"type": "authenticationSuccess", "authId": 42}, {"ok": True, "authenticationId": "42"}),
    ({"event": "authenticationSuccess", "authId": 42}, {"ok": True, "authenticationId": "42"}),
    ('{"type": "authenticationSuccess", "authId": 42}', {"ok": True, "authenticationId": "42"}),
    (
        {"type": "authenticationSuccess", "authId": "90071992547409930"},
        {"ok": True, "authenticationId": "90071992547409930"},
    ),
    ({"type": "authenticationSuccess"}, None),
    ({"type": "authenticationSuccess", "authId": -1}, None),
    ({"type": "authenticationSuccess", "authId": 1.5}, None),
    ({"type": "authenticationSuccess", "authId": "12a"}, None),
    ({"type": "authenticationError", "error": "access_denied"}, {"ok": False, "error": "access_denied"}),
    (
        {"type": "authenticationError", "error": "server_error", "error_description": "OAuth\nFailed"},
        {"ok": False, "error": "server_error", "errorDescription": "OAuth Failed"},
    ),
    (
        {"event": "authenticationError", "error": {"code": "invalid_request", "message": "Token expired"}},
        {"ok": False, "error": "invalid_request", "errorDescription": "Token expired"},
    ),
    ({"type": "authenticationError", "error": "no spaces allowed"}, {"ok": False, "error": "server_error"}),
    ({"type": "authenticationError"}, {"ok": False, "error": "server_error"}),
    ({"type": "resize", "height": 300}, None),
    ("not json", None),
    (None, None),
    (42, None),
]


def test_read_message(page: Page) -> None:
    """The accepted message shapes (Zapier's documented one and the plausible variants) and what each means;
    anything else is not an outcome and is ignored."""
    data = [message for message, _ in MESSAGES]

    actual = page.evaluate("table => table.map(data => window.readMessage(data))", data)

    assert [expected for _, expected in MESSAGES] == actual
