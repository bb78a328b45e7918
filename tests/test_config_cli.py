"""`keysvc check-config` and `keysvc serve` refuse exactly the same files, with the same exit status and
the same message naming the same field; the CLI's global options, log level and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, base_config, run_cli, write_config

pytestmark = pytest.mark.system

Edit = Callable[[dict[str, Any], Path], None]


def _mirror_prefix(cfg: dict[str, Any], _: Path) -> None:
    cfg["mirror"] = {"bucket": "jwks-bucket", "key_prefix": "/jwks/", "region": "eu-west-1"}


def _kms_alias(cfg: dict[str, Any], _: Path) -> None:
    cfg["backend"] = {"type": "kms", "region": "eu-west-1", "alias_prefix": "alias/aws/keysvc"}


def _zapier_without_exchange(cfg: dict[str, Any], _: Path) -> None:
    cfg["clients"]["signer"]["zapier"] = True


def _misspelt(cfg: dict[str, Any], _: Path) -> None:
    cfg["jwks"]["max_ages"] = "5m"


def _tls_not_a_certificate(cfg: dict[str, Any], tmp: Path) -> None:
    (tmp / "tls.crt").write_text("not a certificate\n")
    (tmp / "tls.key").write_text("not a key\n")
    cfg["listen"]["tls"] = {"cert_file": str(tmp / "tls.crt"), "key_file": str(tmp / "tls.key")}


def _secret_file_empty(cfg: dict[str, Any], tmp: Path) -> None:
    (tmp / "passphrase").write_text("")
    cfg["backend"]["passphrase_file"] = str(tmp / "passphrase")


def _bad_duration(cfg: dict[str, Any], _: Path) -> None:
    cfg["listen"]["head_timeout"] = "1h 30m"


def _log_public(cfg: dict[str, Any], _: Path) -> None:
    cfg["log"] = {"public": "everything"}


def _exchange_api_url(cfg: dict[str, Any], _: Path) -> None:
    cfg["token_exchange"] = {"client_id": "c", "client_secret_env": "HOME", "api_url": "http://api.zapier.com"}


def _zapier_grant_shape(cfg: dict[str, Any], _: Path) -> None:
    cfg["token_exchange"] = {"client_id": "c", "client_secret_env": "HOME"}
    cfg["clients"]["signer"]["zapier"] = {"apps": ["Slack"], "actions": ["send message"]}


# (id, edit, field the message names)
BAD: list[tuple[str, Edit, str]] = [
    ("mirror key_prefix starting with /", _mirror_prefix, "mirror.key_prefix"),
    ("kms alias prefix under alias/aws/", _kms_alias, "backend.alias_prefix"),
    ("zapier client without token_exchange", _zapier_without_exchange, "clients.signer.zapier"),
    ("misspelt key", _misspelt, "jwks.max_ages"),
    ("TLS files that do not load", _tls_not_a_certificate, "listen.tls.key_file"),
    ("empty passphrase file", _secret_file_empty, "backend.passphrase_file"),
    ("duration with a space", _bad_duration, "listen.head_timeout"),
    ("unknown log.public", _log_public, "log.public"),
    ("plain-http api_url", _exchange_api_url, "token_exchange.api_url"),
    ("zapier grant with a malformed action key", _zapier_grant_shape, "clients.signer.zapier.actions"),
]


def _serve_refusal(path: Path) -> tuple[int, dict[str, Any]]:
    """Run `keysvc serve` on a bad config: its exit status and its one JSON 'configuration error' line."""
    proc = subprocess.run([sys.executable, "-m", "keysvc", "serve", "--config", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    errors = [line for line in lines if line.get("event") == "configuration error"]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc.returncode, errors[0]


@pytest.mark.parametrize(("edit", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_check_config_and_serve_refuse_the_same_file_the_same_way(tmp_path: Path, edit: Edit, field: str) -> None:
    """Each bad file: check-config exits 78 with `configuration error: FIELD: MESSAGE` on stderr; serve
    exits 78 too, its refusal one JSON log line carrying the same field and the same message."""
    cfg = base_config(tmp_path / "keys")
    edit(cfg, tmp_path)
    path = write_config(tmp_path / "bad.yaml", cfg)

    checked = run_cli("check-config", config=path)
    status, line = _serve_refusal(path)

    assert (checked.returncode, status) == (78, 78), checked.stderr
    assert field == line["field"]
    assert len(line["errors"]) == 1 and f"{field}: {line['message']}" in line["errors"][0]
    assert "".join(f"keysvc: configuration error: {error}\n" for error in line["errors"]) == checked.stderr
    assert line["level"] == "error"


GOOD_TEXT = """\
listen:
  public: 127.0.0.1:0
  internal: 127.0.0.1:0
