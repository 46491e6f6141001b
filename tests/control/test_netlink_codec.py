"""Golden bytes of every rtnetlink message the daemon sends, and its parsers, without root.

The files in golden/netlink/ (one message each, hex, as the socket sends it alone: sequence 1,
pid 0, NLM_F_REQUEST plus NLM_F_ACK for ops and gets, NLM_F_DUMP for dumps) were written once
from ``flanneld.netlink_codec`` after pyroute2's decoder had read each of them back to the
fields listed in ``DECODED``; there is deliberately no test that regenerates them.  A change of
the encoder's output must therefore show up as a diff of these files, explained in review.

The checks against an independent source: every golden message is decoded here with pyroute2's
own message classes (``rtmsg``, ``ndmsg``, ``ifaddrmsg``, ``ifinfmsg``) and compared field by
field, and kernel-style replies that pyroute2 encodes (extra attributes, multipath, other
families) go through our parsers.  pyroute2 is a test dependency only: the daemon's import of
``flanneld.netlink`` must not load it (checked below in a fresh interpreter).
"""

from __future__ import annotations

import errno
import struct
import subprocess
import sys
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from flanneld import netlink_codec as codec
from flanneld.netops import (
    AF_INET,
    AF_INET6,
    Address,
    CreateVxlan,
    Delete,
    DeleteLink,
    FdbEntry,
    LinkInfo,
    Neighbour,
    OpResult,
    Replace,
    Route,
    SetLink,
    UnreachableRoute,
    VxlanLink,
)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden" / "netlink"

ROUTE_V4 = Route(N("10.244.2.0/24"), 5, A("10.244.2.0"), onlink=True)
ROUTE_V4_DEV = Route(N("10.245.0.0/16"), 5)
ROUTE_V6 = Route(N6("2001:db8:18:2::/64"), 2, A6("2001:db8:18::2"), table=100)
ROUTE_V6_ONLINK = Route(N6("fd00:244:2::/64"), 5, A6("fd00:244:2::"), onlink=True)
ROUTE_V6_DEV = Route(N6("fd00:245::/48"), 5)
NEIGH_V4 = Neighbour(5, A("10.244.2.0"), "0a:00:00:00:02:02")
NEIGH_V6 = Neighbour(5, A6("fd00:244:2::"), "0a:00:00:00:06:02")
FDB_V4 = FdbEntry(5, "0a:00:00:00:02:02", A("198.18.0.2"))
FDB_V6 = FdbEntry(5, "0a:00:00:00:06:02", A6("2001:db8:18::2"))
UNREACH_V4 = UnreachableRoute(N("10.244.0.0/16"), 4096)
UNREACH_V6 = UnreachableRoute(N6("fd00:244::/56"), 4096)
ADDR_V4 = Address(5, A("10.244.1.0"), 32)
ADDR_V6 = Address(5, A6("fd00:244:1::"), 128)
VXLAN_V4 = VxlanLink("flannel.1", 1, A("198.18.0.1"), 2, 8472, "0a:00:00:00:01:01", 1450)
VXLAN_V4_GBP = VxlanLink("flannel.1", 1, A("198.18.0.1"), 2, 8472, "0a:00:00:00:01:01", 1450,
                         learning=True, gbp=True)
VXLAN_V6 = VxlanLink("flannel-v6.1", 1, A6("2001:db8:18::1"), 2, 8472, "0a:00:00:00:06:01", 1430)

