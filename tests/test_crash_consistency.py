"""Crash consistency: `kill -9` at many points of key creation, activation, retirement and revocation.

One deterministic scenario (a simulated clock, so every run takes the same branches) walks a keyset through
every lifecycle write: first keys, an emergency rotation, revoking a pending key, destroying a retired key,
importing a key, revoking the active key (promotion), scheduled activation, and a second rotation.

- File backend: the scenario runs once in this process to enumerate every crash checkpoint it passes
  (`keysvc.faults`, name and hit number); each (name, n) then runs in a fresh `python` process started
  with `KEYSVC_CRASH_AT=name:n`, which SIGKILLs itself exactly there.
- KMS backend (moto's server over HTTP): checkpoints inside kms.py are not ours to place, so a pre-imported
  fork server runs the scenario in a child that the test SIGKILLs at a seeded random instant.

After every crash a restart (a fresh backend object, reconcile at the crash's time) must find a consistent
store: records readable, no temp file or orphan left, every published key with a usable private half,
exactly one active and one pending key, no key lost, no key destroyed before its retention ended; and the
rest of the scenario must then complete on the repaired store.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from keysvc import faults, lifecycle, operations
from keysvc.backends import keys
from keysvc.backends.base import Backend
from keysvc.config import KeysetSettings
from keysvc.errors import Conflict
from keysvc.lifecycle import State
from keysvc.records import KeyRecord
from keysvc.tokens import Minter

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
KEYSET = KeysetSettings(
    name="zapier", issuer="https://issuer.example/zapier", alg="ES256",
    rotation_period=100, publish_ahead=40, retain_after=30, max_token_ttl=10,
)
KMS_CRASHES = 50
SEED = 20240611

# (offset from T0, operation): every lifecycle write happens at least once
STEPS: list[tuple[float, str]] = [
    (0, "reconcile"),  # seq1 active at once, seq2 pending
    (50, "rotate"),  # seq2 promoted (published 50 s >= publish_ahead), seq3 created
    (60, "revoke:pending"),  # a pending key revoked, destroyed; seq4 created
    (90, "reconcile"),  # seq1 retired (superseded at 50 + retain 30): destroyed
    (95, "import"),  # seq5 imported into the pending slot; seq4 revoked, destroyed
    (100, "revoke:active"),  # the active key revoked: seq5 promoted at once, seq6 created
    (205, "reconcile"),  # seq6 activates on schedule, seq7 created
    (240, "reconcile"),  # seq5 retired: destroyed
    (250, "rotate"),  # seq7 promoted early (published 45 s), seq8 created
]


def kid_in_state(backend: Backend, state: str, now: float) -> str:
    """The kid of the keyset's pending or active key at `now` (so a resumed scenario still makes sense)."""
    status = lifecycle.evaluate(backend.load(KEYSET.name), now, operations.policy_of(KEYSET))
    return next(k.record.kid for k in status.keys if k.state.value == state)


def target_of(backend: Backend, index: int) -> str | None:
    """The kid a revoke step acts on (chosen by state when the step begins)."""
    offset, op = STEPS[index]
    return kid_in_state(backend, op.split(":")[1], T0 + offset) if op.startswith("revoke:") else None


def run_step(backend: Backend, index: int, target: str | None) -> None:
    """Run STEPS[index] at its simulated time (`target`: the kid of a revoke step)."""
    offset, op = STEPS[index]
    now: Callable[[], float] = lambda: T0 + offset  # noqa: E731
    actor = "crash-test"
    if op == "reconcile":
        operations.reconcile(backend, KEYSET, now, actor)
    elif op == "rotate":
        operations.rotate(backend, KEYSET, now, actor)
    elif op.startswith("revoke:"):
        assert target is not None
        operations.revoke(backend, {KEYSET.name: KEYSET}, target, now, actor)
    elif op == "import":
        operations.import_key(backend, KEYSET, keys.to_pem(keys.generate("ES256"), None), now, actor)
    else:  # pragma: no cover
        raise AssertionError(op)


def snapshot(backend: Backend) -> dict[str, str]:
    """seq -> kid of every record (JSON-friendly)."""
    return {str(r.seq): r.kid for r in backend.load(KEYSET.name)}


FILE_STEPS = [i for i, (_, op) in enumerate(STEPS)]
# KMS: the first four steps (creation, promotion, revocation, retirement), which keep 50 kills against
# moto within the test's time budget; import is file-only, and revoking the active key is a tag write like
# revoking a pending one
KMS_STEPS = [0, 1, 2, 3]


