"""Two flannel-udp nodes in network namespaces, each with one pod namespace (tests and bench).

    fudp-p1 (10.244.1.2) --veth-- fudp-n1 [flannel0 10.244.1.0/32] 198.18.0.1 --veth--
    198.18.0.2 [flannel0 10.244.2.0/32] fudp-n2 --veth-- fudp-p2 (10.244.2.2)

Everything is prefixed `fudp`; `teardown()` deletes the namespaces (and with them every link
and TUN inside), also the leftovers of a crashed earlier run. Forwarders are started by the
caller inside the node namespaces (`node_exec`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
NETWORK = "10.244.0.0/16"
PREFIX = "fudp"  # every namespace and link name starts with it (the bench uses "fudpb")
NODES = ("fudp-n1", "fudp-n2")
PODS = ("fudp-p1", "fudp-p2")
UNDERLAY = ("198.18.0.1", "198.18.0.2")
SUBNETS = ("10.244.1.0/24", "10.244.2.0/24")
POD_IPS = ("10.244.1.2", "10.244.2.2")
GATEWAYS = ("10.244.1.1", "10.244.2.1")


def set_prefix(prefix: str) -> None:
    """Rename the whole topology (e.g. the bench runs as `fudpb` beside the netlink tests)."""
    global PREFIX, NODES, PODS
    PREFIX = prefix
    NODES = (f"{prefix}-n1", f"{prefix}-n2")
    PODS = (f"{prefix}-p1", f"{prefix}-p2")


def sh(*args: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def teardown() -> None:
    for ns in (*NODES, *PODS):
        sh("ip", "netns", "del", ns, check=False)


def setup(pod_mtu: int = 1500, external_mtu: int = 1500) -> None:
    teardown()
    for ns in (*NODES, *PODS):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", f"{PREFIX}-u1", "netns", NODES[0], "mtu", str(external_mtu), "type",
       "veth", "peer", "name", f"{PREFIX}-u2", "netns", NODES[1], "mtu", str(external_mtu))
    for i, node in enumerate(NODES):
        u, pod = f"{PREFIX}-u{i + 1}", PODS[i]
        sh("ip", "addr", "add", f"{UNDERLAY[i]}/24", "dev", u, ns=node)
        sh("ip", "link", "set", u, "up", ns=node)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)
        sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", ns=node)
        gw = f"{PREFIX}-g{i + 1}"
        sh("ip", "link", "add", gw, "netns", node, "mtu", str(pod_mtu), "type", "veth", "peer",
           "name", "eth0", "netns", pod, "mtu", str(pod_mtu))
        sh("ip", "addr", "add", f"{GATEWAYS[i]}/24", "dev", gw, ns=node)
        sh("ip", "link", "set", gw, "up", ns=node)
        sh("ip", "addr", "add", f"{POD_IPS[i]}/24", "dev", "eth0", ns=pod)
        sh("ip", "link", "set", "eth0", "up", ns=pod)
        sh("ip", "route", "add", "default", "via", GATEWAYS[i], ns=pod)


@dataclass
class Proc:
    """A process in a namespace; stop() terminates it and waits (PID 1 here reaps nothing)."""

    popen: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def node_exec(ns: str, argv: Sequence[str], log: Path) -> Proc:
    with open(log, "wb") as f:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=log.parent)
    return Proc(p, log)


def wait_for(pred: object, timeout: float = 10.0, what: str = "condition") -> None:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def start_ours(i: int, workdir: Path, *, offload: bool = False, routes: bool = True,
               extra: Sequence[str] = ()) -> Proc:
    """Our datapath on node i (0 or 1), routing to the other node; control socket in workdir."""
    other = 1 - i
    ctl = workdir / f"fudp-ctl{i + 1}.sock"
    ready = workdir / f"fudp-ready{i + 1}"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    argv = [PYTHON, "-m", "flanneld.backends.udp.datapath", "--tun", "flannel0",
            "--bind", f"{UNDERLAY[i]}:8285", "--subnet", SUBNETS[i], "--network", NETWORK,
            "--control", str(ctl), "--ready-file", str(ready), *extra]
    if routes:
        argv += ["--route", f"{SUBNETS[other]}={UNDERLAY[other]}"]
    if offload:
        argv.append("--offload")
    p = node_exec(NODES[i], argv, workdir / f"fudp-dp{i + 1}.log")
    try:
        wait_for(lambda: ready.exists() or p.popen.poll() is not None, 15, "datapath ready")
    except TimeoutError:
        p.stop()
        raise
    if p.popen.poll() is not None:
        raise RuntimeError(f"datapath exited: {p.output()}")
    p.extra["control"] = str(ctl)
    return p


def build_cfwd(out: Path) -> Path:
    src = REPO / "bench" / "udp" / "cfwd.c"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def start_cfwd(i: int, binary: Path, workdir: Path, bufsize: int = 4 * 1024 * 1024) -> Proc:
    """The flannel-style C forwarder on node i, with the same TUN setup as ours."""
    other = 1 - i
    node = NODES[i]
    argv = [str(binary), "flannel0", UNDERLAY[i], "8285", str(bufsize),
            f"{SUBNETS[other]}={UNDERLAY[other]}"]
    p = node_exec(node, argv, workdir / f"fudp-cfwd{i + 1}.log")
    wait_for(lambda: sh("ip", "link", "show", "flannel0", ns=node, check=False).returncode == 0
             or p.popen.poll() is not None, 10, "cfwd tun")
    if p.popen.poll() is not None:
        raise RuntimeError(f"cfwd exited: {p.output()}")
    sub = SUBNETS[i].split("/")[0]
    sh("ip", "link", "set", "flannel0", "mtu", "1472", "up", ns=node)
    sh("ip", "addr", "replace", f"{sub}/32", "dev", "flannel0", ns=node)
    sh("ip", "route", "replace", NETWORK, "dev", "flannel0", ns=node)
    return p


@contextlib.contextmanager
def topology(pod_mtu: int = 1500) -> Iterator[None]:
    setup(pod_mtu=pod_mtu)
    try:
        yield
    finally:
        teardown()


def ping(src_pod: int, dst: str, count: int = 3, size: int = 56, df: bool = False,
         interval: str = "0.05", timeout: int = 2) -> subprocess.CompletedProcess[str]:
    args = ["ping", "-n", "-c", str(count), "-i", interval, "-W", str(timeout), "-s", str(size)]
    if df:
        args += ["-M", "do"]
    return sh(*args, dst, check=False, ns=PODS[src_pod])
