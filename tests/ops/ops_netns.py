"""Namespace helpers and fixtures of the ops tests (prefix ``fops``); always cleaned up."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """``make_netns(role)`` creates ``fops-<role>-<rand>`` with lo up; all deleted at teardown."""
    _need_root()
    created: list[str] = []

    def make(role: str) -> str:
        name = f"fops-{role}-{secrets.token_hex(3)}"
        assert len(name) <= 20
        sh("ip", "netns", "add", name)
        created.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(created):
            sh("ip", "netns", "del", name, check=False)


def veth(ns_a: str, name_a: str, addr_a: str, ns_b: str, name_b: str, addr_b: str) -> None:
    """A veth pair between two namespaces, addressed and up (names are per namespace)."""
    sh("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
       "netns", ns_b)  # fmt: skip
    for ns, dev, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


@dataclass(frozen=True)
class MasqLab:
    """pod (10.244.1.2) -- node (10.244.1.1 | 10.244.2.1 | 198.18.0.1) -- outside (198.18.0.2)
    and a pod of another subnet of the Network, 10.244.2.2, directly behind the node (stands in
    for a remote node's pod; only the addresses matter to the nat rules). The outside has no
    route back to 10.244.0.0/16: a pod reaches it only when masqueraded."""

    node: str
    pod: str
    peer_pod: str
    outside: str
    network: str = "10.244.0.0/16"
    subnet: str = "10.244.1.1/24"
    pod_ip: str = "10.244.1.2"
    peer_pod_ip: str = "10.244.2.2"
    node_outside_ip: str = "198.18.0.1"
    outside_ip: str = "198.18.0.2"


@pytest.fixture
def masq_lab(make_netns: Callable[[str], str]) -> MasqLab:
    lab = MasqLab(make_netns("n"), make_netns("p"), make_netns("q"), make_netns("o"))
    veth(lab.node, "fops-pod", "10.244.1.1/24", lab.pod, "eth0", "10.244.1.2/24")
    veth(lab.node, "fops-peer", "10.244.2.1/24", lab.peer_pod, "eth0", "10.244.2.2/24")
    veth(lab.node, "fops-out", "198.18.0.1/24", lab.outside, "eth0", "198.18.0.2/24")
    sh("ip", "-n", lab.pod, "route", "add", "default", "via", "10.244.1.1")
    sh("ip", "-n", lab.peer_pod, "route", "add", "default", "via", "10.244.2.1")
    in_ns(lab.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return lab


_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.settimeout(10)
    print("ready", flush=True)
    data, peer = s.recvfrom(2048)
    print(peer[0], flush=True)
    try:
        s.sendto(b"pong", peer)
    except OSError:  # no route back to an unmasqueraded pod: the point of some tests
        pass
    """
)

_CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    for _ in range(int(sys.argv[3])):
        s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
        try:
            s.recvfrom(64)
            print("reply", flush=True)
            break
        except TimeoutError:
            pass
    else:
        print("no-reply", flush=True)
    """
)


def udp_probe(src_ns: str, dst_ns: str, dst_ip: str, port: int = 5353, tries: int = 25) -> tuple[str, bool]:
    """Send UDP from ``src_ns`` to a listener in ``dst_ns``; return (source address the
    listener saw, whether the client got the reply back). The client resends every 0.2 s,
    ``tries`` times at most, until a reply arrives."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, sys.executable, "-c", _SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = in_ns(src_ns, sys.executable, "-c", _CLIENT, dst_ip, str(port), str(tries))
        seen = server.stdout.readline().strip()
        server.wait(timeout=15)
        return seen, client.stdout.strip() == "reply"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
