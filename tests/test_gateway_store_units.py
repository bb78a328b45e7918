"""The gateway store's pure parts: the GCRA budget arithmetic, store URLs and passwords, the local budget,
state digests, what the package may import."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest

import keysvc.partner.store
from keysvc.errors import KeysvcError
from keysvc.partner.store import (
    LocalBudget,
    SharedBudget,
    StoreSettings,
    StoreUnavailable,
    open_store,
    read_password,
    state_digest,
)
from keysvc.partner.store.base import check_digest
from keysvc.partner.store.gcra import BudgetState, Limit, Refused, admit, cool_down

pytestmark = pytest.mark.unit

T = 1.0  # per_minute=60: one request a second
L = Limit(60, 3)


@pytest.mark.parametrize(("state", "now", "max_wait", "decision", "tat_after"), [
    (BudgetState(), 100.0, 0.0, 0.0, 101.0),                          # a fresh budget: send now
    (BudgetState(tat=101.0), 100.0, 0.0, 0.0, 102.0),                 # second of the burst of 3
    (BudgetState(tat=102.0), 100.0, 0.0, 0.0, 103.0),                 # third: the burst is spent
    (BudgetState(tat=103.0), 100.0, 0.0, Refused(1, False), 103.0),   # fourth at once: refused, unchanged
    (BudgetState(tat=103.0), 100.0, 1.0, 1.0, 104.0),                 # ... or reserved: wait one interval
    (BudgetState(tat=104.0), 100.0, 1.5, Refused(2, False), 104.0),   # a 2 s wait is past max_wait 1.5
    (BudgetState(tat=103.0), 101.0, 0.0, 0.0, 104.0),                 # one interval later: one more now
    (BudgetState(tat=50.0), 100.0, 0.0, 0.0, 101.0),                  # an old tat counts from now (no credit)
    (BudgetState(tat=0.0, cooldown_until=130.0), 100.0, 60.0, Refused(30, True), 0.0),  # cooling: nothing
    (BudgetState(tat=0.0, cooldown_until=100.0), 100.0, 0.0, 0.0, 101.0),               # cooldown over
])
def test_gcra_admits_the_burst_then_one_per_interval(state: BudgetState, now: float, max_wait: float,
                                                     decision: float | Refused, tat_after: float) -> None:
    """admit: `burst` requests at once, then one per 60/per_minute seconds, reserving within max_wait; a
    refusal leaves the state as it was; a cooldown refuses everything with the time left (cooling=True)."""
    got, after = admit(state, L, now, max_wait)
    assert (got, after.tat, after.cooldown_until) == (decision, tat_after, state.cooldown_until)


def test_gcra_never_admits_more_than_burst_plus_rate_in_any_window() -> None:
    """Driven flat out (asking every 10 ms for 120 s, waiting up to 2 s), the requests' send times hold
    `burst + per_minute * W / 60` in every window W: the bound the shared budget promises."""
    limit, state, sends = Limit(60, 10), BudgetState(), []
    for step in range(12_000):
        now = 1000.0 + step * 0.01
        decision, state = admit(state, limit, now, 2.0)
        if not isinstance(decision, Refused):
            sends.append(now + decision)
    for window in (1.0, 10.0, 60.0):
        worst = max(sum(1 for s in sends[i:] if s <= start + window + 1e-9) for i, start in enumerate(sends))
        assert worst <= limit.burst + math.floor(window / limit.interval + 1e-9)
    assert len(sends) >= 10 + 119  # and it does not under-admit: the burst, then one a second


@pytest.mark.parametrize(("state", "now", "retry_after", "until", "tat"), [
    (BudgetState(), 100.0, 60.0, 160.0, 103.0),                      # empties the bucket, cools 60 s
    (BudgetState(tat=200.0), 100.0, 10.0, 110.0, 200.0),             # a later tat stays
    (BudgetState(cooldown_until=300.0), 100.0, 10.0, 300.0, 103.0),  # a later cooldown end wins
    (BudgetState(), 100.0, 0.0, 101.0, 103.0),                       # Retry-After 0 still cools 1 s
])
def test_cool_down_takes_the_later_end_and_empties_the_bucket(state: BudgetState, now: float, retry_after: float,
                                                             until: float, tat: float) -> None:
    """cool_down: cooldown_until = max(existing, now + max(retry_after, 1)); tat >= now + burst * interval,
    so after a short cooldown sending resumes at the average rate, not with a full burst."""
    assert cool_down(state, L, now, retry_after) == BudgetState(tat, until)


def test_limits_are_checked_and_divide_for_the_fallback() -> None:
    """A limit needs per_minute > 0 and burst >= 1; divided(3) is a third of the rate and of the burst,
    the burst at least 1."""
    for per_minute, burst in ((0, 1), (-1, 1), (60, 0)):
        with pytest.raises(ValueError, match="per_minute"):
            Limit(per_minute, burst)
    assert Limit(60, 10).divided(3) == Limit(20, 4)
    assert Limit(60, 1).divided(3) == Limit(20, 1)
    with pytest.raises(ValueError, match="divisor"):
        Limit(60, 10).divided(0)


def test_the_local_budget_is_the_same_arithmetic_with_its_own_cooldown() -> None:
    """LocalBudget: the burst, then a refusal; a 429 refuses with cooling=True until its end; another
    replica's cooldown noted from the store is honoured too."""
    local = LocalBudget(Limit(60, 2))
    assert [local.admit(10.0, 0.0) for _ in range(3)] == [0.0, 0.0, Refused(1, False)]
    assert local.cool_down(10.0, 5.0) == 15.0
    assert local.admit(11.0, 10.0) == Refused(4, True)
    assert local.cooling_for(11.0) == 4.0
    local.note_cooldown(40.0)
    assert local.cooling_for(20.0) == 20.0
    assert local.cooling_for(41.0) == 0.0


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///.keysvc-dev/gateway.db", StoreSettings("sqlite", path=Path(".keysvc-dev/gateway.db"))),
    ("sqlite:////var/lib/keysvc/gateway.db", StoreSettings("sqlite", path=Path("/var/lib/keysvc/gateway.db"))),
    ("postgresql://keysvc@db:5433/gw", StoreSettings("postgresql", host="db", port=5433, user="keysvc",
                                                     database="gw")),
    ("postgres://keysvc@db/gw", StoreSettings("postgresql", host="db", port=5432, user="keysvc", database="gw")),
])
def test_store_urls_parse(url: str, expected: StoreSettings) -> None:
    """sqlite:/// (relative) and sqlite://// (absolute) name a file; postgresql:// (or postgres://) names
    user, host, port (5432 by default) and database."""
    assert StoreSettings.from_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://keysvc@db/gw", "must start with"),
    ("gateway.db", "must start with"),
    ("sqlite://", "sqlite:///relative"),
    ("sqlite:///gw.db?mode=ro", "no query"),
    ("postgresql://keysvc:hunter2@db/gw", "must not carry a password"),
    ("postgresql://db/gw", "postgresql://user@host:port/database"),
    ("postgresql://keysvc@db/", "postgresql://user@host:port/database"),
    ("postgresql://keysvc@db:99999/gw", "invalid port"),
    ("postgresql://keysvc@db/gw?sslmode=disable", "no query"),
])
def test_bad_store_urls_are_refused_without_echoing_a_password(url: str, message: str) -> None:
    """Every malformed URL is a ValueError at start-up naming what is wrong; a password in the URL is
    refused (it belongs in password_file or password_env) and never appears in the message."""
    with pytest.raises(ValueError, match=message) as caught:
        StoreSettings.from_url(url)
    assert "hunter2" not in str(caught.value)


