"""Helpers for lab tests: bring a netns lab up under its own name and ALWAYS tear it down.

The lab is driven in-process through netns-lab's Python API (netns-lab/netnslab), so the
daemons it starts are children of pytest and get reaped.  Each test module uses its own lab
name, so lab tests never clash with a demo lab (``flab``) or with each other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    """Skip without root; FAIL (never skip) when flanneld does not run: a broken daemon
    must turn CI red, not quietly skip every lab test."""
    require_root()
    exe = REPO / ".venv" / "bin" / "flanneld"
    res = subprocess.run([str(exe), "--version"], capture_output=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"flanneld does not run ({exe} --version exited {res.returncode}): "
                    f"{res.stderr.decode()[-400:]}")


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

    def fdb(self, node: int, dev: str = "flannel.1") -> list[dict[str, Any]]:
        """The fdb entries of ``dev`` on ``node`` (``bridge -j fdb show``; [] when absent)."""
        out = run(["bridge", "-n", self.node_ns(node), "-j", "fdb", "show", "dev", dev], check=False)
        try:
            parsed: list[dict[str, Any]] = json.loads(out.stdout or "[]")
        except ValueError:
            return []
        return parsed

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
        return self.ping_run(src_ns, dst, "-q", timeout=timeout).returncode == 0

    def ping_run(self, src_ns: str, dst: str, *args: str,
                 timeout: float = 1.0) -> subprocess.CompletedProcess[str]:
        """One ``ping -n -c 1`` from ``src_ns`` with extra ``args``; its output is kept."""
        cmd = nsexec(src_ns, ["ping", "-n", "-c", "1", "-W", f"{timeout:g}", *args, dst])
        return run(cmd, check=False)

    def kill_flanneld(self, node: int) -> None:
        assert daemon.kill(self.state, node), f"flanneld on n{node} was not running"

    def start_flanneld(self, node: int) -> None:
        labmod.start_flanneld(self.name, node)

    def log_tail(self, node: int) -> str:
        return daemon.log_tail(self.state, node, 30)

    # -- wireguard nodes (see "wireguard helpers" below)

    def wg_run(self, node: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``wg ARGS`` on ``node``: its namespace and its own /var/run/wireguard."""
        return run(daemon.wg_command(self.state, node, args), check=check)

    def wg_dump(self, node: int, dev: str = "flannel-wg") -> WgDump | None:
        """``wg show DEV dump`` on ``node``, parsed (None: no such device)."""
        res = self.wg_run(node, "show", dev, "dump", check=False)
        return parse_wg_dump(res.stdout) if res.returncode == 0 else None

    def wireguard_go_pids(self, node: int) -> list[int]:
        """The live wireguard-go processes in ``node``'s network namespace."""
        return wireguard_go_pids(self.node_ns(node))


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


# ---------------------------------------------------------------- fault-suite helpers

HEALTHZ_PORT = 8471  # inside node namespaces only (each node has its own loopback)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    return ticks / os.sysconf("SC_CLK_TCK")


def figure(test: str, **values: object) -> str:
    """Print the one ``FIGURE`` line a fault test reports (and return it)."""
    parts = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    line = f"FIGURE {test} {parts}"
    print(line, flush=True)
    return line


class PingResult:
    """A stopped ping: ping's own counts and the time of every reply."""

    def __init__(self, sent: int, received: int, replies: list[tuple[float, int]], text: str) -> None:
        self.sent = sent
        self.received = received
        self.replies = replies  # (unix time, icmp_seq)
        self.text = text

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def max_gap(self, start: float, end: float) -> float:
        """Longest time without a reply inside [start, end] (window edges count as replies)."""
        times = [start, *(t for t, _ in self.replies if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))


