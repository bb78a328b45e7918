"""The helm chart, rendered offline for the default values and each deployment mode.

helm-python-sdk (Helm v4's Go SDK through ctypes, no helm binary, no cluster) renders the chart; every
rendered object is validated against the Kubernetes OpenAPI schemas with `kubernetes-validate --strict`
and checked by checkov's Kubernetes policies; bad values must be refused by values.schema.json (or by
the chart's own install-time checks). All tools come from `.venv-tools/` (`make tools`): a missing one
fails the test. Rendering runs in that venv's interpreter, since the SDK lives there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "keysvc"
VALUES_DIR = Path(__file__).resolve().parent / "helm_values"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
RELEASE, NAMESPACE = "keysvc", "keysvc"
# The chart's kubeVersion floor and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}
CHECKOV_ENV = {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}

# checkov checks skipped for every mode, with the reason (docs/deployment.md repeats them).
CHECKOV_SKIPS = {
    "CKV_K8S_15": "imagePullPolicy IfNotPresent on purpose: production pins image.digest, so the node "
    "cannot run another image, and Always would make every pod start depend on the registry",
}
# Skipped only where the values cannot satisfy the check.
CHECKOV_MODE_SKIPS = {
    "default": {
        "CKV_K8S_43": "chart defaults cannot know the release's image digest; every other mode sets "
        "image.digest and passes this check",
    },
}

MODES = ["default", "file-rwx", "kms-irsa", "ingress", "hpa-monitoring", "mtls", "operated", "zapier-gateway"]

RENDER_SCRIPT = """
import json, sys
import helm_python as helm
request = json.load(sys.stdin)
try:
    with helm.Chart.load(request["chart"]) as chart:
        out = chart.render(request["values"], name=request["release"], namespace=request["namespace"])
    print(json.dumps({"ok": True, "manifests": out}))
except helm.HelmError as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
"""


def tool(name: str) -> Path:
    """Path of a tool in .venv-tools; fails (never skips) when `make tools` has not run."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (installs requirements-tools.txt)")
    return path


