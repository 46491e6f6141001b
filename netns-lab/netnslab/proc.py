"""Running commands, in and out of the lab's namespaces, and owning long-lived processes.

Daemons (etcd, flanneld) outlive the ``lab`` command that starts them, so each is started in
its own session and recorded as ``pid starttime``: the start time guards against killing a
recycled pid.  PID 1 on these machines does not reap orphans, so a dead daemon can linger as a
zombie: liveness reads /proc/<pid>/stat and counts a zombie as dead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class CommandError(RuntimeError):
    """A command the lab ran failed; carries its stderr."""


def progress(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def nsexec(ns: str, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        list(cmd),
        input=input_text,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        check=False,
        stdin=None if input_text is not None else subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise CommandError(
            f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
        )
    return res


def ip_batch(lines: Sequence[str]) -> None:
    """Run iproute2 commands, one ``ip [-n NS] -batch`` per run of lines for the same namespace.

    Lines are ``ip`` arguments; a line may start with ``-n NS`` (batch files cannot switch
    namespace, so consecutive lines for one namespace share one process).
    """
    groups: list[tuple[str | None, list[str]]] = []
    for line in lines:
        ns: str | None = None
        if line.startswith("-n "):
            _, ns, line = line.split(" ", 2)
        if groups and groups[-1][0] == ns:
            groups[-1][1].append(line)
        else:
            groups.append((ns, [line]))
    for ns, batch in groups:
        cmd = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
        run(cmd, input_text="\n".join(batch) + "\n")


@dataclass(frozen=True)
class ProcRef:
    """A started process: pid plus its kernel start time (field 22 of /proc/<pid>/stat)."""

    pid: int
    start: int

    def dump(self) -> str:
        return f"{self.pid} {self.start}\n"

    @staticmethod
    def load(path: Path) -> ProcRef | None:
        try:
            pid, start = path.read_text().split()
            return ProcRef(int(pid), int(start))
        except (OSError, ValueError):
            return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a pid, None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int:
    st = _stat(pid)
    return st[1] if st else 0


def alive(ref: ProcRef) -> bool:
    st = _stat(ref.pid)
    return st is not None and st[1] == ref.start and st[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def spawn(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> ProcRef:
    """Start a daemon in its own session, stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    # Popen would warn about a child never waited for; we reap by pid ourselves.
    proc.returncode = 0
    return ProcRef(proc.pid, start_time(proc.pid))


def signal_proc(ref: ProcRef, sig: int) -> bool:
    """Send ``sig`` if ``ref`` is still the process we started; True if sent."""
    if not alive(ref):
        _reap(ref.pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(ref.pid, sig)
        return True
    return False


def wait_dead(refs: Sequence[ProcRef], timeout: float) -> list[ProcRef]:
    """Poll until all are gone (reaping our own children); return the survivors."""
    deadline = time.monotonic() + timeout
    left = list(refs)
    while left:
        for r in left:
            _reap(r.pid)
        left = [r for r in left if alive(r)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return left


def stop(refs: Sequence[ProcRef], timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``timeout``."""
    sent = [r for r in refs if signal_proc(r, signal.SIGTERM)]
    for r in wait_dead(sent, timeout):
        signal_proc(r, signal.SIGKILL)
    wait_dead(sent, 2.0)


def ns_pids(ns: str) -> list[ProcRef]:
    """Every process whose network namespace is ``ns`` (``ip netns pids``)."""
    res = run(["ip", "netns", "pids", ns], check=False)
    refs = []
    for tok in res.stdout.split():
        if tok.isdigit() and int(tok) != os.getpid():
            st = start_time(int(tok))
            if st:
                refs.append(ProcRef(int(tok), st))
    return refs
