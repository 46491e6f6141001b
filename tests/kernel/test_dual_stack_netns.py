"""Dual stack in namespaces: vxlan (flannel.1 and flannel-v6.1) and host-gw, two nodes with an
IPv4 and an IPv6 underlay (198.18.0.0/24, 2001:db8:18::/64), a lease with both halves each.

What Go flannel programs for the IPv6 half (pkg/backend/vxlan/vxlan_network.go,
hostgw/hostgw.go): a second VTEP ``flannel-v6.<VNI>`` (same VNI and port, IPv6 local, its own
MAC, published as BackendV6Data), per peer the IPv6 neighbour, the fdb entry to PublicIPv6 and
an onlink route; host-gw: a route to the peer's IPv6 subnet via its PublicIPv6.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from ipaddress import IPv6Address, IPv6Network

import pytest

from flanneld.backends.base import BackendContext, StackedNetwork
from flanneld.backends.hostgw import HostGWBackend
from flanneld.backends.vxlan import VXLANBackend
from flanneld.iface import select_external_interface
from flanneld.lease import Lease, LeaseAttrs
from flanneld.netconfig import network_config_from_dict
from flanneld.netlink import Netlink

from .backend_helpers import SUBNETS
from .conftest import DualNodes, bridge_json, ip_json, sh

pytestmark = pytest.mark.netlink

V6_NETWORK = "fd10:244::/56"
V6_SUBNETS = (IPv6Network("fd10:244:0:1::/64"), IPv6Network("fd10:244:0:2::/64"))

async def dual_context(nl: Netlink, link: str, ip6: str, backend: dict[str, object]) -> BackendContext:
    netconf = network_config_from_dict({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                        "IPv6Network": V6_NETWORK, "Backend": backend})
    ext = await select_external_interface(nl, iface=[link])
    ext = dataclasses.replace(ext, address6=IPv6Address(ip6), public_ipv6=IPv6Address(ip6))
    return BackendContext(ext=ext, netconf=netconf)

def dual_lease(i: int, attrs: LeaseAttrs) -> Lease:
    return Lease(SUBNETS[i], attrs, etcd_lease_id=1, ipv6_subnet=V6_SUBNETS[i])

def our_routes6(ns: str, dev: str) -> list[str]:
    """IPv6 routes on ``dev`` that are not the kernel's own (its address, fe80::/64)."""
    return [r["dst"] for r in ip_json(ns, "-6", "route", "show", "dev", dev)
            if r.get("protocol") != "kernel"]


def ping6(ns: str, src: str, dst: str) -> bool:
    out = sh("ping", "-6", "-c", "1", "-W", "2", "-I", src, dst, ns=ns, check=False)
    return " 0% packet loss" in out

def test_vxlan_dual_stack_two_nodes(dual_nodes: DualNodes) -> None:
    t = dual_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            nodes = []
            for i, (nl, link, ip6) in enumerate(((nl1, t.link1, t.ip6_1), (nl2, t.link2, t.ip6_2))):
                backend = VXLANBackend(await dual_context(nl, link, ip6, {"Type": "vxlan"}), nl)
                own = dual_lease(i, await backend.prepare())
                nodes.append((backend, await backend.register_network(own), own))
            (b1, net1, own1), (b2, net2, own2) = nodes
            assert isinstance(net1, StackedNetwork)
            # the lease as Go writes it: both halves, a VTEP MAC per device
            mac6 = b1.devices[next(h for h in b1.devices if h.v6)].mac
            assert mac6 and mac6 != b1.vtep_mac
            assert own1.attrs.public_ipv6 == IPv6Address(t.ip6_1)
            assert json.loads(own1.attrs.backend_v6_data) == {"VNI": 1, "VtepMAC": mac6}
            assert own1.attrs.to_json().startswith(
                f'{{"PublicIP":"{t.ip1}","PublicIPv6":"{t.ip6_1}","BackendType":"vxlan",')
            assert b1.mtu() == 1430  # the IPv6 VTEP's (outer IPv6 header)

            r1 = await net1.repair({own1.subnet: own1, own2.subnet: own2})
            r2 = await net2.repair({own1.subnet: own1})
            assert (r1.applied, r1.failed, r2.applied, r2.failed) == (6, 0, 6, 0)
            (dev,) = ip_json(t.n1, "-d", "link", "show", "flannel-v6.1")
            info = dev["linkinfo"]["info_data"]
            assert (info["id"], info["local6"], info["port"]) == (1, t.ip6_1, 8472)
            assert dev["address"] == mac6 and dev["mtu"] == 1430
            addrs = [(a["local"], a["prefixlen"]) for a in
                     ip_json(t.n1, "addr", "show", "dev", "flannel-v6.1")[0]["addr_info"]
                     if a["family"] == "inet6" and a["scope"] == "global"]
            assert addrs == [("fd10:244:0:1::", 128)]
            (route,) = ip_json(t.n1, "-6", "route", "show", "fd10:244:0:2::/64")
            assert (route["gateway"], route["dev"], route["flags"]) == (
                "fd10:244:0:2::", "flannel-v6.1", ["onlink"])
            neigh = [n for n in ip_json(t.n1, "-6", "neigh", "show", "dev", "flannel-v6.1")
                     if "PERMANENT" in n.get("state", [])]
            mac6_2 = b2.devices[next(h for h in b2.devices if h.v6)].mac
            assert [(n["dst"], n["lladdr"]) for n in neigh] == [("fd10:244:0:2::", mac6_2)]
            fdb = bridge_json(t.n1, "fdb", "show", "dev", "flannel-v6.1")
            assert [(f["mac"], f["dst"]) for f in fdb if "dst" in f] == [(mac6_2, t.ip6_2)]
            assert ping6(t.n1, "fd10:244:0:1::", "fd10:244:0:2::")
            assert sh("ping", "-c", "1", "-W", "2", "-I", "10.244.1.0", "10.244.2.0", ns=t.n1,
                      check=False).count(" 0% packet loss") == 1

            # drift: the IPv6 route deleted by hand comes back, counted
            sh("ip", "-6", "route", "del", "fd10:244:0:2::/64", ns=t.n1)
            r = await net1.repair({own2.subnet: own2})
            assert (r.repaired, r.applied, r.failed) == (1, 1, 0)
            assert ping6(t.n1, "fd10:244:0:1::", "fd10:244:0:2::")

            # the peer leaves: both halves' entries go
            r = await net1.apply({own2.subnet: None})
            assert (r.applied, r.failed) == (6, 0)
            assert not our_routes6(t.n1, "flannel-v6.1")
            assert not [f for f in bridge_json(t.n1, "fdb", "show", "dev", "flannel-v6.1")
                        if "dst" in f]
            # an IPv4-only peer (a node of a mixed cluster) is programmed in IPv4 only
            v4only = Lease(own2.subnet, dataclasses.replace(own2.attrs, public_ipv6=None,
                                                            backend_v6_data=""), etcd_lease_id=1)
            r = await net1.apply({own2.subnet: v4only})
            assert (r.applied, r.failed) == (3, 0) and net1.peer_count == 1
            assert not our_routes6(t.n1, "flannel-v6.1")

            # a restart: both devices and both MACs are reused
            await net1.close()
            await b1.close()
            again = VXLANBackend(await dual_context(nl1, t.link1, t.ip6_1, {"Type": "vxlan"}), nl1)
            assert (await again.prepare()) == own1.attrs

    asyncio.run(main())