# What every release must set (the chart's defaults for these are empty, and it refuses to render without
# them). Tests that give a fragment of values render it on top of these, unless they pass bare=True.
REQUIRED = {
    "config": {"keysets": {"zapier": {"issuer": "https://auth.example.com"}}},
    "backend": {"kms": {"region": "eu-west-1"}},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if nested else value
    return merged


def with_required(values: dict[str, Any]) -> dict[str, Any]:
    """`values` on top of REQUIRED; keysets given in `values` replace the required example keyset."""
    base = REQUIRED
    if "keysets" in (values.get("config") or {}):
        base = {**REQUIRED, "config": {"keysets": {"zapier": None}}}
    return merge(base, values)


def render_raw(values: dict[str, Any], *, bare: bool = False) -> dict[str, Any]:
    """{"ok": True, "manifests": {template: text}} or {"ok": False, "error": text}. The values are rendered on
    top of REQUIRED unless `bare`."""
    if not bare:
        values = with_required(values)
    request = {"chart": str(CHART), "values": values, "release": RELEASE, "namespace": NAMESPACE}
    result = subprocess.run(
        [str(tool("python")), "-c", RENDER_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def mode_values(mode: str) -> dict[str, Any]:
    """The values file of a mode (the default mode sets only what the chart requires)."""
    if mode == "default":
        return dict(REQUIRED)
    loaded: dict[str, Any] = yaml.safe_load((VALUES_DIR / f"{mode}.yaml").read_text())
    return loaded


class Rendered:
    """A successful render: the manifest texts and the objects parsed from them."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = manifests.pop(f"{RELEASE}/templates/NOTES.txt", "")
        self.texts = {name: text for name, text in manifests.items() if text.strip()}
        self.objects = [obj for text in self.texts.values() for obj in yaml.safe_load_all(text) if obj]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """All objects of one kind."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        """The single object of a kind (and name)."""
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        """The Deployment's pod spec."""
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        """The keysvc container."""
        (container,) = self.pod["containers"]
        return dict(container)

    @property
    def config(self) -> dict[str, Any]:
        """keysvc.yaml as rendered into the ConfigMap (or Secret)."""
        holder = next(o for o in self.objects if o["metadata"]["name"] == f"{RELEASE}-config")
        text = (holder.get("data") or holder.get("stringData"))["keysvc.yaml"]
        config: dict[str, Any] = yaml.safe_load(text)
        return config

    def write(self, directory: Path) -> list[Path]:
        """One file per template, for the command-line validators."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in sorted(self.texts.items()):
            path = directory / name.replace("/", "_")
            path.write_text(text)
            paths.append(path)
        return paths


_cache: dict[str, Rendered] = {}


def rendered(mode: str) -> Rendered:
    """The chart rendered for a mode (cached: rendering is deterministic)."""
    if mode not in _cache:
        answer = render_raw(mode_values(mode), bare=True)
        assert answer["ok"], f"{mode}: {answer['error']}"
        _cache[mode] = Rendered(answer["manifests"])
    return _cache[mode]


# --- every mode: schema validation and policy checks ------------------------------------------------


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_manifests_validate_against_kubernetes_schemas(mode: str, tmp_path: Path) -> None:
    """Every object validates strictly (no unknown field) on the oldest and newest supported Kubernetes."""
    chart = rendered(mode)
    files = chart.write(tmp_path)
    expected = {(o["kind"], o["metadata"]["name"]) for o in chart.objects}
    for version in KUBE_VERSIONS:
        result = subprocess.run(
            [str(tool("kubernetes-validate")), "--strict", "-k", version, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        passed = set(re.findall(r"^INFO \S+ passed for resource (\S+)/(\S+) against", result.stdout, re.M))
        warned = set(re.findall(r"^WARN .* for kind (\w+) with api version", result.stdout, re.M))
        assert warned <= CRD_KINDS, f"no schema for {warned - CRD_KINDS}: typo in a kind or apiVersion?"
        core = {(kind.lower(), name) for kind, name in expected if kind not in CRD_KINDS}
        assert core == passed, result.stdout


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_checkov_kubernetes_checks_pass(mode: str, tmp_path: Path) -> None:
    """checkov's Kubernetes policies pass; the only skips are the justified ones listed above."""
    rendered(mode).write(tmp_path)
    skips = {**CHECKOV_SKIPS, **CHECKOV_MODE_SKIPS.get(mode, {})}
    result = subprocess.run(
        [
            str(tool("checkov")),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "-o",
            "json",
            "--skip-download",
            "--compact",
            "--skip-check",
            ",".join(sorted(skips)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **CHECKOV_ENV},
    )
    report = json.loads(result.stdout)
    failed = report["results"]["failed_checks"]
    assert not failed, [(c["check_id"], c["resource"]) for c in failed]
    assert report["summary"]["passed"] >= 100, "checkov ran suspiciously few checks"
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment") or ""
        assert len(reason.strip()) > 20, f"{skipped['check_id']} on {skipped['resource']}: no justification"
    assert result.returncode == 0, result.stderr


@pytest.mark.unit
def test_checkov_skips_are_documented() -> None:
    """Each skipped checkov check is justified in docs/deployment.md too."""
    doc = (REPO / "docs" / "deployment.md").read_text()
    inline = re.findall(
        r"checkov\.io/skip\d+: (CKV\w+)=", "".join(p.read_text() for p in CHART.rglob("*.yaml"))
    )
    dockerfile = re.findall(r"checkov:skip=(CKV\w+)", (REPO / "Dockerfile").read_text())
    skipped = {
        *CHECKOV_SKIPS,
        *(k for mode in CHECKOV_MODE_SKIPS.values() for k in mode),
        *inline,
        *dockerfile,
    }
    assert skipped, "the skip lists were lost"
    for check in sorted(skipped):
        assert check in doc, f"{check} is skipped but not justified in docs/deployment.md"


@pytest.mark.system
def test_helm_lint_is_clean() -> None:
    """`helm lint --strict` with the required values finds no error or warning (only the INFO about a missing
    icon)."""
    script = (
        "import json, helm_python as helm\n"
        f"print(json.dumps(helm.lint({str(CHART)!r}, {REQUIRED!r}, strict=True)))"
    )
    result = subprocess.run([str(tool("python")), "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert not report["errors"], report
    # Helm's severities: 1 info, 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


# --- bad values --------------------------------------------------------------------------------------

GOOD_KEYSET = {"issuer": "https://a.example.com", "alg": "RS256"}
CLIENT = {"api_key_sha256": "a" * 64, "keysets": ["k"], "audiences": ["aud"]}
MTLS = {"internalTls": {"enabled": True, "existingSecret": "tls", "clientAuth": {"enabled": True}}}
RELEASE_MATCHER = 'job=~".*keysvc.*"'

BAD_VALUES = {
    "no replicas": ({"replicaCount": 0}, "replicaCount"),
    "unknown top-level key": ({"replicas": 3}, "replicas"),
    "mutable latest tag": ({"image": {"tag": "latest"}}, "tag"),
    "digest not sha256": ({"image": {"digest": "md5:abc"}}, "digest"),
    "unknown backend": ({"backend": {"type": "vault"}}, "type"),
    "alias prefix without alias/": ({"backend": {"kms": {"aliasPrefix": "keysvc/prod"}}}, "aliasPrefix"),
    "KMS deletion window below 7 days": ({"backend": {"kms": {"deletionWindow": "3d"}}}, "deletionWindow"),
    "writable root filesystem": (
        {"securityContext": {"readOnlyRootFilesystem": False}},
        "readOnlyRootFilesystem",
    ),
    "root allowed": ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    "added capability": ({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}, "capabilities"),
    "EdDSA on KMS": ({"config": {"keysets": {"k": {**GOOD_KEYSET, "alg": "EdDSA"}}}}, "alg"),
    "typo in a keyset parameter": (
        {"config": {"keysets": {"k": {**GOOD_KEYSET, "rotaton_period": "30d"}}}},
        "rotaton_period",
    ),
    "bad duration": ({"config": {"clock_skew": "1 minute"}}, "clock_skew"),
    "no keyset": ({"config": {"keysets": None}}, "keysets"),
    "API key instead of its hash": (
        {"config": {"clients": {"c": {"api_key_sha256": "not-a-hash"}}}},
        "api_key_sha256",
    ),
    "inline client secret": ({"config": {"token_exchange": {"client_secret": "s3cr3t"}}}, "client_secret"),
    "listen set by hand": ({"config": {"listen": {"public": "0.0.0.0:80"}}}, "listen"),
    "malformed IRSA role": ({"serviceAccount": {"irsaRoleArn": "keysvc-role"}}, "irsaRoleArn"),
    "internal service exposed": ({"service": {"internal": {"type": "LoadBalancer"}}}, "type"),
    "client without audiences": (
        {"config": {"clients": {"c": {"api_key_sha256": "a" * 64, "keysets": ["zapier"]}}}},
        "audiences",
    ),
    # Cross-field rules: the chart's own install-time checks.
    "grace shorter than preStop": (
        {"terminationGracePeriodSeconds": 10, "preStopSleepSeconds": 10},
        "terminationGracePeriodSeconds",
    ),
    "file backend without passphrase": ({"backend": {"type": "file"}}, "passphrase"),
    "two default keysets": (
        {
            "config": {
                "keysets": {"a": {**GOOD_KEYSET, "default": True}, "b": {**GOOD_KEYSET, "default": True}}
            }
        },
        "default",
    ),
    "public and internal on one port": ({"ports": {"public": 8080, "internal": 8080}}, "ports.internal"),
    "token exchange without its secret": (
        {"config": {"token_exchange": {"client_id": "x"}}},
        "client secret",
    ),
    "untyped certificate subject": (
        {**MTLS, "config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "cert_subjects": ["billing"]}}}},
        "cert_subjects",
    ),
    "certificate subject without client certificates": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "cert_subjects": ["dns:a.example"]}}}},
        "cert_subjects",
    ),
    "TLS without a certificate": ({"internalTls": {"enabled": True}}, "internalTls.existingSecret"),
    "cert-manager without an issuer": (
        {"internalTls": {"enabled": True, "certManager": {"enabled": True}}},
        "issuerRef",
    ),
    "client certificates without TLS": ({"internalTls": {"clientAuth": {"enabled": True}}}, "internalTls.enabled"),
    "no scraper admitted": ({"networkPolicy": {"metricsFrom": []}}, "metricsFrom"),
    "override of an unknown alert": ({"prometheusRule": {"alerts": {"KeysvcTypo": {"enabled": False}}}}, "KeysvcTypo"),
    "threshold on a yes/no alert": (
        {"prometheusRule": {"enabled": True, "alerts": {"KeysvcNoPendingKey": {"threshold": 1}}}},
        "KeysvcNoPendingKey",
    ),
    "routing label overriding severity": ({"prometheusRule": {"ruleLabels": {"severity": "info"}}}, "ruleLabels"),
    "runbook URL with an anchor": (
        {"prometheusRule": {"runbookBaseUrl": "https://wiki.example.com/rb#x"}},
        "runbookBaseUrl",
    ),
    "extraEnv overriding the config path": ({"extraEnv": [{"name": "KEYSVC_CONFIG", "value": "/x"}]}, "extraEnv"),
    "extra volume taking the config's name": (
        {"extraVolumes": [{"name": "config", "emptyDir": {}}]},
        "extraVolumes",
    ),
    "extra mount over /tmp": ({"extraVolumeMounts": [{"name": "x", "mountPath": "/tmp"}]}, "extraVolumeMounts"),
    "unknown log level": ({"logLevel": "verbose"}, "logLevel"),
    "bad traffic policy": ({"service": {"public": {"externalTrafficPolicy": "Nearest"}}}, "externalTrafficPolicy"),
    # Keys keysvc gained with the embed gateway, key rotation per client and the listener timeouts.
    "a bad digest among a client's digests": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "api_key_sha256": ["a" * 64, "x"]}}}},
        "api_key_sha256",
    ),
    "an empty digest list": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "api_key_sha256": []}}}},
        "api_key_sha256",
    ),
    "one digest listed twice": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "api_key_sha256": ["a" * 64] * 2}}}},
        "api_key_sha256",
    ),
    "admin as a bare keyset name": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "admin": "k"}}}},
        "admin",
    ),
    "admin of an unknown keyset": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "admin": ["k", "other"]}}}},
        "config.clients.c.admin",
    ),
    "zapier flag as a string": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "zapier": "yes"}}}},
        "zapier",
    ),
    "zapier gateway client without token exchange": (
        {"config": {"keysets": {"k": GOOD_KEYSET}, "clients": {"c": {**CLIENT, "zapier": True}}}},
        "config.clients.c.zapier",
    ),
    "unknown public log mode": ({"config": {"log": {"public": "none"}}}, "public"),
    "typo in a token exchange key": (
        {"config": {"token_exchange": {"client_id": "x", "redirect_uri": ["https://a.example.com/cb"]}}},
        "redirect_uri",
    ),
    "token exchange without a client id": ({"config": {"token_exchange": {"keyset": "zapier"}}}, "client_id"),
    "Partner API over plain http": (
        {"config": {"token_exchange": {"client_id": "x", "api_url": "http://api.zapier.com"}}},
        "api_url",
    ),
    "redirect URI with a fragment": (
        {"config": {"token_exchange": {"client_id": "x", "redirect_uris": ["https://a.example.com/cb#x"]}}},
        "redirect_uris",
    ),
    "Partner API budget of zero": (
        {"config": {"token_exchange": {"client_id": "x", "api_rate_limit": {"per_minute": 0}}}},
        "per_minute",
    ),
    "Partner API burst of zero": (
        {"config": {"token_exchange": {"client_id": "x", "api_rate_limit": {"burst": 0}}}},
        "burst",
    ),
    "Partner API budget with an unknown key": (
        {"config": {"token_exchange": {"client_id": "x", "api_rate_limit": {"per_second": 1}}}},
        "per_second",
    ),
    "run wait beyond ten minutes": (
        {"config": {"token_exchange": {"client_id": "x", "run_wait_max": "10m1s"}},
         "secrets": {"tokenExchangeClientSecret": "s"}},
        "run_wait_max",
    ),
    "run wait of zero": (
        {"config": {"token_exchange": {"client_id": "x", "run_wait_max": 0}},
         "secrets": {"tokenExchangeClientSecret": "s"}},
        "run_wait_max",
    ),
    "SQLite gateway store with three replicas": (
        {"config": {"token_exchange": {"client_id": "x"}}, "secrets": {"tokenExchangeClientSecret": "s"},
         "gatewayStore": {"url": "sqlite:////var/lib/keysvc/gateway.db"}},
        "gatewayStore.url is SQLite",
    ),
    "SQLite gateway store with an HPA": (
        {"config": {"token_exchange": {"client_id": "x"}}, "secrets": {"tokenExchangeClientSecret": "s"},
         "replicaCount": 1, "autoscaling": {"enabled": True},
         "gatewayStore": {"url": "sqlite:////var/lib/keysvc/gateway.db"}},
        "gatewayStore.url is SQLite",
    ),
    "gateway store without token exchange": (
        {"gatewayStore": {"url": "postgresql://keysvc@db:5432/keysvc"}}, "gatewayStore.url needs config.token_exchange",
    ),
    "password in the gateway store URL": (
        {"config": {"token_exchange": {"client_id": "x"}}, "secrets": {"tokenExchangeClientSecret": "s"},
         "gatewayStore": {"url": "postgresql://keysvc:hunter2@db:5432/keysvc"}},
        "url",
    ),
    "zero keep-alive": ({"listenTimeouts": {"keepalive": "0s"}}, "listenTimeouts.keepalive"),
    "bad head timeout": ({"listenTimeouts": {"head": "ten seconds"}}, "head"),
    "unknown listener timeout": ({"listenTimeouts": {"idle": "5s"}}, "idle"),
    "listener timeouts set by hand": ({"config": {"listen": {"keepalive_timeout": "65s"}}}, "listen"),
}


