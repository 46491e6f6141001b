"""Every rtnetlink message the daemon sends or parses, as pure functions over bytes.

Why a module of its own: the layouts are the part that must match the kernel byte for byte and
the part that can be tested without root (golden files, cross-checked with pyroute2's decoder,
in tests/control/test_netlink_codec.py).  Nothing here opens a socket, starts a thread or
imports pyroute2; ``flanneld.netlink`` owns the socket and frames these messages with sequence
numbers.

A request is a ``Request``, the tuple ``(type, flags, body)``: ``flags`` are the operation's own
(NLM_F_CREATE|NLM_F_REPLACE for a replace, NLM_F_CREATE|NLM_F_EXCL for a link create,
NLM_F_DUMP for a dump); the socket adds NLM_F_REQUEST and, where it wants one, NLM_F_ACK.
``frame()`` makes the wire bytes of one request.

Families: a bulk op's family follows from the ``ipaddress`` type of its object (see
``flanneld.netops``); dumps and parsers take both AF_INET and AF_INET6.  Parsers return None
for what the daemon does not handle (multipath routes, other types or families, entries
without the attributes we program), never raise for a well-formed kernel message.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flanneld.netops import (
    AF_INET,
    AF_INET6,
    Address,
    CreateVxlan,
    Delete,
    DeleteLink,
    FdbEntry,
    IPAddress,
    IPNetwork,
    LinkInfo,
    Neighbour,
    Op,
    OpResult,
    Outcome,
    Replace,
    Route,
    SetLink,
    UnreachableRoute,
    VxlanLink,
)

# --- constants (linux/netlink.h, rtnetlink.h, neighbour.h, if_addr.h, if_link.h, if.h) -----
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the echoed request is only its header
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

AF_UNSPEC = 0
AF_BRIDGE = 7
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTN_UNREACHABLE = 7
RTNH_F_ONLINK = 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
# The metric the kernel gives a route added without RTA_PRIORITY (ours): 0 for IPv4,
# IP6_RT_PRIO_USER for IPv6.
DEFAULT_ROUTE_METRIC = {AF_INET: 0, AF_INET6: 1024}
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFA_ADDRESS, IFA_LOCAL = 1, 2

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_STATS64 = 1, 3, 4, 18, 23
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_L2MISS, IFLA_VXLAN_L3MISS, IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 13, 14, 15, 17
IFLA_VXLAN_GBP = 23

NLMSGHDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_I32 = struct.Struct("=i")
_STATS64_HEAD = struct.Struct("=8Q")  # rx/tx packets, rx/tx bytes, rx/tx errors, rx/tx dropped

_GONE_ERRNOS = frozenset({errno_mod.ESRCH, errno_mod.ENOENT, errno_mod.ENODEV,
                          errno_mod.EADDRNOTAVAIL})
_ADDR_LEN = {AF_INET: 4, AF_INET6: 16}
_ZERO = {AF_INET: b"\0" * 4, AF_INET6: b"\0" * 16}


# One request: (nlmsg type, the operation's flags without REQUEST/ACK, body).  A plain tuple,
# not a NamedTuple: building one per object is on the bulk path (microseconds per object).
Request = tuple[int, int, bytes]


# --- helpers ------------------------------------------------------------------------------

def _rta(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTA.pack(length, atype) + payload + b"\0" * ((4 - length % 4) % 4)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ifname(name: str) -> bytes:
    return _rta(IFLA_IFNAME, name.encode() + b"\0")


def _ip(family: int, raw: bytes) -> IPAddress:
    return IPv4Address(raw) if family == AF_INET else IPv6Address(raw)


def _net(family: int, raw: bytes, prefixlen: int) -> IPNetwork:
    if family == AF_INET:
        return IPv4Network((IPv4Address(raw), prefixlen))
    return IPv6Network((IPv6Address(raw), prefixlen))


def attrs(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes (type without the NESTED/BYTEORDER bits -> payload) from ``offset``."""
    out: dict[int, bytes] = {}
    stop = len(data) if end is None else end
    while offset + 4 <= stop:
        alen, atype = _RTA.unpack_from(data, offset)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[offset + 4: offset + alen]
        offset += (alen + 3) & ~3
    return out


