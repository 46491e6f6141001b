"""The vxlan backend end to end: two nodes in namespaces, a veth underlay on 198.18.0.0/24."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from ipaddress import IPv4Network

import pytest

from flanneld.backends.vxlan import VXLANBackend, VxlanNetwork
from flanneld.lease import Lease, LeaseAttrs, make_backend_data
from flanneld.netlink import Netlink
from flanneld.netops import FdbEntry, Neighbour, Route

from .backend_helpers import SUBNETS, context, lease, ping
from .conftest import TwoNodes, bridge_json, ip_json, sh

pytestmark = pytest.mark.netlink


async def start_node(nl: Netlink, link: str, subnet: IPv4Network,
                     options: dict[str, object] | None = None,
                     ) -> tuple[VXLANBackend, VxlanNetwork, Lease]:
    backend = VXLANBackend(await context(nl, link, {"Type": "vxlan", **(options or {})}), nl)
    own = lease(subnet, await backend.prepare())
    return backend, await backend.register_network(own), own


def test_vxlan_two_nodes_drift_and_restart(two_nodes: TwoNodes) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            b1, net1, own1 = await start_node(nl1, t.link1, SUBNETS[0])
            b2, net2, own2 = await start_node(nl2, t.link2, SUBNETS[1])
            assert own1.attrs.backend_type == "vxlan"
            assert own1.attrs.backend_data == make_backend_data(
                {"VNI": 1, "VtepMAC": b1.vtep_mac})
            assert own1.attrs.backend_data.startswith('{"VNI":1,"VtepMAC":"')
            assert b1.mtu() == 1450
            r1 = await net1.repair({own2.subnet: own2, own1.subnet: own1})
            r2 = await net2.repair({own1.subnet: own1})
            assert (r1.applied, r1.failed, r2.applied, r2.failed) == (3, 0, 3, 0)

            # the device as flannel makes it
            (dev,) = ip_json(t.n1, "-d", "link", "show", "flannel.1")
            info = dev["linkinfo"]["info_data"]
            assert dev["mtu"] == 1450 and dev["address"] == b1.vtep_mac
            assert "UP" in dev["flags"]
            assert (info["id"], info["local"], info["port"], info["learning"]) == (
                1, t.ip1, 8472, False)
            assert not info.get("l2miss") and not info.get("l3miss")
            addrs = ip_json(t.n1, "addr", "show", "dev", "flannel.1")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
                ("10.244.1.0", 32)]
            # the three per-peer entries
            (route,) = ip_json(t.n1, "route", "show", "10.244.2.0/24")
            assert (route["gateway"], route["dev"], route["flags"]) == (
                "10.244.2.0", "flannel.1", ["onlink"])
            (neigh,) = ip_json(t.n1, "neigh", "show", "dev", "flannel.1")
            assert (neigh["dst"], neigh["lladdr"], neigh["state"]) == (
                "10.244.2.0", b2.vtep_mac, ["PERMANENT"])
            fdb = bridge_json(t.n1, "fdb", "show", "dev", "flannel.1")
            assert [(f["mac"], f["dst"]) for f in fdb if "dst" in f] == [(b2.vtep_mac, t.ip2)]
            assert ping(t.n1, "10.244.1.0", "10.244.2.0")

            # drift: a route deleted by hand comes back on the drift pass, counted
            sh("ip", "route", "del", "10.244.2.0/24", ns=t.n1)
            assert not ping(t.n1, "10.244.1.0", "10.244.2.0")
            r = await net1.repair({own2.subnet: own2})
            assert (r.repaired, r.applied, r.failed) == (1, 1, 0)
            assert ping(t.n1, "10.244.1.0", "10.244.2.0")
            assert (await net1.repair({own2.subnet: own2})).repaired == 0

            # the device deleted by hand: re-created with the same MAC, entries re-added
            mac = b1.vtep_mac
            sh("ip", "link", "del", "flannel.1", ns=t.n1)
            r = await net1.repair({own2.subnet: own2})
            assert r.failed == 0 and r.repaired >= 3
            assert ip_json(t.n1, "link", "show", "flannel.1")[0]["address"] == mac
            assert ping(t.n1, "10.244.1.0", "10.244.2.0")

            # a daemon restart: a fresh backend reuses the device and its MAC
            await net1.close()
            await b1.close()
            b1b, net1b, own1b = await start_node(nl1, t.link1, SUBNETS[0])
            assert b1b.vtep_mac == mac and own1b.attrs == own1.attrs
            r = await net1b.repair({own2.subnet: own2})
            assert (r.applied, r.repaired) == (0, 0)

            # the peer's lease goes away: incremental removal of all three entries
            r = await net1b.apply({own2.subnet: None})
            assert (r.applied, r.failed) == (3, 0)
            assert not ip_json(t.n1, "route", "show", "dev", "flannel.1")
            assert not ip_json(t.n1, "neigh", "show", "dev", "flannel.1")
            assert not [f for f in bridge_json(t.n1, "fdb", "show", "dev", "flannel.1")
                        if "dst" in f]

    asyncio.run(main())


def test_vxlan_start_removes_stale_and_changed_mac(two_nodes: TwoNodes) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1:
            b1, net1, own1 = await start_node(nl1, t.link1, SUBNETS[0])
            dev = b1.device_index
            # left over from a peer whose lease expired while we were down, plus foreign state
            sh("ip", "route", "add", "10.244.9.0/24", "via", "10.244.9.0", "dev", "flannel.1",
               "onlink", ns=t.n1)
            sh("ip", "neigh", "add", "10.244.9.0", "lladdr", "0a:00:00:00:09:09", "dev",
               "flannel.1", "nud", "permanent", ns=t.n1)
            sh("bridge", "fdb", "add", "0a:00:00:00:09:09", "dev", "flannel.1", "dst",
               "198.18.0.9", "self", "permanent", ns=t.n1)
            sh("ip", "route", "add", "10.99.0.0/24", "via", "10.99.0.0", "dev", "flannel.1",
               "onlink", ns=t.n1)
            peer = lease(SUBNETS[1], LeaseAttrs(
                own1.attrs.public_ip.__class__(t.ip2), "vxlan",
                make_backend_data({"VNI": 1, "VtepMAC": "0a:00:00:00:02:02"})))
            r = await net1.repair({peer.subnet: peer})
            assert (r.applied, r.repaired, r.failed) == (7, 4, 0)
            routes = {r.dst for r in await nl1.routes() if r.ifindex == dev}
            # a route on flannel.1 outside the Network is stale too: no lease explains it
            assert routes == {SUBNETS[1]}

            moved = lease(SUBNETS[1], LeaseAttrs(
                peer.attrs.public_ip, "vxlan",
                make_backend_data({"VNI": 1, "VtepMAC": "0a:00:00:00:02:03"})))
            r = await net1.apply({peer.subnet: moved})
            assert (r.applied, r.failed) == (3, 0)  # fdb add, neigh replace, old fdb delete
            assert await nl1.neighbours(dev) == [
                Neighbour(dev, SUBNETS[1].network_address, "0a:00:00:00:02:03")]
            assert await nl1.fdb(dev) == [FdbEntry(dev, "0a:00:00:00:02:03", peer.attrs.public_ip)]
            assert Route(SUBNETS[1], dev, SUBNETS[1].network_address, onlink=True) in (
                await nl1.routes())

    asyncio.run(main())


def test_vxlan_direct_routing(two_nodes: TwoNodes) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            _b1, net1, own1 = await start_node(nl1, t.link1, SUBNETS[0], {"DirectRouting": True})
            _b2, net2, own2 = await start_node(nl2, t.link2, SUBNETS[1], {"DirectRouting": True})
            far = lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(
                own1.attrs.public_ip.__class__("198.19.7.7"), "vxlan",
                make_backend_data({"VNI": 1, "VtepMAC": "0a:00:00:00:03:03"})))
            sh("ip", "route", "add", "198.19.0.0/16", "via", t.ip2, ns=t.n1)
            await net1.repair({own2.subnet: own2, far.subnet: far})
            await net2.repair({own1.subnet: own1})
            (direct,) = ip_json(t.n1, "route", "show", "10.244.2.0/24")
            assert (direct["gateway"], direct["dev"]) == (t.ip2, t.link1)
            (via_vxlan,) = ip_json(t.n1, "route", "show", "10.244.3.0/24")
            assert (via_vxlan["gateway"], via_vxlan["dev"]) == ("10.244.3.0", "flannel.1")
            assert [n["dst"] for n in ip_json(t.n1, "neigh", "show", "dev", "flannel.1")] == [
                "10.244.3.0"]
            sh("ip", "addr", "add", "10.244.1.1/32", "dev", "lo", ns=t.n1)
            sh("ip", "addr", "add", "10.244.2.1/32", "dev", "lo", ns=t.n2)
            assert ping(t.n1, "10.244.1.1", "10.244.2.1")

    asyncio.run(main())


def test_tshark_decodes_vxlan_vni(two_nodes: TwoNodes) -> None:
    t = two_nodes
    cap = os.path.join(tempfile.mkdtemp(prefix="fknl-"), "cap.pcap")

    async def setup() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            _b1, net1, own1 = await start_node(nl1, t.link1, SUBNETS[0])
            _b2, net2, own2 = await start_node(nl2, t.link2, SUBNETS[1])
            await net1.repair({own2.subnet: own2})
            await net2.repair({own1.subnet: own1})

    asyncio.run(setup())
    # tshark stops by itself after 4 VXLAN packets (or 30 s); ping until it has them, so no
    # guess about when the capture really started
    proc = subprocess.Popen(
        ["ip", "netns", "exec", t.n2, "tshark", "-q", "-i", t.link2, "-w", cap,
         "-f", "udp port 8472", "-c", "4", "-a", "duration:30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            assert ping(t.n1, "10.244.1.0", "10.244.2.0")
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
    out = subprocess.run(
        ["tshark", "-r", cap, "-d", "udp.port==8472,vxlan", "-T", "fields",
         "-e", "vxlan.vni", "-e", "ip.src", "-e", "icmp.type"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    assert rows, "no VXLAN packets captured"
    assert {r[0] for r in rows} == {"1"}
    # outer and inner source, echo request (8) and reply (0)
    assert any(r[1] == f"{t.ip1},10.244.1.0" and r[2] == "8" for r in rows), rows
    assert any(r[2] == "0" for r in rows), rows


def test_vxlan_moving_to_another_subnet(two_nodes: TwoNodes) -> None:
    """The node re-acquired another subnet: the old network retires (its address goes), the
    new one's repair programs the peers again, without the one at our new subnet."""
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            b1, net1, own1 = await start_node(nl1, t.link1, SUBNETS[0])
            _b2, net2, own2 = await start_node(nl2, t.link2, SUBNETS[1])
            gone = lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(
                own1.attrs.public_ip.__class__("198.18.0.3"), "vxlan",
                make_backend_data({"VNI": 1, "VtepMAC": "0a:00:00:00:03:03"})))
            await net1.repair({own2.subnet: own2, gone.subnet: gone})
            await net2.repair({own1.subnet: own1})
            assert ping(t.n1, "10.244.1.0", "10.244.2.0")

            await net1.retire()
            assert not [a for a in await nl1.addresses(b1.device_index)]
            moved = lease(gone.subnet, own1.attrs)  # the expired peer's subnet is ours now
            net1b = await b1.register_network(moved)
            r = await net1b.repair({own2.subnet: own2, moved.subnet: moved})
            assert r.failed == 0
            addrs = ip_json(t.n1, "addr", "show", "dev", "flannel.1")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
                ("10.244.3.0", 32)]
            assert {r["dst"] for r in ip_json(t.n1, "route", "show", "dev", "flannel.1")} == {
                "10.244.2.0/24"}
            assert [n["dst"] for n in ip_json(t.n1, "neigh", "show", "dev", "flannel.1")] == [
                "10.244.2.0"]
            await net2.apply({own1.subnet: None, moved.subnet: moved})
            assert ping(t.n1, "10.244.3.0", "10.244.2.0")
            assert net1b.peer_count == 1

    asyncio.run(main())
