"""`keysvc config example [--gateway|--kms]`: the text of a starter configuration, one per deployment shape.

Each text is accepted by `keysvc check-config --offline` as printed (examples/*.yaml hold the same bytes and
the suite checks both). Secrets are named by file (`*_file`), never written inline; the one client's
`api_key_sha256` is a placeholder that matches no key (replace it with `keysvc client new`'s digest).
"""

from __future__ import annotations

KINDS = ("file", "gateway", "kms")

_HEADER = """\
# keysvc starter configuration ({kind}): `keysvc config example{flag}` prints this file.
# Check it with `keysvc check-config --offline --config FILE`; run it with `keysvc serve --config FILE`.
# Replace every value marked CHANGE-ME. Secrets come from files (*_file) or environment variables (*_env),
# never inline. Durations: 500ms, 90s, 5m, 1h30m, 2d.
listen:
  public: "0.0.0.0:8080"          # JWKS and health: the only port a partner reaches
  internal: "127.0.0.1:8081"      # /v1/* and /metrics: never exposed outside the cluster
# public_url: "https://keys.example.com"   # the public port as verifiers reach it: turns on OpenID discovery
"""

_FILE_BACKEND = """\
backend:
  type: file
  path: /var/lib/keysvc           # one directory per keyset; a shared RWX volume for several replicas
  passphrase_file: /run/secrets/keysvc-passphrase   # encrypts the private keys at rest (or passphrase_env: VAR)
  refresh_interval: 30s           # how often each replica re-reads the keys (a CLI write shows up within it)
"""

_KMS_BACKEND = """\
backend:
  type: kms                       # one AWS KMS key per kid; credentials from the usual AWS chain (IRSA in a pod)
  region: eu-west-1               # CHANGE-ME
  alias_prefix: alias/keysvc/prod # CHANGE-ME: the aliases keysvc creates and reads (docs/kms.md has the IAM policy)
  deletion_window: 30d            # ScheduleKeyDeletion window for retired keys, 7d..30d
  refresh_interval: 30s
"""

_KEYSET = """\
clock_skew: 60s
jwks:
  max_age: 5m                     # Cache-Control of the JWKS
  stale_while_revalidate: 1m
  stale_if_error: 1d
  verifier_cache: 10m             # the longest any verifier caches the JWKS, whatever the headers say
keysets:
  zapier:
    default: true                 # also served at /.well-known/jwks.json
    issuer: "https://partner.example.com"   # CHANGE-ME: the `iss` of every token this keyset signs
    alg: ES256
    rotation_period: 30d
    publish_ahead: 2d             # a new key is in the JWKS this long before it signs
    retain_after: 1d              # an old key stays in the JWKS this long after it stopped signing
    max_token_ttl: 5m
"""

_CLIENT = """\
clients:
  billing-api:                    # CHANGE-ME: one entry per calling service; `keysvc client new NAME` prints one
    # CHANGE-ME: the placeholder below matches no key; put the digest `keysvc client new` prints here
    api_key_sha256: "0000000000000000000000000000000000000000000000000000000000000000"
    keysets: [zapier]
    audiences: ["connect.zapier.com"]
    max_ttl: 5m
    admin: false                  # true: may list, rotate and revoke the keys of its keysets
"""

_GATEWAY_CLIENT = """\
    token_exchange: true          # may call POST /v1/token-exchange
    zapier: true                  # may call the embed gateway, /v1/zapier/*
"""

_EXCHANGE = """\
token_exchange:                   # RFC 8693 token exchange and the Zapier embed gateway (docs/zapier.md)
  keyset: zapier                  # signs the partner JWT
  token_url: "https://zapier.com/oauth/token"
  client_id: "your-zapier-client-id"                      # CHANGE-ME
  client_secret_file: /run/secrets/zapier-client-secret   # or client_secret_env: ZAPIER_CLIENT_SECRET
  client_auth: client_secret_post
  audience: connect.zapier.com
  tenant_claim: org_id
  jwt_ttl: 5m                     # at most 5m: Zapier refuses longer-lived partner JWTs
  api_url: "https://api.zapier.com"
  redirect_uris: ["https://app.example.com/zapier/callback"]   # CHANGE-ME: registered with Zapier
"""


def example(kind: str = "file") -> str:
    """The starter configuration of one deployment shape: `file` (file backend), `gateway` (file backend,
    token exchange and the Zapier embed gateway) or `kms` (AWS KMS backend)."""
    if kind not in KINDS:
        raise ValueError(f"unknown example {kind!r}; one of {', '.join(KINDS)}")
    flag = "" if kind == "file" else f" --{kind}"
    text = _HEADER.format(kind=kind, flag=flag)
    text += _KMS_BACKEND if kind == "kms" else _FILE_BACKEND
    text += _KEYSET + _CLIENT
    if kind == "gateway":
        text += _GATEWAY_CLIENT + _EXCHANGE
    return text