@pytest.mark.system
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_refused(case: str) -> None:
    """values.schema.json (or a template check) refuses the value, naming it in the error."""
    values, named = BAD_VALUES[case]
    answer = render_raw(values)
    assert not answer["ok"], f"{case}: rendered anyway"
    assert named in answer["error"], answer["error"]


# --- values keysvc would refuse at start-up: refused at render time, naming the field and the bound -------

KEYSET = {**GOOD_KEYSET, "default": True}

# case: (values rendered on top of REQUIRED, what the error must say: the field, and the bound where it has one)
REFUSED_AT_RENDER: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # A >= max(M + W, C) + I + S: with keysvc's defaults max(5m + 1m, 10m) + 30s + 60s, the bound is 690s.
    "publish ahead shorter than the verifier caches": (
        {"config": {"keysets": {"k": {**KEYSET, "publish_ahead": "60s"}}}},
        ("config.keysets.k.publish_ahead (60s) is too short", "= 690s"),
    ),
    "publish ahead one second short": (
        {"config": {"keysets": {"k": {**KEYSET, "publish_ahead": "689s"}}}},
        ("config.keysets.k.publish_ahead (689s)", "= 690s"),
    ),
    "verifier cache raised above publish ahead": (
        {"config": {"jwks": {"verifier_cache": "3d"}}},
        ("config.keysets.zapier.publish_ahead (172800s)", "= 259290s"),
    ),
    "max age and revalidation above publish ahead": (
        {"config": {"jwks": {"max_age": "2d", "stale_while_revalidate": "1h"}}},
        ("config.keysets.zapier.publish_ahead", "= 176490s"),
    ),
    # R >= T + I + S
    "retain after shorter than a token's life": (
        {"config": {"keysets": {"k": {**KEYSET, "retain_after": "5m"}}}},
        ("config.keysets.k.retain_after (300s) is too short", "= 390s"),
    ),
    "clock skew eating the retain margin": (
        {"config": {"clock_skew": "1d"}},
        ("config.keysets.zapier.retain_after (86400s)", "= 86730s"),
    ),
    "slow refresh eating the retain margin": (
        {"config": {"backend": {"refresh_interval": 86400}}},
        ("config.keysets.zapier.retain_after", "= 86760s"),
    ),
    # P > A, T <= P, T >= 1s
    "rotation period equal to publish ahead": (
        {"config": {"keysets": {"k": {**KEYSET, "rotation_period": "2d"}}}},
        ("config.keysets.k.rotation_period (172800s) must be greater than publish_ahead (172800s)",),
    ),
    "token lifetime beyond the rotation period": (
        {"config": {"keysets": {"k": {**KEYSET, "rotation_period": "1d", "publish_ahead": "12h",
                                       "retain_after": "3d", "max_token_ttl": "2d"}}}},
        ("config.keysets.k.max_token_ttl (172800s) must not exceed rotation_period (86400s)",),
    ),
    "token lifetime below a second": (
        {"config": {"keysets": {"k": {**KEYSET, "max_token_ttl": "500ms"}}}},
        ("config.keysets.k.max_token_ttl (0.5s) must be at least 1s",),
    ),
    "second keyset checked too": (
        {"config": {"keysets": {"a": KEYSET, "b": {**GOOD_KEYSET, "publish_ahead": "10m"}}}},
        ("config.keysets.b.publish_ahead (600s)",),
    ),
    "refresh interval of zero": (
        {"config": {"backend": {"refresh_interval": "0s"}}},
        ("config.backend.refresh_interval",),
    ),
    # Syntax, names and types: values.schema.json, naming the value.
    "duration with a space": ({"config": {"keysets": {"k": {**KEYSET, "publish_ahead": "2 d"}}}}, ("publish_ahead",)),
    "duration in weeks": ({"config": {"keysets": {"k": {**KEYSET, "retain_after": "1w"}}}}, ("retain_after",)),
    "unknown algorithm": ({"config": {"keysets": {"k": {**KEYSET, "alg": "HS256"}}}}, ("alg",)),
    "lower-case algorithm": ({"config": {"keysets": {"k": {**KEYSET, "alg": "es256"}}}}, ("alg",)),
    "unknown backend type": ({"backend": {"type": "s3"}}, ("backend", "type")),
    # Values without a sane default.
    "issuer left empty": (
        {"config": {"keysets": {"k": {"alg": "ES256", "issuer": ""}}}},
        ("config.keysets.k.issuer is required",),
    ),
    "old placeholder issuer": (
        {"config": {"keysets": {"k": {**KEYSET, "issuer": "https://partner.example.com"}}}},
        ("config.keysets.k.issuer is the placeholder",),
    ),
    "extra keyset beside the example one, without an issuer for the example": (
        {"config": {"keysets": {"zapier": {"issuer": ""}, "k": GOOD_KEYSET}}},
        ("config.keysets.zapier.issuer is required", "config.keysets.zapier: null"),
    ),
    "KMS without a region": ({"backend": {"kms": {"region": ""}}}, ("backend.kms.region is required",)),
    "ingress without a host": ({"ingress": {"enabled": True}}, ("ingress.host is required",)),
    "client of an unknown keyset": (
        {"config": {"keysets": {"k": KEYSET}, "clients": {"c": {**CLIENT, "keysets": ["nope"]}}}},
        ("config.clients.c.keysets: no keyset named nope",),
    ),
}


@pytest.mark.system
@pytest.mark.parametrize("case", sorted(REFUSED_AT_RENDER))
def test_values_keysvc_refuses_fail_the_render(case: str) -> None:
    """Values keysvc would refuse at start-up (timing invariants, syntax, names, values with no default) fail
    `helm template`/`install` instead of crash-looping a pod; the message names the field and the bound."""
    values, expected = REFUSED_AT_RENDER[case]
    answer = render_raw(values)
    assert not answer["ok"], f"{case}: rendered anyway"
    for text in expected:
        assert text in answer["error"], answer["error"]


@pytest.mark.system
def test_chart_defaults_alone_do_not_render() -> None:
    """With no values at all the chart refuses to render, naming the issuer: its defaults are not a deployment."""
    answer = render_raw({}, bare=True)
    assert not answer["ok"]
    assert "config.keysets.zapier.issuer is required" in answer["error"], answer["error"]
    assert "partner.example.com" not in (CHART / "values.yaml").read_text()


@pytest.mark.system
def test_every_problem_is_named_at_once() -> None:
    """Several refused values fail one render that names each of them, one per line (not just the first), so
    an operator fixes a values file in one pass; the chart's defaults alone name both required values."""
    answer = render_raw({}, bare=True)
    assert "2 problem(s) in the values" in answer["error"], answer["error"]
    assert "backend.kms.region is required" in answer["error"]
    keysets = {"a": {**KEYSET, "publish_ahead": "60s", "retain_after": "1m"}, "b": {"alg": "ES256", "issuer": ""}}
    clients = {"c": {**CLIENT, "keysets": ["nope"]}}
    answer = render_raw({"config": {"keysets": keysets, "clients": clients}, "ingress": {"enabled": True}})
    problems = answer["error"].split("\n")[1:]
    assert answer["error"].endswith(problems[-1]) and len(problems) == 5, answer["error"]
    for text in ("config.keysets.a.publish_ahead (60s)", "config.keysets.a.retain_after (60s)",
                 "config.keysets.b.issuer is required", "ingress.host is required", "config.clients.c.keysets"):
        assert sum(text in line for line in problems) == 1, (text, problems)


@pytest.mark.system
def test_notes_say_when_nothing_can_sign_yet() -> None:
    """A release without clients renders (a JWKS-only first step is valid), and NOTES.txt says nothing can
    sign yet and how to add a client; a release with clients does not say so."""
    assert "config.clients is empty" in rendered("default").notes
    assert "keysvc client new NAME" in rendered("default").notes
    assert "config.clients is empty" not in rendered("kms-irsa").notes