# --- framing ------------------------------------------------------------------------------

def frame(request: Request, seq: int, pid: int = 0,
          ack: bool = True) -> bytes:
    """The wire bytes of one request: nlmsghdr (flags | REQUEST [| ACK]) and body."""
    mtype, flags, body = request
    flags |= NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, pid) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each netlink message in a datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            return
        yield mtype, flags, seq, data[offset + NLMSGHDR.size: offset + length]
        offset += (length + 3) & ~3


def parse_error(body: bytes, flags: int) -> tuple[int, str]:
    """(errno, extended-ack message) of an NLMSG_ERROR body; errno 0 is an ack."""
    code = _I32.unpack_from(body, 0)[0]
    message = ""
    if flags & NLM_F_ACK_TLVS and len(body) > 4 + NLMSGHDR.size:
        # with NETLINK_CAP_ACK the echoed request is only its header
        inner_len = NLMSGHDR.unpack_from(body, 4)[0] if not flags & NLM_F_CAPPED else 0
        start = 4 + (NLMSGHDR.size if flags & NLM_F_CAPPED else inner_len)
        text = attrs(body, start).get(NLMSGERR_ATTR_MSG)
        if text:
            message = text.rstrip(b"\0").decode(errors="replace")
    return -code, message


# --- bulk ops: route, neighbour, fdb, address -------------------------------------------

def encode_route(route: Route, replace: bool) -> Request:
    family = AF_INET if route.dst.version == 4 else AF_INET6
    gw = route.gateway
    if replace:
        scope = RT_SCOPE_UNIVERSE if gw is not None else RT_SCOPE_LINK
        head = RTMSG.pack(family, route.dst.prefixlen, 0, 0, route.table & 0xFF, RTPROT_BOOT,
                          scope, RTN_UNICAST, RTNH_F_ONLINK if route.onlink else 0)
    else:
        head = RTMSG.pack(family, route.dst.prefixlen, 0, 0, route.table & 0xFF, 0,
                          RT_SCOPE_NOWHERE, 0, 0)
    body = (head + _rta(RTA_DST, route.dst.network_address.packed)
            + _rta(RTA_TABLE, _U32.pack(route.table)) + _rta(RTA_OIF, _U32.pack(route.ifindex)))
    if gw is not None:
        body += _rta(RTA_GATEWAY, gw.packed)
    if replace:
        return (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)
    return (RTM_DELROUTE, 0, body)


def encode_unreachable(route: UnreachableRoute, replace: bool) -> Request:
    """``ip route replace|del unreachable <dst> metric <m> table <t>``."""
    family = AF_INET if route.dst.version == 4 else AF_INET6
    head = RTMSG.pack(family, route.dst.prefixlen, 0, 0, route.table & 0xFF,
                      RTPROT_BOOT if replace else 0,
                      RT_SCOPE_UNIVERSE if replace else RT_SCOPE_NOWHERE, RTN_UNREACHABLE, 0)
    body = (head + _rta(RTA_DST, route.dst.network_address.packed)
            + _rta(RTA_TABLE, _U32.pack(route.table)) + _rta(RTA_PRIORITY, _U32.pack(route.metric)))
    if replace:
        return (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)
    return (RTM_DELROUTE, 0, body)


def encode_neighbour(neigh: Neighbour, replace: bool) -> Request:
    family = AF_INET if neigh.address.version == 4 else AF_INET6
    body = NDMSG.pack(family, neigh.ifindex, NUD_PERMANENT, 0, 0) + _rta(
        NDA_DST, neigh.address.packed)
    if replace:
        body += _rta(NDA_LLADDR, _mac_bytes(neigh.lladdr))
        return (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)
    return (RTM_DELNEIGH, 0, body)


def encode_fdb(entry: FdbEntry, replace: bool) -> Request:
    body = (NDMSG.pack(AF_BRIDGE, entry.ifindex, NUD_PERMANENT, NTF_SELF, 0)
            + _rta(NDA_LLADDR, _mac_bytes(entry.lladdr)) + _rta(NDA_DST, entry.dst.packed))
    if replace:
        return (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)
    return (RTM_DELNEIGH, 0, body)