# golden file name -> (request, whether the socket asks an ack of it)
MESSAGES: dict[str, tuple[codec.Request, bool]] = {
    "route_replace_v4": (codec.encode_op(Replace(ROUTE_V4)), True),
    "route_replace_v4_dev": (codec.encode_op(Replace(ROUTE_V4_DEV)), True),
    "route_delete_v4": (codec.encode_op(Delete(ROUTE_V4)), True),
    "route_replace_v6": (codec.encode_op(Replace(ROUTE_V6)), True),
    "route_replace_v6_onlink": (codec.encode_op(Replace(ROUTE_V6_ONLINK)), True),
    "route_replace_v6_dev": (codec.encode_op(Replace(ROUTE_V6_DEV)), True),
    "route_delete_v6": (codec.encode_op(Delete(ROUTE_V6_ONLINK)), True),
    "unreachable_replace_v4": (codec.encode_op(Replace(UNREACH_V4)), True),
    "unreachable_delete_v4": (codec.encode_op(Delete(UNREACH_V4)), True),
    "unreachable_replace_v6": (codec.encode_op(Replace(UNREACH_V6)), True),
    "neigh_replace_v4": (codec.encode_op(Replace(NEIGH_V4)), True),
    "neigh_delete_v4": (codec.encode_op(Delete(NEIGH_V4)), True),
    "neigh_replace_v6": (codec.encode_op(Replace(NEIGH_V6)), True),
    "neigh_delete_v6": (codec.encode_op(Delete(NEIGH_V6)), True),
    "fdb_replace_v4": (codec.encode_op(Replace(FDB_V4)), True),
    "fdb_delete_v4": (codec.encode_op(Delete(FDB_V4)), True),
    "fdb_replace_v6_dst": (codec.encode_op(Replace(FDB_V6)), True),
    "fdb_delete_v6_dst": (codec.encode_op(Delete(FDB_V6)), True),
    "addr_replace_v4": (codec.encode_op(Replace(ADDR_V4)), True),
    "addr_delete_v4": (codec.encode_op(Delete(ADDR_V4)), True),
    "addr_replace_v6": (codec.encode_op(Replace(ADDR_V6)), True),
    "addr_delete_v6": (codec.encode_op(Delete(ADDR_V6)), True),
    "link_create_vxlan_v4": (codec.encode_op(CreateVxlan(VXLAN_V4)), True),
    "link_create_vxlan_v4_gbp": (codec.encode_op(CreateVxlan(VXLAN_V4_GBP)), True),
    "link_create_vxlan_v6": (codec.encode_op(CreateVxlan(VXLAN_V6)), True),
    "link_set": (codec.encode_op(SetLink("flannel.1", 1450, "0a:00:00:00:01:01")), True),
    "link_set_up": (codec.encode_op(SetLink("flannel.1")), True),
    "link_set_mtu_keep_state": (codec.encode_op(SetLink("flannel.1", mtu=1400, up=False)), True),
    "link_delete": (codec.encode_op(DeleteLink("flannel.1")), True),
    "dump_route_v4": (codec.route_dump(AF_INET), False),
    "dump_route_v6": (codec.route_dump(AF_INET6), False),
    "dump_neigh_v4": (codec.neigh_dump(AF_INET), False),
    "dump_neigh_v6": (codec.neigh_dump(AF_INET6), False),
    "dump_fdb": (codec.fdb_dump(), False),
    "dump_addr_v4": (codec.addr_dump(AF_INET), False),
    "dump_addr_v6": (codec.addr_dump(AF_INET6), False),
    "dump_link": (codec.link_dump(), False),
    "route_get_v4": (codec.route_get_request(A("198.18.0.2")), True),
    "route_get_v6": (codec.route_get_request(A6("2001:db8:18::2")), True),
    "link_get": (codec.link_get_request("flannel.1"), True),
}

_FIELDS: dict[type, tuple[str, ...]] = {
    rtmsg: ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"),
    ndmsg: ("family", "ifindex", "state", "flags", "ndm_type"),
    ifaddrmsg: ("family", "prefixlen", "flags", "scope", "index"),
    ifinfmsg: ("family", "ifi_type", "index", "flags", "change"),
}
_REQ, _ACK, _CREATE, _REPLACE, _EXCL, _DUMP = 0x1, 0x4, 0x400, 0x100, 0x200, 0x300
_SET = _REQ | _ACK | _CREATE | _REPLACE  # a replace
_DEL = _REQ | _ACK