backend:
  type: file
  path: {keys}
keysets:
  zapier:
    issuer: https://partner.example.com
    alg: ES256
clients:
  billing:
    api_key_sha256: "{digest}"
    keysets: [zapier]
    audiences: [connect.zapier.com]
"""

# (id, edit of GOOD_TEXT, the `line: field` of each error, in order)
MULTI: list[tuple[str, Callable[[str], str], list[str]]] = [
    ("misspelt keyset, client key, jwks key; bad alg", lambda t: t.replace("alg: ES256", "alg: HS256")
     .replace("audiences:", "audience:") + "jwks:\n  max_ages: 5m\n",
     ["10: keysets.zapier.alg", "15: clients.billing.audience", "17: jwks.max_ages"]),
    ("keyset: for keysets:", lambda t: t.replace("keysets:\n  zapier", "keyset:\n  zapier"), ["7: keyset"]),
    ("two timing invariants and a 400-digit duration", lambda t: t.replace(
        "alg: ES256", "alg: ES256\n    publish_ahead: 60s\n    retain_after: 1s") + "clock_skew: " + "9" * 400 + "\n",
     ["18: clock_skew"]),
    ("two timing invariants", lambda t: t.replace("alg: ES256", "alg: ES256\n    publish_ahead: 60s\n"
                                                  "    retain_after: 1s"),
     ["11: keysets.zapier.publish_ahead", "12: keysets.zapier.retain_after"]),
    ("a YAML syntax error", lambda t: t.replace("  type: file", "   type: file"), ["6: config"]),
    ("an empty file", lambda t: "# nothing yet\n", ["config"]),
]


@pytest.mark.parametrize(("edit", "where"), [m[1:] for m in MULTI], ids=[m[0] for m in MULTI])
def test_check_config_and_serve_list_the_same_errors(tmp_path: Path, edit: Callable[[str], str], where: list[str]
                                                     ) -> None:
    """A file with several problems: check-config prints one line per problem (`file:line: field: message`),
    serve's one JSON refusal lists the very same lines; both exit 78, neither prints a traceback."""
    path = tmp_path / "multi.yaml"
    path.write_text(edit(GOOD_TEXT.format(keys=tmp_path / "keys", digest="a" * 64)))

    checked = run_cli("check-config", config=path)
    status, line = _serve_refusal(path)

    assert (checked.returncode, status) == (78, 78), checked.stderr
    assert "".join(f"keysvc: configuration error: {error}\n" for error in line["errors"]) == checked.stderr
    found = [re.match(rf"{re.escape(str(path))}:(?:([0-9]+):)? ([^:]+):", error) for error in line["errors"]]
    assert [f"{m[1]}: {m[2]}" if m[1] else m[2] for m in found if m] == where, line["errors"]


def test_check_config_offline_accepts_what_only_a_pod_can_read(tmp_path: Path) -> None:
    """The chart's secret and TLS paths do not exist here: --offline passes, the plain check refuses."""
    cfg = base_config(tmp_path / "keys")
    cfg["backend"]["passphrase_file"] = "/run/secrets/keysvc-passphrase"
    cfg["listen"]["tls"] = {"cert_file": "/run/tls/tls.crt", "key_file": "/run/tls/tls.key"}
    path = write_config(tmp_path / "chart.yaml", cfg)

    offline = run_cli("check-config", "--offline", config=path)
    online = run_cli("check-config", config=path)

    assert (offline.returncode, online.returncode) == (0, 78), offline.stderr
    assert "offline" in offline.stdout and "listen.tls.cert_file" in online.stderr


