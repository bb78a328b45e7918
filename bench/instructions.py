"""Instructions per POST /v1/sign, counted under valgrind: figures this small, noisy machine cannot move.

req/s and latency on 2 shared cores drift by 10-30% between runs; the number of instructions a server runs
per request does not (same inputs, same count to within ~1%: GC and timers). Each figure is a server run
under `valgrind --tool=cachegrind` (user-space instructions only; system calls are not counted) serving N1
requests, then another serving N2, one keep-alive connection, one request at a time:
(Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and shut-down cancel out.

Figures: keysvc `POST /v1/sign` ES256 with the access log on (the default) and off, for each source tree
given (`--tree NAME=PATH`, default this one: an A/B of a change without the machine's noise); the bare
Starlette POST route of bench/sign_http.py (same uvicorn settings); one ES256 signature in a loop; with
`--jwks`, also `GET /.well-known/jwks.json` (200, the public listener as shipped) per tree.
Instructions are not time: the signature's assembly runs about three times more instructions per
nanosecond than the interpreter, so the instruction ratio to the bare route is larger than the time ratio.
Needs valgrind (`apt-get install -y valgrind`); about 25 s per figure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import (
    CONST_BODY,
    ROOT,
    Row,
    arguments,
    base_config,
    free_port,
    machine_line,
    report,
    wait_http,
    workspace,
    write_config,
)
from bench.zero_load import client

TITLE = "Instructions per POST /v1/sign (valgrind cachegrind, user space)"
FEW, MANY = 300, 1500  # requests served by the two runs of a figure
WARM_UP = 30  # requests before counting starts to matter (lazy imports, first key load, caches)
JWKS_PATH = "/.well-known/jwks.json"
_IR = re.compile(r"I\s+refs:\s+([\d,]+)")


def valgrind(command: list[str], *, env: dict[str, str], cwd: Path, stdout: int = subprocess.DEVNULL,
             ) -> subprocess.Popen[str]:
    """`command` under cachegrind (no cache simulation: instruction counts only)."""
    return subprocess.Popen(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                             *command], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def instructions(proc: subprocess.Popen[str], *, stop: bool = True) -> int:
    """The instruction total of a run (stopped first when `stop`), from valgrind's summary."""
    if stop:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    found = _IR.search(err)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{err[-2000:]}")
    return int(found.group(1).replace(",", ""))


def drive(url: str, requests: int, request: bytes | None = None) -> None:
    """WARM_UP + `requests` requests (default POST /v1/sign) on one keep-alive connection, one at a time (each
    must be a 200)."""
    client(url, request)(WARM_UP + requests)


def jwks_request(url: str) -> bytes:
    """GET /.well-known/jwks.json, as a caching verifier's first fetch sends it (no If-None-Match)."""
    return f"GET {JWKS_PATH} HTTP/1.1\r\nhost: {urlsplit(url).netloc}\r\naccept: application/json\r\n\r\n".encode()


def keysvc_run(tree: Path, access: bool, work: Path, requests: int, *, jwks: bool = False) -> int:
    """Instructions of one `keysvc serve` run (PYTHONPATH=tree) serving `requests` signatures (or, `jwks`,
    JWKS GETs on the public listener)."""
    public, internal = free_port(), free_port()
    config = {**base_config(work / "keys", algs={"zapier": "ES256"}), "log": {"access": access},
              "listen": {"public": f"127.0.0.1:{public}", "internal": f"127.0.0.1:{internal}"}}
    path = write_config(work / "instructions.yaml", config)
    env = {**os.environ, "PYTHONPATH": str(tree), "KEYSVC_LOG_LEVEL": "INFO"}
    proc = valgrind([sys.executable, "-m", "keysvc", "serve", "--config", str(path)], env=env, cwd=tree)
    try:
        wait_http(f"http://127.0.0.1:{public}/readyz", timeout=180)  # start-up under valgrind is slow
        if jwks:
            url = f"http://127.0.0.1:{public}"
            drive(url, requests, jwks_request(url))
        else:
            drive(f"http://127.0.0.1:{internal}", requests)
    except BaseException:
        proc.kill()
        raise
    return instructions(proc)


def bare_run(work: Path, requests: int) -> int:
    """Instructions of one bare Starlette POST server run (bench/baseline_app.py) serving `requests`."""
    body = work / "const.json"
    body.write_bytes(CONST_BODY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = valgrind([sys.executable, str(ROOT / "bench" / "baseline_app.py"), "starlette-post", str(body), "{}"],
                    env=env, cwd=ROOT, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    drive(json.loads(proc.stdout.readline())["url"], requests)
    return instructions(proc)


def signature_run(signatures: int) -> int:
    """Instructions of a Python process making `signatures` ES256 signatures (cryptography, as keysvc signs)."""
    code = ("import sys\nfrom cryptography.hazmat.primitives import hashes\n"
            "from cryptography.hazmat.primitives.asymmetric import ec\n"
            "key, alg = ec.generate_private_key(ec.SECP256R1()), ec.ECDSA(hashes.SHA256())\n"
            "for _ in range(int(sys.argv[1])): key.sign(b'x' * 200, alg)\n")
    return instructions(valgrind([sys.executable, "-c", code, str(signatures)], env=dict(os.environ), cwd=ROOT),
                        stop=False)


def per_request(run: Callable[[int], int]) -> float:
    """Instructions per request: two runs of `run` (serving FEW, then MANY requests), differenced."""
    few = run(FEW)
    return (run(MANY) - few) / (MANY - FEW)


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tree", action="append", metavar="NAME=PATH",
                        help="a source tree to count (repeat; default: this tree)")
    parser.add_argument("--jwks", action="store_true",
                        help="also count GET /.well-known/jwks.json (200, public listener as shipped) per tree")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("missing: valgrind. Install with: sudo apt-get install -y valgrind", file=sys.stderr)
        raise SystemExit(2)
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"keysvc": str(ROOT)}
    rows: list[Row] = []
    with workspace("instructions") as work:
        bare = per_request(partial(bare_run, work))
        signature = per_request(signature_run)
        rows.append(Row("bare Starlette POST route, constant body", bare, "instructions"))
        rows.append(Row("one ES256 signature (cryptography, in a loop)", signature, "instructions",
                        "bare Starlette POST", bare))
        first: float | None = None
        jwks_first: float | None = None
        for name, path in trees.items():
            for access in (True, False):
                count = per_request(partial(keysvc_run, Path(path).resolve(), access, work))
                note = f"{name}, access log {'on' if access else 'off'}"
                rows.append(Row("keysvc POST /v1/sign ES256", count, "instructions", "bare Starlette POST", bare,
                                note=note))
                if first is None:
                    first = count
                elif access:
                    rows.append(Row(f"{name} vs the first tree (access log on)", count, "instructions",
                                    "first tree", first))
            if args.jwks:
                count = per_request(partial(keysvc_run, Path(path).resolve(), True, work, jwks=True))
                rows.append(Row("keysvc GET /.well-known/jwks.json 200", count, "instructions",
                                "first tree" if jwks_first is not None else "", jwks_first,
                                note=f"{name}, public listener as shipped"))
                jwks_first = count if jwks_first is None else jwks_first
    notes = [f"One keep-alive connection, one request at a time; ({MANY} - {FEW} requests) per figure. "
             f"User-space instructions (valgrind cachegrind), not time. {machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