# Values at the edge of each bound: they render, and keysvc's own parser accepts the rendered keysvc.yaml.
RENDERED_AT_THE_BOUND: dict[str, dict[str, Any]] = {
    "publish ahead exactly at its bound": {"config": {"keysets": {"k": {**KEYSET, "publish_ahead": "11m30s"}}}},
    "retain after exactly at its bound": {"config": {"keysets": {"k": {**KEYSET, "retain_after": "6m30s"}}}},
    "token lifetime equal to the rotation period": {
        "config": {"keysets": {"k": {**KEYSET, "rotation_period": "1h", "publish_ahead": "20m",
                                      "retain_after": "1h2m", "max_token_ttl": "1h"}}}
    },
    "everything in integer seconds": {
        "config": {"clock_skew": 0, "backend": {"refresh_interval": 1},
                   "jwks": {"max_age": 0, "stale_while_revalidate": 0, "verifier_cache": 0},
                   "keysets": {"k": {**KEYSET, "rotation_period": 3, "publish_ahead": 1, "retain_after": 2,
                                     "max_token_ttl": 1}}}
    },
    "long caches with long overlaps": {
        "config": {"jwks": {"max_age": "1d", "verifier_cache": "1d"}, "clock_skew": "5m",
                   "keysets": {"k": {**KEYSET, "publish_ahead": "1d1h", "rotation_period": "90d"}}}
    },
    "file backend, one keyset per client": {
        "backend": {"type": "file"}, "secrets": {"passphrase": "x"},
        "config": {"keysets": {"k": {**GOOD_KEYSET, "alg": "EdDSA"}}, "clients": {"c": {**CLIENT}}},
    },
}


@pytest.mark.system
@pytest.mark.parametrize("case", sorted(RENDERED_AT_THE_BOUND))
def test_values_at_the_bounds_render_and_keysvc_accepts_them(case: str) -> None:
    """The render-time checks are not stricter than keysvc: values right at a bound render, and keysvc's own
    parser (as `keysvc check-config --offline` runs it) accepts the keysvc.yaml they produce."""
    from keysvc.config import ReadOptions, parse_yaml

    answer = render_raw(RENDERED_AT_THE_BOUND[case])
    assert answer["ok"], answer.get("error")
    config = Rendered(answer["manifests"]).config
    assert parse_yaml(yaml.safe_dump(config), ReadOptions(offline=True)) is not None


# Refusals of the chart's own (keysvc accepts any issuer; the example keyset exists only in the chart).
CHART_ONLY = {"old placeholder issuer", "extra keyset beside the example one, without an issuer for the example"}
KEYSVC_ALSO_REFUSES = sorted(
    case for case, (values, _) in REFUSED_AT_RENDER.items() if set(values) == {"config"} and case not in CHART_ONLY
)


@pytest.mark.system
@pytest.mark.parametrize("case", KEYSVC_ALSO_REFUSES)
def test_keysvc_refuses_what_the_chart_refuses(case: str) -> None:
    """The chart's config-level refusals are keysvc's own: the case's config laid over the default render's
    keysvc.yaml is refused by keysvc's parser, naming the same field (without the chart's `config.`)."""
    from keysvc.config import ReadOptions, parse_yaml
    from keysvc.errors import ConfigError

    values, expected = REFUSED_AT_RENDER[case]
    case_config = values["config"]
    config = merge(rendered("default").config, {k: v for k, v in case_config.items() if k != "keysets"})
    if "keysets" in case_config:
        config["keysets"] = case_config["keysets"]
    field = expected[0].split(" ")[0].removeprefix("config.").rstrip(":")
    with pytest.raises(ConfigError) as refused:
        parse_yaml(yaml.safe_dump(config), ReadOptions(offline=True))
    assert field in str(refused.value), (field, str(refused.value))


# --- what each mode must render ------------------------------------------------------------------------

# Keys keysvc accepts at the top of its config; anything else stops the service.
CONFIG_KEYS = {
    "listen",
    "backend",
    "clock_skew",
    "jwks",
    "keysets",
    "clients",
    "token_exchange",
    "canary",
    "mirror",
    "log",
    "public_url",
}
BACKEND_KEYS = {
    "type",
    "path",
    "passphrase_file",
    "region",
    "endpoint_url",
    "alias_prefix",
    "refresh_interval",
    "deletion_window",
}


def mounts_cover(container: dict[str, Any], path: str) -> bool:
    """Whether some volumeMount holds `path`."""
    return any(
        path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
        for m in container.get("volumeMounts", [])
    )


@pytest.mark.system
def test_default_deployment_is_highly_available() -> None:
    """3 replicas spread over zones and nodes, surge-only rollouts, a PDB, graceful shutdown, probes."""
    chart = rendered("default")
    deployment = chart.one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    keys = {c["topologyKey"]: c for c in chart.pod["topologySpreadConstraints"]}
    assert set(keys) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in keys.values())
    pdb = chart.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["maxUnavailable"] == 1
    assert chart.of_kind("HorizontalPodAutoscaler") == []

    container = chart.container
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-public"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-public"}
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert chart.pod["terminationGracePeriodSeconds"] > sleep > 0


