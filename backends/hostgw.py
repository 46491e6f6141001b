"""The host-gw backend: one kernel route per peer, ``<subnet> via <PublicIP> dev <ext iface>``.

Why and history: host-gw is flannel's fastest backend (no encapsulation) and needs every node on
one L2 segment, since a peer's PublicIP must be a directly reachable next hop.  Go flannel
refreshes missing routes every 10 s; here the same periodic call is ``reconcile(full=True)``,
which plans against a route dump, so it also deletes routes of peers whose leases are gone and
counts what it repaired.  The PublicIP must be an address of the chosen interface (peers route
to it on that segment); otherwise we refuse to start with a message saying so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import ClassVar

from flanneld.backends.base import Backend, BackendContext, ReconcileResult
from flanneld.backends.routing import (
    AppliedState,
    PeerMemo,
    count_repaired,
    diff,
    peer_leases,
    peer_sort_key,
    plan_changed,
    route_owned_in,
    summarize,
)
from flanneld.errors import ConfigError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.netlink import Netlink
from flanneld.netops import KernelObject, Op, Route

log = logging.getLogger(__name__)


def plan_routes(
    own: Lease,
    peers: Sequence[Lease],
    observed: Sequence[KernelObject],
    *,
    ext_index: int,
    network: IPv4Network,
    disowned: Collection[tuple[IPv4Network, IPv4Address]] = frozenset(),
) -> list[Op]:
    """Pure planner: one route per peer; routes via a gateway on the external interface to a
    lease-sized subnet of the Network (not our own) that no peer wants are stale, and so are
    routes that only a refused lease explains (``disowned``: its subnet via its PublicIP)."""
    owned_route = route_owned_in(network, own.subnet.prefixlen, own.subnet, {ext_index})

    def owned(obj: KernelObject) -> bool:
        return isinstance(obj, Route) and obj.gateway is not None and (
            owned_route(obj) or (obj.ifindex == ext_index and (obj.dst, obj.gateway) in disowned))

    desired = [Route(p.subnet, ext_index, p.attrs.public_ip) for p in peers]
    return diff(desired, observed, owned)


class HostGWBackend(Backend):
    type_name: ClassVar[str] = "host-gw"
    peer_types: ClassVar[frozenset[str]] = frozenset({"host-gw"})

    def __init__(self, ctx: BackendContext, netlink: Netlink | None = None) -> None:
        super().__init__(ctx)
        self._netlink = netlink if netlink is not None else Netlink()
        self._owns_netlink = netlink is None
        self._own: Lease | None = None
        self._applied = AppliedState()
        self._specs: dict[int, Route] = {}
        self._routes: PeerMemo[tuple[int, Route]] = PeerMemo()
        self._lock = asyncio.Lock()

    def mtu(self) -> int:
        return self.ctx.ext.mtu

    async def prepare(self) -> LeaseAttrs:
        ext = self.ctx.ext
        addresses = [a.address for a in await self._netlink.addresses(ext.index)]
        if ext.public_ip not in addresses:
            have = ", ".join(str(a) for a in addresses) or "none"
            raise ConfigError(
                f"host-gw: PublicIP {ext.public_ip} is not an address of interface {ext.name} "
                f"(its IPv4 addresses: {have}); peers route to the PublicIP on that interface's "
                "L2 segment, so --public-ip must be one of them (or choose another --iface)"
            )
        return LeaseAttrs(public_ip=ext.public_ip, backend_type=self.type_name)

    async def activate(self, lease: Lease) -> None:
        self._own = lease

    async def reconcile(self, peers: Mapping[IPv4Network, Lease], full: bool) -> ReconcileResult:
        if self._own is None:
            raise RuntimeError("reconcile before activate")
        own = self._own
        ext_index = self.ctx.ext.index
        network = self.ctx.netconf.network
        async with self._lock:
            # (sort key, route) per wanted peer; unchanged leases keep their very objects, so
            # plan_changed skips them by identity.
            keyed = self._routes.derive(
                peers, own, self.handles,
                lambda p: (peer_sort_key(p.subnet), Route(p.subnet, ext_index, p.attrs.public_ip)),
            )
            specs: dict[int, Route] = dict(keyed)
            repaired = 0
            if full:
                wanted = peer_leases(peers, own, self.handles)
                observed = [r for r in await self._netlink.routes() if r.ifindex == ext_index]
                ops = plan_routes(own, wanted, observed, ext_index=ext_index, network=network,
                                  disowned=self.disowned)
                repaired = count_repaired(ops, self._applied.objects)
                self._applied.reset(observed)
            else:
                ops = plan_changed(self._specs, specs, lambda route: (route,),
                                   self._applied.objects)
            self._specs = specs
            outcomes = await self._netlink.apply(ops)
            self._applied.record(outcomes)
        return summarize(outcomes, repaired, log)

    async def apply_changes(
        self, changes: Mapping[IPv4Network, Lease | None], peers: Mapping[IPv4Network, Lease]
    ) -> ReconcileResult:
        if self._own is None:
            raise RuntimeError("reconcile before activate")
        own, ext_index = self._own, self.ctx.ext.index
        async with self._lock:
            old: dict[int, Route] = {}
            new: dict[int, Route] = {}
            for subnet, lease in changes.items():
                key = peer_sort_key(subnet)
                if (before := self._specs.pop(key, None)) is not None:
                    old[key] = before
                if (peer := self.wanted(own, lease)) is not None:
                    new[key] = self._specs[key] = Route(subnet, ext_index, peer.attrs.public_ip)
            ops = plan_changed(old, new, lambda route: (route,), self._applied.objects)
            outcomes = await self._netlink.apply(ops)
            self._applied.record(outcomes)
        return summarize(outcomes, 0, log)

    async def close(self) -> None:
        """Leave the routes in place; only drop our netlink sockets."""
        if self._owns_netlink:
            await self._netlink.close()
