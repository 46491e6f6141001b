"""The real flanneld under a fake systemd: NOTIFY_SOCKET is a datagram socket this test owns.

flanneld runs in a namespace of ours (etcd beside it, host-gw backend on a veth). We check:
READY=1 arrives only once subnet.env exists and /readyz says 200, WATCHDOG=1 follows at half
of WATCHDOG_USEC, /metrics of the live daemon passes `promtool check metrics`, deleting our
own lease shows "lease lost" in STATUS= and readiness comes back, SIGTERM sends STOPPING=1.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_server import EtcdServer
from ops_netns import in_ns, sh

pytestmark = [pytest.mark.netlink, pytest.mark.etcd]

FLANNELD = Path(sys.executable).parent / "flanneld"
PREFIX = "/fops/network"
HEALTHZ_PORT = 8471  # inside our own namespace
WATCHDOG_USEC = 400_000


@dataclass
class Message:
    text: str
    at: float
    subnet_env_exists: bool


@dataclass
class Node:
    ns: str
    etcd: EtcdServer
    subnet_file: Path
    notify: socket.socket
    proc: subprocess.Popen[bytes] | None = None

    def recv(self, timeout: float = 20.0) -> Message:
        self.notify.settimeout(timeout)
        data = self.notify.recv(4096)
        return Message(data.decode(), time.monotonic(), self.subnet_file.exists())

    def drain(self) -> list[str]:
        out = []
        self.notify.setblocking(False)
        try:
            while True:
                out.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.notify.setblocking(True)

    def until(self, predicate: Callable[[Message], bool], timeout: float = 30.0) -> list[Message]:
        """Messages received up to and including the first one matching ``predicate``."""
        seen: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notify message; got {[m.text for m in seen]}")
            msg = self.recv(left)
            seen.append(msg)
            if predicate(msg):
                return seen

    def http(self, path: str) -> tuple[int, str]:
        script = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:{HEALTHZ_PORT}{path}', timeout=5)\n"
            "    print(r.status); sys.stdout.write(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); sys.stdout.write(e.read().decode())\n"
        )
        out = in_ns(self.ns, sys.executable, "-c", script).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    def etcdctl(self, *args: str) -> str:
        return in_ns(
            self.ns, "etcdctl", f"--endpoints={self.etcd.endpoint}", *args
        ).stdout  # fmt: skip


@pytest.fixture
def node(make_netns: Callable[[str], str], tmp_path: Path) -> Iterator[Node]:
    if not FLANNELD.exists() or shutil.which("etcdctl") is None:
        pytest.skip("needs .venv/bin/flanneld and etcdctl")
    ns = make_netns("d")
    sh("ip", "-n", ns, "link", "add", "fops-e0", "type", "veth", "peer", "name", "fops-e1")
    sh("ip", "-n", ns, "addr", "add", "198.18.5.1/24", "dev", "fops-e0")
    for dev in ("fops-e0", "fops-e1"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    etcd = EtcdServer(name="fops", netns=ns)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    n = Node(ns, etcd, tmp_path / "run" / "subnet.env", notify)
    try:
        etcd.start()
        config = {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}
        n.etcdctl("put", f"{PREFIX}/config", json.dumps(config))
        yield n
    finally:
        if n.proc is not None and n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait(timeout=10)
        notify.close()
        etcd.cleanup()


def start_flanneld(n: Node, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        NOTIFY_SOCKET=n.notify.getsockname(),
        WATCHDOG_USEC=str(WATCHDOG_USEC),
    )
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "flanneld.log").open("wb")
    n.proc = subprocess.Popen(
        ["ip", "netns", "exec", n.ns, str(FLANNELD),
         f"--etcd-endpoints={n.etcd.endpoint}", f"--etcd-prefix={PREFIX}",
         "--iface=fops-e0", f"--subnet-file={n.subnet_file}",
         "--healthz-ip=127.0.0.1", f"--healthz-port={HEALTHZ_PORT}", "-v"],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip


def test_notify_ready_watchdog_lease_loss_stopping(node: Node, tmp_path: Path) -> None:
    start_flanneld(node, tmp_path)
    try:
        before = node.until(lambda m: "READY=1" in m.text.splitlines())
    except AssertionError:
        raise AssertionError((tmp_path / "flanneld.log").read_text()) from None
    ready = before[-1]
    # READY=1 only once subnet.env exists, and never before
    assert ready.subnet_env_exists, [m.text for m in before]
    assert all("READY=1" not in m.text for m in before[:-1])
    assert any(m.text.startswith("STATUS=") for m in before[:-1])  # said what it waited for
    assert "FLANNEL_SUBNET=10.244." in node.subnet_file.read_text()
    assert node.http("/readyz") == (200, "ready\n")
    assert node.http("/healthz") == (200, "running")

    # WATCHDOG=1 from the event loop at half the interval
    node.drain()  # receive times of queued messages say nothing about the interval
    stamps: list[float] = []
    while len(stamps) < 5:
        msg = node.recv()
        if msg.text == "WATCHDOG=1":
            stamps.append(msg.at)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    half = WATCHDOG_USEC / 2e6
    assert min(gaps) > half * 0.8, gaps
    assert sum(gaps) / len(gaps) < half * 3, gaps

    # /metrics of the live daemon passes promtool
    status, text = node.http("/metrics")
    assert status == 200 and "flannel_lease_expiry_timestamp_seconds" in text
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr

    # our own lease deleted: readiness drops ("lease lost"), then comes back
    keys = node.etcdctl("get", "--prefix", "--keys-only", f"{PREFIX}/subnets").split()
    assert len(keys) == 1, keys
    node.etcdctl("del", keys[0])
    node.until(lambda m: "STATUS=lease lost" in m.text)
    node.until(lambda m: "STATUS=ready" in m.text)
    assert node.http("/readyz")[0] == 200

    # SIGTERM: STOPPING=1, clean exit
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    node.until(lambda m: "STOPPING=1" in m.text.splitlines())
    assert node.proc.wait(timeout=20) == 0