def test_hostgw_dual_stack_two_nodes(dual_nodes: DualNodes) -> None:
    t = dual_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            nets = []
            leases = []
            for i, (nl, link, ip6) in enumerate(((nl1, t.link1, t.ip6_1), (nl2, t.link2, t.ip6_2))):
                backend = HostGWBackend(await dual_context(nl, link, ip6, {"Type": "host-gw"}), nl)
                attrs = await backend.prepare()
                assert attrs.to_json() == (f'{{"PublicIP":"{[t.ip1, t.ip2][i]}","PublicIPv6":'
                                           f'"{ip6}","BackendType":"host-gw"}}')
                own = dual_lease(i, attrs)
                nets.append(await backend.register_network(own))
                leases.append(own)
            (net1, net2), (own1, own2) = nets, leases
            stale = "fd10:244:0:7::/64"
            sh("ip", "-6", "route", "add", stale, "via", t.ip6_2, "dev", t.link1, ns=t.n1)
            r = await net1.repair({own1.subnet: own1, own2.subnet: own2})
            assert (r.applied, r.repaired, r.failed) == (3, 1, 0)  # 2 routes + the stale delete
            await net2.repair({own1.subnet: own1})
            (route,) = ip_json(t.n1, "-6", "route", "show", "fd10:244:0:2::/64")
            assert (route["gateway"], route["dev"]) == (t.ip6_2, t.link1)
            assert not ip_json(t.n1, "-6", "route", "show", stale)
            sh("ip", "-6", "addr", "add", "fd10:244:0:1::1/128", "dev", "lo", ns=t.n1)
            sh("ip", "-6", "addr", "add", "fd10:244:0:2::1/128", "dev", "lo", ns=t.n2)
            assert ping6(t.n1, "fd10:244:0:1::1", "fd10:244:0:2::1")
            r = await net1.apply({own2.subnet: None})
            assert (r.applied, r.failed) == (2, 0)
            assert not ip_json(t.n1, "-6", "route", "show", "fd10:244:0:2::/64")

    asyncio.run(main())

def test_vxlan_refuses_ipv6_without_an_ipv6_address(dual_nodes: DualNodes) -> None:
    async def main() -> None:
        async with Netlink(dual_nodes.n1) as nl:
            ctx = await dual_context(nl, dual_nodes.link1, dual_nodes.ip6_1, {"Type": "vxlan"})
            ctx = dataclasses.replace(ctx, ext=dataclasses.replace(ctx.ext, address6=None))
            with pytest.raises(Exception, match="EnableIPv6 needs an IPv6 address on interface fknlu1"):
                VXLANBackend(ctx, nl)

    asyncio.run(main())

def test_hostgw_refuses_a_foreign_public_ipv6(dual_nodes: DualNodes) -> None:
    async def main() -> None:
        async with Netlink(dual_nodes.n1) as nl:
            ctx = await dual_context(nl, dual_nodes.link1, dual_nodes.ip6_1, {"Type": "host-gw"})
            ctx = dataclasses.replace(ctx, ext=dataclasses.replace(
                ctx.ext, public_ipv6=IPv6Address("2001:db8:18::99")))
            with pytest.raises(Exception, match=r"PublicIPv6 2001:db8:18::99 is not an address"):
                await HostGWBackend(ctx, nl).prepare()

    asyncio.run(main())