def test_global_config_before_the_command(tmp_path: Path) -> None:
    """`keysvc --config F keys list` works like `keysvc keys list --config F`; a later one wins."""
    path = write_config(tmp_path / "good.yaml", base_config(tmp_path / "keys"))
    bad = write_config(tmp_path / "bad.yaml", {"colour": "blue"})

    before = run_cli("--config", str(path), "keys", "list", "--json")
    overridden = run_cli("--config", str(bad), "keys", "list", "--json", "--config", str(path))

    assert (before.returncode, overridden.returncode) == (0, 0), before.stderr + overridden.stderr
    assert json.loads(before.stdout) == {"keys": []}


@pytest.mark.parametrize("level", ["debug", "DEBUG", "Warning"])
def test_log_level_from_the_environment_in_any_case(tmp_path: Path, level: str) -> None:
    """KEYSVC_LOG_LEVEL=debug (lower case) no longer crashes; nor does --log-level in any case."""
    path = write_config(tmp_path / "good.yaml", base_config(tmp_path / "keys"))

    from_env = run_cli("check-config", config=path, env={"KEYSVC_LOG_LEVEL": level})
    from_flag = run_cli("--log-level", level, "check-config", config=path)

    assert (from_env.returncode, from_flag.returncode) == (0, 0), from_env.stderr + from_flag.stderr


def test_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown level, from the flag or the environment, exits 2 with a usage message, no traceback."""
    path = write_config(tmp_path / "good.yaml", base_config(tmp_path / "keys"))

    from_env = run_cli("check-config", config=path, env={"KEYSVC_LOG_LEVEL": "loud"})
    from_flag = run_cli("--log-level", "loud", "check-config", config=path)

    for result in (from_env, from_flag):
        assert result.returncode == 2
        assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_help_documents_the_exit_codes_and_the_log_level() -> None:
    """`keysvc --help` lists 0, 1, 2 and 78 and both ways to set the log level."""
    text = run_cli("--help").stdout

    for words in ("1 the operation failed", "2 usage error", "78 configuration error", "KEYSVC_LOG_LEVEL",
                  "--log-level"):
        assert words in text


def test_yaml_duplicate_key_exits_78_naming_the_line(tmp_path: Path) -> None:
    """A key given a second time is refused by check-config with both lines (PyYAML keeps the last)."""
    text = yaml.safe_dump(base_config(tmp_path / "keys"), sort_keys=False)
    first = 1 + text.splitlines().index(next(line for line in text.splitlines() if line.startswith("clock_skew:")))
    path = tmp_path / "dup.yaml"
    path.write_text(text + "clock_skew: 30s\n")
    second = len(text.splitlines()) + 1

    result = run_cli("check-config", config=path)

    assert result.returncode == 78
    assert f"{path}:{second}: config: 'clock_skew' is defined twice in one mapping (first at line {first})" \
        in result.stderr


def test_keys_revoke_takes_a_kid_that_begins_with_a_dash(tmp_path: Path) -> None:
    """One kid in 64 begins with "-" (base64url): `keys revoke -AbC...` is that kid, not an unknown option.
    An unknown kid is then refused by the keyring (exit 1, "no such key"), not by argparse (exit 2)."""
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "keys"))
    dashed = "-" + "A" * 42
    for argv in (("keys", "revoke", dashed, "--config", str(path)), ("--config", str(path), "keys", "revoke", dashed),
                 ("--config", str(path), "keys", "revoke", "--", dashed)):
        revoked = run_cli(*argv)
        assert (revoked.returncode, "no such key" in revoked.stderr) == (1, True), revoked.stderr
    assert run_cli("keys", "revoke", "-x", config=path).returncode == 2  # an unknown option: still a usage error
