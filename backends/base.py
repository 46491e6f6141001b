"""The backend interface: what the daemon asks of vxlan, host-gw and udp.

Shaped after Go flannel's two levels (a factory per type, a network per lease), flattened into
one object per daemon run, driven by the daemon in this order:

1. ``validate_options(options)`` (class method, pure): check ``Backend`` options of the network
   config; used by the daemon and by ``flannelctl config set`` alike.
2. ``prepare()``: create or reuse the fabric device (a VTEP MAC must exist before the lease is
   written) and return the ``LeaseAttrs`` to publish.
3. ``activate(lease)``: program what depends on the node's own lease (device address, routes).
   Called again when the daemon re-acquired a *different* subnet: it then replaces what
   depended on the old lease (the old device address goes; udp stops its old datapath thread,
   so there is always one).
4. ``reconcile(peers, full)``: make the kernel match the peer set, idempotently; ``full`` observes
   the kernel (start-up and drift pass) instead of trusting the last applied state.
   ``apply_changes(changes, peers)`` between full passes: only the peers named by the lease
   events since the last pass are planned (O(changes)).
5. ``close()``: stop background work but leave the datapath in place, so pods keep talking while
   the daemon restarts.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any, ClassVar

from flanneld.lease import Lease, LeaseAttrs
from flanneld.metrics import DropSample, ForwardingSource, TrafficSample
from flanneld.netconfig import NetworkConfig

if TYPE_CHECKING:  # netlink imports pyroute2; config validation must not
    from flanneld.netlink import Netlink


@dataclass(frozen=True)
class ExternalInterface:
    """The node's underlay interface, chosen by --iface / --iface-regex / default route."""

    name: str
    index: int
    address: IPv4Address  # an address of the interface (local VTEP / source address)
    public_ip: IPv4Address  # what goes into the lease (--public-ip, else ``address``)
    mtu: int


@dataclass(frozen=True)
class BackendContext:
    ext: ExternalInterface
    netconf: NetworkConfig


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
        self.disowned: Collection[tuple[IPv4Network, IPv4Address]] = frozenset()

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Raise NetworkConfigError naming ``Backend.<Option>`` for a bad option value."""
        return None

    def handles(self, lease: Lease) -> bool:
        return lease.attrs.backend_type in self.peer_types

    @abc.abstractmethod
    def mtu(self) -> int:
        """MTU pods should use (written to subnet.env as FLANNEL_MTU)."""

    @abc.abstractmethod
    async def prepare(self) -> LeaseAttrs:
        """Create or reuse the fabric device; return the attributes to publish in the lease."""

    @abc.abstractmethod
    async def activate(self, lease: Lease) -> None:
        """Program what depends on the node's own lease."""

    @abc.abstractmethod
    async def reconcile(self, peers: Mapping[IPv4Network, Lease], full: bool) -> ReconcileResult:
        """Converge the datapath to ``peers`` (leases of other nodes this backend handles)."""

    async def apply_changes(
        self, changes: Mapping[IPv4Network, Lease | None], peers: Mapping[IPv4Network, Lease]
    ) -> ReconcileResult:
        """Apply lease events: the peers named in ``changes`` (a lease, or None when gone),
        planning only their kernel objects, so one event costs O(1) whatever the number of
        peers.  ``peers`` is every peer (after the changes; not to be kept).  The default is
        an incremental ``reconcile`` over ``peers``."""
        return await self.reconcile(peers, full=False)

    def wanted(self, own: Lease, lease: Lease | None) -> Lease | None:
        """``lease`` if this backend programs it as a peer of ``own``, else None."""
        if lease is None or not self.handles(lease) or lease.subnet == own.subnet:
            return None
        return None if lease.attrs.public_ip == own.attrs.public_ip else lease

    def forwarding_source(self) -> ForwardingSource:
        """Traffic counters for the metrics: by default the kernel's counters of the fabric
        device (``device_name``), read over netlink in the daemon's own namespace; the udp
        backend overrides it with per-peer counters."""
        return netlink_device_source(self.device_name())

    def device_name(self) -> str:
        """The fabric device whose counters measure forwarded traffic."""
        return self.ctx.ext.name

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work; leave the datapath in place."""