# What pyroute2 reads in each golden message: class, nlmsg type and flags, the fixed header's
# fields (in _FIELDS order), the attributes (nested ones as lists).
DECODED: dict[str, tuple[type, int, int, tuple[int, ...], list[tuple[str, Any]]]] = {
    # rtmsg: family dst_len src_len tos table proto(3 boot) scope(253 link, 255 nowhere)
    #        type(1 unicast) flags(4 onlink)
    "route_replace_v4": (rtmsg, 24, _SET, (2, 24, 0, 0, 254, 3, 0, 1, 4), [
        ("RTA_DST", "10.244.2.0"), ("RTA_TABLE", 254), ("RTA_OIF", 5),
        ("RTA_GATEWAY", "10.244.2.0")]),
    "route_replace_v4_dev": (rtmsg, 24, _SET, (2, 16, 0, 0, 254, 3, 253, 1, 0), [
        ("RTA_DST", "10.245.0.0"), ("RTA_TABLE", 254), ("RTA_OIF", 5)]),
    # unreachable (type 7), scope universe, proto boot, metric as RTA_PRIORITY, no device
    "unreachable_replace_v4": (rtmsg, 24, _SET, (2, 16, 0, 0, 254, 3, 0, 7, 0), [
        ("RTA_DST", "10.244.0.0"), ("RTA_TABLE", 254), ("RTA_PRIORITY", 4096)]),
    "unreachable_delete_v4": (rtmsg, 25, _DEL, (2, 16, 0, 0, 254, 0, 255, 7, 0), [
        ("RTA_DST", "10.244.0.0"), ("RTA_TABLE", 254), ("RTA_PRIORITY", 4096)]),
    "unreachable_replace_v6": (rtmsg, 24, _SET, (10, 56, 0, 0, 254, 3, 0, 7, 0), [
        ("RTA_DST", "fd00:244::"), ("RTA_TABLE", 254), ("RTA_PRIORITY", 4096)]),
    "route_delete_v4": (rtmsg, 25, _DEL, (2, 24, 0, 0, 254, 0, 255, 0, 0), [
        ("RTA_DST", "10.244.2.0"), ("RTA_TABLE", 254), ("RTA_OIF", 5),
        ("RTA_GATEWAY", "10.244.2.0")]),
    "route_replace_v6": (rtmsg, 24, _SET, (10, 64, 0, 0, 100, 3, 0, 1, 0), [
        ("RTA_DST", "2001:db8:18:2::"), ("RTA_TABLE", 100), ("RTA_OIF", 2),
        ("RTA_GATEWAY", "2001:db8:18::2")]),
    "route_replace_v6_onlink": (rtmsg, 24, _SET, (10, 64, 0, 0, 254, 3, 0, 1, 4), [
        ("RTA_DST", "fd00:244:2::"), ("RTA_TABLE", 254), ("RTA_OIF", 5),
        ("RTA_GATEWAY", "fd00:244:2::")]),
    "route_replace_v6_dev": (rtmsg, 24, _SET, (10, 48, 0, 0, 254, 3, 253, 1, 0), [
        ("RTA_DST", "fd00:245::"), ("RTA_TABLE", 254), ("RTA_OIF", 5)]),
    "route_delete_v6": (rtmsg, 25, _DEL, (10, 64, 0, 0, 254, 0, 255, 0, 0), [
        ("RTA_DST", "fd00:244:2::"), ("RTA_TABLE", 254), ("RTA_OIF", 5),
        ("RTA_GATEWAY", "fd00:244:2::")]),
    # ndmsg: family ifindex state(0x80 permanent) flags(2 self) type
    "neigh_replace_v4": (ndmsg, 28, _SET, (2, 5, 128, 0, 0), [
        ("NDA_DST", "10.244.2.0"), ("NDA_LLADDR", "0a:00:00:00:02:02")]),
    "neigh_delete_v4": (ndmsg, 29, _DEL, (2, 5, 128, 0, 0), [("NDA_DST", "10.244.2.0")]),
    "neigh_replace_v6": (ndmsg, 28, _SET, (10, 5, 128, 0, 0), [
        ("NDA_DST", "fd00:244:2::"), ("NDA_LLADDR", "0a:00:00:00:06:02")]),
    "neigh_delete_v6": (ndmsg, 29, _DEL, (10, 5, 128, 0, 0), [("NDA_DST", "fd00:244:2::")]),
    "fdb_replace_v4": (ndmsg, 28, _SET, (7, 5, 128, 2, 0), [
        ("NDA_LLADDR", "0a:00:00:00:02:02"), ("NDA_DST", "198.18.0.2")]),
    "fdb_delete_v4": (ndmsg, 29, _DEL, (7, 5, 128, 2, 0), [
        ("NDA_LLADDR", "0a:00:00:00:02:02"), ("NDA_DST", "198.18.0.2")]),
    "fdb_replace_v6_dst": (ndmsg, 28, _SET, (7, 5, 128, 2, 0), [
        ("NDA_LLADDR", "0a:00:00:00:06:02"), ("NDA_DST", "2001:db8:18::2")]),
    "fdb_delete_v6_dst": (ndmsg, 29, _DEL, (7, 5, 128, 2, 0), [
        ("NDA_LLADDR", "0a:00:00:00:06:02"), ("NDA_DST", "2001:db8:18::2")]),
    # ifaddrmsg: family prefixlen flags scope index
    "addr_replace_v4": (ifaddrmsg, 20, _SET, (2, 32, 0, 0, 5), [
        ("IFA_LOCAL", "10.244.1.0"), ("IFA_ADDRESS", "10.244.1.0")]),
    "addr_delete_v4": (ifaddrmsg, 21, _DEL, (2, 32, 0, 0, 5), [
        ("IFA_LOCAL", "10.244.1.0"), ("IFA_ADDRESS", "10.244.1.0")]),
    "addr_replace_v6": (ifaddrmsg, 20, _SET, (10, 128, 0, 0, 5), [
        ("IFA_LOCAL", "fd00:244:1::"), ("IFA_ADDRESS", "fd00:244:1::")]),
    "addr_delete_v6": (ifaddrmsg, 21, _DEL, (10, 128, 0, 0, 5), [
        ("IFA_LOCAL", "fd00:244:1::"), ("IFA_ADDRESS", "fd00:244:1::")]),
    # ifinfmsg: family ifi_type index flags(1 up) change(1 up)
    "link_create_vxlan_v4": (ifinfmsg, 16, _REQ | _ACK | _CREATE | _EXCL, (0, 0, 0, 0, 0), [
        ("IFLA_IFNAME", "flannel.1"), ("IFLA_ADDRESS", "0a:00:00:00:01:01"), ("IFLA_MTU", 1450),
        ("IFLA_LINKINFO", [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", [
            ("IFLA_VXLAN_ID", 1), ("IFLA_VXLAN_LOCAL", "198.18.0.1"), ("IFLA_VXLAN_LINK", 2),
            ("IFLA_VXLAN_PORT", 8472), ("IFLA_VXLAN_LEARNING", 0)])])]),
    "link_create_vxlan_v4_gbp": (ifinfmsg, 16, _REQ | _ACK | _CREATE | _EXCL, (0, 0, 0, 0, 0), [
        ("IFLA_IFNAME", "flannel.1"), ("IFLA_ADDRESS", "0a:00:00:00:01:01"), ("IFLA_MTU", 1450),
        ("IFLA_LINKINFO", [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", [
            ("IFLA_VXLAN_ID", 1), ("IFLA_VXLAN_LOCAL", "198.18.0.1"), ("IFLA_VXLAN_LINK", 2),
            ("IFLA_VXLAN_PORT", 8472), ("IFLA_VXLAN_LEARNING", 1), ("IFLA_VXLAN_GBP", True)])])]),
    "link_create_vxlan_v6": (ifinfmsg, 16, _REQ | _ACK | _CREATE | _EXCL, (0, 0, 0, 0, 0), [
        ("IFLA_IFNAME", "flannel-v6.1"), ("IFLA_ADDRESS", "0a:00:00:00:06:01"),
        ("IFLA_MTU", 1430),
        ("IFLA_LINKINFO", [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", [
            ("IFLA_VXLAN_ID", 1), ("IFLA_VXLAN_LOCAL6", "2001:db8:18::1"),
            ("IFLA_VXLAN_LINK", 2), ("IFLA_VXLAN_PORT", 8472), ("IFLA_VXLAN_LEARNING", 0)])])]),
    "link_set": (ifinfmsg, 16, _REQ | _ACK, (0, 0, 0, 1, 1), [
        ("IFLA_IFNAME", "flannel.1"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", "0a:00:00:00:01:01")]),
    "link_set_up": (ifinfmsg, 16, _REQ | _ACK, (0, 0, 0, 1, 1), [("IFLA_IFNAME", "flannel.1")]),
    "link_set_mtu_keep_state": (ifinfmsg, 16, _REQ | _ACK, (0, 0, 0, 0, 0), [
        ("IFLA_IFNAME", "flannel.1"), ("IFLA_MTU", 1400)]),
    "link_delete": (ifinfmsg, 17, _REQ | _ACK, (0, 0, 0, 0, 0), [("IFLA_IFNAME", "flannel.1")]),
    "dump_route_v4": (rtmsg, 26, _REQ | _DUMP, (2, 0, 0, 0, 0, 0, 0, 0, 0), []),
    "dump_route_v6": (rtmsg, 26, _REQ | _DUMP, (10, 0, 0, 0, 0, 0, 0, 0, 0), []),
    "dump_neigh_v4": (ndmsg, 30, _REQ | _DUMP, (2, 0, 0, 0, 0), []),
    "dump_neigh_v6": (ndmsg, 30, _REQ | _DUMP, (10, 0, 0, 0, 0), []),
    "dump_fdb": (ndmsg, 30, _REQ | _DUMP, (7, 0, 0, 0, 0), []),
    "dump_addr_v4": (ifaddrmsg, 22, _REQ | _DUMP, (2, 0, 0, 0, 0), []),
    "dump_addr_v6": (ifaddrmsg, 22, _REQ | _DUMP, (10, 0, 0, 0, 0), []),
    "dump_link": (ifinfmsg, 18, _REQ | _DUMP, (0, 0, 0, 0, 0), []),
    "route_get_v4": (rtmsg, 26, _REQ | _ACK, (2, 32, 0, 0, 0, 0, 0, 0, 0), [
        ("RTA_DST", "198.18.0.2")]),
    "route_get_v6": (rtmsg, 26, _REQ | _ACK, (10, 128, 0, 0, 0, 0, 0, 0, 0), [
        ("RTA_DST", "2001:db8:18::2")]),
    "link_get": (ifinfmsg, 18, _REQ | _ACK, (0, 0, 0, 0, 0), [("IFLA_IFNAME", "flannel.1")]),
}


def golden(name: str) -> bytes:
    return bytes.fromhex((GOLDEN / f"{name}.hex").read_text())


def plain(attrs: Any) -> list[tuple[str, Any]]:
    """pyroute2's decoded attributes as (name, value) pairs, nested ones as lists."""
    out: list[tuple[str, Any]] = []
    for attr in attrs:
        name, value = attr[0], attr[1]
        if hasattr(value, "get") and value.get("attrs") is not None:
            value = plain(value["attrs"])
        out.append((name, value))
    return out


def body_of(data: bytes) -> bytes:
    (msg,) = list(codec.messages(data))
    return msg[3]


def reply(cls: Any, mtype: int, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    """The body of a kernel-style message as pyroute2 encodes it."""
    msg = cls()
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = 0x2  # NLM_F_MULTI, as in a dump
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg.encode()
    return body_of(bytes(msg.data))


# --- golden bytes ---------------------------------------------------------------------------

def test_every_golden_file_is_a_listed_message() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.hex")) == sorted(MESSAGES)
    assert sorted(DECODED) == sorted(MESSAGES)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_encoder_matches_golden(name: str) -> None:
    request, ack = MESSAGES[name]
    assert codec.frame(request, seq=1, pid=0, ack=ack) == golden(name)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_pyroute2_decodes_golden(name: str) -> None:
    cls, mtype, flags, fields, attrs = DECODED[name]
    data = golden(name)
    msg = cls(data)
    msg.decode()
    header = msg["header"]
    assert (header["length"], header["type"], header["flags"], header["sequence_number"],
            header["pid"]) == (len(data), mtype, flags, 1, 0)
    assert tuple(msg[f] for f in _FIELDS[cls]) == fields
    assert plain(msg["attrs"]) == attrs


def test_vxlan_create_matches_pyroute2_encoding() -> None:
    """pyroute2, asked for the same device, encodes the very same bytes."""
    msg = ifinfmsg()
    msg["header"].update({"type": 16, "flags": _REQ | _ACK | _CREATE | _EXCL,
                          "sequence_number": 1})
    msg["attrs"] = [
        ("IFLA_IFNAME", "flannel-v6.1"), ("IFLA_ADDRESS", "0a:00:00:00:06:01"),
        ("IFLA_MTU", 1430),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": [
            ("IFLA_VXLAN_ID", 1), ("IFLA_VXLAN_LOCAL6", "2001:db8:18::1"), ("IFLA_VXLAN_LINK", 2),
            ("IFLA_VXLAN_PORT", 8472), ("IFLA_VXLAN_LEARNING", 0)]})]})]
    msg.encode()
    assert bytes(msg.data) == golden("link_create_vxlan_v6")


