"""The host-gw backend end to end in two namespaces on one veth segment."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest

from flanneld.backends.hostgw import HostGWBackend
from flanneld.errors import ConfigError
from flanneld.netlink import Netlink

from .backend_helpers import SUBNETS, context, lease, ping
from .conftest import TwoNodes, ip_json, sh

pytestmark = pytest.mark.netlink


def test_hostgw_two_nodes_and_drift(two_nodes: TwoNodes) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl1, Netlink(t.n2) as nl2:
            backends = []
            leases = []
            for nl, link, subnet in ((nl1, t.link1, SUBNETS[0]), (nl2, t.link2, SUBNETS[1])):
                backend = HostGWBackend(await context(nl, link, {"Type": "host-gw"}), nl)
                attrs = await backend.prepare()
                assert attrs.backend_type == "host-gw" and attrs.backend_data == ""
                assert backend.mtu() == 1500
                own = lease(subnet, attrs)
                await backend.activate(own)
                backends.append(backend)
                leases.append(own)
            b1, b2 = backends
            own1, own2 = leases
            stale = "10.244.7.0/24"
            sh("ip", "route", "add", stale, "via", "198.18.0.7", "dev", t.link1, ns=t.n1)
            r = await b1.reconcile({own1.subnet: own1, own2.subnet: own2}, full=True)
            assert (r.applied, r.repaired, r.failed) == (2, 1, 0)  # peer route + stale delete
            await b2.reconcile({own1.subnet: own1}, full=True)
            (route,) = ip_json(t.n1, "route", "show", "10.244.2.0/24")
            assert (route["gateway"], route["dev"]) == (t.ip2, t.link1)
            assert not ip_json(t.n1, "route", "show", stale)

            sh("ip", "addr", "add", "10.244.1.1/32", "dev", "lo", ns=t.n1)
            sh("ip", "addr", "add", "10.244.2.1/32", "dev", "lo", ns=t.n2)
            assert ping(t.n1, "10.244.1.1", "10.244.2.1")

            sh("ip", "route", "del", "10.244.2.0/24", ns=t.n1)
            assert not ping(t.n1, "10.244.1.1", "10.244.2.1")
            r = await b1.reconcile({own2.subnet: own2}, full=True)
            assert (r.repaired, r.applied, r.failed) == (1, 1, 0)
            assert ping(t.n1, "10.244.1.1", "10.244.2.1")

            r = await b1.reconcile({}, full=False)
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
