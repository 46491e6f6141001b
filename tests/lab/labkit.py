"""Helpers for lab tests: bring a netns lab up under its own name and ALWAYS tear it down.

The lab is driven in-process through netns-lab's Python API (netns-lab/netnslab), so the
daemons it starts are children of pytest and get reaped.  Each test module uses its own lab
name, so lab tests never clash with a demo lab (``flab``) or with each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab import daemon, etcd  # noqa: E402
from netnslab import lab as labmod  # noqa: E402
from netnslab.names import LabNames  # noqa: E402
from netnslab.proc import nsexec, run  # noqa: E402
from netnslab.state import LabState, PodState, read_subnet_env  # noqa: E402

# Faster drift repair than the daemon's 10 s default keeps the drift tests short.
DRIFT_INTERVAL = 2.0
FLANNELD_TEST_ARGS = (f"--drift-interval={DRIFT_INTERVAL:g}",)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")


def require_flanneld() -> None:
    require_root()
    exe = REPO / ".venv" / "bin" / "flanneld"
    res = subprocess.run([str(exe), "--version"], capture_output=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"flanneld not runnable yet: {res.stderr.decode()[-200:]}")


def poll(
    check: Callable[[], bool], timeout: float, interval: float = 0.01, what: str = "condition"
) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not true after {timeout}s")
        time.sleep(interval)
    return time.monotonic() - t0


class LabHandle:
    """A running lab as tests see it: names, kernel state of nodes, etcd, pods."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.names = LabNames(name)

    @property
    def state(self) -> LabState:
        return labmod.load(self.name)

    def node_ns(self, node: int) -> str:
        return self.names.node_ns(node)

    def pod(self, node: int, index: int = 1) -> PodState:
        return next(p for p in self.state.nodes[node].pods if p.index == index)

    def pod_ip(self, node: int, index: int = 1) -> str:
        return self.pod(node, index).address.split("/")[0]

    def ip(self, ns: str, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", ns, *args], check=check).stdout

    def ipj(self, ns: str, *args: str) -> list[dict[str, Any]]:
        out = run(["ip", "-n", ns, "-j", *args], check=False).stdout
        try:
            parsed: list[dict[str, Any]] = json.loads(out or "[]")
        except ValueError:
            return []
        return parsed

    def subnet(self, node: int) -> IPv4Network:
        env = read_subnet_env(self.state.subnet_file(node))
        return IPv4Network(env["FLANNEL_SUBNET"], strict=False)

    def public_ip(self, node: int) -> str:
        return f"198.18.0.{node}"

    def vtep_mac(self, node: int) -> str:
        links = self.ipj(self.node_ns(node), "link", "show", "flannel.1")
        return str(links[0]["address"]) if links else ""

    def has_route(self, node: int, subnet: IPv4Network) -> bool:
        return any(r.get("dst") == str(subnet) for r in self.ipj(self.node_ns(node), "-4", "route"))

    def has_fdb(self, node: int, mac: str) -> bool:
        out = run(["bridge", "-n", self.node_ns(node), "fdb", "show", "dev", "flannel.1"], check=False)
        return mac.lower() in out.stdout.lower()

    def has_neigh(self, node: int, addr: str) -> bool:
        out = self.ip(self.node_ns(node), "neigh", "show", "dev", "flannel.1", check=False)
        return any(line.split()[:1] == [addr] for line in out.splitlines())

    def leases(self) -> dict[str, str]:
        return etcd.leases(self.names)

    def lease_of(self, node: int) -> tuple[str, dict[str, Any]]:
        for key, value in self.leases().items():
            obj = json.loads(value)
            if obj.get("PublicIP") == self.public_ip(node):
                return key, obj
        raise AssertionError(f"no lease for n{node}")

    def etcdctl(self, *args: str, from_node: int | None = None) -> str:
        ns = self.node_ns(from_node) if from_node else None
        return etcd.etcdctl(self.names, *args, from_ns=ns)

    def ping(self, src_ns: str, dst: str, timeout: float = 1.0) -> bool:
        cmd = nsexec(src_ns, ["ping", "-n", "-q", "-c", "1", "-W", f"{timeout:g}", dst])
        return run(cmd, check=False).returncode == 0

    def kill_flanneld(self, node: int) -> None:
        assert daemon.kill(self.state, node), f"flanneld on n{node} was not running"

    def start_flanneld(self, node: int) -> None:
        labmod.start_flanneld(self.name, node)

    def log_tail(self, node: int) -> str:
        return daemon.log_tail(self.state, node, 30)


@contextlib.contextmanager
def lab_running(name: str, **opts: Any) -> Iterator[LabHandle]:
    """A lab named ``name``; torn down however the block ends (leftovers removed first)."""
    labmod.down(name)
    try:
        try:
            labmod.up(name, labmod.UpOptions(**opts))
        except Exception:
            dump_logs(name)
            raise
        yield LabHandle(name)
    finally:
        labmod.down(name)


def dump_logs(name: str) -> None:
    """Print every node's flanneld log (pytest shows it with the failure)."""
    lab = LabState.load(name)
    if lab is None:
        return
    for node in sorted(lab.nodes):
        print(f"===== {name} n{node} flanneld.log =====")
        print(daemon.log_tail(lab, node, 60))