# --- round trips: our encoder's bytes -> our parser -> the same object ---------------------

@pytest.mark.parametrize("route", [ROUTE_V4, ROUTE_V4_DEV, ROUTE_V6, ROUTE_V6_ONLINK,
                                   ROUTE_V6_DEV], ids=lambda r: str(r.dst))
def test_route_round_trip(route: Route) -> None:
    assert codec.parse_route(codec.encode_route(route, replace=True)[2]) == (route, 0)
    assert codec.parse_route(codec.encode_route(route, replace=False)[2]) is None  # no type


@pytest.mark.parametrize("neigh", [NEIGH_V4, NEIGH_V6], ids=["v4", "v6"])
def test_neighbour_round_trip(neigh: Neighbour) -> None:
    body = codec.encode_neighbour(neigh, replace=True)[2]
    assert codec.parse_neighbour(body) == neigh
    assert codec.parse_fdb(body) is None  # not the bridge family


@pytest.mark.parametrize("entry", [FDB_V4, FDB_V6], ids=["v4", "v6"])
def test_fdb_round_trip(entry: FdbEntry) -> None:
    for replace in (True, False):
        body = codec.encode_fdb(entry, replace)[2]
        assert codec.parse_fdb(body) == entry
        assert codec.parse_neighbour(body) is None


