"""The vxlan backend: a kernel VTEP ``flannel.<VNI>`` plus, per peer, a neighbour, an fdb entry
and an onlink route, exactly as Go flannel programs them, so Go and Python nodes interoperate.

Why and history: flannel's vxlan backend once relied on l2miss/l3miss netlink events and a
userspace ARP responder; since v0.9 it writes the three entries per peer up front and runs the
device with learning off.  We do the same, but as a pure plan against observed kernel state
(see ``planner.diff``), so the start-up pass also removes entries of peers whose leases are
gone, and a periodic drift pass repairs what someone deleted by hand, including the device
itself, which comes back with the same VTEP MAC (kept in memory) so peers' fdb entries stay right.

Per peer (subnet S, PublicIP P, VtepMAC M), on device D = flannel.<VNI>:
  neighbour S.0 lladdr M nud permanent dev D
  fdb M dst P self permanent dev D
  route S via S.0 dev D onlink
DirectRouting: a peer whose PublicIP the kernel reaches without a gateway gets only
``route S via P dev <ext iface>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar

from flanneld.backends.base import Backend, BackendContext, Network, one_network
from flanneld.backends.family import V4, V6, Half
from flanneld.backends.kernel_network import KernelNetwork
from flanneld.backends.options import OptionReader
from flanneld.backends.planner import Key, diff, peer_sort_key, plan_address, route_owned_in
from flanneld.errors import ConfigError, NetworkConfigError
from flanneld.lease import Lease, LeaseAttrs, make_backend_data
from flanneld.netlink import KernelError, Netlink
from flanneld.netops import (
    Address,
    CreateVxlan,
    Delete,
    DeleteLink,
    FdbEntry,
    IPAddress,
    IPNetwork,
    KernelObject,
    LinkInfo,
    Neighbour,
    Op,
    Outcome,
    Route,
    SetLink,
    VxlanLink,
    normalize_mac,
)

log = logging.getLogger(__name__)

DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the Linux default, which flannel keeps
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


@dataclass(frozen=True)
class VxlanOptions:
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int = 0  # 0: external MTU - 50

    @property
    def device_name(self) -> str:
        return f"flannel.{self.vni}"


def parse_options(options: Mapping[str, Any]) -> VxlanOptions:
    """``Backend`` options (keys case-insensitive, like Go's JSON decoder)."""
    reader = OptionReader(options)
    integer, flag = reader.integer, reader.flag

    mtu = integer("mtu", "MTU", 0, 0, 65535)
    if mtu and mtu < 68:
        raise NetworkConfigError("Backend.MTU", f"must be at least 68, got {mtu}")
    return VxlanOptions(
        vni=integer("vni", "VNI", DEFAULT_VNI, 0, (1 << 24) - 1),
        port=integer("port", "Port", 0, 0, 65535) or DEFAULT_PORT,
        gbp=flag("gbp", "GBP"),
        learning=flag("learning", "Learning"),
        direct_routing=flag("directrouting", "DirectRouting"),
        mtu=mtu,
    )


@dataclass(frozen=True, slots=True)
class VxlanPeer:
    subnet: IPNetwork
    public_ip: IPAddress
    vtep_mac: str
    key: int = field(default=0, compare=False)  # peer_sort_key(lease.subnet), set by vxlan_peer


def vxlan_peer(lease: Lease, half: Half = V4) -> VxlanPeer | None:
    """The peer's VTEP for one half of its lease (IPv4: BackendData, PublicIP; IPv6:
    BackendV6Data, PublicIPv6); None (logged) without a usable VtepMAC or that half."""
    subnet, public_ip = half.subnet(lease), half.public_ip(lease.attrs)
    if subnet is None or public_ip is None:
        return None
    data = "BackendV6Data" if half.v6 else "BackendData"
    try:
        raw = half.backend_data(lease.attrs)
        obj = json.loads(raw) if raw else {}
        mac = normalize_mac(str(obj.get("VtepMAC", "") if isinstance(obj, dict) else ""))
    except ValueError:
        log.warning("lease %s: %s has no valid VtepMAC; ignored", lease.key, data)
        return None
    return VxlanPeer(subnet, public_ip, mac, peer_sort_key(lease.subnet))


def random_vtep_mac() -> str:
    """Random locally administered unicast MAC (as Go flannel's hardware address)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def choose_mac(known: str | None, observed: LinkInfo | None) -> str:
    """The VTEP MAC: the one we published, else the existing device's, else a new one."""
    if known:
        return known
    if observed is not None and observed.kind == "vxlan" and observed.mac:
        return observed.mac
    return random_vtep_mac()


def compatible(observed: LinkInfo, want: VxlanLink) -> bool:
    """Can the existing device be reused?  (MAC, MTU and up state can be fixed in place.)"""
    have = observed.vxlan
    return (
        have is not None
        and not observed.l2miss
        and not observed.l3miss
        and (have.vni, have.local, have.underlay_ifindex, have.port, have.learning, have.gbp)
        == (want.vni, want.local, want.underlay_ifindex, want.port, want.learning, want.gbp)
    )


def plan_device(want: VxlanLink, observed: LinkInfo | None) -> list[Op]:
    """Ops that make ``want.name`` a vxlan device with ``want``'s attributes, up."""
    if observed is None:
        return [CreateVxlan(want), SetLink(want.name)]
    if not compatible(observed, want):
        return [DeleteLink(want.name), CreateVxlan(want), SetLink(want.name)]
    if observed.mtu != want.mtu or observed.mac != want.mac or not observed.up:
        return [SetLink(
            want.name,
            mtu=want.mtu if observed.mtu != want.mtu else None,
            mac=want.mac if observed.mac != want.mac else None,
        )]
    return []


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """Everything one peer's entries depend on; equal specs mean equal kernel objects."""

    peer: VxlanPeer
    device_index: int
    ext_index: int
    direct: bool = False


def peer_objects(spec: PeerSpec) -> tuple[KernelObject, ...]:
    peer = spec.peer
    if spec.direct:
        return (Route(peer.subnet, spec.ext_index, peer.public_ip),)
    vtep_ip = peer.subnet.network_address
    return (
        FdbEntry(spec.device_index, peer.vtep_mac, peer.public_ip),
        Neighbour(spec.device_index, vtep_ip, peer.vtep_mac),
        Route(peer.subnet, spec.device_index, vtep_ip, onlink=True),
    )


def peer_specs(
    peers: Sequence[VxlanPeer],
    device_index: int,
    ext_index: int,
    direct_routing: bool,
    on_link: frozenset[IPAddress] | Mapping[IPAddress, bool],
    previous: Mapping[int, PeerSpec] | None = None,
) -> dict[int, PeerSpec]:
    """Specs by ``VxlanPeer.key``, sorted by subnet; an unchanged spec is the very object of
    ``previous`` so the incremental planner can skip it by identity."""
    prev = previous or {}
    specs: dict[int, PeerSpec] = {}
    for p in sorted(peers, key=attrgetter("key")):
        direct = direct_routing and bool(
            p.public_ip in on_link if isinstance(on_link, frozenset)
            else on_link.get(p.public_ip, False))
        specs[p.key] = spec_for(p, device_index, ext_index, direct, prev.get(p.key))
    return specs


def spec_for(peer: VxlanPeer, device_index: int, ext_index: int, direct: bool,
             previous: PeerSpec | None) -> PeerSpec:
    """``previous`` itself when nothing it depends on changed (planners skip it by
    identity), else a new spec."""
    if (previous is not None and previous.peer is peer and previous.direct == direct
            and previous.device_index == device_index and previous.ext_index == ext_index):
        return previous
    return PeerSpec(peer, device_index, ext_index, direct)


def owned_by_vxlan(
    own: Lease, device_index: int, ext_index: int, network: IPNetwork,
    disowned: Collection[tuple[IPNetwork, IPAddress]] = frozenset(),
    subnet_len: int | None = None,
) -> Callable[[KernelObject], bool]:
    """Ours: every route on the vxlan device (flannel owns the device: a route to anything
    outside the Network there, e.g. from a hostile lease an older daemon accepted, is
    stale), and via a gateway on the external interface routes of lease-sized subnets of the
    Network (DirectRouting / an earlier host-gw run) or of a refused lease (``disowned``);
    permanent neighbours and fdb entries on the vxlan device."""
    route_owned = route_owned_in(
        network, own.subnet.prefixlen if subnet_len is None else subnet_len, {ext_index})

    def owned(obj: KernelObject) -> bool:
        if isinstance(obj, Route):
            if obj.ifindex == device_index:
                return True
            return obj.gateway is not None and (
                route_owned(obj) or (obj.ifindex == ext_index and (obj.dst, obj.gateway) in disowned))
        if isinstance(obj, Neighbour):
            return obj.ifindex == device_index and obj.permanent
        if isinstance(obj, FdbEntry):
            return obj.ifindex == device_index
        return False

    return owned


def plan_peers(
    own: Lease,
    peers: Sequence[VxlanPeer],
    observed: Sequence[KernelObject],
    *,
    device_index: int,
    ext_index: int,
    network: IPNetwork,
    direct_routing: bool = False,
    on_link: frozenset[IPAddress] = frozenset(),
    subnet_len: int | None = None,
) -> list[Op]:
    """The pure planner: ops turning ``observed`` into the entries ``peers`` need, deleting
    entries that are ours (see ``owned_by_vxlan``) and that no peer wants.  For the IPv6
    half: ``network`` the IPv6Network, ``subnet_len`` its IPv6SubnetLen, the IPv6 device."""
    specs = peer_specs(peers, device_index, ext_index, direct_routing, on_link)
    desired = [obj for spec in specs.values() for obj in peer_objects(spec)]
    return diff(desired, observed, owned_by_vxlan(own, device_index, ext_index, network,
                                                  subnet_len=subnet_len))


VXLAN6_OVERHEAD = 70  # outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14


class VtepDevice:
    """One VTEP: ``flannel.<VNI>`` over the IPv4 underlay, ``flannel-v6.<VNI>`` over the
    IPv6 one.  Its MAC is kept once known, so a device deleted under a running daemon comes
    back with the MAC our lease publishes."""

    def __init__(self, half: Half, name: str, local: IPAddress) -> None:
        self.half = half
        self.name = name
        self.local = local
        self.mac: str | None = None
        self.index = 0


class VXLANBackend(Backend):
    """vxlan over the kernel VTEP; ``netlink`` lets tests and the bench run in a namespace.
    The backend owns the devices (one per half of the lease: IPv4, and IPv6 in dual stack);
    each ``VxlanNetwork`` owns its half's device address and the peers' entries."""

    type_name: ClassVar[str] = "vxlan"
    peer_types: ClassVar[frozenset[str]] = frozenset({"vxlan"})

    def __init__(self, ctx: BackendContext, netlink: Netlink | None = None) -> None:
        super().__init__(ctx)
        self.options = parse_options(ctx.netconf.backend.options)
        self.netlink = netlink if netlink is not None else Netlink()
        self._owns_netlink = netlink is None
        self.devices: dict[Half, VtepDevice] = {}
        for half in self.halves:
            if half.v6:
                if ctx.ext.address6 is None:
                    raise ConfigError(
                        f"vxlan: EnableIPv6 needs an IPv6 address on interface {ctx.ext.name} "
                        "(the IPv6 VTEP's local address); it has none (or give --public-ipv6 "
                        "and an interface with a global IPv6 address)")
                self.devices[half] = VtepDevice(half, f"flannel-v6.{self.options.vni}",
                                                ctx.ext.address6)
            else:
                self.devices[half] = VtepDevice(half, self.options.device_name, ctx.ext.address)
        self._device_lock = asyncio.Lock()

    @property
    def vtep_mac(self) -> str | None:
        """The IPv4 VTEP's MAC (what BackendData publishes)."""
        return self.devices[V4].mac if V4 in self.devices else None

    @property
    def device_index(self) -> int:
        return self.devices[V4].index if V4 in self.devices else 0

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        parse_options(options)

    def mtu(self) -> int:
        """Pods' MTU: the IPv6 VTEP's when there is one (its outer header is 20 bytes
        longer; Go writes external MTU - 50 for both, so IPv6 pod packets near the MTU do
        not fit the IPv6 underlay), else the IPv4 VTEP's."""
        if self.options.mtu:
            return self.options.mtu
        return self.device_mtu(V6 if V6 in self.devices else V4)

    def device_mtu(self, half: Half) -> int:
        if self.options.mtu:
            return self.options.mtu
        return self.ctx.ext.mtu - (VXLAN6_OVERHEAD if half.v6 else VXLAN_OVERHEAD)

    def _want_link(self, device: VtepDevice, mac: str) -> VxlanLink:
        return VxlanLink(
            name=device.name, vni=self.options.vni, local=device.local,
            underlay_ifindex=self.ctx.ext.index, port=self.options.port, mac=mac,
            mtu=self.device_mtu(device.half), learning=self.options.learning,
            gbp=self.options.gbp)

    async def ensure_device(self, half: Half = V4) -> tuple[int, bool]:
        """(ops applied, device index changed); raises KernelError when it cannot be made."""
        device = self.devices[half]
        async with self._device_lock:
            observed = await self.netlink.link(device.name)
            device.mac = choose_mac(device.mac, observed)
            ops = plan_device(self._want_link(device, device.mac), observed)
            _raise_failed(await self.netlink.apply(ops), f"vxlan device {device.name}")
            current = await self.netlink.link(device.name)
            if current is None:
                raise KernelError(f"vxlan device {device.name} vanished right after it was set up")
            changed = current.index != device.index
            device.index = current.index
            if half.v6 and ops and self.netlink.netns is None:
                _no_router_advertisements(device.name)
            return len(ops), changed

    async def prepare(self) -> LeaseAttrs:
        for half in self.halves:
            await self.ensure_device(half)
        data = {half: make_backend_data({"VNI": self.options.vni, "VtepMAC": device.mac})
                for half, device in self.devices.items()}
        ext = self.ctx.ext
        return LeaseAttrs(
            public_ip=ext.public_ip,
            backend_type=self.type_name,
            backend_data=data.get(V4, ""),
            public_ipv6=ext.public_ipv6 if V6 in data else None,
            backend_v6_data=data.get(V6, ""),
        )

    async def register_network(self, lease: Lease) -> Network:
        parts: list[Network] = []
        for half in self.halves_of(lease):
            network = VxlanNetwork(self, lease, half)
            await network.set_address()
            parts.append(network)
        return one_network(parts)

    def device_name(self) -> str:
        return self.devices[self.halves[0]].name

    async def close(self) -> None:
        """Leave the devices and every entry in place; only drop our netlink sockets."""
        if self._owns_netlink:
            await self.netlink.close()


def _no_router_advertisements(device: str) -> None:
    """``accept_ra=0`` on an IPv6 VTEP we just made (as Go does): a router advertisement
    must not give it addresses or routes.  Only in the daemon's own namespace (the sysctl
    file is the current namespace's)."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{device}/accept_ra", "w", encoding="ascii") as fh:
            fh.write("0")
    except OSError as exc:
        log.warning("could not set accept_ra=0 on %s: %s", device, exc)


class VxlanNetwork(KernelNetwork[PeerSpec]):
    """One half of a lease's vxlan network: the half's subnet address on its device, three
    entries per peer (or one direct route with DirectRouting)."""

    def __init__(self, backend: VXLANBackend, lease: Lease, half: Half = V4) -> None:
        super().__init__(backend, lease, backend.netlink, log, half)
        self.vxlan = backend
        self.device = backend.devices[half]
        self._on_link: dict[IPAddress, bool] = {}
        self._owns = self._ownership()

    def _ownership(self) -> Callable[[KernelObject], bool]:
        vx, half = self.vxlan, self.half
        network = half.network(vx.ctx.netconf)
        assert network is not None
        return owned_by_vxlan(self.lease, self.device.index, vx.ctx.ext.index, network,
                              vx.disowned6 if half.v6 else vx.disowned,
                              subnet_len=half.subnet_len(vx.ctx.netconf))

    async def set_address(self) -> int:
        """The lease's address on the device, and no other; returns the ops it took."""
        dev = self.device
        observed = await self.netlink.addresses(dev.index, family=self.half.family)
        ops = plan_address(self.lease, dev.index, observed, self.half)
        _raise_failed(await self.netlink.apply(ops), f"address of {dev.name}")
        return len(ops)

    async def retire(self) -> None:
        """The node moved to another subnet: its address goes (the next network's repair
        re-plans every peer against the kernel)."""
        subnet = self.half.subnet(self.lease)
        assert subnet is not None
        await self.netlink.apply(
            [Delete(Address(self.device.index, subnet.network_address, self.half.host_prefix))])

    async def before_repair(self) -> tuple[int, bool]:
        device_ops, recreated = await self.vxlan.ensure_device(self.half)
        address_ops = await self.set_address()
        self._owns = self._ownership()  # the device index, the refused leases may have moved
        if recreated:
            self._on_link = {}
        return device_ops + address_ops, recreated

    async def prefetch(self, leases: Sequence[Lease], full: bool) -> None:
        """DirectRouting: whether each public address is on-link (``ip route get``, no
        gateway)."""
        if not self.vxlan.options.direct_routing:
            return
        half = self.half
        wanted = {ip for p in leases if (ip := half.public_ip(p.attrs)) is not None}
        ips = sorted((ip for ip in wanted if full or ip not in self._on_link), key=str)
        routes = await self.netlink.route_get(ips)
        for ip, route in zip(ips, routes, strict=True):
            self._on_link[ip] = route is not None and route.gateway is None
        if full:
            self._on_link = {ip: v for ip, v in self._on_link.items() if ip in wanted}

    def peer_spec(self, lease: Lease, previous: PeerSpec | None) -> PeerSpec | None:
        vx, dev = self.vxlan, self.device
        peer = previous.peer if previous is not None else vxlan_peer(lease, self.half)
        if peer is None:
            return None
        direct = vx.options.direct_routing and self._on_link.get(peer.public_ip, False)
        return spec_for(peer, dev.index, vx.ctx.ext.index, direct, previous)

    def peer_objects(self, spec: PeerSpec) -> tuple[KernelObject, ...]:
        return peer_objects(spec)

    def owns(self, obj: KernelObject) -> bool:
        return self._owns(obj)

    async def observe(self, known: Mapping[Key, KernelObject]) -> list[KernelObject]:
        """Main-table routes of the half's family on the device and the external interface,
        the device's neighbours and fdb entries."""
        family, dev = self.half.family, self.device.index
        ifindexes = (dev, self.vxlan.ctx.ext.index)
        observed: list[KernelObject] = [
            r for r in await self.netlink.routes(family=family, known=known)
            if r.ifindex in ifindexes]
        observed += await self.netlink.neighbours(dev, family=family, known=known)
        observed += await self.netlink.fdb(dev, family=family, known=known)
        return observed


def _raise_failed(outcomes: Sequence[Outcome], what: str) -> None:
    failed = [o for o in outcomes if not o.ok]
    if failed:
        first = failed[0]
        raise KernelError(
            f"{what}: {first.kind} failed: {first.message or os.strerror(first.errno)}",
            first.errno)
