"""Shared plumbing of the benchmarks: servers pinned to one core, wrk pinned to the other, medians, tables.

Nothing here installs anything. Everything listens on 127.0.0.1 and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
os.environ.setdefault("KEYSVC_TEST_LOGS", str(Path(tempfile.gettempdir()) / "keysvc-bench-logs"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import KeysvcProcess, api_key, base_config, write_config  # noqa: E402

__all__ = ["KeysvcProcess", "api_key", "base_config", "write_config"]

CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU = {CPUS[0]}
LOAD_CPU = {CPUS[1]} if len(CPUS) > 1 else {CPUS[0]}
SIGN_BODY = json.dumps({"claims": {"sub": "u-1", "aud": "connect.zapier.com", "org_id": "t-9"}, "ttl": 300})
CONST_BODY = b'{"token":"eyJhbGciOiJFUzI1NiJ9.e30.c2ln","kid":"k","alg":"ES256","expires_at":1764300000}'


# ------------------------------------------------------------------------------------------ arguments

def arguments(description: str, *, runs: int = 3, duration: float = 4.0) -> argparse.ArgumentParser:
    """The options every benchmark takes: runs per figure, seconds per run, where to write JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs, help=f"runs per figure; the median counts (default {runs})")
    parser.add_argument("--duration", type=float, default=duration, help=f"seconds per wrk run (default {duration})")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return parser


# ------------------------------------------------------------------------------------------ tools

def missing_tools(*names: str) -> list[str]:
    """The external programs that are not on PATH."""
    return [n for n in names if shutil.which(n) is None and not Path(f"/usr/sbin/{n}").exists()]


def require_tools(*names: str) -> None:
    """Exit with an install hint when wrk/nginx are missing (benchmarks never install silently)."""
    missing = missing_tools(*names)
    if missing:
        print(f"missing: {', '.join(missing)}. Install with: sudo apt-get install -y wrk nginx-light "
              "(or run `make bench` as root, which installs them and says so)", file=sys.stderr)
        raise SystemExit(2)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ pinning

