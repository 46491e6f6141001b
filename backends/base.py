"""The backend interface, in Go flannel's two levels: a backend per type, a network per lease.

A ``Backend`` (one per daemon run, Go's ``backend.Backend``) owns what outlives a lease: the
fabric device, the socket, the options.  A ``Network`` (Go's ``backend.Network``) is what the
backend programs for one lease of this node, and is made by ``register_network``.  The daemon
drives them in this order:

1. ``Backend.validate_options(options)`` (class method, pure): check the ``Backend`` options of
   the network config; used by the daemon and by ``flannelctl config set`` alike.
2. ``Backend.prepare()``: create or reuse the fabric device (a VTEP MAC must exist before the
   lease is written) and return the ``LeaseAttrs`` to publish.
3. ``Backend.register_network(lease) -> Network``: program what depends on the node's own lease
   (the device address; udp starts its datapath thread).
4. ``Network.repair(leases)``: converge the kernel to every peer in ``leases`` (the accepted
   leases of the cluster, own included: the network picks its peers with ``wanted``),
   observing the kernel, so it also deletes stale entries and counts drift it repaired.  The
   daemon runs it at start and then every drift interval, in a task of its own.
   ``Network.apply(changes)``: between repairs, lease events; only the peers named are
   planned, so an event costs O(1) whatever the number of peers.  ``apply`` may run while a
   ``repair`` waits (between its steps): what ``apply`` decided for a peer wins over what the
   repair had planned from its earlier snapshot.
5. Exactly one ending per network:
   - ``Network.retire()``: the daemon moved to another subnet.  The network removes what it put
     in place for its lease (the old device address; udp stops its datapath thread), and the
     daemon registers a new network for the new lease, whose first ``repair`` re-programs the
     peers.  So there is always one datapath thread and one device address.
   - ``Network.close()``: the daemon stops.  Background work stops; the datapath stays in place
     so pods keep talking while the daemon restarts.
6. ``Backend.close()``: after the network's ``close``: drop sockets (the device stays).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import TYPE_CHECKING, Any, ClassVar

from flanneld.backends.family import V4, Half, halves
from flanneld.errors import ConfigError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.logging_setup import log_event
from flanneld.metrics import DropSample, ForwardingSource, TrafficSample
from flanneld.netconfig import NetworkConfig
from flanneld.netops import IPAddress, IPNetwork

if TYPE_CHECKING:  # netlink imports pyroute2; config validation must not
    from prometheus_client.registry import Collector

    from flanneld.netlink import Netlink


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExternalInterface:
    """The node's underlay interface, chosen by --iface / --iface-regex / default route."""

    name: str
    index: int
    address: IPv4Address  # an address of the interface (local VTEP / source address)
    public_ip: IPv4Address  # what goes into the lease (--public-ip, else ``address``)
    mtu: int
    # IPv6 (dual stack): a global address of the interface, and what goes into the lease as
    # PublicIPv6 (--public-ipv6, else ``address6``); None when the network has no IPv6.
    address6: IPv6Address | None = None
    public_ipv6: IPv6Address | None = None


@dataclass(frozen=True)
class BackendContext:
    ext: ExternalInterface
    netconf: NetworkConfig
    wireguard_driver: str = "auto"  # --wireguard-driver: auto | kernel | userspace


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile pass did: operations applied, how many repaired drift, failures."""

    applied: int = 0
    repaired: int = 0
    failed: int = 0


def netlink_device_source(ifname: str) -> ForwardingSource:
    """Samples from a device's kernel counters; nothing while the device is missing."""

    def source() -> list[TrafficSample | DropSample]:
        from flanneld.netlink import link_counters

        counters = link_counters(ifname)
        if counters is None:
            return []
        return [
            TrafficSample("tx", counters["tx_packets"], counters["tx_bytes"]),
            TrafficSample("rx", counters["rx_packets"], counters["rx_bytes"]),
            DropSample("kernel_tx", counters["tx_dropped"]),
            DropSample("kernel_rx", counters["rx_dropped"]),
        ]

    return source


