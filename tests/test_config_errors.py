"""How a configuration is refused: every problem in one ConfigError, each with its field and YAML line; a
did-you-mean for a misspelt key even where a required key is missing; the YAML parser's own problem; an
empty file said to be empty; and no value, however large or strange, escapes as anything but a ConfigError."""

from __future__ import annotations

import contextlib
import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from keysvc.config import ReadOptions, Section, parse_duration, parse_settings, parse_yaml
from keysvc.config.reader import MAX_DURATION, Collector
from keysvc.errors import ConfigError, ConfigProblem
from tests.helpers import base_config

pytestmark = pytest.mark.unit

OFFLINE = ReadOptions(offline=True, environ={"SECRET": "s3cret"})

GOOD = textwrap.dedent("""\
    backend:
      type: file
      path: /var/lib/keysvc
    keysets:
      zapier:
        issuer: https://partner.example.com
        alg: ES256
    clients:
      billing:
        api_key_sha256: "{digest}"
        keysets: [zapier]
        audiences: [connect.zapier.com]
    """).replace("{digest}", "a" * 64)


def problems(text: str) -> list[tuple[int | None, str, str]]:
    """(line, field, message) of each problem the YAML `text` is refused for, in order."""
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, OFFLINE)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_the_good_document_is_accepted() -> None:
    """The base of every case below parses (so each refusal comes from its edit alone)."""
    assert list(parse_yaml(GOOD, OFFLINE).keysets) == ["zapier"]