@pytest.mark.parametrize("addr", [ADDR_V4, ADDR_V6], ids=["v4", "v6"])
def test_address_round_trip(addr: Address) -> None:
    for replace in (True, False):
        assert codec.parse_address(codec.encode_address(addr, replace)[2]) == addr


@pytest.mark.parametrize("link", [VXLAN_V4, VXLAN_V4_GBP, VXLAN_V6], ids=["v4", "v4_gbp", "v6"])
def test_vxlan_round_trip(link: VxlanLink) -> None:
    info = codec.parse_link(codec.encode_create_vxlan(link)[2])
    assert info == LinkInfo(link.name, 0, link.mac, link.mtu, False, "vxlan", vxlan=link)


def test_golden_bodies_parse_back() -> None:
    assert codec.parse_route(body_of(golden("route_replace_v6_onlink"))) == (ROUTE_V6_ONLINK, 0)
    assert codec.parse_neighbour(body_of(golden("neigh_replace_v6"))) == NEIGH_V6
    assert codec.parse_fdb(body_of(golden("fdb_replace_v6_dst"))) == FDB_V6
    assert codec.parse_address(body_of(golden("addr_replace_v6"))) == ADDR_V6


def test_family_follows_the_address_type() -> None:
    assert [o.family for o in (ROUTE_V4, NEIGH_V4, FDB_V4, ADDR_V4, VXLAN_V4)] == [AF_INET] * 5
    assert [o.family for o in (ROUTE_V6, NEIGH_V6, FDB_V6, ADDR_V6, VXLAN_V6)] == [AF_INET6] * 5
    assert (AF_INET, AF_INET6) == (2, 10) and type(AF_INET) is int
    # same numbers, other family: another kernel slot
    assert Address(5, A("0.0.0.1")).key != Address(5, A6("::1")).key