@pytest.mark.system
def test_default_pod_is_locked_down() -> None:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, no API token, writes only /tmp."""
    chart = rendered("default")
    pod, container = chart.pod, chart.container
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert chart.one("ServiceAccount")["automountServiceAccountToken"] is False
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"], "kms mode writes nowhere but /tmp"


@pytest.mark.system
def test_two_services_and_internal_port_only_for_labelled_clients() -> None:
    """Public Service -> public port, internal Service -> internal port, which the NetworkPolicy guards."""
    chart = rendered("default")
    ports = {p["name"]: p["containerPort"] for p in chart.container["ports"]}
    public = chart.one("Service", RELEASE)
    internal = chart.one("Service", f"{RELEASE}-internal")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http-public"]
    assert [p["targetPort"] for p in internal["spec"]["ports"]] == ["http-internal"]
    assert internal["spec"]["type"] == "ClusterIP"
    assert chart.config["listen"] == {
        "public": f"0.0.0.0:{ports['http-public']}",
        "internal": f"0.0.0.0:{ports['http-internal']}",
        "head_timeout": "10s",
        "body_timeout": "30s",
        "keepalive_timeout": "5s",
    }

    policy = chart.one("NetworkPolicy", RELEASE)["spec"]
    internal_rules = [r for r in policy["ingress"] if r["ports"][0]["port"] == "http-internal"]
    assert internal_rules == [
        {
            "ports": [{"port": "http-internal", "protocol": "TCP"}],
            "from": [{"podSelector": {"matchLabels": {"keysvc.io/client": "true"}}}],
        },
        # Scrapers are admitted with the defaults too (no ServiceMonitor): monitoring is never silently cut.
        {
            "ports": [{"port": "http-internal", "protocol": "TCP"}],
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
        },
    ]
    assert chart.of_kind("ServiceMonitor") == []


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_rendered_config_fits_the_service_contract(mode: str) -> None:
    """keysvc.yaml has only keys keysvc knows, and every file it names is mounted in the pod."""
    chart = rendered(mode)
    config = chart.config
    assert set(config) <= CONFIG_KEYS
    assert set(config["backend"]) <= BACKEND_KEYS
    assert config["keysets"], "keysvc fails closed on an empty keyset map"
    files = [
        config["backend"].get("path"),
        config["backend"].get("passphrase_file"),
        (config.get("token_exchange") or {}).get("client_secret_file"),
        *((config["listen"].get("tls") or {}).get(key) for key in ("cert_file", "key_file", "client_ca_file")),
    ]
    for path in filter(None, files):
        assert mounts_cover(chart.container, path), f"{path} is not mounted"
    args = chart.container["args"]
    config_path = args[args.index("--config") + 1]
    assert mounts_cover(chart.container, config_path)


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_rendered_config_is_accepted_by_keysvc(mode: str) -> None:
    """keysvc's own parser (unknown keys, bounds, invariants) accepts the config each mode renders, as
    `keysvc check-config --offline` reads it on an operator's machine: the secret and TLS files the pod
    would mount must be configured, not present."""
    from keysvc.config import ReadOptions, parse_yaml

    settings = parse_yaml(yaml.safe_dump(rendered(mode).config), ReadOptions(offline=True))
    assert settings is not None


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_check_config_runs_before_the_server(mode: str) -> None:
    """An init container runs `keysvc check-config` on the mounted keysvc.yaml with the server's image,
    environment, security context and every file it reads (config, secrets, TLS, extra mounts), so a config
    keysvc refuses stops the pod in Init:Error with keysvc's message in its log. It runs after the release's
    own init containers (which may fetch files it reads) and does not mount the key volume."""
    chart = rendered(mode)
    server = chart.container
    check = chart.pod["initContainers"][-1]
    assert check["name"] == "check-config"
    assert check["image"] == server["image"] and check["imagePullPolicy"] == server["imagePullPolicy"]
    assert check["args"] == ["check-config", "--config", server["args"][server["args"].index("--config") + 1]]
    assert "command" not in check, "the image's entrypoint is keysvc itself"
    assert check["env"] == server["env"] and check.get("envFrom") == server.get("envFrom")
    assert check["securityContext"] == server["securityContext"] and check["resources"] == server["resources"]
    server_mounts = [m for m in server["volumeMounts"] if m["name"] != "keys"]
    assert check["volumeMounts"] == server_mounts
    assert all(m.get("readOnly") or m["mountPath"] == "/tmp" for m in check["volumeMounts"])
    config = chart.config
    for path in filter(None, [config["backend"].get("passphrase_file"),
                              (config.get("token_exchange") or {}).get("client_secret_file"),
                              *((config["listen"].get("tls") or {}).values())]):
        if isinstance(path, str):
            assert mounts_cover(check, path), f"check-config cannot read {path}"


@pytest.mark.system
def test_gateway_store_values_render_a_store_keysvc_accepts() -> None:
    """gatewayStore: the URL, timeout and divisor land in token_exchange.store, the password Secret is
    mounted read-only as a file that password_file names (never in keysvc.yaml), and keysvc's parser
    accepts the result; SQLite renders with one replica and no HPA."""
    from keysvc.config import ReadOptions, parse_yaml

    tx = {"config": {"token_exchange": {"client_id": "x"}}, "secrets": {"tokenExchangeClientSecret": "s"}}
    answer = render_raw({**tx, "gatewayStore": {"url": "postgresql://keysvc@db:5432/keysvc",
                                                "passwordSecret": {"name": "db-pw", "key": "password"}}})
    assert answer["ok"], answer.get("error")
    out = Rendered(answer["manifests"])
    store = out.config["token_exchange"]["store"]
    assert store == {"url": "postgresql://keysvc@db:5432/keysvc", "timeout": "2s", "fallback_divisor": 3,
                     "password_file": "/run/secrets/keysvc-gateway-store/password"}
    volume = next(v for v in out.pod["volumes"] if v["name"] == "gateway-store-password")
    assert volume["secret"]["secretName"] == "db-pw"
    mount = next(m for m in out.container["volumeMounts"] if m["name"] == "gateway-store-password")
    assert mount["readOnly"] is True and mount["mountPath"] == "/run/secrets/keysvc-gateway-store"
    assert parse_yaml(yaml.safe_dump(out.config), ReadOptions(offline=True)) is not None
    single = render_raw({**tx, "replicaCount": 1, "gatewayStore": {"url": "sqlite:////var/lib/keysvc/gw.db"}})
    assert single["ok"], single.get("error")


TX = {"config": {"token_exchange": {"client_id": "x"}}, "secrets": {"tokenExchangeClientSecret": "s"}}
STORE = {"gatewayStore": {"url": "postgresql://keysvc@db:5432/keysvc"}}
DELIVERY = {"url": "https://partner.example.com/zapier-messages", "secret": {"name": "whsec", "key": "webhook"}}
INGRESS = {"ingress": {"enabled": True, "host": "jwks.example.com"}}

# case: (values on top of TX, the public_url keysvc.yaml's trigger_delivery must name)
DELIVERY_PUBLIC_URLS: dict[str, tuple[dict[str, Any], str]] = {
    "its own publicUrl wins": (
        {"triggerDelivery": {**DELIVERY, "publicUrl": "https://hooks.example.com"},
         "config": {"public_url": "https://keys.example.com"}, **INGRESS},
        "https://hooks.example.com"),
    "else config.public_url": (
        {"triggerDelivery": DELIVERY, "config": {"public_url": "https://keys.example.com"},
         "ingress": {"enabled": True, "host": "jwks.example.com"}},
        "https://keys.example.com"),
    "else the Ingress's https host": (
        {"triggerDelivery": DELIVERY, "ingress": {"enabled": True, "host": "jwks.example.com"}},
        "https://jwks.example.com"),
}


@pytest.mark.system
@pytest.mark.parametrize("case", sorted(DELIVERY_PUBLIC_URLS))
def test_trigger_delivery_values_render_a_delivery_keysvc_accepts(case: str) -> None:
    """triggerDelivery: url, lease, sweepInterval and the public URL (defaulting like config.public_url)
    land in token_exchange.trigger_delivery, the whsec_ Secret is mounted read-only as the file secret_file
    names (never in keysvc.yaml), the Ingress routes /zapier/inbox-notifications/ to the public Service, and
    keysvc's parser accepts the result."""
    from keysvc.config import ReadOptions, parse_yaml

    extra, public_url = DELIVERY_PUBLIC_URLS[case]
    answer = render_raw(merge(merge(TX, STORE), extra))
    assert answer["ok"], answer.get("error")
    out = Rendered(answer["manifests"])
    assert out.config["token_exchange"]["trigger_delivery"] == {
        "url": "https://partner.example.com/zapier-messages", "public_url": public_url, "lease": "5m",
        "sweep_interval": "5m", "secret_file": "/run/secrets/keysvc-trigger-delivery/webhook"}
    volume = next(v for v in out.pod["volumes"] if v["name"] == "trigger-delivery-secret")
    assert volume["secret"]["secretName"] == "whsec"
    assert volume["secret"]["items"] == [{"key": "webhook", "path": "webhook"}]
    mount = next(m for m in out.container["volumeMounts"] if m["name"] == "trigger-delivery-secret")
    assert mount["readOnly"] is True and mount["mountPath"] == "/run/secrets/keysvc-trigger-delivery"
    paths = [(p["path"], p["pathType"], p["backend"]["service"]["port"]["name"])
             for p in out.one("Ingress")["spec"]["rules"][0]["http"]["paths"]]
    assert paths[-1] == ("/zapier/inbox-notifications/", "Prefix", "http-public")
    assert parse_yaml(yaml.safe_dump(out.config), ReadOptions(offline=True)) is not None


@pytest.mark.system
def test_without_trigger_delivery_nothing_of_it_renders() -> None:
    """No triggerDelivery.url: no trigger_delivery in keysvc.yaml, no secret volume, no notification path."""
    answer = render_raw(merge(merge(TX, STORE), {"ingress": {"enabled": True, "host": "jwks.example.com"}}))
    assert answer["ok"], answer.get("error")
    out = Rendered(answer["manifests"])
    assert "trigger_delivery" not in out.config["token_exchange"]
    assert all(v["name"] != "trigger-delivery-secret" for v in out.pod["volumes"])
    assert all("inbox-notifications" not in p["path"]
               for p in out.one("Ingress")["spec"]["rules"][0]["http"]["paths"])


# case: (values on top of TX, what the refusal must say)
DELIVERY_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "without the gateway store": ({"triggerDelivery": {**DELIVERY, "publicUrl": "https://h.example.com"}},
                                  "triggerDelivery.url needs gatewayStore.url"),
    "without the secret": (
        {**STORE, "triggerDelivery": {"url": DELIVERY["url"], "publicUrl": "https://h.example.com"}},
        "triggerDelivery.url needs triggerDelivery.secret.name"),
    "without any public URL": (
        {**STORE, "triggerDelivery": DELIVERY}, "triggerDelivery.url needs triggerDelivery.publicUrl"),
    "a lease that is no duration": ({**STORE, "triggerDelivery": {**DELIVERY, "lease": "5 minutes"}}, "lease"),
}


@pytest.mark.system
@pytest.mark.parametrize("case", sorted(DELIVERY_REFUSED))
def test_trigger_delivery_without_what_it_needs_is_refused(case: str) -> None:
    """Push delivery without the gateway store, its signing secret or a public URL for Zapier fails the
    render (keysvc would refuse it at start), naming the value."""
    extra, expected = DELIVERY_REFUSED[case]
    answer = render_raw(merge(TX, extra))
    assert not answer["ok"], f"{case}: rendered anyway"
    assert expected in answer["error"], answer["error"]