def run_scenario(make_backend: Callable[[], Backend], progress: Path | None, steps: list[int]) -> None:
    """Run the steps, appending `{"step": i, "before": snapshot, "target": kid}` to `progress` before each
    one, and `{"done": true}` at the end."""
    backend = make_backend()
    for i in steps:
        target = target_of(backend, i)
        if progress is not None:
            with progress.open("a") as out:
                out.write(json.dumps({"step": i, "before": snapshot(backend), "target": target}) + "\n")
        run_step(backend, i, target)
    if progress is not None:
        with progress.open("a") as out:
            out.write(json.dumps({"step": steps[-1], "before": snapshot(backend), "done": True}) + "\n")


FILE_CHILD = "import sys; from tests.test_crash_consistency import file_child_main; file_child_main(*sys.argv[1:])"


def file_child_main(root: str, progress: str) -> None:
    """Entry point of a crash-test child process (file backend)."""
    from keysvc.backends.file import FileBackend

    run_scenario(lambda: FileBackend(Path(root)), Path(progress), FILE_STEPS)


# ------------------------------------------------------------------------------------------- the checks


@dataclass
class Crash:
    """Where a run died: the step it was in and the store as the step began."""

    step: int
    before: dict[str, str]
    target: str | None = None
    done: bool = False


def last_progress(progress: Path) -> Crash:
    text = progress.read_text() if progress.exists() else ""  # killed before the first step began
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not lines:
        return Crash(0, {})
    last = lines[-1]
    return Crash(last["step"], last["before"], last.get("target"), last.get("done", False))


def check_restart(backend: Backend, crash: Crash, label: str, *, verify: Callable[[Backend, KeyRecord], None]) -> None:
    """Restart at the crash's time and check the invariants of issue 8."""
    t = T0 + STEPS[crash.step][0]
    records_before_repair = backend.load(KEYSET.name)  # raises StoreCorrupt on a torn record
    operations.reconcile(backend, KEYSET, lambda: t, "restart", repair=True)
    records = backend.load(KEYSET.name)
    by_seq = {r.seq: r for r in records}
    assert len({r.kid for r in records}) == len(records), f"{label}: a kid in two slots"
    # no key lost: every record that existed when the crashed step began is still there, same kid
    for seq, kid in crash.before.items():
        assert int(seq) in by_seq and by_seq[int(seq)].kid == kid, f"{label}: key of slot {seq} lost"
    assert {r.seq for r in records_before_repair} <= set(by_seq), f"{label}: repair removed a record"
    status = lifecycle.evaluate(records, t, operations.policy_of(KEYSET))
    states = [k.state for k in status.keys]
    assert states.count(State.ACTIVE) == 1, f"{label}: {states}"
    # one pending key, or (a crash inside an import) two that activate at the same instant, where the
    # imported one (higher seq) supersedes the other at once: never two keys that both sign
    pending = [k.record for k in status.keys if k.state is State.PENDING]
    assert pending and len({r.activates_at for r in pending}) == 1, f"{label}: {states}"
    for key in status.keys:
        record = key.record
        if key.state in lifecycle.PUBLISHED:
            assert record.destroyed_at is None, f"{label}: published key {record.seq} marked destroyed"
            verify(backend, record)  # the private half is there and matches the published kid
        if record.destroyed_at is not None and record.revoked_at is None:
            # no key that signed is destroyed before its retention ended
            assert key.removes_at is not None and key.removes_at <= record.destroyed_at, f"{label}: {key}"


def verify_signs(backend: Backend, record: KeyRecord) -> None:
    """Sign with the record's key through the backend and verify with its published public JWK."""
    token = Minter(backend.signer(record), KEYSET.issuer).mint({"aud": "x"}, int(time.time()), 60).token
    public = jwt.PyJWK(dict(record.public_jwk, alg=record.alg))
    jwt.decode(token, public.key, algorithms=[record.alg], audience="x")


def finish_scenario(backend: Backend, crash: Crash, steps: list[int]) -> None:
    """As an operator would: retry the crashed step (a revoke by the same kid), then run the rest. A crash
    may have moved the schedule (a rotation that did not happen), so a rotation the lifecycle now refuses
    (409) is an acceptable answer; anything else must succeed and end in the steady state."""
    for i in [] if crash.done else [s for s in steps if s >= crash.step]:
        target = crash.target if i == crash.step else target_of(backend, i)
        try:
            run_step(backend, i, target)
        except Conflict:
            assert STEPS[i][1] == "rotate"
    t = T0 + STEPS[steps[-1]][0]
    records = backend.load(KEYSET.name)
    assert lifecycle.next_action(records, t, operations.policy_of(KEYSET)) is None
    status = lifecycle.evaluate(records, t, operations.policy_of(KEYSET))
    assert [k.state for k in status.keys].count(State.ACTIVE) == 1