class Pinger:
    """``ping -D -i 0.01`` from a pod namespace; output goes to a file (never blocks on a pipe)."""

    def __init__(self, src_ns: str, dst: str, out: Path, interval: float = 0.01) -> None:
        self.out = out
        self.src, self.dst = src_ns, dst
        with out.open("w") as fh:
            self.proc = subprocess.Popen(
                nsexec(src_ns, ["ping", "-n", "-D", "-i", f"{interval:g}", "-W", "1", dst]),
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def replies(self) -> list[tuple[float, int]]:
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            if "bytes from" in line and line.startswith("[") and "icmp_seq=" in line:
                stamp = float(line[1 : line.index("]")])
                seq = int(line.split("icmp_seq=")[1].split()[0])
                out.append((stamp, seq))
        return out

    def last_reply(self) -> float:
        """Unix time of the latest reply so far (0.0: none yet)."""
        replies = self.replies()
        return replies[-1][0] if replies else 0.0

    def wait_flowing(self, timeout: float = 10.0) -> None:
        poll(lambda: len(self.replies()) >= 5, timeout, 0.05, f"ping {self.src} -> {self.dst} answered")

    def stop(self) -> PingResult:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: ping prints its summary
        self.proc.wait(10)
        text = self.out.read_text(errors="replace")
        for line in text.splitlines():
            if "packets transmitted" in line:
                parts = line.split(",")
                sent, received = int(parts[0].split()[0]), int(parts[1].split()[0])
                return PingResult(sent, received, self.replies(), text)
        raise AssertionError(f"ping {self.src} -> {self.dst}: no summary in {text[-500:]!r}")


_READYZ_POLLER = r"""
import json, signal, socket, sys, time
port, stop, last, seen, counts = int(sys.argv[1]), [], None, [], {}
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("polling", flush=True)
while not stop:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\nHost: n\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        code = int(data.split()[1]) if data.startswith(b"HTTP/") else -1
    except OSError:
        code = 0
    counts[code] = counts.get(code, 0) + 1
    if code != last:
        seen.append((time.time(), code))
        last = code
print(json.dumps({"transitions": seen, "counts": counts}), flush=True)
"""


class ReadyzPoller:
    """Polls a node's /readyz back to back from inside its namespace; every status change is
    recorded with its time (0 = no answer)."""

    def __init__(self, ns: str, port: int = HEALTHZ_PORT) -> None:
        self.proc = subprocess.Popen(
            nsexec(ns, [sys.executable, "-c", _READYZ_POLLER, str(port)]),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "polling"

    def stop(self) -> tuple[list[tuple[float, int]], dict[str, int]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        summary = json.loads(out.strip().splitlines()[-1])
        return [(float(t), int(c)) for t, c in summary["transitions"]], summary["counts"]


class FaultLab(LabHandle):
    """LabHandle plus what the fault suite needs: etcd on/off, daemon pids/CPU, /readyz."""

    def flanneld_pid(self, node: int) -> int:
        ref = daemon.running(self.state, node)
        assert ref is not None, f"flanneld on n{node} is not running:\n{self.log_tail(node)}"
        return ref.pid

    def flanneld_alive(self, node: int, pid: int) -> bool:
        ref = daemon.running(self.state, node)
        return ref is not None and ref.pid == pid

    def stop_etcd(self) -> None:
        assert labmod.stop_etcd(self.name), "etcd was not running"

    def start_etcd(self) -> float:
        """Start etcd again; returns the time.time() at which it answered /health."""
        labmod.start_etcd(self.name)
        return time.time()

    def start_flanneld_with(self, node: int, *extra: str) -> None:
        labmod.start_flanneld(self.name, node, extra_args=extra)

    def readyz(self, node: int, port: int = HEALTHZ_PORT) -> int:
        url = f"http://127.0.0.1:{port}/readyz"
        cmd = nsexec(self.node_ns(node), ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "1", url])
        out = run(cmd, check=False).stdout.strip()
        return int(out) if out.isdigit() else 0

    def etcd_lease_id(self, key: str) -> int:
        """The etcd lease behind ``key`` (0: key absent or without lease)."""
        got = json.loads(self.etcdctl("get", key, "-w", "json"))
        kvs = got.get("kvs") or []
        return int(kvs[0].get("lease", 0)) if kvs else 0

    def etcd_lease_count(self) -> int:
        return len(json.loads(self.etcdctl("lease", "list", "-w", "json")).get("leases") or [])

    def log_size(self, node: int) -> int:
        return daemon.log_file(self.state, node).stat().st_size

    def log_since(self, node: int, offset: int) -> list[str]:
        with daemon.log_file(self.state, node).open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace").splitlines()

    def pinger(self, src: tuple[int, int], dst: tuple[int, int]) -> Pinger:
        src_pod = self.pod(*src)
        out = self.state.dir / f"ping-{src_pod.name}-n{dst[0]}p{dst[1]}.log"
        return Pinger(src_pod.name, self.pod_ip(*dst), out)


@contextlib.contextmanager
def fault_lab(name: str, **opts: Any) -> Iterator[FaultLab]:
    """``lab_running`` giving a FaultLab; prints every node's log when the block fails."""
    with lab_running(name, **opts) as handle:
        try:
            yield FaultLab(handle.name)
        except BaseException:
            dump_logs(name)
            raise


# ---------------------------------------------------------------- wireguard helpers


@dataclass(frozen=True)
class WgPeer:
    """One peer line of ``wg show DEV dump``."""

    public_key: str
    endpoint: str  # "198.18.0.2:51820", "[2001:db8:18::2]:51821", "(none)"
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix time, 0: never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class WgDump:
    """``wg show DEV dump``: the device's own line and its peers by public key."""

    public_key: str
    listen_port: int
    peers: dict[str, WgPeer]


def parse_wg_dump(text: str) -> WgDump | None:
    """Parse ``wg show DEV dump`` (device line: private key, public key, port, fwmark; peer
    lines: key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive)."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 3:
        return None
    peers = {}
    for f in lines[1:]:
        ips = tuple(sorted(a for a in f[3].split(",") if a and a != "(none)"))
        peers[f[0]] = WgPeer(f[0], f[2], ips, int(f[4]), int(f[5]), int(f[6]))
    return WgDump(lines[0][1], int(lines[0][2]), peers)


def wireguard_go_pids(ns: str) -> list[int]:
    """Live (not zombie) ``wireguard-go`` processes whose network namespace is ``ns``."""
    want = os.stat(f"/run/netns/{ns}").st_ino
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "wireguard-go":
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X") and os.stat(entry / "ns" / "net").st_ino == want:
                out.append(int(entry.name))
        except OSError:
            continue
    return sorted(out)