def pin(pid: int, cpus: set[int] = SERVER_CPU) -> None:
    """Pin every thread of a process (threads started later inherit the main thread's mask)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def pin_children(pid: int, cpus: set[int] = SERVER_CPU) -> None:
    """Pin a process and its direct children (nginx master and worker)."""
    pin(pid, cpus)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        pin(int(child), cpus)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------ servers

@dataclass
class Server:
    """A running HTTP server under test: base URL and process id."""

    name: str
    url: str
    pid: int
    stop: Callable[[], None] = field(repr=False)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 20.0, status: int = 200) -> float:
    """Poll until GET url answers `status`; the seconds it took."""
    import httpx

    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == status:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer {status} within {timeout}s")


@contextmanager
def keysvc_server(config: Mapping[str, Any], workdir: Path, name: str = "keysvc",
                  module: str = "keysvc", tree: Path = ROOT) -> Iterator[KeysvcProcess]:
    """A real `keysvc serve` process on `config` (`python -m module`, keysvc from the source tree `tree`),
    every thread pinned to the server core."""
    path = write_config(workdir / f"{name}.yaml", config)
    env = {"KEYSVC_LOG_LEVEL": "INFO", "PYTHONPATH": str(tree)}
    proc = KeysvcProcess(path, name=name, env=env, module=module).start()
    try:
        assert proc.proc is not None
        pin(proc.proc.pid)
        wait_http(proc.public + "/readyz")
        yield proc
    finally:
        proc.stop()


@contextmanager
def baseline_server(kind: str, body: bytes, workdir: Path,
                    headers: Mapping[str, str] | None = None) -> Iterator[Server]:
    """A bare server (bench/baseline_app.py) on keysvc's own uvicorn settings, pinned to the server core."""
    body_file = workdir / f"baseline-{kind}.bin"
    body_file.write_bytes(body)
    cmd = [sys.executable, str(BENCH / "baseline_app.py"), kind, str(body_file), json.dumps(dict(headers or {}))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"baseline {kind} did not start")
        url = json.loads(line)["url"]
        pin(proc.pid)
        yield Server(f"bare {kind}", url, proc.pid, proc.terminate)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def nginx_server(body: bytes, workdir: Path, cache_control: str) -> Iterator[Server]:
    """nginx, 1 worker, serving `body` as a static file at /jwks.json (keep-alive, no access log)."""
    root = workdir / "nginx"
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "jwks.json").write_bytes(body)
    for p in (workdir, root, root / "www"):
        p.chmod(0o755)
    (root / "www" / "jwks.json").chmod(0o644)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    temps = " ".join(f"{k}_temp_path {root}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    {temps}
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location = /jwks.json {{
            default_type application/json;
            add_header Cache-Control "{cache_control}";
        }}
    }}
}}
""")
    cmd = [nginx_binary(), "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/jwks.json", timeout=10)
        pin_children(proc.pid)
        yield Server("nginx static (1 worker)", url, proc.pid, proc.terminate)
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------------------------------ wrk

@dataclass(frozen=True)
class Load:
    """One wrk workload: URL, method, headers, body; `delay_ms` paces each connection (latency runs)."""

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    delay_ms: float | None = None

    def script(self) -> str:
        lines = [f"wrk.method = {json.dumps(self.method)}"]
        if self.body is not None:
            lines.append(f"wrk.body = {json.dumps(self.body)}")
        for k, v in self.headers.items():
            lines.append(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}")
        if self.delay_ms is not None:
            lines.append(f"function delay() return {max(0.0, self.delay_ms):.3f} end")
        # count non-2xx/3xx ourselves as well: wrk reports them, we refuse a run that has any
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(load: Load, duration: float, connections: int, workdir: Path) -> WrkResult:
    """One wrk run (1 thread, keep-alive), pinned to the load core."""
    script = workdir / f"wrk-{os.getpid()}-{time.monotonic_ns()}.lua"
    script.write_text(load.script())
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), load.url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False,
                         preexec_fn=lambda: os.sched_setaffinity(0, LOAD_CPU)).stdout
    script.unlink(missing_ok=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    if not rps:
        raise RuntimeError(f"wrk failed: {out[-2000:]}")
    return WrkResult(float(rps.group(1)), _ms(p50.group(1)) if p50 else float("nan"),
                     _ms(p99.group(1)) if p99 else float("nan"), errors)


def interleaved(loads: Mapping[str, Load], runs: int, duration: float, connections: int, workdir: Path,
                warmup: float = 1.0) -> dict[str, list[WrkResult]]:
    """Run every load `runs` times, round-robin (so drift on a noisy machine hits all alike)."""
    results: dict[str, list[WrkResult]] = {name: [] for name in loads}
    for load in loads.values():
        wrk(load, warmup, connections, workdir)
    for _ in range(runs):
        for name, load in loads.items():
            results[name].append(wrk(load, duration, connections, workdir))
    return results


def median_rps(results: list[WrkResult]) -> float:
    return statistics.median(r.rps for r in results)


def spread(values: list[float]) -> str:
    """min-max of the runs, as a hint of noise."""
    return f"{min(values):,.0f}-{max(values):,.0f}" if values else ""


# ------------------------------------------------------------------------------------------ tables

@dataclass
class Row:
    """One figure: value, its baseline, the ratio and the target it is held to (if any)."""

    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: float | None = None  # minimum ratio (or maximum, when `at_most`)
    at_most: bool = False
    runs: str = ""
    note: str = ""
    target_on_value: bool = False  # the target bounds the value itself, not the ratio to the baseline

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0):
            return None
        return self.value / self.baseline_value  # type: ignore[operator]

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        value = self.value if self.target_on_value or self.baseline_value is None else self.ratio
        if value is None:
            return None
        return value <= self.target if self.at_most else value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "baseline": self.baseline,
                "baseline_value": self.baseline_value, "ratio": self.ratio, "target": self.target,
                "at_most": self.at_most, "met": self.met, "runs": self.runs, "note": self.note,
                "target_on_value": self.target_on_value}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("req/s", "ops/s") or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.2g}"


def target_text(row: Row) -> str:
    if row.target is None:
        return ""
    sign = "<=" if row.at_most else ">="
    suffix = "x" if row.baseline_value is not None and not row.target_on_value else f" {row.unit}".rstrip()
    return f"{sign} {row.target:g}{suffix}"


def print_table(title: str, rows: list[Row], notes: list[str] | None = None) -> None:
    """A markdown table: figure, value, baseline, ratio, target, met."""
    print(f"\n### {title}\n")
    print("| figure | value | unit | baseline (same run) | ratio | target | met | runs (min-max) |")
    print("|---|---:|---|---|---:|---|---|---|")
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        base = f"{r.baseline} {fmt(r.baseline_value, r.unit)}" if r.baseline else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        name = r.name + (f" ({r.note})" if r.note else "")
        value = fmt(r.value, r.unit)
        print(f"| {name} | {value} | {r.unit} | {base} | {ratio} | {target_text(r)} | {met} | {r.runs} |")
    for note in notes or []:
        print(f"\n{note}")
    sys.stdout.flush()


def write_json(path: Path | None, title: str, rows: list[Row], notes: list[str] | None = None) -> None:
    if path is not None:
        path.write_text(json.dumps({"title": title, "rows": [r.as_dict() for r in rows], "notes": notes or []}))


def report(title: str, rows: list[Row], notes: list[str], json_path: Path | None) -> None:
    """What every script ends with: its table printed, and written as JSON to `json_path` when given
    (run_all.py's summary reads it)."""
    print_table(title, rows, notes)
    write_json(json_path, title, rows, notes)


def machine_line() -> str:
    """Which machine and software produced a table."""
    import platform

    model = ""
    with suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    pinning = f"server on CPU {sorted(SERVER_CPU)}, load on CPU {sorted(LOAD_CPU)}"
    return f"{os.cpu_count()} CPUs ({model}); Python {platform.python_version()}; {pinning}"


@contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"keysvc-bench-{prefix}-") as d:
        yield Path(d)