def encode_address(addr: Address, replace: bool) -> Request:
    packed = addr.address.packed
    body = (IFADDRMSG.pack(addr.family, addr.prefixlen, 0, RT_SCOPE_UNIVERSE, addr.ifindex)
            + _rta(IFA_LOCAL, packed) + _rta(IFA_ADDRESS, packed))
    if replace:
        return (RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)
    return (RTM_DELADDR, 0, body)


# --- link ops -------------------------------------------------------------------------------

def encode_create_vxlan(link: VxlanLink) -> Request:
    """RTM_NEWLINK creating a vxlan device; NLM_F_EXCL, so an existing name is EEXIST."""
    if link.family == AF_INET:
        local = _rta(IFLA_VXLAN_LOCAL, link.local.packed)
    else:
        local = _rta(IFLA_VXLAN_LOCAL6, link.local.packed)
    data = (_rta(IFLA_VXLAN_ID, _U32.pack(link.vni)) + local
            + _rta(IFLA_VXLAN_LINK, _U32.pack(link.underlay_ifindex))
            + _rta(IFLA_VXLAN_PORT, _BE16.pack(link.port))
            + _rta(IFLA_VXLAN_LEARNING, bytes([int(link.learning)])))
    if link.gbp:
        data += _rta(IFLA_VXLAN_GBP, b"")
    linkinfo = _rta(IFLA_INFO_KIND, b"vxlan\0") + _rta(IFLA_INFO_DATA, data)
    body = (IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + _ifname(link.name)
            + _rta(IFLA_ADDRESS, _mac_bytes(link.mac)) + _rta(IFLA_MTU, _U32.pack(link.mtu))
            + _rta(IFLA_LINKINFO, linkinfo))
    return (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def encode_set_link(op: SetLink) -> Request:
    """RTM_NEWLINK (no CREATE) on the device called ``op.name``: MTU, MAC, IFF_UP when asked.

    Only IFF_UP is in ``ifi_change``, so other flags keep their values; ``up=False`` leaves
    the state alone (as ``SetLink`` promises), it does not take the device down."""
    up = IFF_UP if op.up else 0
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0, up, up) + _ifname(op.name)
    if op.mtu is not None:
        body += _rta(IFLA_MTU, _U32.pack(op.mtu))
    if op.mac is not None:
        body += _rta(IFLA_ADDRESS, _mac_bytes(op.mac))
    return (RTM_NEWLINK, 0, body)


def encode_delete_link(name: str) -> Request:
    return (RTM_DELLINK, 0, IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + _ifname(name))


def encode_op(op: Op) -> Request:
    """The request of any op; ``execute`` turns its errno into the op's Outcome."""
    if isinstance(op, (Replace, Delete)):
        obj, replace = op.obj, isinstance(op, Replace)
        if isinstance(obj, Route):
            return encode_route(obj, replace)
        if isinstance(obj, Neighbour):
            return encode_neighbour(obj, replace)
        if isinstance(obj, FdbEntry):
            return encode_fdb(obj, replace)
        if isinstance(obj, UnreachableRoute):
            return encode_unreachable(obj, replace)
        return encode_address(obj, replace)
    if isinstance(op, CreateVxlan):
        return encode_create_vxlan(op.link)
    if isinstance(op, SetLink):
        return encode_set_link(op)
    return encode_delete_link(op.name)


def outcome_for(op: Op, err: int, message: str = "") -> Outcome:
    """Map a kernel errno (0 = success) to the op's idempotent outcome."""
    if err == 0:
        return Outcome(op, OpResult.OK)
    if err == errno_mod.EEXIST and not isinstance(op, (Delete, DeleteLink)):
        return Outcome(op, OpResult.ALREADY_PRESENT, err, message)
    if err in _GONE_ERRNOS and isinstance(op, (Delete, DeleteLink)):
        return Outcome(op, OpResult.ALREADY_GONE, err, message)
    return Outcome(op, OpResult.FAILED, err, message or os.strerror(err))


# --- queries: dumps, route get, link get ---------------------------------------------------

def route_dump(family: int = AF_INET) -> Request:
    return (RTM_GETROUTE, NLM_F_DUMP, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))


