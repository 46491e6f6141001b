"""The applier against a real kernel: idempotence, outcomes per op, observation round trip.

IPv4 and IPv6: the underlay-like addresses are 198.18.x and 2001:db8:18::/64, overlay objects
10.24x and fd00:24x::, all inside the test's own namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from flanneld.netlink import Netlink
from flanneld.netops import (
    AF_INET6,
    Address,
    CreateVxlan,
    Delete,
    DeleteLink,
    FdbEntry,
    KernelObject,
    Neighbour,
    Op,
    OpResult,
    Replace,
    Route,
    SetLink,
    VxlanLink,
)

from .conftest import bridge_json, ip_json, sh

pytestmark = pytest.mark.netlink


def underlay(netns_factory: Callable[[str], str], tag: str) -> str:
    """A namespace with the veth ``fknla`` up at 198.18.1.1/24."""
    ns = netns_factory(tag)
    sh("ip", "link", "add", "fknla", "type", "veth", "peer", "name", "fknlb", ns=ns)
    sh("ip", "addr", "add", "198.18.1.1/24", "dev", "fknla", ns=ns)
    sh("ip", "link", "set", "fknla", "up", ns=ns)
    return ns


def test_applier_idempotent(netns_factory: Callable[[str], str]) -> None:
    ns = underlay(netns_factory, "ap")

    async def main() -> None:
        async with Netlink(ns) as nl:
            ext = await nl.link("fknla")
            assert ext is not None
            mac = "0a:00:00:00:01:01"
            link = VxlanLink("flannel.1", 1, A("198.18.1.1"), ext.index, 8472, mac, 1450)
            dev_ops: list[Op] = [CreateVxlan(link), SetLink("flannel.1")]
            assert [o.result for o in await nl.apply(dev_ops)] == [OpResult.OK] * 2
            again = await nl.apply([CreateVxlan(link)])
            assert again[0].result is OpResult.ALREADY_PRESENT and again[0].kind == "link_create"
            dev = await nl.link("flannel.1")
            assert dev is not None and dev.vxlan is not None and dev.up and dev.mac == mac
            objs: list[KernelObject] = [
                Address(dev.index, A("10.244.1.0"), 32),
                FdbEntry(dev.index, "0a:00:00:00:02:02", A("198.18.1.2")),
                Neighbour(dev.index, A("10.244.2.0"), "0a:00:00:00:02:02"),
                Route(N("10.244.2.0/24"), dev.index, A("10.244.2.0"), onlink=True),
                Route(N("10.245.0.0/16"), dev.index),  # device route, scope link (udp backend)
            ]
            for _ in range(2):  # replace twice: both passes succeed, nothing duplicated
                outcomes = await nl.apply([Replace(o) for o in objs])
                assert [o.result for o in outcomes] == [OpResult.OK] * len(objs)
            assert [o.kind for o in outcomes] == [
                "addr_replace", "fdb_replace", "neigh_replace", "route_replace", "route_replace"]
            routes = {r for r in await nl.routes() if r.ifindex == dev.index}
            assert routes == {objs[3], objs[4]}
            assert await nl.neighbours(dev.index) == [objs[2]]
            assert await nl.fdb(dev.index) == [objs[1]]
            assert objs[0] in await nl.addresses(dev.index)
            shown = {r["dst"]: r for r in ip_json(ns, "route", "show", "dev", "flannel.1")}
            assert shown["10.245.0.0/16"]["scope"] == "link"
            assert "onlink" in shown["10.244.2.0/24"]["flags"]
            fdb = bridge_json(ns, "fdb", "show", "dev", "flannel.1")
            assert [(f["mac"], f["dst"], f["state"]) for f in fdb] == [
                ("0a:00:00:00:02:02", "198.18.1.2", "permanent")]

            deletes = [Delete(o) for o in reversed(objs)]
            assert {o.result for o in await nl.apply(deletes)} == {OpResult.OK}
            gone = await nl.apply(deletes)
            assert [o.result for o in gone] == [OpResult.ALREADY_GONE] * len(objs)
            assert [o.kind for o in gone][-1] == "addr_delete"
            assert not [r for r in await nl.routes() if r.ifindex == dev.index]

            # a refused op is a failed outcome with the kernel's errno, not an exception
            bad = await nl.apply([Replace(Route(N("10.246.0.0/24"), 9999, A("10.0.0.1")))])
            assert bad[0].result is OpResult.FAILED and bad[0].errno != 0
            assert [o.result for o in await nl.apply([DeleteLink("flannel.1")] * 2)] == [
                OpResult.OK, OpResult.ALREADY_GONE]

    asyncio.run(main())


def test_many_ops_in_flight(netns_factory: Callable[[str], str]) -> None:
    """More requests than one pipelined chunk, with failures mixed in, one outcome each."""
    ns = netns_factory("fl")
    sh("ip", "link", "add", "fknla", "type", "veth", "peer", "name", "fknlb", ns=ns)
    sh("ip", "link", "set", "fknla", "up", ns=ns)

    async def main() -> None:
        seen: list[tuple[str, str]] = []
        counter = lambda batch: seen.extend((o.kind, o.result.value) for o in batch)  # noqa: E731
        async with Netlink(ns, chunk=64, on_outcomes=counter) as nl:
            ext = await nl.link("fknla")
            assert ext is not None
            ops = [Replace(Route(N(f"10.250.{i}.0/24"), ext.index)) for i in range(200)]
            ops.insert(100, Replace(Route(N("10.251.0.0/24"), 424242)))  # no such device
            outcomes = await nl.apply(ops)
            assert [i for i, o in enumerate(outcomes) if not o.ok] == [100]
            assert seen.count(("route_replace", "ok")) == 200
            assert seen.count(("route_replace", "failed")) == 1
            assert len([r for r in await nl.routes() if r.ifindex == ext.index]) == 200

    asyncio.run(main())


def _ipv6_namespace(netns_factory: Callable[[str], str], suffix: str) -> str:
    """A namespace with veth fknla (2001:db8:18::1/64, up) and fknlb (up), DAD off."""
    ns = netns_factory(suffix)
    sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
       ns=ns)
    sh("ip", "link", "add", "fknla", "type", "veth", "peer", "name", "fknlb", ns=ns)
    sh("ip", "-6", "addr", "add", "2001:db8:18::1/64", "dev", "fknla", "nodad", ns=ns)
    sh("ip", "link", "set", "fknla", "up", ns=ns)
    sh("ip", "link", "set", "fknlb", "up", ns=ns)
    return ns


def test_applier_ipv6_round_trip(netns_factory: Callable[[str], str]) -> None:
    """Every object kind in IPv6, on a vxlan device with an IPv6 local address: replace twice,
    observed back with family=AF_INET6 (and absent from the IPv4 dumps), delete twice."""
    ns = _ipv6_namespace(netns_factory, "a6")

    async def main() -> None:
        async with Netlink(ns) as nl:
            ext = await nl.link("fknla")
            assert ext is not None
            mac = "0a:00:00:00:06:01"
            link = VxlanLink("flannel.6", 6, A6("2001:db8:18::1"), ext.index, 8472, mac, 1430)
            assert [o.result for o in await nl.apply([CreateVxlan(link), SetLink("flannel.6")])
                    ] == [OpResult.OK] * 2
            dev = await nl.link("flannel.6")
            assert dev is not None and dev.up and dev.kind == "vxlan"
            assert dev.vxlan == link
            objs: list[KernelObject] = [
                Address(dev.index, A6("fd00:244:1::"), 128),
                FdbEntry(dev.index, "0a:00:00:00:06:02", A6("2001:db8:18::2")),
                Neighbour(dev.index, A6("fd00:244:2::"), "0a:00:00:00:06:02"),
                Route(N6("fd00:244:2::/64"), dev.index, A6("fd00:244:2::"), onlink=True),
                Route(N6("fd00:245::/48"), dev.index),  # device route
                Route(N6("2001:db8:18:2::/64"), ext.index, A6("2001:db8:18::2")),  # gateway
            ]
            assert {o.family for o in objs} == {AF_INET6}
            for _ in range(2):
                outcomes = await nl.apply([Replace(o) for o in objs])
                assert [(o.result, o.message) for o in outcomes] == [(OpResult.OK, "")] * len(objs)
            assert [o.kind for o in outcomes] == [
                "addr_replace", "fdb_replace", "neigh_replace", "route_replace", "route_replace",
                "route_replace"]

            routes = {r for r in await nl.routes(family=AF_INET6)
                      if r.ifindex in (dev.index, ext.index)}
            assert routes == set(objs[3:])
            neigh = [n for n in await nl.neighbours(dev.index, family=AF_INET6)
                     if not n.address.is_multicast]  # the kernel's own NOARP multicast entries
            assert neigh == [objs[2]]
            assert await nl.fdb(dev.index, family=AF_INET6) == [objs[1]]
            assert objs[0] in await nl.addresses(dev.index, family=AF_INET6)
            # the IPv4 observation (every caller's default) sees none of it
            assert not [r for r in await nl.routes() if r.ifindex in (dev.index, ext.index)]
            assert await nl.neighbours(dev.index) == []
            assert await nl.fdb(dev.index) == []
            assert await nl.addresses(dev.index) == []

            # independent view: iproute2
            shown = {r["dst"]: r for r in ip_json(ns, "-6", "route", "show", "dev", "flannel.6")}
            assert "onlink" in shown["fd00:244:2::/64"]["flags"]
            assert shown["fd00:244:2::/64"]["gateway"] == "fd00:244:2::"
            assert "gateway" not in shown["fd00:245::/48"]
            (via,) = ip_json(ns, "-6", "route", "show", "2001:db8:18:2::/64")
            assert (via["gateway"], via["dev"]) == ("2001:db8:18::2", "fknla")
            fdb = bridge_json(ns, "fdb", "show", "dev", "flannel.6")
            assert [(f["mac"], f["dst"], f["state"]) for f in fdb] == [
                ("0a:00:00:00:06:02", "2001:db8:18::2", "permanent")]
            (neigh_shown,) = ip_json(ns, "-6", "neigh", "show", "dev", "flannel.6",
                                     "fd00:244:2::")
            assert neigh_shown["lladdr"] == "0a:00:00:00:06:02"
            assert "PERMANENT" in neigh_shown["state"]

            # route lookups of both families in one pipelined batch
            got = await nl.route_get([A6("2001:db8:18::2"), A6("fd00:244:2::7"), A("127.0.0.1")])
            assert got[0] is not None and (got[0].ifindex, got[0].gateway) == (ext.index, None)
            assert got[0].dst == N6("2001:db8:18::2/128")
            assert got[1] is not None and (got[1].ifindex, got[1].gateway) == (
                dev.index, A6("fd00:244:2::"))
            assert got[2] is None  # local: not a unicast route
            infos = {i.name: i for i in await nl.interfaces(family=AF_INET6)}
            assert A6("2001:db8:18::1") in infos["fknla"].addresses6
            assert infos["fknla"].addresses == ()
            assert infos["lo"].loopback

            deletes = [Delete(o) for o in reversed(objs)]
            assert [o.result for o in await nl.apply(deletes)] == [OpResult.OK] * len(objs)
            gone = await nl.apply(deletes)
            assert [o.result for o in gone] == [OpResult.ALREADY_GONE] * len(objs)
            assert not [r for r in await nl.routes(family=AF_INET6)
                        if r.ifindex in (dev.index, ext.index)]
            assert await nl.fdb(dev.index, family=AF_INET6) == []
            assert objs[0] not in await nl.addresses(dev.index, family=AF_INET6)
            assert [o.result for o in await nl.apply([DeleteLink("flannel.6")] * 2)] == [
                OpResult.OK, OpResult.ALREADY_GONE]

    asyncio.run(main())


def test_vxlan_links_ipv4_and_ipv6_local(netns_factory: Callable[[str], str]) -> None:
    """Device ops over the codec: vxlan with an IPv4 and an IPv6 local (learning, gbp), read
    back with link() attribute for attribute; set MTU/MAC; l2miss/l3miss as iproute2 makes them."""
    ns = _ipv6_namespace(netns_factory, "lk")
    sh("ip", "addr", "add", "198.18.3.1/24", "dev", "fknla", ns=ns)

    async def main() -> None:
        async with Netlink(ns) as nl:
            ext = await nl.link("fknla")
            assert ext is not None and ext.kind == "veth" and ext.up and ext.vxlan is None
            lo = await nl.link("lo")
            assert lo is not None and lo.kind == "loopback" and lo.mac == "00:00:00:00:00:00"
            assert await nl.link("fknl-none") is None
            v4 = VxlanLink("fknlv4", 4, A("198.18.3.1"), ext.index, 4789, "0a:00:00:00:04:01",
                           1400, learning=True, gbp=True)
            v6 = VxlanLink("fknlv6", 16, A6("2001:db8:18::1"), ext.index, 8472,
                           "0a:00:00:00:06:01", 1430)
            assert [o.result for o in await nl.apply([CreateVxlan(v4), CreateVxlan(v6)])] == [
                OpResult.OK] * 2
            for want in (v4, v6):
                got = await nl.link(want.name)
                assert got is not None and got.kind == "vxlan" and not got.up
                assert (got.name, got.mac, got.mtu) == (want.name, want.mac, want.mtu)
                assert got.vxlan == want and not got.l2miss and not got.l3miss
            (shown,) = ip_json(ns, "-d", "link", "show", "fknlv6")
            data = shown["linkinfo"]["info_data"]
            assert (data["id"], data["local6"], data["port"], data["learning"]) == (
                16, "2001:db8:18::1", 8472, False)
            (shown4,) = ip_json(ns, "-d", "link", "show", "fknlv4")
            assert shown4["linkinfo"]["info_data"]["learning"] is True
            assert "gbp" in shown4["linkinfo"]["info_data"]

            again = await nl.apply([CreateVxlan(v6)])
            assert again[0].result is OpResult.ALREADY_PRESENT
            set_ops: list[Op] = [SetLink("fknlv6", mtu=1380, mac="0a:00:00:00:06:09"),
                                 SetLink("fknlv4", up=False), SetLink("fknl-none")]
            results = await nl.apply(set_ops)
            assert [o.result for o in results[:2]] == [OpResult.OK] * 2
            assert results[2].result is OpResult.FAILED and results[2].errno != 0
            got6 = await nl.link("fknlv6")
            assert got6 is not None and got6.up and (got6.mtu, got6.mac) == (
                1380, "0a:00:00:00:06:09")
            got4 = await nl.link("fknlv4")
            assert got4 is not None and not got4.up  # up=False leaves the state alone

            sh("ip", "link", "add", "fknlmiss", "type", "vxlan", "id", "9", "dstport", "8472",
               "local", "198.18.3.1", "l2miss", "l3miss", "nolearning", ns=ns)
            miss = await nl.link("fknlmiss")
            assert miss is not None and miss.l2miss and miss.l3miss
            assert miss.vxlan is not None and miss.vxlan.local == A("198.18.3.1")
            assert miss.vxlan.vni == 9 and miss.vxlan.underlay_ifindex == 0

            deletes: list[Op] = [DeleteLink(n) for n in ("fknlv4", "fknlv6", "fknlmiss")]
            assert [o.result for o in await nl.apply(deletes)] == [OpResult.OK] * 3
            assert [o.result for o in await nl.apply(deletes)] == [OpResult.ALREADY_GONE] * 3
            assert await nl.link("fknlv6") is None

    asyncio.run(main())


def test_observation_returns_known_objects_as_themselves(
        netns_factory: Callable[[str], str]) -> None:
    """A dump answer equal to a ``known`` object comes back as that very object (a drift
    pass over 5000 peers holds no second copy of 15000 objects while it compares); an answer
    that differs, or that nothing knows, is the kernel's own."""
    ns = underlay(netns_factory, "kn")
    sh("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "198.18.1.1",
       "dev", "fknla", "dstport", "8472", "nolearning", ns=ns)
    sh("ip", "link", "set", "flannel.1", "up", ns=ns)

    async def main() -> None:
        async with Netlink(ns) as nl:
            dev = await nl.link("flannel.1")
            assert dev is not None
            fdb = FdbEntry(dev.index, "0a:00:00:00:02:02", A("198.18.1.2"))
            neigh = Neighbour(dev.index, A("10.244.2.0"), "0a:00:00:00:02:02")
            route = Route(N("10.244.2.0/24"), dev.index, A("10.244.2.0"), onlink=True)
            other = Route(N("10.244.3.0/24"), dev.index, A("10.244.3.0"), onlink=True)
            await nl.apply([Replace(o) for o in (fdb, neigh, route, other)])
            moved = Route(other.dst, dev.index, A("10.244.3.9"), onlink=True)  # not as known
            known = {o.key: o for o in (fdb, neigh, route, moved)}
            routes = [r for r in await nl.routes(known=known) if r.ifindex == dev.index]
            assert sorted(routes, key=lambda r: r.dst) == [route, other]
            got = {r.dst: r for r in routes}
            assert got[route.dst] is route and got[other.dst] is not moved
            (n,) = await nl.neighbours(dev.index, known=known)
            (f,) = await nl.fdb(dev.index, known=known)
            assert n is neigh and f is fdb
            (plain,) = await nl.neighbours(dev.index)
            assert plain == neigh and plain is not neigh

    asyncio.run(main())
