"""The udp backend for the daemon: TUN `flannel0` + the in-process datapath (one poll() thread).

Why and history: Go flannel's udp backend (the oldest one) runs a C proxy beside the Go code
and feeds it routes over a control socket. Here the datapath (`datapath.py`) runs in one thread
of the daemon process and the network (`UDPNetwork`) calls its `set_route`/`del_route` directly; the lease is
written as Go writes it (PublicIP only: no BackendType, no BackendData). Peers are Go udp leases
(empty BackendType). Beyond flannel, the datapath drops datagrams from senders without a lease.
`Backend.Offload` (ours, ignored by Go flannel; default true) selects the numpy TSO/GSO path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar, TypeVar

from flanneld.backends.base import Backend, BackendContext, Network, ReconcileResult, log_peer_change
from flanneld.backends.udp import core, telemetry
from flanneld.backends.udp.datapath import DEFAULT_PORT, Datapath, open_socket
from flanneld.backends.udp.device import device_ops
from flanneld.backends.udp.tun import DEFAULT_NAME, Tun, open_tun
from flanneld.errors import NetworkConfigError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.metrics import DropSample, ForwardingSource, TrafficSample
from flanneld.netlink import Netlink
from flanneld.netops import Address, Delete, Op

T = TypeVar("T")
log = logging.getLogger(__name__)


def _option(options: Mapping[str, Any], name: str, default: Any) -> Any:
    for k, v in options.items():
        if k.lower() == name.lower():
            return v
    return default


def _in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` in a thread that entered `netns` (fds it opens stay in that namespace)."""
    if netns is None:
        return fn()
    from flanneld.netlink import _netns_path, _setns

    box: list[Any] = []

    def run() -> None:
        try:
            _setns(_netns_path(netns))
            box.append(fn())
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    t = threading.Thread(target=run, name="udp-netns-open")
    t.start()
    t.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    result: T = box[0]
    return result


