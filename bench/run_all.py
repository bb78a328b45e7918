"""`make bench`: every benchmark in turn, then one summary of the issue-9 / issue-3 targets.

Each script prints its own table (figures, the baseline measured in the same invocation, ratios, medians
of several runs). Bounded: about 16 minutes on a 2-core machine. Loopback only.

    .venv/bin/python bench/run_all.py            # the full run (what docs/benchmarks.md shows)
    .venv/bin/python bench/run_all.py --quick    # one short run per figure: a smoke test, not figures
    .venv/bin/python bench/run_all.py --only jwks_http,sign_http

wrk and nginx are needed for the HTTP benchmarks, valgrind for `instructions`. When they are missing and
this runs as root, it installs them with `apt-get install -y wrk nginx-light valgrind` (what is missing)
and says so; otherwise it prints how to install them and skips the benchmarks that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (full-run arguments, quick-run arguments)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "mint_inprocess": (["--runs", "7", "--duration", "0.4"], ["--runs", "2", "--duration", "0.2"]),
    "jwks_http": (["--runs", "5", "--duration", "4"], ["--runs", "1", "--duration", "1"]),
    "sign_http": (["--runs", "5", "--duration", "4"], ["--runs", "1", "--duration", "1"]),
    "scale": (["--runs", "3", "--duration", "4"], ["--runs", "1", "--duration", "1", "--sizes", "1,10,50"]),
    "latency": (["--runs", "3", "--duration", "4"], ["--runs", "1", "--duration", "1"]),
    "zero_load": (["--runs", "8"], ["--runs", "1"]),
    "resources": (["--runs", "3"], ["--runs", "1"]),
    "rotation_latency": (["--duration", "20", "--runs", "3"], ["--duration", "9", "--algs", "ES256", "--runs", "1"]),
    "soak": (["--duration", "30"], ["--duration", "8"]),
    "zapier_gateway": (["--runs", "3", "--requests", "200"], ["--runs", "1", "--requests", "30", "--action-runs", "1"]),
    "trigger_inbox": (["--runs", "3", "--requests", "200"],
                      ["--runs", "1", "--requests", "30", "--messages", "40", "--lags", "5"]),
    "gateway_store": (["--runs", "3", "--requests", "200", "--duration", "120"], ["--quick"]),
    "slowloris": (["--duration", "12"], ["--duration", "3", "--idle", "1000", "--slow", "100"]),
    "instructions": ([], []),
}
HTTP_TOOLS = ("wrk", "nginx")
NEEDS_TOOLS = {"jwks_http": HTTP_TOOLS, "sign_http": HTTP_TOOLS, "scale": HTTP_TOOLS, "latency": HTTP_TOOLS,
               "instructions": ("valgrind",)}
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "valgrind": "valgrind"}  # Debian package of each tool


def ensure_tools(tools: set[str]) -> set[str]:
    """The tools of `tools` that are available, installing the missing ones first when root; says what it
    installs, or how to install what is missing."""
    missing = sorted(t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists())
    if not missing:
        return tools
    packages = [PACKAGES[t] for t in missing]
    command = f"apt-get install -y {' '.join(packages)}"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"run_all: {', '.join(missing)} missing; installing with `{command}` (running as root)", flush=True)
        result = subprocess.run(command.split(), capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return tools
        print(f"run_all: apt-get failed:\n{result.stderr[-2000:]}", flush=True)
    else:
        print(f"run_all: {', '.join(missing)} missing. Install with: sudo {command}", flush=True)
    return tools - set(missing)


def summary(results: dict[str, dict[str, object]]) -> None:
    """Every figure that has a target: met or not."""
    print("\n## Targets\n")
    print("| benchmark | figure | value | target | met |")
    print("|---|---|---:|---|---|")
    for bench, doc in results.items():
        for row in doc["rows"]:  # type: ignore[attr-defined]
            if row["target"] is None:
                continue
            on_value = row["target_on_value"] or row["baseline_value"] is None
            value = row["value"] if on_value else row["ratio"]
            unit = f" {row['unit']}" if on_value and row["unit"] else "x" if not on_value else ""
            sign = "<=" if row["at_most"] else ">="
            name = row["name"] + (f" ({row['note']})" if row["note"] else "")
            met = {True: "yes", False: "**no**", None: "?"}[row["met"]]
            print(f"| {bench} | {name} | {value:.3g}{unit} | {sign} {row['target']:g}{unit} | {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short run per figure (smoke test)")
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    available = ensure_tools({t for name in chosen for t in NEEDS_TOOLS.get(name, ())})
    print(f"# keysvc benchmarks ({'quick smoke run' if args.quick else 'full run'}), "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, commit {git_commit()}", flush=True)
    results: dict[str, dict[str, object]] = {}
    failed = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keysvc-bench-") as tmp:
        for name in chosen:
            if not available.issuperset(NEEDS_TOOLS.get(name, ())):
                print(f"\n(skipped {name}: {', '.join(NEEDS_TOOLS[name])} needed)", flush=True)
                continue
            out = Path(tmp) / f"{name}.json"
            extra = BENCHES[name][1 if args.quick else 0]
            t0 = time.monotonic()
            code = subprocess.run([sys.executable, "-m", f"bench.{name}", *extra, "--json", str(out)], cwd=ROOT,
                                  check=False).returncode
            print(f"\n({name}: {time.monotonic() - t0:.0f} s)", flush=True)
            if code != 0 or not out.exists():
                failed.append(name)
                continue
            results[name] = json.loads(out.read_text())
    summary(results)
    print(f"\nTotal {time.monotonic() - started:.0f} s.", flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
        raise SystemExit(1)


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or "?"


if __name__ == "__main__":
    main()
