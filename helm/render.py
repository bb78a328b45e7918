"""Render the keysvc chart offline, without a helm binary or a cluster.

Uses helm-python-sdk (Helm v4's Go SDK through ctypes), which `make tools` installs into .venv-tools/:

    .venv-tools/bin/python helm/render.py -f prod.yaml                      # every manifest, as YAML
    .venv-tools/bin/python helm/render.py -f prod.yaml --config-only > keysvc.yaml  # only the rendered keysvc.yaml

Values files are merged in order, later ones winning, as `helm template -f a.yaml -f b.yaml` does. Values the
chart refuses (values.schema.json or its install-time checks) print helm's message on stderr: exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent / "keysvc"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of two values files: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_of(manifests: dict[str, str], release: str) -> str:
    """keysvc.yaml out of the rendered ConfigMap (or Secret, with configInSecret)."""
    for name, text in manifests.items():
        if not name.endswith((".yaml", ".yml")):
            continue
        for obj in yaml.safe_load_all(text):
            if obj and obj.get("kind") in ("ConfigMap", "Secret") and obj["metadata"]["name"].endswith("-config"):
                data = obj.get("data") or obj.get("stringData") or {}
                if "keysvc.yaml" in data:
                    return str(data["keysvc.yaml"])
    raise SystemExit(f"render.py: no keysvc.yaml rendered for release {release}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE", help="values file (repeatable)")
    parser.add_argument("--release", default="keysvc", help="release name (default: keysvc)")
    parser.add_argument("--namespace", default="keysvc", help="namespace (default: keysvc)")
    parser.add_argument("--config-only", action="store_true", help="print only the rendered keysvc.yaml")
    args = parser.parse_args(argv)

    values: dict[str, Any] = {}
    for path in args.values:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            print(f"render.py: {path}: expected a mapping of values", file=sys.stderr)
            return 1
        values = merge(values, loaded)
    try:
        with helm.Chart.load(str(CHART)) as chart:
            manifests: dict[str, str] = chart.render(values, name=args.release, namespace=args.namespace)
    except helm.HelmError as exc:
        print(f"render.py: the chart refused the values: {exc}", file=sys.stderr)
        return 1
    if args.config_only:
        sys.stdout.write(config_of(manifests, args.release))
        return 0
    for name, text in sorted(manifests.items()):
        if text.strip() and name.endswith((".yaml", ".yml")):
            sys.stdout.write(f"---\n# Source: {name}\n{text.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
