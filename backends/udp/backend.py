"""The udp backend for the daemon: TUN `flannel0` + the in-process datapath (one poll() thread).

Why and history: Go flannel's udp backend (the oldest one) runs a C proxy beside the Go code
and feeds it routes over a control socket. Here the datapath (`datapath.py`) runs in one thread
of the daemon process and `reconcile` calls its `set_route`/`del_route` directly; the lease is
written as Go writes it (PublicIP only: no BackendType, no BackendData). Peers are Go udp leases
(empty BackendType). Beyond flannel, the datapath drops datagrams from senders without a lease.
`Backend.Offload` (ours, ignored by Go flannel; default true) selects the numpy TSO/GSO path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar, TypeVar

from flanneld.backends.base import Backend, BackendContext, ReconcileResult
from flanneld.backends.udp import core, telemetry
from flanneld.backends.udp.datapath import DEFAULT_PORT, Datapath, open_socket
from flanneld.backends.udp.device import device_ops
from flanneld.backends.udp.tun import DEFAULT_NAME, Tun, open_tun
from flanneld.errors import NetworkConfigError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.metrics import DropSample, ForwardingSource, TrafficSample
from flanneld.netlink import Netlink
from flanneld.netops import Delete, Op

T = TypeVar("T")


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
        self._netlink = netlink if netlink is not None else Netlink(netns)
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

    async def activate(self, lease: Lease) -> None:
        """Start forwarding for ``lease``; called again after the daemon re-acquired another
        subnet, it stops the old datapath thread first and moves flannel0's address (one
        thread, one address: the peers' routes are set again by the next reconcile)."""
        if self._tun is None or self._sock is None:
            raise RuntimeError("activate before prepare")
        loop = asyncio.get_running_loop()
        if self.datapath is not None:
            self.datapath.stop(loop)
            self.datapath = None
        await self._configure_device(lease.subnet)
        self.datapath = Datapath(self._tun, self._sock, str(lease.subnet), self.mtu(), self.port,
                                 offload=self.offload)
        self.datapath.start(loop)

    async def _configure_device(self, subnet: IPv4Network) -> int:
        """`<subnet .0>/32` on flannel0 (and no other address) and the Network routed
        through it; returns failures."""
        assert self._tun is not None
        ifindex = socket.if_nametoindex(self._tun.name) if self._netns is None else \
            _in_netns(self._netns, lambda: socket.if_nametoindex(self._tun.name))  # type: ignore[union-attr]
        ops: list[Op] = list(device_ops(ifindex, subnet, self.ctx.netconf.network))
        want = IPv4Address(subnet.network_address)
        ops += [Delete(a) for a in await self._netlink.addresses(ifindex) if a.address != want]
        outcomes = await self._netlink.apply(ops)
        return sum(1 for o in outcomes if not o.ok)

    async def reconcile(self, peers: Mapping[IPv4Network, Lease], full: bool) -> ReconcileResult:
        dp = self.datapath
        if dp is None:
            raise RuntimeError("reconcile before activate")
        wanted = {s: str(lease.attrs.public_ip) for s, lease in peers.items()
                  if self.handles(lease) and not dp.local.contains(int(s.network_address))}
        have = {net: host for net, (host, _port) in dp.routes.items()}
        applied = 0
        for subnet in have.keys() - wanted.keys():
            dp.del_route(str(subnet))
            applied += 1
        for subnet, host in wanted.items():
            if have.get(subnet) != host:
                dp.set_route(str(subnet), host)
                applied += 1
        failed = 0
        if full:
            failed = await self._configure_device(
                IPv4Network((dp.local.network, bin(dp.local.mask).count("1"))))
        return ReconcileResult(applied=applied, repaired=applied if full else 0, failed=failed)

    async def apply_changes(
        self, changes: Mapping[IPv4Network, Lease | None], peers: Mapping[IPv4Network, Lease]
    ) -> ReconcileResult:
        """One route of the datapath per named peer: O(changes)."""
        dp = self.datapath
        if dp is None:
            raise RuntimeError("reconcile before activate")
        applied = 0
        for subnet, lease in changes.items():
            host = None if lease is None or not self.handles(lease) or dp.local.contains(
                int(subnet.network_address)) else str(lease.attrs.public_ip)
            have = dp.routes.get(subnet)
            if host is None:
                if have is not None:
                    dp.del_route(str(subnet))
                    applied += 1
            elif have is None or have[0] != host:
                dp.set_route(str(subnet), host)
                applied += 1
        return ReconcileResult(applied=applied)

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
        if self.datapath is not None:
            self.datapath.stop(asyncio.get_running_loop())
            self.datapath = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tun is not None:
            with contextlib.suppress(OSError):
                self._tun.close()
            self._tun = None
        if self._owns_netlink:
            await self._netlink.close()
