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
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
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

MODES = ["default", "file-rwx", "kms-irsa", "ingress", "hpa-monitoring"]

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


def render_raw(values: dict[str, Any]) -> dict[str, Any]:
    """{"ok": True, "manifests": {template: text}} or {"ok": False, "error": text}."""
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
    """The values file of a mode (the default mode passes none)."""
    if mode == "default":
        return {}
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
        answer = render_raw(mode_values(mode))
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
    """`helm lint --strict` finds no error or warning (only the INFO about a missing icon)."""
    script = f"import json, helm_python as helm\nprint(json.dumps(helm.lint({str(CHART)!r}, strict=True)))"
    result = subprocess.run([str(tool("python")), "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert not report["errors"], report
    # Helm's severities: 1 info, 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


# --- bad values --------------------------------------------------------------------------------------

GOOD_KEYSET = {"issuer": "https://a.example.com", "alg": "RS256"}
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
}


@pytest.mark.system
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_refused(case: str) -> None:
    """values.schema.json (or a template check) refuses the value, naming it in the error."""
    values, named = BAD_VALUES[case]
    answer = render_raw(values)
    assert not answer["ok"], f"{case}: rendered anyway"
    assert named in answer["error"], answer["error"]


# --- what each mode must render ------------------------------------------------------------------------

# Keys keysvc accepts (design §3, §6 and the optional sections); anything else stops the service.
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
    }

    policy = chart.one("NetworkPolicy", RELEASE)["spec"]
    internal_rules = [r for r in policy["ingress"] if r["ports"][0]["port"] == "http-internal"]
    assert internal_rules == [
        {
            "ports": [{"port": "http-internal", "protocol": "TCP"}],
            "from": [{"podSelector": {"matchLabels": {"keysvc.io/client": "true"}}}],
        }
    ]


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
    ]
    for path in filter(None, files):
        assert mounts_cover(chart.container, path), f"{path} is not mounted"
    args = chart.container["args"]
    config_path = args[args.index("--config") + 1]
    assert mounts_cover(chart.container, config_path)


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_rendered_config_is_accepted_by_keysvc(mode: str, tmp_path: Path) -> None:
    """keysvc's own parser (unknown keys, bounds, invariants) accepts the config each mode renders.

    The secret files the pod would mount are stand-ins in tmp_path: the parser reads them.
    """
    from keysvc.config import parse_yaml

    config = rendered(mode).config
    for section, key in (("backend", "passphrase_file"), ("token_exchange", "client_secret_file")):
        if key in (config.get(section) or {}):
            stand_in = tmp_path / key
            stand_in.write_text("stand-in secret for the parser, 32 chars+")
            config[section][key] = str(stand_in)
    settings = parse_yaml(yaml.safe_dump(config))
    assert settings is not None


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
    """Ingress: exact JWKS paths to the public Service, nothing else; NOTES gives the https JWKS URL."""
    chart = rendered("ingress")
    rules = chart.one("Ingress")["spec"]["rules"]
    paths = [(p["path"], p["pathType"], p["backend"]["service"]["name"]) for p in rules[0]["http"]["paths"]]
    assert paths == [
        ("/.well-known/jwks.json", "Exact", RELEASE),
        ("/keysets/zapier/jwks.json", "Exact", RELEASE),
    ]
    assert "https://jwks.example.com/.well-known/jwks.json" in chart.notes


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
    assert rule["groups"] == shipped["groups"] and shipped["groups"][0]["name"] == "keysvc"
    for group in rule["groups"]:
        for r in group["rules"]:
            assert r.get("alert") and r.get("expr"), r

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