# -------------------------------------------------------------------------------------------- file backend


def file_leftovers(keyset_dir: Path) -> list[str]:
    """Temp files and private keys without a record."""
    names = {p.name for p in keyset_dir.iterdir()}
    return sorted(
        n for n in names
        if n.startswith(".tmp-") or (n.endswith(".pem") and n.removesuffix(".pem") + ".json" not in names)
    )


def enumerate_file_checkpoints(tmp: Path) -> list[tuple[str, int]]:
    """Every (checkpoint, hit number) the scenario passes through, by running it here once."""
    from keysvc.backends.file import FileBackend

    before = faults.hits()
    run_scenario(lambda: FileBackend(tmp / "reference"), None, FILE_STEPS)
    after = faults.hits()
    # hit numbers as a fresh child counts them: this process may have passed the same checkpoints in
    # earlier tests (the backend contract suite runs the file backend in-process)
    return [(name, n) for name in sorted(after) for n in range(1, after[name] - before.get(name, 0) + 1)]


def test_file_backend_survives_kill_at_every_write_step(tmp_path: Path) -> None:
    """Every crash point the scenario passes (about 90: each hit of each checkpoint of file.py and
    operations.py): each child dies by SIGKILL exactly at its checkpoint; the restart repairs the
    store (no temp file, no private key without a record), keeps every key, publishes only keys whose
    private half loads and matches the kid, has one active and one pending key, never destroyed a key
    before its retention ended; the rest of the scenario then completes."""
    from keysvc.backends.file import FileBackend

    points = enumerate_file_checkpoints(tmp_path)
    names = {name for name, _ in points}
    assert {"file.create.pem.temp_written", "file.create.record.linked", "file.update.renamed",
            "file.destroy.unlinked", "ops.rotate.promoted", "ops.revoke.revoked", "ops.revoke.promoted",
            "ops.import.created", "ops.reconcile.destroy"} <= names, names
    chosen = points  # every (checkpoint, hit) of the scenario: ~90, all of them
    assert len(chosen) >= 50

    def crash_at(index: int, point: tuple[str, int]) -> tuple[tuple[str, int], Path, Path, int]:
        root, progress = tmp_path / f"run{index}", tmp_path / f"run{index}.progress"
        code = FILE_CHILD
        env = {**os.environ, faults.ENV: f"{point[0]}:{point[1]}"}
        done = subprocess.run([sys.executable, "-c", code, str(root), str(progress)], cwd=ROOT, env=env,
                              capture_output=True, timeout=60, check=False)
        return point, root, progress, done.returncode

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda a: crash_at(*a), enumerate(chosen)))
    survived = 0
    for point, root, progress, code in runs:
        label = f"crash at {point[0]}:{point[1]}"
        assert code == -signal.SIGKILL, f"{label}: child exited {code}, not killed at its checkpoint"
        crash = last_progress(progress)
        backend = FileBackend(root)
        check_restart(backend, crash, label, verify=verify_signs)
        assert file_leftovers(root / KEYSET.name) == [], label
        finish_scenario(backend, crash, FILE_STEPS)
        survived += 1
    print(f"\nfile backend: {survived} kill -9 crash points survived ({len(points)} reachable)")


def test_checkpoint_is_inert_without_the_environment_variable(tmp_path: Path) -> None:
    """Unarmed, every checkpoint only counts: the whole scenario completes in a child with no
    KEYSVC_CRASH_AT (and a malformed value arms nothing)."""
    code = FILE_CHILD
    for value in (None, "file.create.begin", "file.create.begin:0", ":3"):
        env = {k: v for k, v in os.environ.items() if k != faults.ENV}
        if value is not None:
            env[faults.ENV] = value
        progress = tmp_path / f"inert-{len(str(value))}-{value is None}.progress"
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"inert{value}"), str(progress)],
                              cwd=ROOT, env=env, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert last_progress(progress).done


# --------------------------------------------------------------------------------------------- KMS backend

FORK_SERVER = r"""
import json, os, sys
from pathlib import Path
from keysvc.backends.kms import KmsBackend
from tests.test_crash_consistency import KMS_STEPS, run_scenario
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            run_scenario(lambda: KmsBackend(region=cmd["region"], alias_prefix=cmd["prefix"],
                                            endpoint_url=cmd["endpoint"], deletion_window_days=7),
                         Path(cmd["progress"]), KMS_STEPS)
        finally:
            os._exit(0)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), flush=True)
"""