@pytest.mark.system
def test_file_mode_shares_a_read_write_many_volume() -> None:
    """File backend: an RWX claim kept on uninstall, mounted at backend.path; secrets as files."""
    chart = rendered("file-rwx")
    pvc = chart.one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in chart.pod["volumes"]}
    assert volumes["keys"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert volumes["secrets"]["secret"]["secretName"] == "keysvc-prod-secrets"
    assert chart.config["backend"]["type"] == "file"
    assert chart.one("Secret", f"{RELEASE}-config"), "configInSecret puts keysvc.yaml in a Secret"
    assert chart.of_kind("ConfigMap") == []
    assert "eks.amazonaws.com/role-arn" not in (
        chart.one("ServiceAccount")["metadata"].get("annotations") or {}
    )


@pytest.mark.system
def test_kms_mode_uses_irsa_and_no_volume() -> None:
    """KMS backend: the IRSA role on the ServiceAccount, no claim, no Kubernetes API token."""
    chart = rendered("kms-irsa")
    account = chart.one("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/keysvc-prod"
    )
    assert chart.pod["serviceAccountName"] == account["metadata"]["name"]
    assert chart.pod["automountServiceAccountToken"] is False
    assert chart.of_kind("PersistentVolumeClaim") == []
    assert {v["name"] for v in chart.pod["volumes"]} == {"config", "tmp"}
    backend = chart.config["backend"]
    assert (backend["type"], backend["region"], backend["alias_prefix"], backend["deletion_window"]) == (
        "kms",
        "eu-west-1",
        "alias/keysvc/prod",
        "14d",
    )
    assert chart.container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)


@pytest.mark.system
def test_ingress_routes_only_the_jwks_paths() -> None:
    """Ingress: exact JWKS and OpenID discovery paths to the public Service, nothing else; NOTES gives the
    https JWKS URL; keysvc's public_url is the Ingress's https host, so discovery names an absolute jwks_uri."""
    chart = rendered("ingress")
    rules = chart.one("Ingress")["spec"]["rules"]
    paths = [(p["path"], p["pathType"], p["backend"]["service"]["name"]) for p in rules[0]["http"]["paths"]]
    assert paths == [
        ("/.well-known/jwks.json", "Exact", RELEASE),
        ("/.well-known/openid-configuration", "Exact", RELEASE),
        ("/keysets/zapier/jwks.json", "Exact", RELEASE),
        ("/keysets/zapier/.well-known/openid-configuration", "Exact", RELEASE),
    ]
    assert "https://jwks.example.com/.well-known/jwks.json" in chart.notes
    assert chart.config["public_url"] == "https://jwks.example.com"
    assert "public_url" not in rendered("default").config, "no Ingress: the chart cannot know the public URL"


@pytest.mark.system
def test_openid_discovery_settings_pass_through() -> None:
    """config.public_url (which wins over the Ingress host) and a keyset's jwks_uri reach keysvc.yaml as
    written and keysvc accepts them; a URL keysvc would refuse (plain http to a public host, a fragment) is
    refused at render, naming the value."""
    from keysvc.config import ReadOptions, parse_yaml

    keyset = {**GOOD_KEYSET, "default": True, "jwks_uri": "https://cdn.example.com/jwks/k.json"}
    values = {"ingress": {"enabled": True, "host": "jwks.example.com"},
              "config": {"public_url": "https://keys.example.com/jwks", "keysets": {"k": keyset}}}
    answer = render_raw(values)
    assert answer["ok"], answer.get("error")
    config = Rendered(answer["manifests"]).config
    assert config["public_url"] == "https://keys.example.com/jwks"
    assert config["keysets"]["k"]["jwks_uri"] == "https://cdn.example.com/jwks/k.json"
    assert parse_yaml(yaml.safe_dump(config), ReadOptions(offline=True)) is not None
    for bad in ({"config": {"public_url": "http://keys.example.com"}}, {"config": {"public_url": "https://k.example.com/#x"}},
                {"config": {"keysets": {"k": {**keyset, "jwks_uri": "https://u:p@cdn.example.com/k.json"}}}}):
        answer = render_raw(bad)
        assert not answer["ok"], bad
        assert "public_url" in answer["error"] or "jwks_uri" in answer["error"], answer["error"]