class UDPBackend(Backend):
    type_name: ClassVar[str] = "udp"
    peer_types: ClassVar[frozenset[str]] = frozenset({""})

    def __init__(self, ctx: BackendContext, netlink: Netlink | None = None,
                 netns: str | None = None, tun_name: str = DEFAULT_NAME) -> None:
        super().__init__(ctx)
        opts = ctx.netconf.backend.options
        self.validate_options(opts)
        self.port = int(_option(opts, "Port", DEFAULT_PORT))
        self.offload = bool(_option(opts, "Offload", True))
        self._netns = netns
        self._tun_name = tun_name
        self.netlink = netlink if netlink is not None else Netlink(netns)
        self._owns_netlink = netlink is None
        self._tun: Tun | None = None
        self._sock: socket.socket | None = None
        self.datapath: Datapath | None = None

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        port = _option(options, "Port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise NetworkConfigError("Backend.Port", f"must be an integer 1-65535, got {port!r}")
        if not isinstance(_option(options, "Offload", True), bool):
            raise NetworkConfigError("Backend.Offload", "must be true or false")

    def mtu(self) -> int:
        return self.ctx.ext.mtu - core.UDP_ENCAP_OVERHEAD

    async def prepare(self) -> LeaseAttrs:
        """Open flannel0 and bind <iface address>:Port (as Go does) before the lease exists."""
        mtu, bind = self.mtu(), str(self.ctx.ext.address)

        def open_both() -> tuple[Tun, socket.socket]:
            tun = open_tun(self._tun_name, offload=self.offload, mtu=mtu)
            try:
                return tun, open_socket(bind, self.port)
            except BaseException:
                tun.close()
                raise

        self._tun, self._sock = _in_netns(self._netns, open_both)
        return LeaseAttrs(public_ip=self.ctx.ext.public_ip)

    async def register_network(self, lease: Lease) -> UDPNetwork:
        """Start forwarding for ``lease``: flannel0's address, then the datapath thread.  The
        previous network must have been retired or closed (one thread, one address)."""
        if self._tun is None or self._sock is None:
            raise RuntimeError("register_network before prepare")
        if self.datapath is not None:
            raise RuntimeError("register_network while another udp network is running")
        await self.configure_device(lease.subnet)
        self.datapath = Datapath(self._tun, self._sock, str(lease.subnet), self.mtu(), self.port,
                                 offload=self.offload)
        self.datapath.start(asyncio.get_running_loop())
        return UDPNetwork(self, lease, self.datapath)

    def ifindex(self) -> int:
        assert self._tun is not None
        name = self._tun.name
        return socket.if_nametoindex(name) if self._netns is None else \
            _in_netns(self._netns, lambda: socket.if_nametoindex(name))

    async def configure_device(self, subnet: IPv4Network) -> int:
        """`<subnet .0>/32` on flannel0 (and no other address) and the Network routed
        through it; returns failures."""
        ifindex = self.ifindex()
        ops: list[Op] = list(device_ops(ifindex, subnet, self.ctx.netconf.network))
        want = IPv4Address(subnet.network_address)
        ops += [Delete(a) for a in await self.netlink.addresses(ifindex) if a.address != want]
        outcomes = await self.netlink.apply(ops)
        return sum(1 for o in outcomes if not o.ok)

    def stop_datapath(self) -> None:
        if self.datapath is not None:
            self.datapath.stop(asyncio.get_running_loop())
            self.datapath = None

    def forwarding_source(self) -> ForwardingSource:
        """Per-peer (remote subnet) packets/bytes by direction and drops by reason, read from
        the datapath's counters at scrape time (nothing is added to the hot path)."""

        def source() -> list[TrafficSample | DropSample]:
            dp = self.datapath
            return telemetry.samples(dp) if dp is not None else []

        return source

    def stats(self) -> dict[str, Any]:
        """Plain-data counters (per peer and direction, drops by reason) for metrics."""
        return self.datapath.stats() if self.datapath is not None else {}

    async def close(self) -> None:
        """Stop forwarding and close flannel0 (an in-process datapath cannot outlive us)."""
        self.stop_datapath()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tun is not None:
            with contextlib.suppress(OSError):
                self._tun.close()
            self._tun = None
        if self._owns_netlink:
            await self.netlink.close()


class UDPNetwork(Network):
    """One lease's udp network: the datapath thread forwarding for the lease's subnet, with a
    route (in the datapath, not the kernel) per peer."""

    def __init__(self, backend: UDPBackend, lease: Lease, datapath: Datapath) -> None:
        super().__init__(backend, lease)
        self.udp = backend
        self.datapath = datapath
        self._peers: dict[IPv4Network, Lease] = {}

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    def _set(self, subnet: IPv4Network, peer: Lease | None, event: bool = False) -> int:
        """The datapath's route for ``subnet``: 1 when it changed.  ``event``: logged as a
        peer change (a repair is not: it finds what the events did not say)."""
        dp = self.datapath
        if event:
            log_peer_change(log, self._peers.get(subnet), peer)
        have = dp.routes.get(subnet)
        if peer is None:
            self._peers.pop(subnet, None)
            if have is None:
                return 0
            dp.del_route(str(subnet))
            return 1
        self._peers[subnet] = peer
        host = str(peer.attrs.public_ip)
        if have is not None and have[0] == host:
            return 0
        dp.set_route(str(subnet), host)
        return 1

    async def apply(self, changes: Mapping[IPv4Network, Lease | None]) -> ReconcileResult:
        """One datapath route per named peer: O(changes)."""
        applied = sum(self._set(subnet, self.wanted(lease), event=True)
                      for subnet, lease in changes.items())
        return ReconcileResult(applied=applied)

    async def repair(self, leases: Mapping[IPv4Network, Lease]) -> ReconcileResult:
        """Every peer's route in the datapath, stale ones gone; flannel0's address and the
        Network route checked against the kernel."""
        wanted = {s: p for s, lease in leases.items() if (p := self.wanted(lease)) is not None}
        stale = [s for s, _ in self.datapath.routes.items() if s not in wanted]
        applied = 0
        for subnet in stale:
            applied += self._set(subnet, None)
        for subnet, peer in wanted.items():
            applied += self._set(subnet, peer)
        failed = await self.udp.configure_device(self.lease.subnet)
        return ReconcileResult(applied=applied, repaired=applied, failed=failed)

    async def retire(self) -> None:
        """Stop this lease's datapath thread and remove its address from flannel0."""
        if self.udp.datapath is self.datapath:
            self.udp.stop_datapath()
        address = Address(self.udp.ifindex(), IPv4Address(self.lease.subnet.network_address), 32)
        await self.udp.netlink.apply([Delete(address)])

    async def close(self) -> None:
        if self.udp.datapath is self.datapath:
            self.udp.stop_datapath()