def test_the_password_never_shows() -> None:
    """repr, str and display of PostgreSQL settings hide the password; equality ignores it."""
    settings = StoreSettings.from_url("postgresql://keysvc@db/gw", password="s3cr3t-pw", timeout=0.5)
    assert settings.password == "s3cr3t-pw" and settings.timeout == 0.5
    for text in (repr(settings), str(settings), settings.display):
        assert "s3cr3t-pw" not in text
    assert settings.display == "postgresql://keysvc@db:5432/gw"
    with pytest.raises(ValueError, match="timeout"):
        StoreSettings.from_url("sqlite:///x.db", timeout=0)


def test_only_digests_of_states_are_accepted() -> None:
    """state_digest is the SHA-256 hex of the state; check_digest refuses anything else, so a raw
    Connect state can never be handed to the store by mistake."""
    digest = state_digest("opaque.state.value")
    assert check_digest(digest) == digest and len(digest) == 64
    for wrong in ("opaque.state.value", digest.upper(), digest[:-1], ""):
        with pytest.raises(ValueError, match="state_digest"):
            check_digest(wrong)


def test_the_store_error_is_a_keysvc_error_and_names_no_value() -> None:
    """StoreUnavailable is a KeysvcError (nothing escapes as a 500) carrying the operation and reason."""
    error = StoreUnavailable("admit", "no answer within 2s")
    assert isinstance(error, KeysvcError)
    assert (str(error), error.operation, error.retry_after) == ("gateway store: admit failed: no answer within 2s",
                                                                "admit", 1)


