"""Kernel objects and netlink operations as plain data.

Why: the backends decide *what* the kernel should hold with pure planners
(``plan(own lease, peers, observed) -> [Op]``); only ``flanneld.netlink_codec`` turns these
values into netlink messages (and ``flanneld.netlink`` sends them).  Keeping the vocabulary here,
free of sockets and message layouts, lets the planners be tested with golden op lists and no
root, and lets the daemon count outcomes by kind without importing netlink.

Kernel objects (``Address``, ``Route``, ``Neighbour``, ``FdbEntry``) compare by value; each has
a ``key`` naming the kernel slot it occupies, so a planner can tell "missing" (no object under the
key), "wrong" (another value under the key) and "stale" (a key nobody wants).

One model for both address families: an object holds ``ipaddress`` IPv4 or IPv6 values and its
``family`` (``AF_INET`` or ``AF_INET6``, plain ints) follows from their type, so the codec picks
the message family from the object itself.  Keys contain the address objects, and an IPv4 value
never equals an IPv6 one, so the same numbers in both families occupy different keys.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

RT_TABLE_MAIN = 254
AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def family_of(value: IPAddress | IPNetwork) -> int:
    """``AF_INET`` for an IPv4 address or network, ``AF_INET6`` for an IPv6 one."""
    return AF_INET if value.version == 4 else AF_INET6


def normalize_mac(mac: str) -> str:
    """``AA-bb:CC...`` -> ``aa:bb:cc:..``; raises ValueError for anything but 6 octets."""
    parts = mac.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    int("".join(parts), 16)  # ValueError on non-hex
    return ":".join(parts)


@dataclass(frozen=True, slots=True)
class Address:
    """An IPv4 or IPv6 address on a device (``ip addr add <address>/<prefixlen> dev <ifindex>``).

    ``prefixlen`` defaults to 32 as the IPv4 host addresses flannel puts on its devices; an IPv6
    host address says 128."""

    ifindex: int
    address: IPAddress
    prefixlen: int = 32

    kind = "addr"

    @property
    def key(self) -> tuple[str, int, IPAddress, int]:
        return ("addr", self.ifindex, self.address, self.prefixlen)

    @property
    def family(self) -> int:
        return family_of(self.address)


@dataclass(frozen=True, slots=True)
class Route:
    """An IPv4 or IPv6 unicast route.  No gateway means a device route (scope link).

    The family is the destination's; a gateway is of the same family."""

    dst: IPNetwork
    ifindex: int
    gateway: IPAddress | None = None
    onlink: bool = False
    table: int = RT_TABLE_MAIN

    kind = "route"

    @property
    def key(self) -> tuple[str, int, IPNetwork]:
        return ("route", self.table, self.dst)

    @property
    def family(self) -> int:
        return family_of(self.dst)

    @property
    def scope_link(self) -> bool:
        return self.gateway is None


@dataclass(frozen=True, slots=True)
class Neighbour:
    """An IPv4 (ARP) or IPv6 (NDP) neighbour entry; ours are always NUD_PERMANENT."""

    ifindex: int
    address: IPAddress
    lladdr: str
    permanent: bool = True

    kind = "neigh"

    @property
    def key(self) -> tuple[str, int, IPAddress]:
        return ("neigh", self.ifindex, self.address)

    @property
    def family(self) -> int:
        return family_of(self.address)


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A vxlan forwarding entry ``<lladdr> dst <dst> self permanent`` on a vxlan device.

    The netlink message is always of the bridge family; ``family`` is the remote's (``dst``),
    which must match the vxlan device's local address family."""

    ifindex: int
    lladdr: str
    dst: IPAddress

    kind = "fdb"

    @property
    def key(self) -> tuple[str, int, str, IPAddress]:
        return ("fdb", self.ifindex, self.lladdr, self.dst)

    @property
    def family(self) -> int:
        return family_of(self.dst)


@dataclass(frozen=True, slots=True)
class UnreachableRoute:
    """``ip route add unreachable <dst> metric <metric>``: the answer for ``dst`` when no
    route of a lower metric is there.  The wireguard backend's fallback under its Network
    route: while its device is missing (wireguard-go died, with its TUN and the route on it),
    pod traffic to other nodes is refused, never sent out in clear by the default route."""

    dst: IPNetwork
    metric: int
    table: int = RT_TABLE_MAIN

    kind = "unreachable"

    @property
    def key(self) -> tuple[str, int, IPNetwork, int]:
        return ("unreachable", self.table, self.dst, self.metric)

    @property
    def family(self) -> int:
        return family_of(self.dst)


KernelObject = Address | Route | Neighbour | FdbEntry | UnreachableRoute


@dataclass(frozen=True, slots=True)
class VxlanLink:
    """The attributes of a vxlan device that we create and check for compatibility.

    ``local`` is an IPv4 or IPv6 underlay address (IFLA_VXLAN_LOCAL or IFLA_VXLAN_LOCAL6); an
    observed device without a local address reads as ``0.0.0.0``."""

    name: str
    vni: int
    local: IPAddress
    underlay_ifindex: int
    port: int
    mac: str
    mtu: int
    learning: bool = False
    gbp: bool = False

    @property
    def family(self) -> int:
        return family_of(self.local)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What netlink tells about an existing device (observation, not an op)."""

    name: str
    index: int
    mac: str
    mtu: int
    up: bool
    kind: str = ""
    vxlan: VxlanLink | None = None  # set when kind == "vxlan"
    l2miss: bool = False
    l3miss: bool = False


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """One interface with its addresses, for --iface / --iface-regex selection.

    ``addresses`` holds the IPv4 ones (what the selection uses today), ``addresses6`` the IPv6
    ones; each is filled when the observation asked for that family."""

    name: str
    index: int
    mtu: int
    up: bool
    addresses: tuple[IPv4Address, ...] = ()
    loopback: bool = False
    addresses6: tuple[IPv6Address, ...] = ()


# --- operations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replace:
    """Make ``obj`` present (netlink NLM_F_CREATE|NLM_F_REPLACE: add or overwrite)."""

    obj: KernelObject

    @property
    def kind(self) -> str:
        return f"{self.obj.kind}_replace"


@dataclass(frozen=True, slots=True)
class Delete:
    """Make ``obj`` absent; already gone is success."""

    obj: KernelObject

    @property
    def kind(self) -> str:
        return f"{self.obj.kind}_delete"


@dataclass(frozen=True, slots=True)
class CreateVxlan:
    """Create a vxlan device (the planner only asks when none of that name exists)."""

    link: VxlanLink

    @property
    def kind(self) -> str:
        return "link_create"


@dataclass(frozen=True, slots=True)
class DeleteLink:
    name: str

    @property
    def kind(self) -> str:
        return "link_delete"


@dataclass(frozen=True, slots=True)
class SetLink:
    """Set MTU / MAC (when not None) and bring the device up."""

    name: str
    mtu: int | None = None
    mac: str | None = None
    up: bool = True

    @property
    def kind(self) -> str:
        return "link_set"


Op = Replace | Delete | CreateVxlan | DeleteLink | SetLink


class OpResult(enum.StrEnum):
    OK = "ok"
    ALREADY_PRESENT = "already_present"  # EEXIST on a create: the goal holds
    ALREADY_GONE = "already_gone"  # ESRCH/ENOENT/ENODEV/EADDRNOTAVAIL on a delete
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one op; ``kind`` and ``result`` are the metric labels."""

    op: Op
    result: OpResult
    errno: int = 0
    message: str = ""

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def ok(self) -> bool:
        return self.result is not OpResult.FAILED