@pytest.mark.system
def test_hpa_and_monitoring_objects() -> None:
    """HPA owns the replica count; ServiceMonitor scrapes the internal Service only; rules, dashboard ship."""
    chart = rendered("hpa-monitoring")
    assert "replicas" not in chart.one("Deployment")["spec"]
    hpa = chart.one("HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)

    monitor = chart.one("ServiceMonitor")["spec"]
    selected = [
        s["metadata"]["name"]
        for s in chart.of_kind("Service")
        if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [f"{RELEASE}-internal"]
    assert (
        monitor["endpoints"][0]["port"] == "http-internal" and monitor["endpoints"][0]["path"] == "/metrics"
    )

    rule = chart.one("PrometheusRule")["spec"]
    shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert [r["alert"] for g in rule["groups"] for r in g["rules"]] == [
        r["alert"] for g in shipped["groups"] for r in g["rules"]
    ]
    # With the ServiceMonitor, the rules read exactly the series it scrapes.
    for group in rule["groups"]:
        for r in group["rules"]:
            assert RELEASE_MATCHER not in r["expr"], r["alert"]
            assert f'namespace="{NAMESPACE}", job="{RELEASE}-internal"' in r["expr"], r["alert"]

    dashboard = chart.one("ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["keysvc.json"])
    assert board["uid"] == "keysvc" and board["panels"]

    # Prometheus may scrape the internal port; the NetworkPolicy says so.
    policy = chart.one("NetworkPolicy", RELEASE)["spec"]["ingress"]
    assert any(
        "namespaceSelector" in peer
        for r in policy
        for peer in r.get("from", [])
        if r["ports"][0]["port"] == "http-internal"
    )


@pytest.mark.system
def test_helm_test_pod_checks_the_jwks() -> None:
    """The test hook is valid Python, targets the public Service and is not itself a Service endpoint."""
    chart = rendered("default")
    pod = chart.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    compile(script, "helm-test", "exec")
    assert f"http://{RELEASE}.{NAMESPACE}.svc:80" in script and "/keysets/zapier/jwks.json" in script
    assert '"kid"' in script
    labels = pod["metadata"]["labels"]
    for service in chart.of_kind("Service"):
        assert not service["spec"]["selector"].items() <= labels.items(), "test pod would receive traffic"


# --- durations: the schema accepts exactly what keysvc accepts ------------------------------------------

# keysvc's duration grammar: one or more <number><unit> parts, or a non-negative number of seconds.
KEYSVC_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$")
DURATIONS_ACCEPTED = ["90s", "15m", "30d", "1h30m", "1500ms", "2.5d", "1d12h", "0s", 0, 60, 1.5]
DURATIONS_REFUSED = ["1 minute", "1h 30m", "h", "", "-1s", "1.s", ".5s", "5", "1w", "10M", -1]


@pytest.mark.unit
def test_duration_table_follows_keysvc_grammar() -> None:
    """The two tables below agree with keysvc's grammar (so the render tests check the right thing)."""
    for value in DURATIONS_ACCEPTED:
        assert isinstance(value, (int, float)) or KEYSVC_DURATION.match(value), value
    for value in DURATIONS_REFUSED:
        assert (isinstance(value, (int, float)) and value < 0) or (
            isinstance(value, str) and not KEYSVC_DURATION.match(value)
        ), value


@pytest.mark.unit
@pytest.mark.parametrize("value", DURATIONS_ACCEPTED, ids=str)
def test_chart_accepts_every_keysvc_duration(value: object) -> None:
    """Compound and fractional durations keysvc accepts (1h30m, 1500ms, 2.5d, seconds) pass the schema (in a
    setting outside the timing invariants, so that any length is valid)."""
    answer = render_raw({"config": {"jwks": {"stale_if_error": value}}})
    assert answer["ok"], answer.get("error")


@pytest.mark.unit
@pytest.mark.parametrize("value", DURATIONS_REFUSED, ids=repr)
def test_chart_refuses_what_keysvc_refuses(value: object) -> None:
    """Strings outside keysvc's grammar and negative numbers are refused at install, naming the key."""
    answer = render_raw({"config": {"clock_skew": value}})
    assert not answer["ok"] and "clock_skew" in answer["error"], answer


@pytest.mark.unit
def test_canary_stalled_threshold_is_three_canary_intervals() -> None:
    """KeysvcCanaryStalled fires after 3 x config.canary.interval, for compound intervals too."""
    for interval, seconds in (("2m", 360), ("1m30s", 270), ("1500ms", 4.5), (45, 135)):
        canary = {"jwks_url": "https://jwks.example.com/.well-known/jwks.json", "interval": interval}
        values = {"prometheusRule": {"enabled": True}, "config": {"canary": canary}}
        answer = render_raw(values)
        assert answer["ok"], answer.get("error")
        (rule,) = [r for o in Rendered(answer["manifests"]).of_kind("PrometheusRule") for g in o["spec"]["groups"]
                   for r in g["rules"] if r["alert"] == "KeysvcCanaryStalled"]
        assert rule["expr"].rstrip().endswith(f"> {seconds:g}"), (interval, rule["expr"])


# --- operating the chart: rules, escape hatches, secrets, TLS -------------------------------------------


@pytest.mark.system
def test_rules_are_scoped_routed_and_tuned_per_release(tmp_path: Path) -> None:
    """The operated mode's rules: the release selector replaces the plain file's matcher everywhere, routing
    labels and the runbook base URL are on every alert, per-alert overrides apply, and promtool still
    parses every rewritten expression."""
    chart = rendered("operated")
    rules = {r["alert"]: r for o in chart.of_kind("PrometheusRule") for g in o["spec"]["groups"] for r in g["rules"]}
    assert "KeysvcPublicServerErrors" not in rules and "KeysvcTargetDown" in rules
    for name, rule in rules.items():
        assert RELEASE_MATCHER not in rule["expr"]
        assert f'namespace="{NAMESPACE}", job="keysvc-pods"' in rule["expr"], name
        assert {"team": "identity", "service": "keysvc"}.items() <= rule["labels"].items(), name
        assert rule["annotations"]["runbook_url"] == "https://wiki.example.com/keysvc/runbook#" + name.lower()
    sign = rules["KeysvcSignErrorRatioHigh"]
    assert sign["expr"].rstrip().endswith("> 0.02") and sign["for"] == "5m"
    assert rules["KeysvcBackendThrottled"]["labels"]["severity"] == "critical"
    assert rules["KeysvcCanaryStalled"]["expr"].rstrip().endswith("> 360"), "3 x the 2m canary interval"

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run tests/tools/ensure_promtool.sh"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": chart.one("PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_without_service_monitor_rules_select_the_release_namespace() -> None:
    """Default selector without the ServiceMonitor: the release namespace, so staging and prod never mix."""
    answer = render_raw({"prometheusRule": {"enabled": True}})
    assert answer["ok"], answer.get("error")
    for group in Rendered(answer["manifests"]).one("PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            assert f'{{namespace="{NAMESPACE}"' in rule["expr"] and RELEASE_MATCHER not in rule["expr"], rule


@pytest.mark.system
def test_escape_hatches_reach_the_pod() -> None:
    """extraVolumes/Mounts (CA bundle, CSI), extraEnv, envFrom, init and extra containers, log level,
    POD_NAME, commonLabels, deploymentAnnotations and the LoadBalancer settings are rendered where they
    belong, without touching the chart's own mounts or selectors."""
    chart = rendered("operated")
    pod, container = chart.pod, chart.container
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-ca", "check-config"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["corp-ca"]["configMap"]["name"] == "corp-ca-bundle"
    assert volumes["vault-secrets"]["csi"]["driver"] == "secrets-store.csi.k8s.io"
    assert mounts_cover(container, "/etc/ssl/corp/ca-bundle.pem") and mounts_cover(container, "/run/secrets/vault/x")
    env = {e["name"]: e for e in container["env"]}
    assert env["SSL_CERT_FILE"]["value"] == "/etc/ssl/corp/ca-bundle.pem"
    assert env["KEYSVC_LOG_LEVEL"]["value"] == "DEBUG"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "keysvc-proxy-settings"}}]
    deployment = chart.one("Deployment")
    assert deployment["metadata"]["annotations"] == {"reloader.stakater.com/auto": "true"}
    assert all(o["metadata"]["labels"]["team"] == "identity" for o in chart.objects if o["kind"] != "Pod")
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    public = chart.one("Service", RELEASE)["spec"]
    assert public["loadBalancerSourceRanges"] == ["203.0.113.0/24", "2001:db8::/32"]
    assert public["externalTrafficPolicy"] == "Local"
    scrapers = [r["from"] for r in chart.one("NetworkPolicy", RELEASE)["spec"]["ingress"]
                if r["ports"][0]["port"] == "http-internal"][-1]
    assert len(scrapers) == 2 and scrapers[1]["podSelector"] == {"matchLabels": {"app": "datadog-agent"}}


@pytest.mark.system
def test_a_changed_existing_secret_checksum_rolls_the_pods() -> None:
    """With secrets.existingSecret the chart cannot hash the Secret: secrets.checksum is rendered on the pod
    template, so a new value changes the template and the Deployment rolls; nothing else changes."""
    base = mode_values("file-rwx")

    def template(checksum: str) -> dict[str, Any]:
        values = {**base, "secrets": {**base["secrets"], "checksum": checksum}}
        answer = render_raw(values)
        assert answer["ok"], answer.get("error")
        template: dict[str, Any] = Rendered(answer["manifests"]).one("Deployment")["spec"]["template"]
        return template

    v1, v2 = template("v1"), template("v2")
    assert v1["metadata"]["annotations"]["checksum/existing-secret"] == "v1"
    assert v1 != v2
    v2["metadata"]["annotations"]["checksum/existing-secret"] = "v1"
    assert v1 == v2
    assert "checksum/existing-secret" not in rendered("file-rwx").one("Deployment")["spec"]["template"][
        "metadata"]["annotations"]


@pytest.mark.system
def test_mtls_mode_maps_tls_to_keysvc_config_and_keeps_probes_plain() -> None:
    """mTLS: a Certificate for the internal Service, the TLS and client-CA Secrets mounted where
    listen.tls points, typed cert_subjects passed through, the ServiceMonitor on https with its tlsConfig,
    and probes still plain HTTP on the public port."""
    chart = rendered("mtls")
    cert = chart.one("Certificate")["spec"]
    assert cert["secretName"] == f"{RELEASE}-internal-tls"
    assert f"{RELEASE}-internal.{NAMESPACE}.svc" in cert["dnsNames"]
    assert cert["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    tls = chart.config["listen"]["tls"]
    assert tls["require_client_cert"] is True
    for key in ("cert_file", "key_file", "client_ca_file"):
        assert mounts_cover(chart.container, tls[key]), key
    volumes = {v["name"]: v for v in chart.pod["volumes"]}
    assert volumes["internal-tls"]["secret"]["secretName"] == f"{RELEASE}-internal-tls"
    assert volumes["client-ca"]["secret"]["secretName"] == "mesh-client-ca"
    assert chart.config["clients"]["billing-api"]["cert_subjects"] == [
        "uri:spiffe://cluster.local/ns/billing/sa/billing-api"
    ]
    endpoint = chart.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == f"keysvc-internal.{NAMESPACE}.svc"
    assert endpoint["tlsConfig"]["keySecret"] == {"name": "prometheus-keysvc-client", "key": "tls.key"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert chart.container[probe]["httpGet"]["port"] == "http-public"
        assert chart.container[probe]["httpGet"].get("scheme", "HTTP") == "HTTP"


@pytest.mark.system
def test_zapier_gateway_mode_passes_the_new_keys_through() -> None:
    """The gateway mode renders what keysvc gained: two digests for a client rotating its key, the zapier
    flag, the gateway's token_exchange keys, log.public, and listenTimeouts as listen's three timeouts (the
    keep-alive above the ALB's 60 s idle timeout); the mode's alert overrides reach the Zapier rules."""
    chart = rendered("zapier-gateway")
    config = chart.config
    web = config["clients"]["web-backend"]
    assert len(web["api_key_sha256"]) == 2 and web["zapier"] is True
    assert config["clients"]["ops-console"]["admin"] is True
    exchange = config["token_exchange"]
    assert exchange["api_url"] == "https://api.zapier.com"
    assert exchange["redirect_uris"] == mode_values("zapier-gateway")["config"]["token_exchange"]["redirect_uris"]
    assert exchange["api_rate_limit"] == {"per_minute": 20, "burst": 5} and exchange["run_wait_max"] == "2m"
    assert config["log"] == {"access": True, "public": "all"}
    listen = config["listen"]
    assert (listen["head_timeout"], listen["body_timeout"], listen["keepalive_timeout"]) == ("10s", "20s", "65s")
    rules = {r["alert"]: r for o in chart.of_kind("PrometheusRule") for g in o["spec"]["groups"] for r in g["rules"]}
    assert rules["KeysvcZapierApiFailing"]["expr"].rstrip().endswith("> 0.2")
    assert rules["KeysvcZapierRunsFailing"]["for"] == "1h"
    assert rules["KeysvcZapierThrottled"]["expr"].rstrip().endswith("> 0")


@pytest.mark.unit
def test_admin_may_name_the_keysets_a_client_administers() -> None:
    """`admin` is a boolean or a list of configured keysets (the form keysvc is gaining); the list is passed
    through as written."""
    keysets = {"zapier": GOOD_KEYSET, "internal": GOOD_KEYSET}
    client = {**CLIENT, "keysets": ["zapier", "internal"], "admin": ["internal"]}
    answer = render_raw({"config": {"keysets": keysets, "clients": {"ops": client}}})
    assert answer["ok"], answer.get("error")
    assert Rendered(answer["manifests"]).config["clients"]["ops"]["admin"] == ["internal"]


@pytest.mark.unit
def test_chart_version_and_app_version() -> None:
    """Chart 0.2.0 (new values, new alerts); appVersion is keysvc's own version, so the default image tag
    is the release the chart was made for."""
    import tomllib

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["version"] == "0.2.0"
    assert chart["appVersion"] == project["version"]


# --- documentation -------------------------------------------------------------------------------------


@pytest.mark.unit
def test_chart_readme_covers_every_value_group_and_mode() -> None:
    """helm/keysvc/README.md (what `helm show readme` prints) names every top-level value and every mode
    file, and has upgrade notes."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values:
        assert f"`{key}" in readme, f"value {key} is not described in the chart README"
    for path in VALUES_DIR.glob("*.yaml"):
        assert path.name in readme, f"mode {path.name} is not described"
    assert "## Upgrad" in readme


@pytest.mark.unit
def test_no_reference_to_documents_outside_the_repository() -> None:
    """Chart files, the runbook and the deployment guide stand on their own: no "design §N" or a path
    outside the repository."""
    paths = [*CHART.rglob("*"), REPO / "helm" / "prometheus-rules.yaml", REPO / "docs" / "runbook.md",
             REPO / "docs" / "deployment.md"]
    for path in paths:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"design\s*§|design\.md|\.\./shared", text), path


# --- the deployment guide's recipes run as written -------------------------------------------------------


def check_values_recipe() -> str:
    """The shell block of docs/deployment.md's "Check a values file"."""
    doc = (REPO / "docs" / "deployment.md").read_text()
    section = doc.split("#### Check a values file", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the recipe's ```sh block is gone"
    return block.group(1)


def run_check_values_recipe(values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The recipe with prod.yaml and /tmp/keysvc.yaml replaced by files under tmp_path, run from the repository
    root by sh -e. Its `make` line is not run: the test needs .venv-tools already (tool() fails otherwise)."""
    tool("python")
    assert (REPO / ".venv" / "bin" / "keysvc").exists(), "the recipe uses .venv/bin/keysvc: make .venv/.installed"
    values_file = tmp_path / "prod.yaml"
    values_file.write_text(yaml.safe_dump(values))
    recipe = check_values_recipe()
    assert recipe.startswith("make tools"), recipe
    script = "\n".join(line for line in recipe.splitlines() if not line.startswith("make "))
    script = script.replace("prod.yaml", str(values_file)).replace("/tmp/keysvc.yaml", str(tmp_path / "keysvc.yaml"))
    return subprocess.run(["sh", "-e", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.system
def test_check_values_recipe_accepts_a_good_values_file(tmp_path: Path) -> None:
    """docs/deployment.md's recipe, as written, renders a mode's values with helm/render.py and keysvc's
    `check-config --offline` accepts them."""
    result = run_check_values_recipe(mode_values("kms-irsa"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok"), result.stdout
    assert yaml.safe_load((tmp_path / "keysvc.yaml").read_text())["keysets"]["internal"]["alg"] == "ES384"


@pytest.mark.system
def test_check_values_recipe_reports_the_charts_refusal(tmp_path: Path) -> None:
    """Values the chart refuses stop the recipe at the render (exit 1, the field and bound on stderr), before
    keysvc reads a half-written file."""
    values = mode_values("kms-irsa")
    values["config"]["keysets"]["zapier"]["publish_ahead"] = "60s"
    result = run_check_values_recipe(values, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "config.keysets.zapier.publish_ahead (60s) is too short" in result.stderr and "= 690s" in result.stderr
    assert "ok:" not in result.stdout


@pytest.mark.system
def test_check_values_recipe_reports_keysvcs_refusal(tmp_path: Path) -> None:
    """What the chart renders but keysvc refuses (two clients sharing an API key) fails the recipe's second
    step with keysvc's own message and its configuration-error status, 78."""
    values = mode_values("kms-irsa")
    clients = values["config"]["clients"]
    clients["twin"] = {**clients["admin-cli"], "admin": False}
    result = run_check_values_recipe(values, tmp_path)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "api_key_sha256" in result.stderr and "same API key" in result.stderr, result.stderr


@pytest.mark.unit
def test_docs_name_only_real_keysvc_commands() -> None:
    """Every `keysvc COMMAND [ACTION]` the runbook, the deployment guide and the chart README name exists in
    keysvc's command line (the runbook once named a `keys create` there is none of)."""
    import argparse

    from keysvc.cli import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    commands = subcommands(build_parser())
    texts = [REPO / "docs" / "runbook.md", REPO / "docs" / "deployment.md", CHART / "README.md"]
    named = 0
    for path in texts:
        for command, action in re.findall(r"\bkeysvc ([a-z][a-z-]+)(?: ([a-z][a-z-]+))?", path.read_text()):
            if command in {"serve", "check-config", "keys", "jwks", "client", "exchange", "zapier"} or (
                command in commands
            ):
                assert command in commands, f"{path.name}: keysvc {command}"
                actions = subcommands(commands[command])
                if actions and action:
                    assert action in actions, f"{path.name}: keysvc {command} {action}"
                named += 1
    assert named >= 10, "the docs name fewer keysvc commands than expected: is the pattern still right?"


@pytest.mark.system
def test_render_script_merges_values_files_as_helm_does(tmp_path: Path) -> None:
    """helm/render.py merges several -f files (maps key by key, the later file winning), prints every manifest
    without --config-only, and exits 1 with the chart's message when the merged values are refused."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump(mode_values("kms-irsa")))
    second.write_text(yaml.safe_dump({"config": {"keysets": {"internal": {"alg": "ES256"}}}, "replicaCount": 5}))
    script = str(REPO / "helm" / "render.py")
    result = subprocess.run([str(tool("python")), script, "-f", str(first), "-f", str(second)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 5
    (holder,) = [o for o in objects if o["metadata"]["name"] == f"{RELEASE}-config"]
    config = yaml.safe_load(holder["data"]["keysvc.yaml"])
    assert config["keysets"]["internal"] == {"issuer": "https://internal.example.com", "alg": "ES256"}
    assert config["keysets"]["zapier"]["alg"] == "RS256"

    second.write_text(yaml.safe_dump({"config": {"keysets": {"internal": {"retain_after": "1m"}}}}))
    result = subprocess.run([str(tool("python")), script, "-f", str(first), "-f", str(second), "--config-only"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert "config.keysets.internal.retain_after (60s) is too short" in result.stderr, result.stderr


@pytest.mark.system
def test_check_config_init_container_reads_the_mounted_secrets(tmp_path: Path) -> None:
    """The init container's command, run as written against the file-rwx pod's files laid out under a temporary
    root (config, passphrase, client secret at their mount paths), accepts them; an empty passphrase file, which
    `--offline` cannot see, fails it with keysvc's message naming backend.passphrase_file and status 78."""
    chart = rendered("file-rwx")
    check = chart.pod["initContainers"][-1]
    root = tmp_path / "pod"

    def in_pod(path: str) -> Path:
        return root / path.lstrip("/")

    mounts = [m["mountPath"] for m in check["volumeMounts"]]
    text = yaml.safe_dump(chart.config)
    for mount in sorted(mounts, key=len, reverse=True):
        text = text.replace(mount, str(in_pod(mount)))
    config_path = check["args"][check["args"].index("--config") + 1]
    in_pod(config_path).parent.mkdir(parents=True)
    in_pod(config_path).write_text(text)
    config = yaml.safe_load(text)
    passphrase = Path(config["backend"]["passphrase_file"])
    secret = Path(config["token_exchange"]["client_secret_file"])
    for path in (passphrase, secret):
        assert any(str(path).startswith(str(in_pod(m))) for m in mounts), f"{path} is outside the init mounts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a long passphrase or client secret\n")
    keysvc = REPO / ".venv" / "bin" / "keysvc"
    args = [str(in_pod(config_path)) if a == config_path else a for a in check["args"]]
    env = {**os.environ, **{e["name"]: e["value"] for e in check["env"] if "value" in e}}
    env["KEYSVC_CONFIG"] = str(in_pod(config_path))
    ok = subprocess.run([str(keysvc), *args], capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    passphrase.write_text("")
    refused = subprocess.run([str(keysvc), *args], capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert "backend.passphrase_file" in refused.stderr, refused.stderr
    offline = subprocess.run([str(keysvc), *args, "--offline"], capture_output=True, text=True, timeout=60, env=env)
    assert offline.returncode == 0, "--offline does not read the files: the pod's check must not use it"