def test_the_password_is_read_from_a_file_or_the_environment(tmp_path: Path) -> None:
    """read_password: the file's first line (whitespace dropped) or the named variable; None when neither
    is configured; both, an unreadable or empty file, or an unset variable: ValueError naming the source
    and never the value."""
    secret_file = tmp_path / "pw"
    secret_file.write_text("  s3cr3t-pw \nignored\n")
    assert read_password(secret_file) == "s3cr3t-pw"
    assert read_password(password_env="DB_PW", environ={"DB_PW": "from-env"}) == "from-env"
    assert read_password() is None
    (tmp_path / "empty").write_text("\n")
    cases = [
        ((secret_file, "DB_PW"), {}, "not both"),
        ((tmp_path / "missing", None), {}, "cannot be read"),
        ((tmp_path / "empty", None), {}, "is empty"),
        ((None, "DB_PW"), {"OTHER": "x"}, "DB_PW is not set"),
    ]
    for (file, env), environ, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            read_password(file, env, environ)
        assert "s3cr3t-pw" not in str(caught.value)


def test_a_store_shows_where_it_is_never_its_password(tmp_path: Path) -> None:
    """repr of a PostgreSQL store names user, host, port and database, not the password; a SQLite store
    names its file; a shared budget names its limits and its store."""
    pg = open_store(StoreSettings.from_url("postgresql://keysvc@db:5432/gw", password="s3cr3t-pw"))
    lite = open_store(StoreSettings.from_url(f"sqlite:///{tmp_path}/gw.db", timeout=0.5))
    assert repr(pg) == "PostgresStore(postgresql://keysvc@db:5432/gw, timeout=2)"
    assert repr(lite) == f"SqliteStore(sqlite:///{tmp_path}/gw.db, timeout=0.5)"
    assert "s3cr3t-pw" not in repr(SharedBudget(pg, 60, 10))
    assert (pg.timeout, lite.timeout) == (2.0, 0.5)


def test_the_package_imports_only_errors_clock_the_stdlib_and_psycopg() -> None:
    """keysvc.partner.store imports, even lazily, nothing of keysvc but keysvc.errors, keysvc.clock and the
    store URL's parser it shares with the configuration (keysvc.config.store_url, stdlib only), and no
    third-party library but psycopg (only in the PostgreSQL engine)."""
    package = Path(keysvc.partner.store.__file__).parent
    found: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if name.startswith("keysvc") or (top not in sys.stdlib_module_names and top != "__future__"):
                    found.setdefault(name if name.startswith("keysvc") else top, set()).add(path.name)
    assert found == {"keysvc.errors": {"__init__.py", "budget.py", "postgres.py", "sqlite.py"},
                     "keysvc.clock": {"__init__.py", "sqlite.py", "postgres.py"},
                     "psycopg": {"postgres.py"}, "keysvc.config.store_url": {"settings.py"}}
