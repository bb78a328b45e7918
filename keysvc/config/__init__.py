"""YAML -> frozen, validated Settings. Every refusal is a ConfigError naming the field (dotted path).

Read once at start-up; nothing here touches the network or imports boto3. Modules:

    reader.py     the shared reader: sections, dotted names, unknown keys, durations (DURATION_PATTERN)
    secrets.py    Secret (a value) and SecretFile (re-read when the file changes); `<name>_file` / `_env`
    document.py   YAML text -> data, refusing a key given twice in one mapping
    model.py      the Settings dataclasses
    exchange.py   the `token_exchange` section
    urls.py       the URLs keysvc publishes about itself (`public_url`, a keyset's `jwks_uri`)
    backends.py   the `backend` section: each backend type's settings (keysvc.backends.registry opens them)
    parse.py      document -> Settings, every check; one Collector gathers every problem of a reading
"""

from keysvc.config.document import load_document
from keysvc.config.exchange import ApiRateLimit, StoreConfig, TokenExchangeSettings, parse_token_exchange
from keysvc.config.model import (
    SUBJECT_TYPES,
    Address,
    BackendSettings,
    CanarySettings,
    ClientSettings,
    JwksSettings,
    KeysetSettings,
    ListenTimeouts,
    MirrorSettings,
    RateLimit,
    Settings,
    TlsSettings,
    ZapierGrant,
    typed_subject,
)
from keysvc.config.parse import check_invariants, load_settings, parse_settings, parse_yaml
from keysvc.config.reader import DURATION_PATTERN, ReadOptions, Section, parse_duration
from keysvc.config.secrets import Secret, SecretFile

__all__ = [
    "DURATION_PATTERN",
    "SUBJECT_TYPES",
    "Address",
    "ApiRateLimit",
    "BackendSettings",
    "CanarySettings",
    "ClientSettings",
    "JwksSettings",
    "KeysetSettings",
    "ListenTimeouts",
    "MirrorSettings",
    "RateLimit",
    "ReadOptions",
    "Secret",
    "SecretFile",
    "Section",
    "Settings",
    "StoreConfig",
    "TlsSettings",
    "TokenExchangeSettings",
    "ZapierGrant",
    "check_invariants",
    "load_document",
    "load_settings",
    "parse_duration",
    "parse_settings",
    "parse_token_exchange",
    "parse_yaml",
    "typed_subject",
]