class Backend(abc.ABC):
    """One backend instance per daemon run."""

    type_name: ClassVar[str]
    # Whether the backend programs the kernel (netlink, TUN, firewall): the daemon then
    # refuses to start without CAP_NET_ADMIN, with one clear line.
    needs_net_admin: ClassVar[bool] = True
    # BackendType strings of peer leases this backend programs ("" is Go's udp lease).
    peer_types: ClassVar[frozenset[str]]

    def __init__(self, ctx: BackendContext, netlink: Netlink | None = None) -> None:
        self.ctx = ctx
        # (subnet, gateway) of leases the daemon refused (see LeaseBook.disowned_routes): a
        # full pass removes such routes on the external interface, which only an accepted
        # hostile lease (or an older daemon that accepted it) can have put there.
        self.disowned: Collection[tuple[IPNetwork, IPAddress]] = frozenset()
        self.disowned6: Collection[tuple[IPNetwork, IPAddress]] = frozenset()  # IPv6 halves
        self.halves = halves(ctx.netconf)  # IPv4, and IPv6 in dual stack
        # Set by the daemon: wake a repair now (the datapath was lost and made again); a
        # /readyz detail line under a name (None clears it).
        self.wake_repair: Callable[[], None] = lambda: None
        self.report: Callable[[str, str | None], None] = lambda name, text: None

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Raise NetworkConfigError naming ``Backend.<Option>`` for a bad option value."""
        return None

    def halves_of(self, lease: Lease) -> list[Half]:
        """The enabled halves ``lease`` has (a missing one is logged: its peers are not
        programmed); ConfigError when it has none."""
        have = []
        for half in self.halves:
            if half.subnet(lease) is None:
                log.warning("lease %s has no %s half: %s peers are not programmed", lease.key,
                            half.name, half.name)
            else:
                have.append(half)
        if not have:
            raise ConfigError(f"lease {lease.key} has none of the enabled halves")
        return have

    def handles(self, lease: Lease) -> bool:
        return lease.attrs.backend_type in self.peer_types

    @abc.abstractmethod
    def mtu(self) -> int:
        """MTU pods should use (written to subnet.env as FLANNEL_MTU)."""

    @abc.abstractmethod
    async def prepare(self) -> LeaseAttrs:
        """Create or reuse the fabric device; return the attributes to publish in the lease."""

    @abc.abstractmethod
    async def register_network(self, lease: Lease) -> Network:
        """Program what depends on the node's own ``lease``; the network that serves it."""

    def metrics_collector(self) -> Collector | None:
        """Backend-specific metrics read at scrape time (wireguard: per-peer handshakes)."""
        return None

    def forwarding_source(self) -> ForwardingSource:
        """Traffic counters for the metrics: by default the kernel's counters of the fabric
        device (``device_name``), read over netlink in the daemon's own namespace; the udp
        backend overrides it with per-peer counters."""
        return netlink_device_source(self.device_name())

    def device_name(self) -> str:
        """The fabric device whose counters measure forwarded traffic."""
        return self.ctx.ext.name

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Drop sockets and background work; leave the datapath in place."""


class Network(abc.ABC):
    """What a backend programs for one lease of this node (see the module docstring), for
    one half of it (``half``: IPv4 or IPv6; a dual-stack node stacks two networks)."""

    def __init__(self, backend: Backend, lease: Lease, half: Half = V4) -> None:
        self.backend = backend
        self.lease = lease
        self.half = half
        self.announce = True  # logs peers added/changed/removed (one network of a stack does)

    def wanted(self, lease: Lease | None) -> Lease | None:
        """``lease`` if this network programs it as a peer, else None: a lease of a type the
        backend handles, with this network's half (an IPv4-only lease is no peer of the IPv6
        network), of another subnet and another public address than ours."""
        own, half = self.lease, self.half
        if lease is None or not self.backend.handles(lease) or lease.subnet == own.subnet:
            return None
        subnet, ip = half.subnet(lease), half.public_ip(lease.attrs)
        if subnet is None or ip is None or subnet == half.subnet(own):
            return None
        return None if ip == half.public_ip(own.attrs) else lease

    @property
    @abc.abstractmethod
    def peer_count(self) -> int:
        """Peers programmed (or being programmed) now."""

    def peer_counts(self) -> dict[str, int]:
        """Peers by family of this network's half(s): {"ipv4": n[, "ipv6": m]}."""
        return {self.half.name.lower(): self.peer_count}

    @abc.abstractmethod
    async def apply(self, changes: Mapping[IPv4Network, Lease | None]) -> ReconcileResult:
        """Lease events: for each subnet named, its lease now (None: gone)."""

    @abc.abstractmethod
    async def repair(self, leases: Mapping[IPv4Network, Lease]) -> ReconcileResult:
        """Observe the kernel and converge it to the peers among ``leases``."""

    async def retire(self) -> None:  # noqa: B027 - optional hook
        """The node left this lease: remove what was put in place for it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """The daemon stops: stop background work, leave the datapath."""


class StackedNetwork(Network):
    """A dual-stack node's network: one network per half, driven together.  A peer counts
    once (the IPv4 network has every peer; an IPv4-only peer is not in the IPv6 one)."""

    def __init__(self, parts: Sequence[Network]) -> None:
        super().__init__(parts[0].backend, parts[0].lease, parts[0].half)
        self.parts = tuple(parts)
        for part in self.parts[1:]:
            part.announce = False

    @property
    def peer_count(self) -> int:
        return max(part.peer_count for part in self.parts)

    def peer_counts(self) -> dict[str, int]:
        return {k: v for part in self.parts for k, v in part.peer_counts().items()}

    async def apply(self, changes: Mapping[IPv4Network, Lease | None]) -> ReconcileResult:
        return _sum([await part.apply(changes) for part in self.parts])

    async def repair(self, leases: Mapping[IPv4Network, Lease]) -> ReconcileResult:
        return _sum([await part.repair(leases) for part in self.parts])

    async def retire(self) -> None:
        for part in self.parts:
            await part.retire()

    async def close(self) -> None:
        for part in self.parts:
            await part.close()


def one_network(parts: Sequence[Network]) -> Network:
    """The network of a lease: its one half's, or the halves' stacked."""
    return parts[0] if len(parts) == 1 else StackedNetwork(parts)


def _sum(results: Sequence[ReconcileResult]) -> ReconcileResult:
    return ReconcileResult(applied=sum(r.applied for r in results),
                           repaired=sum(r.repaired for r in results),
                           failed=sum(r.failed for r in results))


def log_peer_change(log: logging.Logger, old: Lease | None, new: Lease | None) -> None:
    """One line per peer added, changed or removed (nothing for a mere renewal)."""
    if new is None:
        if old is not None:
            log_event(log, "peer removed", subnet=old.subnet, public_ip=old.attrs.public_ip)
    elif old is None or old.attrs != new.attrs:
        log_event(log, "peer changed" if old else "peer added", subnet=new.subnet,
                  public_ip=new.attrs.public_ip)
