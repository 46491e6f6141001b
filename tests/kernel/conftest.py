"""Fixtures for the kernel datapath tests: namespaces (prefix ``fknl``) that are always deleted.

A test asks ``netns_factory()`` for fresh namespaces; a two-node topology joins two of them
with a veth on the 198.18.0.0/24 underlay.  Nothing is ever created in the root namespace
except the veth pair itself, which is moved into the namespaces at creation.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", *args)
    return json.loads(out) if out.strip() else []


def bridge_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("bridge", "-n", ns, "-j", *args)
    return json.loads(out) if out.strip() else []


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """Create namespaces named ``fknl-<random>-<suffix>``; all deleted after the test."""
    if os.geteuid() != 0:
        pytest.skip("netlink tests need root")
    tag = secrets.token_hex(3)
    created: list[str] = []

    def make(suffix: str) -> str:
        name = f"fknl-{tag}-{suffix}"
        sh("ip", "netns", "add", name)
        created.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    try:
        yield make
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@dataclass(frozen=True)
class TwoNodes:
    n1: str
    n2: str
    link1: str = "fknlu1"
    link2: str = "fknlu2"
    ip1: str = "198.18.0.1"
    ip2: str = "198.18.0.2"


@pytest.fixture
def two_nodes(netns_factory: Callable[[str], str]) -> TwoNodes:
    """Two namespaces joined by a veth, underlay 198.18.0.1/24 and 198.18.0.2/24."""
    topo = TwoNodes(netns_factory("n1"), netns_factory("n2"))
    sh("ip", "link", "add", topo.link1, "netns", topo.n1, "type", "veth",
       "peer", "name", topo.link2, "netns", topo.n2)
    for ns, link, addr in ((topo.n1, topo.link1, topo.ip1), (topo.n2, topo.link2, topo.ip2)):
        sh("ip", "addr", "add", f"{addr}/24", "dev", link, ns=ns)
        sh("ip", "link", "set", link, "up", ns=ns)
        sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", ns=ns)
    return topo


@dataclass(frozen=True)
class DualNodes(TwoNodes):
    ip6_1: str = "2001:db8:18::1"
    ip6_2: str = "2001:db8:18::2"


@pytest.fixture
def dual_nodes(netns_factory: Callable[[str], str]) -> DualNodes:
    """``two_nodes`` with an IPv6 underlay too: 2001:db8:18::1/64 and ::2/64 (documentation
    range, only inside the two namespaces), DAD off so the addresses are usable at once."""
    topo = DualNodes(netns_factory("n1"), netns_factory("n2"))
    sh("ip", "link", "add", topo.link1, "netns", topo.n1, "type", "veth",
       "peer", "name", topo.link2, "netns", topo.n2)
    for ns, link, addr, addr6 in ((topo.n1, topo.link1, topo.ip1, topo.ip6_1),
                                  (topo.n2, topo.link2, topo.ip2, topo.ip6_2)):
        for knob in ("all", "default", link):
            sh("sysctl", "-qw", f"net.ipv6.conf.{knob}.accept_dad=0", ns=ns)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)
        sh("ip", "addr", "add", f"{addr}/24", "dev", link, ns=ns)
        sh("ip", "-6", "addr", "add", f"{addr6}/64", "dev", link, "nodad", ns=ns)
        sh("ip", "link", "set", link, "up", ns=ns)
        sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", ns=ns)
    return topo