# (id, the document, [(line, field, start of message)]): every problem, in document order
CASES: list[tuple[str, str, list[tuple[int | None, str, str]]]] = [
    (
        "three sections, three problems",
        GOOD.replace("alg: ES256", "alg: HS256").replace("[connect.zapier.com]", "[]")
        + "jwks:\n  max_ages: 5m\n",
        [
            (7, "keysets.zapier.alg", "unknown algorithm 'HS256'"),
            (12, "clients.billing.audiences", "must list at least one audience"),
            (14, "jwks.max_ages", "unknown setting 'max_ages' (did you mean 'max_age'?)"),
        ],
    ),
    (
        "a client's misspelt required key: did-you-mean, not 'is required'",
        GOOD.replace("audiences:", "audience:"),
        [(12, "clients.billing.audience", "unknown setting 'audience' (did you mean 'audiences'?)")],
    ),
    (
        "keyset: for keysets:, one error (the clients' keysets are not called unknown)",
        GOOD.replace("keysets:\n  zapier", "keyset:\n  zapier"),
        [(4, "keyset", "unknown setting 'keyset' (did you mean 'keysets'?)")],
    ),
    (
        "a misspelt backend type: did-you-mean, and the backend's other keys are not called unknown",
        GOOD.replace("  type: file", "  typ: file"),
        [(2, "backend.typ", "unknown setting 'typ' (did you mean 'type'?)")],
    ),
    (
        "no backend type at all",
        GOOD.replace("  type: file\n", ""),
        [(1, "backend.type", "is required")],
    ),
    (
        "a required key missing with no close misspelling",
        GOOD.replace("    issuer: https://partner.example.com\n", ""),
        [(5, "keysets.zapier.issuer", "is required")],
    ),
    (
        "two keysets each breaking a timing invariant",
        GOOD.replace("alg: ES256", "alg: ES256\n    publish_ahead: 60s\n  other:\n    issuer: https://o.example\n"
                                   "    alg: RS256\n    retain_after: 1s"),
        [(8, "keysets.zapier.publish_ahead", "60s is too short: must be >= max(jwks.max_age"),
         (12, "keysets.other.retain_after", "1s is too short: must be >= max_token_ttl")],
    ),
    (
        "an invariant is not checked when its inputs were refused",
        GOOD.replace("alg: ES256", "alg: ES256\n    publish_ahead: 60s") + "jwks:\n  max_age: soon\n",
        [(15, "jwks.max_age", "expected a duration")],
    ),
    (
        "a duration given as a 400-digit integer",
        GOOD.replace("alg: ES256", "alg: ES256\n    max_token_ttl: " + "9" * 400),
        [(8, "keysets.zapier.max_token_ttl", "duration out of range (0 to 10 years)")],
    ),
    (
        "a duration given as a huge string",
        GOOD.replace("alg: ES256", "alg: ES256\n    rotation_period: " + "9" * 400 + "d"),
        [(8, "keysets.zapier.rotation_period", "a duration is at most 64 characters, got 401")],
    ),
    (
        "a duration too large for a float",
        GOOD.replace("alg: ES256", "alg: ES256\n    rotation_period: " + "9" * 60 + "d"),
        [(8, "keysets.zapier.rotation_period", "duration out of range")],
    ),
    (
        "an integer PyYAML cannot build (over 4300 digits)",
        GOOD + "clock_skew: " + "9" * 5000 + "\n",
        [(None, "config", "a value cannot be read (ValueError)")],
    ),
    (
        "a port in other digits than 0-9",
        GOOD + "listen:\n  public: 127.0.0.1:\u00b2\n",
        [(14, "listen.public", "expected HOST:PORT")],
    ),
    (
        "huge counts are refused with their bound",
        GOOD.replace("  billing:\n", "  billing:\n    rate_limit: {rate: 1e400, burst: " + "9" * 30 + "}\n"),
        [(10, "clients.billing.rate_limit.rate", "expected requests per second, a number > 0 and <= 1e+06"),
         (10, "clients.billing.rate_limit.burst", "expected a whole number from 1 to 1000000")],
    ),
    (
        "every key given twice, with both lines",
        GOOD + "clock_skew: 1m\nclock_skew: 2m\nlog: {}\nlog: {}\n",
        [(14, "config", "'clock_skew' is defined twice in one mapping (first at line 13)"),
         (16, "config", "'log' is defined twice in one mapping (first at line 15)")],
    ),
    (
        "a YAML syntax error: the parser's problem, line and column",
        "backend:\n  type: file\n   path: x\n",
        [(3, "config", "invalid YAML: mapping values are not allowed here (column 8)")],
    ),
    (
        "an unclosed flow mapping",
        "keysets: {zapier: {alg: ES256}\n",
        [(2, "config", "invalid YAML: while parsing a flow mapping, expected ',' or '}', but got '<stream end>'")],
    ),
    ("an empty file", "", [(None, "config", "the file is empty")]),
    ("a file of comments only", "# keysvc\n\n", [(None, "config", "the file is empty")]),
    ("a list at the top", "- a\n- b\n", [(None, "config", "expected a mapping")]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_problem_is_listed_with_its_field_and_line(text: str, expected: list[tuple[int | None, str, str]]
                                                         ) -> None:
    """Each case: exactly these problems (field, line, the start of the message), in this order."""
    found = problems(text)

    assert [(line, field) for line, field, _ in found] == [(line, field) for line, field, _ in expected], found
    for (_, _, message), (_, _, start) in zip(found, expected, strict=True):
        assert message.startswith(start), message


def test_a_file_names_itself_on_every_line(tmp_path: Path) -> None:
    """load_settings prefixes each problem with `path:line:` (one line each), as a compiler does."""
    from keysvc.config import load_settings

    path = tmp_path / "config.yaml"
    path.write_text(GOOD.replace("alg: ES256", "alg: HS256").replace("audiences:", "audience:"))

    with pytest.raises(ConfigError) as info:
        load_settings(path, OFFLINE)

    assert info.value.lines() == [
        f"{path}:7: keysets.zapier.alg: unknown algorithm 'HS256' (expected one of RS256, RS384, RS512, PS256, "
        "PS384, PS512, ES256, ES384, ES512, EdDSA)",
        f"{path}:12: clients.billing.audience: unknown setting 'audience' (did you mean 'audiences'?)",
    ]
    assert str(info.value) == "\n".join(info.value.lines())
    assert (info.value.field, info.value.source) == ("keysets.zapier.alg", str(path))


def test_a_section_read_alone_lists_its_problems() -> None:
    """A Section used without a document (as the token-exchange tests do) still refuses with every problem."""
    sec = Section({"a": 1, "b": "x", "zz": 0}, "top")

    values = sec.attempt(sec.flag, "a"), sec.attempt(sec.duration, "b")
    with pytest.raises(ConfigError) as info:
        sec.done()

    assert values == (None, None)
    assert [p.field for p in info.value.problems] == ["top.a", "top.b", "top.zz"]


def test_the_collector_keeps_one_copy_and_fills_in_lines() -> None:
    """The same problem twice is kept once; a field without a line of its own gets its mapping's."""
    lines = {"keysets": 3, "keysets.zapier": 4}
    collector = Collector(lambda name: lines.get(name) or lines.get(name.rpartition(".")[0]))
    for _ in range(2):
        collector.add(ConfigError("keysets.zapier.issuer", "is required"))

    with pytest.raises(ConfigError) as info:
        collector.check()

    assert info.value.problems == (ConfigProblem("keysets.zapier.issuer", "is required", 4),)


# --- no value escapes as anything but a ConfigError ---------------------------------------------------

# every duration and number of the configuration, by path (the sections that hold them are added below)
NUMERIC_FIELDS = [
    ("backend", "refresh_interval"), ("clock_skew",), ("jwks", "max_age"), ("jwks", "stale_while_revalidate"),
    ("jwks", "stale_if_error"), ("jwks", "verifier_cache"), ("keysets", "zapier", "rotation_period"),
    ("keysets", "zapier", "publish_ahead"), ("keysets", "zapier", "retain_after"),
    ("keysets", "zapier", "max_token_ttl"), ("clients", "signer", "max_ttl"),
    ("clients", "signer", "rate_limit", "rate"), ("clients", "signer", "rate_limit", "burst"),
    ("listen", "head_timeout"), ("listen", "body_timeout"), ("listen", "keepalive_timeout"), ("listen", "public"),
    ("canary", "interval"), ("canary", "timeout"),
    ("token_exchange", "jwt_ttl"), ("token_exchange", "connect_timeout"), ("token_exchange", "read_timeout"),
    ("token_exchange", "total_timeout"), ("token_exchange", "cache_margin"), ("token_exchange", "run_wait_max"),
    ("token_exchange", "max_attempts"), ("token_exchange", "api_rate_limit", "per_minute"),
    ("token_exchange", "api_rate_limit", "burst"),
]

BASE = base_config(Path("/nonexistent/keys"))
BASE["clients"]["signer"]["rate_limit"] = {"rate": 10, "burst": 5}
BASE["canary"] = {"jwks_url": "https://partner.example.com/jwks.json"}
BASE["token_exchange"] = {"client_id": "cid", "client_secret_env": "SECRET", "api_rate_limit": {}}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**1000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.text(alphabet="0123456789.smhd", max_size=400), st.from_regex(r"[0-9]{1,400}(\.[0-9]{1,50})?(ms|s|m|h|d)"),
)
yamlish = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                          inner, max_size=3),
                       max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(NUMERIC_FIELDS), value=yamlish)