# --- replies as pyroute2 encodes them -> our parsers ---------------------------------------

def test_unreachable_routes_round_trip_and_are_no_unicast_route() -> None:
    for obj, name in ((UNREACH_V4, "unreachable_replace_v4"), (UNREACH_V6, "unreachable_replace_v6")):
        body = body_of(golden(name))
        assert codec.parse_unreachable(body) == obj
        assert codec.parse_route(body) is None  # not a route a planner may own
    assert codec.parse_unreachable(body_of(golden("route_replace_v4_dev"))) is None


def test_parse_ipv6_route_reply() -> None:
    body = reply(rtmsg, 24, {"family": 10, "dst_len": 64, "table": 254, "proto": 3, "type": 1,
                             "flags": 4}, [
        ("RTA_TABLE", 254), ("RTA_DST", "fd00:244:2::"), ("RTA_PRIORITY", 1024),
        ("RTA_OIF", 5), ("RTA_GATEWAY", "fd00:244:2::"), ("RTA_PREF", 0)])
    assert codec.parse_route(body) == (ROUTE_V6_ONLINK, 1024)


def test_parse_route_get_replies() -> None:
    v4 = reply(rtmsg, 24, {"family": 2, "dst_len": 32, "table": 254, "type": 1,
                           "flags": 0x200}, [
        ("RTA_TABLE", 254), ("RTA_DST", "198.18.0.2"), ("RTA_OIF", 2),
        ("RTA_PREFSRC", "198.18.0.1"), ("RTA_UID", 0)])
    assert codec.parse_route(v4) == (Route(N("198.18.0.2/32"), 2), 0)
    v6 = reply(rtmsg, 24, {"family": 10, "dst_len": 128, "table": 254, "type": 1}, [
        ("RTA_TABLE", 254), ("RTA_DST", "2001:db8:18::2"), ("RTA_OIF", 2),
        ("RTA_PRIORITY", 256), ("RTA_GATEWAY", "2001:db8:18::fe")])
    assert codec.parse_route(v6) == (
        Route(N6("2001:db8:18::2/128"), 2, A6("2001:db8:18::fe")), 256)


def test_parse_route_default_without_dst() -> None:
    for family, net in ((2, N("0.0.0.0/0")), (10, N6("::/0"))):
        body = reply(rtmsg, 24, {"family": family, "table": 254, "type": 1}, [
            ("RTA_TABLE", 254), ("RTA_OIF", 3), ("RTA_PRIORITY", 100)])
        assert codec.parse_route(body) == (Route(net, 3), 100)


