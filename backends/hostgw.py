"""The host-gw backend: one kernel route per peer, ``<subnet> via <PublicIP> dev <ext iface>``.

Why and history: host-gw is flannel's fastest backend (no encapsulation) and needs every node on
one L2 segment, since a peer's PublicIP must be a directly reachable next hop.  Go flannel
refreshes missing routes every 10 s; here the same periodic call is the network's ``repair``,
which plans against a route dump, so it also deletes routes of peers whose leases are gone and
counts what it repaired.  The PublicIP must be an address of the chosen interface (peers route
to it on that segment); otherwise we refuse to start with a message saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from ipaddress import IPv4Network
from typing import ClassVar

from flanneld.backends.base import Backend, BackendContext, Network, one_network
from flanneld.backends.family import V4, V6, Half
from flanneld.backends.kernel_network import KernelNetwork
from flanneld.backends.planner import Key, diff, route_owned_in
from flanneld.errors import ConfigError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.netlink import Netlink
from flanneld.netops import IPAddress, IPNetwork, KernelObject, Op, Route

log = logging.getLogger(__name__)


def owned_by_hostgw(
    own: Lease, ext_index: int, network: IPNetwork,
    disowned: Collection[tuple[IPNetwork, IPAddress]] = frozenset(),
    subnet_len: int | None = None,
) -> Callable[[KernelObject], bool]:
    """Ours: routes via a gateway on the external interface to a lease-sized subnet of the
    Network, and routes that only a refused lease explains (``disowned``: its
    subnet via its PublicIP)."""
    owned_route = route_owned_in(
        network, own.subnet.prefixlen if subnet_len is None else subnet_len, {ext_index})

    def owned(obj: KernelObject) -> bool:
        return isinstance(obj, Route) and obj.gateway is not None and (
            owned_route(obj) or (obj.ifindex == ext_index and (obj.dst, obj.gateway) in disowned))

    return owned


def plan_routes(
    own: Lease,
    peers: Sequence[Lease],
    observed: Sequence[KernelObject],
    *,
    ext_index: int,
    network: IPv4Network,
    disowned: Collection[tuple[IPNetwork, IPAddress]] = frozenset(),
) -> list[Op]:
    """Pure planner: one route per peer; owned routes (``owned_by_hostgw``) that no peer
    wants are stale."""
    desired = [Route(p.subnet, ext_index, p.attrs.public_ip) for p in peers]
    return diff(desired, observed, owned_by_hostgw(own, ext_index, network, disowned))


class HostGWBackend(Backend):
    type_name: ClassVar[str] = "host-gw"
    peer_types: ClassVar[frozenset[str]] = frozenset({"host-gw"})

    def __init__(self, ctx: BackendContext, netlink: Netlink | None = None) -> None:
        super().__init__(ctx)
        self.netlink = netlink if netlink is not None else Netlink()
        self._owns_netlink = netlink is None

    def mtu(self) -> int:
        return self.ctx.ext.mtu

    async def prepare(self) -> LeaseAttrs:
        """The public addresses must be the interface's own: peers route to them on its L2
        segment."""
        ext = self.ctx.ext
        for half in self.halves:
            public = ext.public_ipv6 if half.v6 else ext.public_ip
            flag = "--public-ipv6" if half.v6 else "--public-ip"
            addresses = [a.address for a in await self.netlink.addresses(ext.index,
                                                                         family=half.family)]
            if public is None or public not in addresses:
                have = ", ".join(str(a) for a in addresses) or "none"
                raise ConfigError(
                    f"host-gw: {'PublicIPv6' if half.v6 else 'PublicIP'} {public} is not an address "
                    f"of interface {ext.name} (its {half.name} addresses: {have}); peers route "
                    f"to it on that interface's L2 segment, so {flag} must be one of them (or "
                    "choose another --iface)")
        return LeaseAttrs(public_ip=ext.public_ip, backend_type=self.type_name,
                          public_ipv6=ext.public_ipv6 if V6 in self.halves else None)

    async def register_network(self, lease: Lease) -> Network:
        return one_network([HostGWNetwork(self, lease, half) for half in self.halves_of(lease)])

    async def close(self) -> None:
        """Leave the routes in place; only drop our netlink sockets."""
        if self._owns_netlink:
            await self.netlink.close()


class HostGWNetwork(KernelNetwork[Route]):
    """One half of a lease's host-gw network: a route per peer via its public address of
    that half; nothing of its own to retire."""

    def __init__(self, backend: HostGWBackend, lease: Lease, half: Half = V4) -> None:
        super().__init__(backend, lease, backend.netlink, log, half)
        self._ext_index = backend.ctx.ext.index
        self._owns = self._ownership()

    def _ownership(self) -> Callable[[KernelObject], bool]:
        netconf, half = self.backend.ctx.netconf, self.half
        network = half.network(netconf)
        assert network is not None
        return owned_by_hostgw(self.lease, self._ext_index, network,
                               self.backend.disowned6 if half.v6 else self.backend.disowned,
                               subnet_len=half.subnet_len(netconf))

    async def before_repair(self) -> tuple[int, bool]:
        self._owns = self._ownership()
        return 0, False

    def peer_spec(self, lease: Lease, previous: Route | None) -> Route | None:
        if previous is not None:
            return previous
        subnet, gateway = self.half.subnet(lease), self.half.public_ip(lease.attrs)
        if subnet is None or gateway is None:
            return None
        return Route(subnet, self._ext_index, gateway)

    def peer_objects(self, spec: Route) -> tuple[Route]:
        return (spec,)

    def owns(self, obj: KernelObject) -> bool:
        return self._owns(obj)

    async def observe(self, known: Mapping[Key, KernelObject]) -> list[KernelObject]:
        return [r for r in await self.netlink.routes(family=self.half.family, known=known)
                if r.ifindex == self._ext_index]
