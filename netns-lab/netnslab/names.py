"""Every name and address the lab uses, derived from the lab name alone.

Deriving names (instead of remembering them) is what lets ``lab down`` clean up after a crash:
the namespaces of lab ``flab`` are exactly those matching ``flab-ul``, ``flab-n<i>`` and
``flab-n<i>p<j>``, whatever state file survived.  Links are created directly inside the lab's
namespaces (never in the root namespace), each named with the lab prefix as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

DEFAULT_NAME = "flab"
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,8}$")

UNDERLAY_NET = "198.18.0.0/24"
UNDERLAY_GW = IPv4Address("198.18.0.254")
# Dual-stack labs (``up --dual-stack``) add IPv6 to the same underlay interfaces: node ``i`` is
# 2001:db8:18::<i> (the decimal index written as the last group, as in 198.18.0.<i>), the bridge
# in the underlay namespace 2001:db8:18::254.  etcd stays on IPv4.
UNDERLAY_NET6 = "2001:db8:18::/64"
UNDERLAY_GW6 = IPv6Address("2001:db8:18::254")
# The overlay IPv6 network a dual-stack lab writes to etcd (IPv6SubnetLen: flannel's default 64).
DEFAULT_IPV6_NETWORK = "fd10:244::/56"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
MAX_NODES = 253
POD_IFNAME = "eth0"
POD_BRIDGE = "cni0"


class NameError_(ValueError):
    """A lab name, node or pod reference that does not fit the naming scheme."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise NameError_(
            f"invalid lab name {name!r}: 1-9 chars, lowercase letter first, then [a-z0-9]"
        )
    return name


@dataclass(frozen=True)
class LabNames:
    """Names for one lab; all interface names stay <= 15 chars (name <= 9 chars)."""

    name: str

    @property
    def underlay_ns(self) -> str:
        return f"{self.name}-ul"

    @property
    def bridge(self) -> str:
        """The underlay bridge, inside the underlay namespace."""
        return f"{self.name}-br"

    @property
    def uplink(self) -> str:
        """A node's underlay interface, inside the node namespace (same on every node)."""
        return f"{self.name}-eth"

    def bridge_port(self, node: int) -> str:
        """The underlay-side end of node ``node``'s veth, inside the underlay namespace."""
        return f"{self.name}-p{node}"

    def node_ns(self, node: int) -> str:
        return f"{self.name}-n{node}"

    def pod_ns(self, node: int, pod: int) -> str:
        return f"{self.name}-n{node}p{pod}"

    def pod_host_veth(self, pod: int) -> str:
        """Node-side veth of a pod in bridge attach mode (inside the node namespace)."""
        return f"{self.name}-v{pod}"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{UNDERLAY_GW}:{ETCD_CLIENT_PORT}"

    @property
    def ns_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.name)}-(ul|n\d+(p\d+)?)$")

    @property
    def link_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.name)}-(br|eth|p\d+|v\d+)$")

    def owns_ns(self, ns: str) -> bool:
        return bool(self.ns_pattern.match(ns))


def node_address(node: int) -> IPv4Interface:
    if not 1 <= node <= MAX_NODES:
        raise NameError_(f"node index {node} out of range 1..{MAX_NODES}")
    return IPv4Interface(f"198.18.0.{node}/24")


def node_address6(node: int) -> IPv6Interface:
    """Node ``node``'s underlay IPv6 address in a dual-stack lab: 2001:db8:18::<node>/64."""
    if not 1 <= node <= MAX_NODES:
        raise NameError_(f"node index {node} out of range 1..{MAX_NODES}")
    return IPv6Interface(f"2001:db8:18::{node}/64")


_NODE_REF = re.compile(r"^(?:(?P<prefix>[a-z][a-z0-9]*)-)?n?(?P<node>\d+)(?:p(?P<pod>\d+))?$")


@dataclass(frozen=True)
class Target:
    """What ``lab exec`` / ``lab logs`` refer to: the underlay, a node or a pod."""

    node: int | None  # None: the underlay namespace
    pod: int | None = None

    def ns(self, names: LabNames) -> str:
        if self.node is None:
            return names.underlay_ns
        if self.pod is None:
            return names.node_ns(self.node)
        return names.pod_ns(self.node, self.pod)


def parse_target(ref: str, names: LabNames) -> Target:
    """``ul``/``etcd``, ``n2``/``2``/``flab-n2`` (node), ``n2p1``/``flab-n2p1`` (pod)."""
    if ref in ("ul", "underlay", "etcd", names.underlay_ns):
        return Target(None)
    m = _NODE_REF.match(ref)
    if not m or (m.group("prefix") and m.group("prefix") != names.name):
        raise NameError_(f"unknown target {ref!r}: use ul, n<i> or n<i>p<j>")
    pod = m.group("pod")
    return Target(int(m.group("node")), int(pod) if pod else None)