def test_parse_route_rejects_what_we_do_not_program() -> None:
    multipath = reply(rtmsg, 24, {"family": 10, "dst_len": 48, "table": 254, "type": 1}, [
        ("RTA_TABLE", 254), ("RTA_DST", "fd00:244::"), ("RTA_MULTIPATH", [
            {"oif": 5, "attrs": [("RTA_GATEWAY", "fd00::1")]},
            {"oif": 6, "attrs": [("RTA_GATEWAY", "fd00::2")]}])])
    local = reply(rtmsg, 24, {"family": 10, "dst_len": 128, "table": 255, "type": 2}, [
        ("RTA_TABLE", 255), ("RTA_DST", "2001:db8:18::1"), ("RTA_OIF", 2)])
    mpls = reply(rtmsg, 24, {"family": 28, "type": 1}, [("RTA_OIF", 2)])
    assert [codec.parse_route(b) for b in (multipath, local, mpls)] == [None] * 3


def test_parse_neighbour_replies() -> None:
    v6 = reply(ndmsg, 28, {"family": 10, "ifindex": 5, "state": 0x80, "ndm_type": 1}, [
        ("NDA_DST", "fd00:244:2::"), ("NDA_LLADDR", "0a:00:00:00:06:02"), ("NDA_PROBES", 0)])
    assert codec.parse_neighbour(v6) == NEIGH_V6
    stale = reply(ndmsg, 28, {"family": 10, "ifindex": 5, "state": 0x04}, [
        ("NDA_DST", "2001:db8:18::2")])
    assert codec.parse_neighbour(stale) == Neighbour(5, A6("2001:db8:18::2"), "", False)
    no_dst = reply(ndmsg, 28, {"family": 2, "ifindex": 5, "state": 0x80}, [
        ("NDA_LLADDR", "0a:00:00:00:02:02")])
    assert codec.parse_neighbour(no_dst) is None


def test_parse_fdb_replies() -> None:
    v6 = reply(ndmsg, 28, {"family": 7, "ifindex": 5, "state": 0x80, "flags": 0x02}, [
        ("NDA_LLADDR", "0a:00:00:00:06:02"), ("NDA_DST", "2001:db8:18::2")])
    assert codec.parse_fdb(v6) == FDB_V6
    master = reply(ndmsg, 28, {"family": 7, "ifindex": 5, "state": 0x80, "flags": 0x04}, [
        ("NDA_LLADDR", "0a:00:00:00:06:02"), ("NDA_DST", "2001:db8:18::2")])
    no_dst = reply(ndmsg, 28, {"family": 7, "ifindex": 5, "state": 0x80, "flags": 0x02}, [
        ("NDA_LLADDR", "0a:00:00:00:06:02")])
    assert codec.parse_fdb(master) is None and codec.parse_fdb(no_dst) is None


def test_parse_address_replies() -> None:
    v6 = reply(ifaddrmsg, 20, {"family": 10, "prefixlen": 64, "flags": 0x80, "index": 2}, [
        ("IFA_ADDRESS", "2001:db8:18::1"), ("IFA_FLAGS", 0x80)])
    assert codec.parse_address(v6) == Address(2, A6("2001:db8:18::1"), 64)
    v4 = reply(ifaddrmsg, 20, {"family": 2, "prefixlen": 24, "index": 2}, [
        ("IFA_ADDRESS", "198.18.0.1"), ("IFA_LOCAL", "198.18.0.1"), ("IFA_LABEL", "eth0"),
        ("IFA_BROADCAST", "198.18.0.255")])
    assert codec.parse_address(v4) == Address(2, A("198.18.0.1"), 24)


def test_parse_vxlan_link_reply() -> None:
    body = reply(ifinfmsg, 16, {"index": 7, "flags": 0x11043}, [
        ("IFLA_IFNAME", "flannel-v6.1"), ("IFLA_TXQLEN", 1000), ("IFLA_OPERSTATE", "UP"),
        ("IFLA_MTU", 1430), ("IFLA_ADDRESS", "0a:00:00:00:06:01"),
        ("IFLA_BROADCAST", "ff:ff:ff:ff:ff:ff"),
        ("IFLA_STATS64", {"rx_packets": 1, "tx_packets": 2, "rx_bytes": 3, "tx_bytes": 4,
                          "rx_errors": 5, "tx_errors": 6, "rx_dropped": 7, "tx_dropped": 8}),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": [
            ("IFLA_VXLAN_ID", 1), ("IFLA_VXLAN_LOCAL6", "2001:db8:18::1"), ("IFLA_VXLAN_LINK", 2),
            ("IFLA_VXLAN_TTL", 0), ("IFLA_VXLAN_LEARNING", 1), ("IFLA_VXLAN_AGEING", 300),
            ("IFLA_VXLAN_L2MISS", 1), ("IFLA_VXLAN_L3MISS", 1), ("IFLA_VXLAN_PORT", 4789),
            ("IFLA_VXLAN_GBP", True)]})]})])
    want = VxlanLink("flannel-v6.1", 1, A6("2001:db8:18::1"), 2, 4789, "0a:00:00:00:06:01",
                     1430, learning=True, gbp=True)
    assert codec.parse_link(body) == LinkInfo("flannel-v6.1", 7, "0a:00:00:00:06:01", 1430, True,
                                              "vxlan", vxlan=want, l2miss=True, l3miss=True)
    assert codec.parse_link_counters(body) == {
        "rx_packets": 1, "tx_packets": 2, "rx_bytes": 3, "tx_bytes": 4,
        "rx_dropped": 7, "tx_dropped": 8}


