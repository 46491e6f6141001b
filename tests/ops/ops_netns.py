"""Namespace helpers and fixtures of the ops tests (prefix ``fops``); always cleaned up."""

from __future__ import annotations

import os
import secrets
import subprocess
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
