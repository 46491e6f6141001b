"""The lab's etcd member: Debian's etcd inside the underlay namespace on 198.18.0.254:2379.

Mirrors tests/etcd_server.EtcdServer's command line, but as a detached daemon whose pid is
recorded in the state directory (the ``lab`` command exits while etcd keeps running).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from netnslab.names import ETCD_PEER_PORT, LabNames
from netnslab.proc import CommandError, ProcRef, alive, nsexec, run, signal_proc, spawn, wait_dead

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
CONFIG_KEY = "/coreos.com/network/config"
SUBNETS_PREFIX = "/coreos.com/network/subnets/"


def start_etcd(names: LabNames, state: Path) -> ProcRef:
    data = state / "etcd"
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    cmd = [
        ETCD_BIN,
        "--name", names.name,
        "--data-dir", str(data),
        "--listen-client-urls", names.etcd_endpoint,
        "--advertise-client-urls", names.etcd_endpoint,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{names.name}={peer}",
        "--initial-cluster-state", "new",
        "--logger=zap",
        "--log-level=warn",
    ]  # fmt: skip
    ref = spawn(nsexec(names.underlay_ns, cmd), state / "etcd.log")
    (state / "etcd.pid").write_text(ref.dump())
    return ref


def running(state: Path) -> ProcRef | None:
    """The lab's etcd process if it runs (its pid file in the state dir ``state``)."""
    ref = ProcRef.load(state / "etcd.pid")
    return ref if ref is not None and alive(ref) else None


def stop_etcd(state: Path, sig: int = signal.SIGTERM) -> bool:
    """Stop the lab's etcd (data kept, so ``start_etcd`` brings the same cluster back).

    Returns False if it was not running.  Waits until the process is gone (SIGKILL after 10 s).
    """
    ref = running(state)
    if ref is None or not signal_proc(ref, sig):
        return False
    if wait_dead([ref], 10.0):
        signal_proc(ref, signal.SIGKILL)
        wait_dead([ref], 5.0)
    return True


def healthy(names: LabNames, from_ns: str | None = None) -> bool:
    res = run(
        nsexec(from_ns or names.underlay_ns, ["curl", "-sf", "-m", "1", f"{names.etcd_endpoint}/health"]),
        check=False,
    )
    return res.returncode == 0 and '"true"' in res.stdout


def wait_healthy(names: LabNames, ref: ProcRef, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(ref):
            raise CommandError("etcd exited during start-up (see etcd.log in the state dir)")
        if healthy(names):
            return
        time.sleep(0.05)
    raise CommandError(f"etcd not healthy after {timeout}s")


def etcdctl(names: LabNames, *args: str, from_ns: str | None = None) -> str:
    env = dict(os.environ, ETCDCTL_API="3")
    cmd = [ETCDCTL_BIN, "--endpoints", names.etcd_endpoint, "--command-timeout=3s", *args]
    return run(nsexec(from_ns or names.underlay_ns, cmd), env=env).stdout


def get_prefix(names: LabNames, prefix: str) -> dict[str, str]:
    """key -> value for every key under ``prefix``."""
    out = etcdctl(names, "get", "--prefix", prefix)
    lines = out.splitlines()
    return dict(zip(lines[0::2], lines[1::2], strict=False))


def leases(names: LabNames) -> dict[str, str]:
    return get_prefix(names, SUBNETS_PREFIX)