def test_parse_other_link_replies() -> None:
    lo = reply(ifinfmsg, 16, {"index": 1, "flags": 0x10049}, [
        ("IFLA_IFNAME", "lo"), ("IFLA_MTU", 65536), ("IFLA_ADDRESS", "00:00:00:00:00:00")])
    assert codec.parse_link(lo) == LinkInfo("lo", 1, "00:00:00:00:00:00", 65536, True,
                                            "loopback")
    assert codec.parse_link_counters(lo) is None
    veth = reply(ifinfmsg, 16, {"index": 3, "flags": 0x1002}, [
        ("IFLA_IFNAME", "eth0"), ("IFLA_MTU", 1500), ("IFLA_ADDRESS", "02:00:00:00:00:03"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]})])
    assert codec.parse_link(veth) == LinkInfo("eth0", 3, "02:00:00:00:00:03", 1500, False,
                                              "veth")
    tun = reply(ifinfmsg, 16, {"index": 4, "flags": 0x1091}, [
        ("IFLA_IFNAME", "flannel0"), ("IFLA_MTU", 1472)])
    assert codec.parse_link(tun) == LinkInfo("flannel0", 4, "", 1472, True, "")
    vxlan_no_local = reply(ifinfmsg, 16, {"index": 5}, [
        ("IFLA_IFNAME", "vx0"), ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": [("IFLA_VXLAN_ID", 9)]})]})])
    info = codec.parse_link(vxlan_no_local)
    assert info is not None and info.vxlan is not None
    assert (info.vxlan.vni, info.vxlan.local, info.vxlan.port) == (9, A("0.0.0.0"), 0)


# --- framing, errors, outcomes --------------------------------------------------------------

def test_messages_and_errors() -> None:
    capped_ext_ack = (struct.pack("=i", -errno.ENODEV)
                      + struct.pack("=IHHII", 36, 16, 5, 7, 0)  # the echoed request's header
                      + struct.pack("=HH", 12, 1) + b"no dev\0\0")
    datagram = (codec.frame(codec.link_get_request("x"), seq=7)
                + struct.pack("=IHHII", 16 + len(capped_ext_ack), 2, 0x300, 7, 0)
                + capped_ext_ack
                + struct.pack("=IHHII", 20, 2, 0, 8, 0) + struct.pack("=i", 0))
    got = list(codec.messages(datagram))
    assert [(t, s) for t, _, s, _ in got] == [(18, 7), (2, 7), (2, 8)]
    assert codec.parse_error(got[1][3], got[1][1]) == (errno.ENODEV, "no dev")
    assert codec.parse_error(got[2][3], got[2][1]) == (0, "")


def test_outcome_for() -> None:
    route = Replace(ROUTE_V6)
    assert codec.outcome_for(route, 0).result is OpResult.OK
    assert codec.outcome_for(CreateVxlan(VXLAN_V6), errno.EEXIST).result is (
        OpResult.ALREADY_PRESENT)
    assert codec.outcome_for(Delete(NEIGH_V6), errno.ENOENT).result is OpResult.ALREADY_GONE
    assert codec.outcome_for(DeleteLink("x"), errno.ENODEV).result is OpResult.ALREADY_GONE
    failed = codec.outcome_for(SetLink("x"), errno.ENODEV)
    assert (failed.result, failed.errno, failed.message) == (
        OpResult.FAILED, errno.ENODEV, "No such device")


def test_netlink_reexports_the_codec_and_loads_no_pyroute2() -> None:
    from flanneld import netlink

    for name in ("encode_op", "outcome_for", "parse_route", "parse_neighbour", "parse_fdb",
                 "parse_address", "RTM_NEWROUTE", "NLM_F_ACK"):
        assert getattr(netlink, name) is getattr(codec, name)
    code = ("import sys, flanneld.netlink, flanneld.netlink_codec; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))")
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert out.strip() == "[]"
