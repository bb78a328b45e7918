"""Resources: idle RSS of one `keysvc serve` process and the time from exec to ready (file backend).

Targets (issue 9): idle RSS under 80 MB; start-to-ready under 1.5 s. "Ready" = GET /readyz answers 200,
polled every 5 ms from the moment the process is spawned. Measured on a fresh key directory (the first
start creates the keys) and on an existing one (a restart, the usual case). Baseline, same machine:
a bare uvicorn raw ASGI app (bench/baseline_app.py) on keysvc's uvicorn settings.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    BENCH,
    SERVER_CPU,
    Row,
    arguments,
    base_config,
    free_port,
    machine_line,
    report,
    rss_mb,
    wait_http,
    workspace,
    write_config,
)

TITLE = "Resources: idle RSS and start-to-ready (file backend)"
IDLE_SECONDS = 2.0


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPU))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def keysvc_start(work: Path, fresh: bool, alg: str, run: int) -> tuple[float, float]:
    """(seconds from spawn to /readyz 200, RSS in MiB after IDLE_SECONDS idle)."""
    keys = work / (f"keys-fresh-{alg}-{run}" if fresh else f"keys-{alg}")
    config = base_config(keys, algs={"zapier": alg})
    public = free_port()
    config["listen"] = {"public": f"127.0.0.1:{public}", "internal": f"127.0.0.1:{free_port()}"}
    path = write_config(work / "resources.yaml", config)
    started = time.perf_counter()
    proc = spawn([sys.executable, "-m", "keysvc", "serve", "--config", str(path)], work / "keysvc.log")
    try:
        ready = wait_http(f"http://127.0.0.1:{public}/readyz", timeout=30)
        ready = time.perf_counter() - started
        time.sleep(IDLE_SECONDS)
        return ready, rss_mb(proc.pid)
    finally:
        stop(proc)


def baseline_start(work: Path) -> tuple[float, float]:
    body = work / "body.json"
    body.write_bytes(b'{"keys":[]}')
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(BENCH / "baseline_app.py"), "raw", str(body), "{}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPU))
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        wait_http(url + "/", timeout=30)
        ready = time.perf_counter() - started
        time.sleep(IDLE_SECONDS)
        return ready, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = arguments(__doc__ or "", runs=5)
    args = parser.parse_args()
    rows: list[Row] = []
    with workspace("resources") as work:
        base = [baseline_start(work) for _ in range(args.runs)]
        b_ready, b_rss = statistics.median(r for r, _ in base), statistics.median(m for _, m in base)
        rows.append(Row("bare uvicorn raw ASGI: spawn to first 200", b_ready, "s"))
        rows.append(Row("bare uvicorn raw ASGI: idle RSS", b_rss, "MiB"))
        for alg in ("ES256", "RS256"):
            keysvc_start(work, False, alg, 0)  # creates the keys that the restarts below load
            restarts = [keysvc_start(work, False, alg, i) for i in range(args.runs)]
            fresh = [keysvc_start(work, True, alg, i) for i in range(args.runs)]
            for label, runs in (("restart, keys exist", restarts), ("first start, creates keys", fresh)):
                ready, rss = statistics.median(r for r, _ in runs), statistics.median(m for _, m in runs)
                rows.append(Row(f"keysvc {alg} spawn to ready", ready, "s", "bare uvicorn", b_ready, target=1.5,
                                at_most=True, target_on_value=True, note=label,
                                runs=f"{min(r for r, _ in runs):.2f}-{max(r for r, _ in runs):.2f}"))
                rows.append(Row(f"keysvc {alg} idle RSS", rss, "MiB", "bare uvicorn", b_rss, target=80, at_most=True,
                                target_on_value=True, note=label))
    notes = [f"{args.runs} starts each, medians; the process is pinned to the server core; RSS read from "
             f"/proc/PID/status {IDLE_SECONDS:g}s after ready. RSA 2048-bit. {machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
