"""The host-gw backend end to end in two namespaces on one veth segment."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from flanneld.backends.hostgw import HostGWBackend
from flanneld.errors import ConfigError
from flanneld.lease import LeaseAttrs
from flanneld.netlink import Netlink

from .backend_helpers import SUBNETS, context, lease, ping
from .conftest import TwoNodes, ip_json, sh

pytestmark = pytest.mark.netlink


def test_hostgw_two_nodes_and_drift(two_nodes: TwoNodes) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            networks = []
            leases = []
            for nl, link, subnet in ((nl1, t.link1, SUBNETS[0]), (nl2, t.link2, SUBNETS[1])):
                backend = HostGWBackend(await context(nl, link, {"Type": "host-gw"}), nl)
                attrs = await backend.prepare()
                assert attrs.backend_type == "host-gw" and attrs.backend_data == ""
                assert backend.mtu() == 1500
                own = lease(subnet, attrs)
                networks.append(await backend.register_network(own))
                leases.append(own)
            b1, b2 = networks
            own1, own2 = leases
            stale = "10.244.7.0/24"
            sh("ip", "route", "add", stale, "via", "198.18.0.7", "dev", t.link1, ns=t.n1)
            r = await b1.repair({own1.subnet: own1, own2.subnet: own2})
            assert (r.applied, r.repaired, r.failed) == (2, 1, 0)  # peer route + stale delete
            await b2.repair({own1.subnet: own1})
            (route,) = ip_json(t.n1, "route", "show", "10.244.2.0/24")
            assert (route["gateway"], route["dev"]) == (t.ip2, t.link1)
            assert not ip_json(t.n1, "route", "show", stale)

            sh("ip", "addr", "add", "10.244.1.1/32", "dev", "lo", ns=t.n1)
            sh("ip", "addr", "add", "10.244.2.1/32", "dev", "lo", ns=t.n2)
            assert ping(t.n1, "10.244.1.1", "10.244.2.1")

            sh("ip", "route", "del", "10.244.2.0/24", ns=t.n1)
            assert not ping(t.n1, "10.244.1.1", "10.244.2.1")
            r = await b1.repair({own2.subnet: own2})
            assert (r.repaired, r.applied, r.failed) == (1, 1, 0)
            assert ping(t.n1, "10.244.1.1", "10.244.2.1")

            r = await b1.apply({own2.subnet: None})
            assert (r.applied, r.failed) == (1, 0)
            assert not ip_json(t.n1, "route", "show", "10.244.2.0/24")

    asyncio.run(main())


def test_hostgw_refuses_foreign_public_ip(two_nodes: TwoNodes) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl:
            ctx = await context(nl, t.link1, {"Type": "host-gw"})
            ctx = type(ctx)(ext=type(ctx.ext)(
                name=ctx.ext.name, index=ctx.ext.index, address=ctx.ext.address,
                public_ip=IPv4Address("198.18.5.5"), mtu=ctx.ext.mtu), netconf=ctx.netconf)
            with pytest.raises(ConfigError, match=r"PublicIP 198\.18\.5\.5 is not an address "
                                                  r"of interface fknlu1"):
                await HostGWBackend(ctx, nl).prepare()

    asyncio.run(main())


def test_hostgw_moving_to_another_subnet(two_nodes: TwoNodes) -> None:
    """A new network for a new own subnet: the route to that subnet (a peer's until now)
    goes with the new network's first repair; the other peers' routes stay."""
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1:
            backend = HostGWBackend(await context(nl1, t.link1, {"Type": "host-gw"}), nl1)
            own = lease(SUBNETS[0], await backend.prepare())
            net = await backend.register_network(own)
            other = lease(SUBNETS[1], LeaseAttrs(IPv4Address(t.ip2), "host-gw"))
            expired = lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(IPv4Address(t.ip2), "host-gw"))
            await net.repair({other.subnet: other, expired.subnet: expired})
            assert {r["dst"] for r in ip_json(t.n1, "route", "show", "via", t.ip2)} == {
                "10.244.2.0/24", "10.244.3.0/24"}
            await net.retire()
            moved = lease(expired.subnet, own.attrs)
            net2 = await backend.register_network(moved)
            r = await net2.repair({other.subnet: other, moved.subnet: moved})
            assert (r.applied, r.failed, net2.peer_count) == (1, 0, 1)  # the route to us goes
            assert {r["dst"] for r in ip_json(t.n1, "route", "show", "via", t.ip2)} == {
                "10.244.2.0/24"}

    asyncio.run(main())