def neigh_dump(family: int = AF_INET) -> Request:
    return (RTM_GETNEIGH, NLM_F_DUMP, NDMSG.pack(family, 0, 0, 0, 0))


def fdb_dump() -> Request:
    """All bridge-family neighbour entries (vxlan fdb entries of every remote family)."""
    return neigh_dump(AF_BRIDGE)


def addr_dump(family: int = AF_INET) -> Request:
    return (RTM_GETADDR, NLM_F_DUMP, IFADDRMSG.pack(family, 0, 0, 0, 0))


def link_dump() -> Request:
    return (RTM_GETLINK, NLM_F_DUMP, IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0))


def route_get_request(dst: IPAddress) -> Request:
    """``ip route get <dst>``: answered by one RTM_NEWROUTE (see ``parse_route``) or an error."""
    family = AF_INET if dst.version == 4 else AF_INET6
    body = RTMSG.pack(family, dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + _rta(RTA_DST, dst.packed)
    return (RTM_GETROUTE, 0, body)


def link_get_request(name: str) -> Request:
    """The device called ``name``: one RTM_NEWLINK (``parse_link``) or ENODEV."""
    return (RTM_GETLINK, 0, IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + _ifname(name))


# --- parsers --------------------------------------------------------------------------------

def parse_unreachable(body: bytes) -> UnreachableRoute | None:
    """An IPv4 or IPv6 ``unreachable`` route, or None for anything else."""
    family, dst_len, _, _, table, _, _, rtype, _ = RTMSG.unpack_from(body, 0)
    if family not in _ADDR_LEN or rtype != RTN_UNREACHABLE:
        return None
    a = attrs(body, RTMSG.size)
    if RTA_TABLE in a:
        table = _U32.unpack(a[RTA_TABLE])[0]
    dst = a.get(RTA_DST, _ZERO[family])
    if len(dst) != _ADDR_LEN[family]:
        return None
    metric = _U32.unpack(a[RTA_PRIORITY])[0] if RTA_PRIORITY in a else 0
    return UnreachableRoute(_net(family, dst, dst_len), metric, table)


def parse_route(body: bytes) -> tuple[Route, int] | None:
    """An IPv4 or IPv6 unicast single-path route and its metric, or None for anything else."""
    family, dst_len, _, _, table, _, _, rtype, flags = RTMSG.unpack_from(body, 0)
    if family not in _ADDR_LEN or rtype != RTN_UNICAST:
        return None
    a = attrs(body, RTMSG.size)
    oif = a.get(RTA_OIF)
    if oif is None:  # multipath or blackhole-ish: not something we program
        return None
    if RTA_TABLE in a:
        table = _U32.unpack(a[RTA_TABLE])[0]
    size = _ADDR_LEN[family]
    dst = a.get(RTA_DST, _ZERO[family])
    gw = a.get(RTA_GATEWAY)
    if len(dst) != size or (gw is not None and len(gw) != size):
        return None
    metric = _U32.unpack(a[RTA_PRIORITY])[0] if RTA_PRIORITY in a else 0
    route = Route(
        dst=_net(family, dst, dst_len),
        ifindex=_U32.unpack(oif)[0],
        gateway=_ip(family, gw) if gw is not None else None,
        onlink=bool(flags & RTNH_F_ONLINK),
        table=table,
    )
    return route, metric


def parse_neighbour(body: bytes) -> Neighbour | None:
    """An IPv4 or IPv6 neighbour entry, or None (bridge family, no destination...)."""
    family, ifindex, state, _, _ = NDMSG.unpack_from(body, 0)
    if family not in _ADDR_LEN:
        return None
    a = attrs(body, NDMSG.size)
    dst = a.get(NDA_DST)
    if dst is None or len(dst) != _ADDR_LEN[family]:
        return None
    ll = a.get(NDA_LLADDR)
    return Neighbour(ifindex, _ip(family, dst), _mac_str(ll) if ll else "",
                     bool(state & NUD_PERMANENT))


def parse_fdb(body: bytes) -> FdbEntry | None:
    """A bridge-family ``self`` entry with a MAC and an IPv4 or IPv6 dst, or None."""
    family, ifindex, _, flags, _ = NDMSG.unpack_from(body, 0)
    if family != AF_BRIDGE or not flags & NTF_SELF:
        return None
    a = attrs(body, NDMSG.size)
    ll, dst = a.get(NDA_LLADDR), a.get(NDA_DST)
    if ll is None or dst is None or len(dst) not in (4, 16):
        return None
    return FdbEntry(ifindex, _mac_str(ll), _ip(AF_INET if len(dst) == 4 else AF_INET6, dst))


def parse_address(body: bytes) -> Address | None:
    """An IPv4 or IPv6 address (IFA_LOCAL, else IFA_ADDRESS), or None."""
    family, prefixlen, _, _, index = IFADDRMSG.unpack_from(body, 0)
    if family not in _ADDR_LEN:
        return None
    a = attrs(body, IFADDRMSG.size)
    raw = a.get(IFA_LOCAL, a.get(IFA_ADDRESS))
    if raw is None or len(raw) != _ADDR_LEN[family]:
        return None
    return Address(index, _ip(family, raw), prefixlen)


def _u32(a: dict[int, bytes], key: int) -> int:
    raw = a.get(key)
    return _U32.unpack(raw[:4])[0] if raw is not None and len(raw) >= 4 else 0


def _u8(a: dict[int, bytes], key: int) -> bool:
    raw = a.get(key)
    return bool(raw and raw[0])


def parse_link(body: bytes) -> LinkInfo | None:
    """A device from an RTM_NEWLINK body (vxlan attributes decoded), or None without a name."""
    _, _, index, flags, _ = IFINFOMSG.unpack_from(body, 0)
    a = attrs(body, IFINFOMSG.size)
    raw_name = a.get(IFLA_IFNAME)
    if raw_name is None:
        return None
    name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
    mac = _mac_str(a[IFLA_ADDRESS]) if a.get(IFLA_ADDRESS) else ""
    mtu = _u32(a, IFLA_MTU)
    info = attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
    kind = info[IFLA_INFO_KIND].split(b"\0", 1)[0].decode() if IFLA_INFO_KIND in info else ""
    vxlan: VxlanLink | None = None
    l2miss = l3miss = False
    if kind == "vxlan":
        data = attrs(info.get(IFLA_INFO_DATA, b""))
        local: IPAddress = IPv4Address(0)
        if len(data.get(IFLA_VXLAN_LOCAL, b"")) == 4:
            local = IPv4Address(data[IFLA_VXLAN_LOCAL])
        elif len(data.get(IFLA_VXLAN_LOCAL6, b"")) == 16:
            local = IPv6Address(data[IFLA_VXLAN_LOCAL6])
        port = data.get(IFLA_VXLAN_PORT, b"")
        vxlan = VxlanLink(
            name=name, vni=_u32(data, IFLA_VXLAN_ID), local=local,
            underlay_ifindex=_u32(data, IFLA_VXLAN_LINK),
            port=_BE16.unpack(port)[0] if len(port) == 2 else 0, mac=mac, mtu=mtu,
            learning=_u8(data, IFLA_VXLAN_LEARNING), gbp=IFLA_VXLAN_GBP in data)
        l2miss = _u8(data, IFLA_VXLAN_L2MISS)
        l3miss = _u8(data, IFLA_VXLAN_L3MISS)
    return LinkInfo(
        name=name, index=index, mac=mac, mtu=mtu, up=bool(flags & IFF_UP),
        kind=kind or ("loopback" if flags & IFF_LOOPBACK else ""),
        vxlan=vxlan, l2miss=l2miss, l3miss=l3miss)


def parse_link_counters(body: bytes) -> dict[str, int] | None:
    """The 64-bit counters (IFLA_STATS64) of an RTM_NEWLINK body, or None without them."""
    raw = attrs(body, IFINFOMSG.size).get(IFLA_STATS64)
    if raw is None or len(raw) < _STATS64_HEAD.size:
        return None
    rx_p, tx_p, rx_b, tx_b, _rx_e, _tx_e, rx_d, tx_d = _STATS64_HEAD.unpack_from(raw)
    return {"rx_packets": rx_p, "tx_packets": tx_p, "rx_bytes": rx_b, "tx_bytes": tx_b,
            "rx_dropped": rx_d, "tx_dropped": tx_d}