def test_any_value_of_a_numeric_field_is_a_field_error_or_valid(field: tuple[str, ...], value: Any) -> None:
    """Whatever YAML could give a duration or a count (huge integers, NaN, infinity, long strings, lists,
    mappings), the configuration is accepted or refused with a ConfigError: never another exception."""
    raw = copy.deepcopy(BASE)
    target = raw
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value

    try:
        parse_settings(raw, OFFLINE)
    except ConfigError as exc:
        assert exc.problems and all(p.field and p.message for p in exc.problems)


@settings(max_examples=400, deadline=None)
@given(value=yamlish)
def test_parse_duration_returns_a_bounded_number_or_a_config_error(value: Any) -> None:
    """The duration reader (also used for a caller's `wait`) gives seconds from 0 to MAX_DURATION, or a
    ConfigError naming the field: no OverflowError, however long the text or large the number."""
    try:
        seconds = parse_duration(value, "wait")
    except ConfigError as exc:
        assert exc.field == "wait" and len(exc.message) < 200
    else:
        assert 0 <= seconds <= MAX_DURATION


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=" :-[]{},#&*!|>'\"\n0123456789abkeysts", max_size=80))
def test_any_text_is_settings_or_a_config_error(text: str) -> None:
    """Any text, YAML or not, is parsed or refused with a ConfigError (never a YAML or Python exception)."""
    with contextlib.suppress(ConfigError):
        parse_yaml(text, OFFLINE)


def test_yaml_of_the_cases_really_has_those_lines() -> None:
    """The line numbers above are those of the documents (a check of the table, not of keysvc)."""
    text = CASES[0][1]
    assert text.splitlines()[6].strip() == "alg: HS256"
    assert yaml.safe_load(text)["jwks"] == {"max_ages": "5m"}


def test_the_readme_example_is_what_keysvc_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's refused `config.yaml` and the four lines it shows are real: the example cannot go stale."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("For example, this `config.yaml`:"):]
    document = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = section.split("```console\n", 1)[1].split("$ echo $?", 1)[0].splitlines()[1:]
    (tmp_path / "config.yaml").write_text(document)
    monkeypatch.chdir(tmp_path)
    from keysvc.config import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings("config.yaml", OFFLINE)

    assert [f"keysvc: configuration error: {line}" for line in info.value.lines()] == shown


def test_an_alias_bomb_costs_no_more_than_its_text() -> None:
    """Nine levels of nine YAML aliases (9**9 paths) are mapped to lines once per node, not once per path:
    the file is refused at once for its ten unknown keys, not after walking 387 million of them."""
    lines = ["a0: &a0 {x: 1, y: 2}"]
    lines += [f"a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}" for i in range(1, 10)]

    found = problems("\n".join(lines) + "\n")

    assert [(line, field) for line, field, _ in found if field.startswith("a")] == [
        (i + 1, f"a{i}") for i in range(10)
    ]