class ForkServer:
    """A subprocess with boto3 and keysvc imported that forks one scenario child per request."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def run(self, cmd: dict[str, Any], kill_after: float | None) -> bool:
        """Run the scenario; SIGKILL it after `kill_after` s. True if the child was killed mid-run."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):  # it finished first
                os.kill(pid, signal.SIGKILL)
        status = json.loads(self.proc.stdout.readline())["status"]
        return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def own_moto() -> Any:
    """A moto server for this module only, so restarts list only this test's KMS keys."""
    from tests.kms_server import running_moto

    yield from running_moto()


def reset_moto(server: Any) -> None:
    """Forget every KMS key (moto's reset API), so each run starts from an empty account."""
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{server.direct_url}/moto-api/reset", method="POST"),
                                timeout=10) as answer:
        answer.read()


def kms_orphans(backend: Any, prefix: str) -> list[str]:
    """Our KMS keys with no alias that are still enabled (an orphan nobody will delete)."""
    client = backend._client
    aliased = {a.get("TargetKeyId") for page in client.get_paginator("list_aliases").paginate()
               for a in page["Aliases"]}
    orphans = []
    for page in client.get_paginator("list_keys").paginate():
        for key in page["Keys"]:
            key_id = key["KeyId"]
            if key_id in aliased:
                continue
            tags = {t["TagKey"]: t["TagValue"] for t in client.list_resource_tags(KeyId=key_id)["Tags"]}
            if tags.get("keysvc:prefix") == prefix and \
                    client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled":
                orphans.append(key_id)
    return orphans


def test_kms_backend_survives_kill_at_random_instants(tmp_path: Path, own_moto: Any) -> None:
    """>= 50 runs of the scenario (without import) against moto's KMS, each SIGKILLed at a seeded random
    instant; after each, a restart finds one active and one pending key whose KMS keys sign verifiably,
    no key lost or destroyed early, and once the orphan grace has passed no enabled KMS key of ours
    without an alias; the rest of the scenario then completes."""
    from keysvc.backends.kms import KmsBackend
    from tests.kms_server import REGION, aws_env

    rng = random.Random(SEED)
    server = ForkServer(aws_env())
    try:
        def command(i: int) -> dict[str, Any]:
            return {"region": REGION, "prefix": f"alias/crash/{i}", "endpoint": own_moto.endpoint_url,
                    "progress": str(tmp_path / f"kms{i}.progress")}

        durations = []
        for i in (-1, 0):  # two full runs (the first warms moto and the fork server): how long a run takes
            reset_moto(own_moto)
            started = time.monotonic()
            assert not server.run(command(i), None)
            durations.append(time.monotonic() - started)
            assert last_progress(Path(command(i)["progress"])).done
        duration = 0.9 * min(durations)
        killed, steps_hit, attempts = 0, set(), 0
        while (killed < KMS_CRASHES or steps_hit != set(KMS_STEPS)) and attempts < 3 * KMS_CRASHES:
            attempts += 1
            reset_moto(own_moto)
            cmd = command(attempts)
            # stratified instants cover the whole run; on a loaded machine a run is slower than the warm-up
            # ones, so instants past `duration` are drawn too until every step has been hit
            spread = 1.0 if killed < KMS_CRASHES else 1.6
            stratum = (attempts - 1) % 10
            if not server.run(cmd, duration * spread * (stratum + rng.random()) / 10):
                continue  # finished before the kill: not counted
            killed += 1
            crash = last_progress(Path(cmd["progress"]))
            steps_hit.add(crash.step)
            label = f"KMS run {attempts} killed in step {crash.step}"
            backend = KmsBackend(region=REGION, alias_prefix=cmd["prefix"], endpoint_url=own_moto.endpoint_url,
                                 deletion_window_days=7, orphan_grace=600.0)
            try:
                check_restart(backend, crash, label, verify=verify_signs)
                backend.repair(KEYSET.name, T0 + STEPS[KMS_STEPS[-1]][0] + 601)  # after the grace: orphans go
                assert kms_orphans(backend, cmd["prefix"]) == [], label
                if killed % 5 == 0:  # resuming costs a second scenario: every fifth run is enough
                    finish_scenario(backend, crash, KMS_STEPS)
            finally:
                backend.close()
    finally:
        server.close()
    assert killed >= KMS_CRASHES, f"only {killed} of {attempts} runs were killed mid-scenario"
    assert steps_hit == set(KMS_STEPS), steps_hit
    print(f"\nKMS backend: {killed} kill -9 instants survived ({attempts} runs) across steps {sorted(steps_hit)}")
