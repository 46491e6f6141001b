"""The applier against a real kernel: idempotence, outcomes per op, observation round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from flanneld.netlink import Netlink
from flanneld.netops import (
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


def test_applier_idempotent(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("ap")
    sh("ip", "link", "add", "fknla", "type", "veth", "peer", "name", "fknlb", ns=ns)
    sh("ip", "addr", "add", "198.18.1.1/24", "dev", "fknla", ns=ns)
    sh("ip", "link", "set", "fknla", "up", ns=ns)

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
