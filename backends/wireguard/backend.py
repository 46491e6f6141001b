"""The wireguard backend: pod traffic between nodes encrypted by WireGuard, Go flannel's format.

Devices (``Mode``): ``separate`` (default) makes ``flannel-wg`` for IPv4 (``ListenPort``) and,
in dual stack, ``flannel-wg-v6`` for IPv6 (``ListenPortV6``); ``auto`` / ``ipv4`` / ``ipv6``
make ``flannel-wg`` alone for both families.  Each device holds the node's private key (one key
file: ``keys``), has the lease subnet's network address as a /32 (/128) and one route for the
whole ``Network`` (``IPv6Network``) through it, scope link: WireGuard's allowed IPs pick the
peer, so there are no per-peer routes.  Each peer lease is one WireGuard peer (``peers``).

The device is made by a driver (``driver``): the kernel module where there is one, else
``wireguard-go`` (``--wireguard-driver``).  The lease publishes ``BackendData``
``{"PublicKey":"<base64>","Port":<ListenPort>}`` (and ``BackendV6Data`` with the IPv6 device's
port), byte for byte as Go flannel.

A network per device (``WireguardNetwork``), stacked for ``separate`` dual stack: ``apply``
changes only the peers named (one configuration request), ``repair`` reads the device's peers
and converges them, and re-makes the device first (key, port, MTU, address, route) when it was
lost: a wireguard-go that died is restarted by the driver, which wakes a repair at once.
Peer health (handshakes, bytes) is read every ``STATS_INTERVAL`` for the metrics and /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any, ClassVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flanneld.backends.base import (
    Backend,
    BackendContext,
    Network,
    ReconcileResult,
    log_peer_change,
    one_network,
)
from flanneld.backends.family import V4, V6
from flanneld.backends.planner import diff, plan_address
from flanneld.backends.wireguard.driver import Driver, WireguardDriverError
from flanneld.backends.wireguard.keys import BadKeyError, Key, key_file_path, load_or_create
from flanneld.backends.wireguard.model import DeviceConfig, DeviceState, PeerConfig
from flanneld.backends.wireguard.options import OVERHEAD, WireguardOptions, parse_options
from flanneld.backends.wireguard.peers import (
    DeviceSpec,
    desired_peers,
    go_private,
    key_problem,
    peer_config,
    plan,
    removal,
)
from flanneld.errors import ConfigError
from flanneld.lease import Lease, LeaseAttrs, make_backend_data
from flanneld.logging_setup import log_event
from flanneld.netlink import KernelError, Netlink
from flanneld.netops import KernelObject, Op, Route, SetLink, UnreachableRoute

log = logging.getLogger(__name__)

DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
STATS_INTERVAL = 10.0
# The fallback route's metric: above the device route's (IPv4 0, IPv6 1024, as the kernel
# gives a route added without one).
FALLBACK_METRIC = 4096
HELLO_PORT = 9  # discard: a datagram to a peer's device address makes WireGuard handshake
# Seconds after which the higher key greets a new peer that has not greeted it (``_greet``):
# well past a hello's round trip, well before WireGuard's own retry at 5 s.
GREET_FALLBACK = 1.0
# A peer we keep sending to without a completed handshake for this long is "stalled"
# (WireGuard rejects session keys after 180 s: a working peer with traffic handshakes sooner).
STALLED_AFTER = 180.0


@dataclass
class WgDevice:
    spec: DeviceSpec
    index: int = 0
    observed: float = 0.0  # when its health was last read (time.time())


@dataclass
class PeerHealth:
    """What the last reads of a device said about one peer."""

    subnet: str
    handshake_age: float  # seconds; inf: never
    rx_bytes: int
    tx_bytes: int
    stalled: bool = False


@dataclass
class _Watch:
    tx_at_handshake: int = 0
    last_handshake: float = 0.0
    since: float = field(default_factory=time.time)  # when we first saw the peer
    suspect: bool = False


class WireguardBackend(Backend):
    type_name: ClassVar[str] = "wireguard"
    peer_types: ClassVar[frozenset[str]] = frozenset({"wireguard"})

    def __init__(self, ctx: BackendContext, netlink: Netlink | None = None,
                 driver: Driver | None = None) -> None:
        super().__init__(ctx)
        self.options: WireguardOptions = parse_options(ctx.netconf.backend.options)
        self.netlink = netlink if netlink is not None else Netlink()
        self._owns_netlink = netlink is None
        self._driver = driver
        self._private: Key | None = None
        self.public_key: Key | None = None
        psk = Key.from_base64(self.options.psk) if self.options.psk else None
        ext = ctx.ext
        if V6 in self.halves and ext.public_ipv6 is None:
            raise ConfigError(
                f"wireguard: EnableIPv6 needs an IPv6 address on interface {ext.name} (the IPv6 "
                "endpoint peers send to); it has none (or give --public-ipv6)")
        opts = self.options
        common: dict[str, Any] = {
            "mode": opts.mode, "keepalive": opts.keepalive, "psk": psk,
            "have_public4": not go_private(ext.public_ip),
            "have_public6": ext.public_ipv6 is not None and not go_private(ext.public_ipv6)}
        if opts.separate:
            self.devices = [WgDevice(DeviceSpec(DEVICE_V6 if h.v6 else DEVICE,
                                                opts.listen_port_v6 if h.v6 else opts.listen_port,
                                                (h,), **common)) for h in self.halves]
        else:
            self.devices = [WgDevice(DeviceSpec(DEVICE, opts.listen_port, self.halves, **common))]
        self.networks: list[WireguardNetwork] = []
        self.health: dict[str, dict[Key, PeerHealth]] = {}  # by device name
        self._watch: dict[tuple[str, Key], _Watch] = {}
        self._stats: asyncio.Task[None] | None = None
        self._setup_lock = asyncio.Lock()

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        parse_options(options)

    @property
    def driver(self) -> Driver:
        assert self._driver is not None, "prepare() chooses the driver"
        return self._driver

    def mtu(self) -> int:
        return (self.options.mtu or self.ctx.ext.mtu) - OVERHEAD

    def device_name(self) -> str:
        return self.devices[0].spec.name

    # -- start-up ------------------------------------------------------------------------

    async def prepare(self) -> LeaseAttrs:
        path = key_file_path()
        try:
            self._private, created = load_or_create(path)
        except OSError as exc:
            raise ConfigError(f"wireguard: cannot write the private key file {path}: "
                              f"{exc.strerror or exc}") from None
        except BadKeyError as exc:
            raise ConfigError(f"wireguard: {exc}") from None
        self.public_key = self._private.public()
        log_event(log, "wireguard key " + ("generated" if created else "loaded"), file=path,
                  public_key=self.public_key.base64())
        if self._driver is None:
            from flanneld.backends.wireguard.drivers import choose_driver

            try:
                self._driver = await choose_driver(
                    self.ctx.wireguard_driver, [d.spec.name for d in self.devices],
                    log_dir=str(path.parent))
            except WireguardDriverError as exc:
                raise ConfigError(f"wireguard: {exc}") from None
        log_event(log, "wireguard driver", driver=self.driver.name,
                  requested=self.ctx.wireguard_driver)
        self.driver.on_lost(self._device_lost)
        for dev in self.devices:
            await self.setup_device(dev)
        key = self.public_key.base64()
        data = {dev.spec.halves[0]: make_backend_data({"PublicKey": key, "Port": dev.spec.port})
                for dev in self.devices}
        if not self.options.separate and V6 in self.halves:
            data[V6] = data[V4] if V4 in data else data[self.devices[0].spec.halves[0]]
        ext = self.ctx.ext
        return LeaseAttrs(public_ip=ext.public_ip, backend_type=self.type_name,
                          backend_data=data.get(V4, ""),
                          public_ipv6=ext.public_ipv6 if V6 in self.halves else None,
                          backend_v6_data=data.get(V6, ""))

    def _device_lost(self, name: str) -> None:
        """The driver made the device again (wireguard-go restarted): the repair it wakes
        finds it without our key and sets everything up again (``setup_device``)."""
        log_event(log, "wireguard device lost and made again; reprogramming it",
                  level=logging.WARNING, device=name)
        self.wake_repair()

    async def setup_device(self, dev: WgDevice) -> tuple[int, DeviceState | None, bool]:
        """Make the device exist with our key, port, MTU and up; the changes it took, the
        device's state as read when that took no configuration request (None: it did), and
        whether the device was new (made now, or by wireguard-go's supervisor: no key)."""
        async with self._setup_lock:
            assert self._private is not None and self.public_key is not None
            name, ops = dev.spec.name, 0
            try:
                created = await self.driver.ensure_device(name)
                state: DeviceState | None = None if created else await self.driver.state(name)
                fresh = created or state is None or state.public_key is None
                if state is None or state.public_key != self.public_key \
                        or state.listen_port != dev.spec.port:
                    await self.driver.configure(name, DeviceConfig(
                        private_key=self._private, listen_port=dev.spec.port,
                        replace_peers=created))
                    ops += 1
            except WireguardDriverError as exc:
                raise KernelError(f"wireguard device {name}: {exc}") from None
            link = await self.netlink.link(name)
            if link is None:
                raise KernelError(f"wireguard device {name} is not there after it was made")
            if link.mtu != self.mtu() or not link.up:
                outcome, = await self.netlink.apply([SetLink(name, mtu=self.mtu(), up=True)])
                if not outcome.ok:
                    raise KernelError(f"wireguard device {name}: setting MTU and up failed: "
                                      f"{outcome.message}", outcome.errno)
                ops += 1
            dev.index = link.index
            return ops, state if ops == 0 else None, fresh

    async def register_network(self, lease: Lease) -> Network:
        parts: list[Network] = []
        for dev in self.devices:
            if not any(h.subnet(lease) is not None for h in dev.spec.halves):
                log.warning("lease %s has no subnet for device %s: its peers are not "
                            "programmed", lease.key, dev.spec.name)
                continue
            network = WireguardNetwork(self, lease, dev)
            await network.set_addresses()
            parts.append(network)
        if not parts:
            raise ConfigError(f"lease {lease.key} has none of the enabled halves")
        self.networks = [p for p in parts if isinstance(p, WireguardNetwork)]
        if self._stats is None:
            self._stats = asyncio.create_task(self._stats_loop(), name="wireguard-stats")
        return one_network(parts)

    async def close(self) -> None:
        """Stop reading stats and supervising; devices, keys and peers stay."""
        await _stop(self._stats)
        self._stats = None
        if self._driver is not None:
            await self._driver.close()
        if self._owns_netlink:
            await self.netlink.close()

    # -- health --------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await self.read_health()
            await asyncio.sleep(STATS_INTERVAL)

    async def read_health(self) -> None:
        """Read each device whose health is older than STATS_INTERVAL (a repair's read of
        the device serves too: a device with thousands of peers is not read twice)."""
        for dev in self.devices:
            if time.time() - dev.observed < STATS_INTERVAL:
                continue
            try:
                state = await self.driver.state(dev.spec.name)
            except WireguardDriverError as exc:  # the repair says what is wrong
                log.debug("reading %s: %s", dev.spec.name, exc)
                continue
            except Exception:  # a bug must not end the health reads unseen
                log.exception("reading the health of %s failed", dev.spec.name)
                continue
            self.observe_health(dev, state, time.time())

    def subnet_of(self, dev: WgDevice, key: Key) -> str:
        for network in self.networks:
            if network.device is dev and key in network.programmed:
                return str(network.programmed[key][0].subnet)
        return "unknown"

    def observe_health(self, dev: WgDevice, state: DeviceState, now: float) -> None:
        """Update the peers' health from one read of ``dev``; a peer is stalled when it has
        had no handshake for STALLED_AFTER while we kept sending to it, on two reads in a row
        (idle peers do not handshake, so they are not stalled)."""
        name = dev.spec.name
        dev.observed = now
        seen: dict[Key, PeerHealth] = {}
        for peer in state.peers:
            w = self._watch.setdefault((name, peer.public_key), _Watch(since=now))
            if peer.last_handshake != w.last_handshake:
                w.last_handshake, w.tx_at_handshake = peer.last_handshake, peer.tx_bytes
            reference = peer.last_handshake or w.since
            quiet = now - reference >= STALLED_AFTER and peer.tx_bytes > w.tx_at_handshake
            stalled = quiet and w.suspect
            w.suspect = quiet
            age = now - peer.last_handshake if peer.last_handshake else math.inf
            seen[peer.public_key] = PeerHealth(self.subnet_of(dev, peer.public_key), age,
                                               peer.rx_bytes, peer.tx_bytes, stalled)
        for key in [k for k in self._watch if k[0] == name and k[1] not in seen]:
            del self._watch[key]
        self.health[name] = seen
        names = sorted(h.subnet for devh in self.health.values() for h in devh.values()
                       if h.stalled)
        self.report("wireguard", None if not names else (
            f"wireguard: {len(names)} peer(s) without a handshake for "
            f"{int(STALLED_AFTER)}s while sending: {', '.join(names[:10])}"
            + (" ..." if len(names) > 10 else "")))

    def metrics_collector(self) -> Collector:
        return HealthCollector(self)


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task of ours and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def kick_handshakes(peers: Iterable[PeerConfig]) -> int:
    """One empty datagram through the tunnel to each peer's device address (its subnet's
    network address, on its flannel-wg): WireGuard starts a handshake for it at once."""
    sent = 0
    socks: dict[int, socket.socket] = {}
    try:
        for peer in peers:
            for net in peer.allowed_ips:
                family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
                sock = socks.get(family)
                if sock is None:
                    sock = socks[family] = socket.socket(family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                with contextlib.suppress(OSError):
                    sock.sendto(b"", (str(net.network_address), HELLO_PORT))
                    sent += 1
    finally:
        for sock in socks.values():
            sock.close()
    log_event(log, "wireguard handshakes started", peers=sent)
    return sent


class HealthCollector(Collector):
    """Per-peer WireGuard health, as of the last read of the devices."""

    def __init__(self, backend: WireguardBackend) -> None:
        self.backend = backend

    def describe(self) -> Iterable[Any]:
        yield GaugeMetricFamily("flannel_wireguard_peer_handshake_age_seconds", "",
                                labels=["device", "peer"])
        yield CounterMetricFamily("flannel_wireguard_peer_received_bytes", "",
                                  labels=["device", "peer"])
        yield CounterMetricFamily("flannel_wireguard_peer_transmitted_bytes", "",
                                  labels=["device", "peer"])
        yield GaugeMetricFamily("flannel_wireguard_peers_stalled", "")

    def collect(self) -> Iterable[Any]:
        age = GaugeMetricFamily(
            "flannel_wireguard_peer_handshake_age_seconds",
            "Seconds since the last completed handshake with a peer (+Inf: never).",
            labels=["device", "peer"])
        rx = CounterMetricFamily("flannel_wireguard_peer_received_bytes",
                                 "Bytes received from a peer through WireGuard.",
                                 labels=["device", "peer"])
        tx = CounterMetricFamily("flannel_wireguard_peer_transmitted_bytes",
                                 "Bytes sent to a peer through WireGuard.",
                                 labels=["device", "peer"])
        stalled = 0
        for device, peers in sorted(self.backend.health.items()):
            for h in sorted(peers.values(), key=lambda h: h.subnet):
                age.add_metric([device, h.subnet], h.handshake_age)
                rx.add_metric([device, h.subnet], h.rx_bytes)
                tx.add_metric([device, h.subnet], h.tx_bytes)
                stalled += h.stalled
        yield age
        yield rx
        yield tx
        yield GaugeMetricFamily(
            "flannel_wireguard_peers_stalled",
            f"Peers sent to without a completed handshake for {int(STALLED_AFTER)}s.",
            value=stalled)


class WireguardNetwork(Network):
    """One device's part of a lease's network: the lease's address(es) and the Network
    route(s) on the device, and one WireGuard peer per peer lease."""

    def __init__(self, backend: WireguardBackend, lease: Lease, device: WgDevice) -> None:
        super().__init__(backend, lease, device.spec.halves[0])
        self.wg = backend
        self.device = device
        # What we told the device: public key -> (the lease holding it, its peer config).
        self.programmed: dict[Key, tuple[Lease, PeerConfig]] = {}
        self._key_of: dict[IPv4Network, Key] = {}
        self._lock = asyncio.Lock()
        # New peers of a lower key, to greet if they have not greeted us (see ``_greet``).
        self._unanswered: set[Key] = set()
        self._fallback: asyncio.Task[None] | None = None

    @property
    def peer_count(self) -> int:
        return len(self.programmed)

    def peer_counts(self) -> dict[str, int]:
        halves = self.device.spec.halves
        if len(halves) == 1:
            return {halves[0].name.lower(): self.peer_count}
        return {h.name.lower(): sum(1 for _, p in self.programmed.values()
                                    if any(ip.version == (6 if h.v6 else 4)
                                           for ip in p.allowed_ips))
                for h in halves}

    def wanted(self, lease: Lease | None) -> Lease | None:
        own = self.lease
        if lease is None or not self.backend.handles(lease) or lease.subnet == own.subnet:
            return None
        peer = peer_config(self.device.spec, lease)
        if peer is None or peer.endpoint is None:
            return None
        if peer.endpoint.address in (own.attrs.public_ip, own.attrs.public_ipv6):
            return None
        return lease

    # -- the lease's own objects on the device ------------------------------------------

    async def set_addresses(self) -> int:
        """The lease's address (per half of the device) and the Network route through the
        device; every other address and route of those families on it goes (the device is
        flannel's; IPv6 link-local ones are the kernel's).  Under the Network route, an
        ``unreachable`` route for the Network (metric FALLBACK_METRIC) stays when the device
        goes (wireguard-go died: its TUN and the route on it are gone), so that pod traffic
        fails closed instead of leaving by the default route in clear.  It is left in place
        when the daemon stops, as the device is."""
        dev, netconf = self.device, self.backend.ctx.netconf
        ops: list[Op] = []
        for half in dev.spec.halves:
            if half.subnet(self.lease) is None:
                continue
            observed = await self.wg.netlink.addresses(dev.index, family=half.family)
            ops += plan_address(self.lease, dev.index, observed, half)
            network = half.network(netconf)
            assert network is not None
            routes: Sequence[KernelObject] = [
                r for r in await self.wg.netlink.routes(family=half.family)
                if r.ifindex == dev.index and not r.dst.is_link_local]
            ops += diff([Route(network, dev.index)], routes, lambda _: True)
            fallback = UnreachableRoute(network, FALLBACK_METRIC)
            ops += diff([fallback], [u for u in await self.wg.netlink.unreachable_routes(
                half.family) if u.key == fallback.key], lambda _: True)
        outcomes = await self.wg.netlink.apply(ops)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise KernelError(f"{dev.spec.name}: {failed[0].kind} failed: {failed[0].message}",
                              failed[0].errno)
        return len(ops)

    async def retire(self) -> None:
        """The node moved to another subnet: its address(es) on the device go (the next
        network's repair converges the peers)."""
        from flanneld.netops import Address, Delete

        await self.close()  # no hellos from a network that is gone
        dev = self.device
        await self.wg.netlink.apply([
            Delete(Address(dev.index, subnet.network_address, half.host_prefix))
            for half in dev.spec.halves if (subnet := half.subnet(self.lease)) is not None])

    # -- peers ---------------------------------------------------------------------------

    async def _configure(self, peers: Sequence[PeerConfig]) -> None:
        if not peers:
            return
        try:
            await self.wg.driver.configure(self.device.spec.name, DeviceConfig(peers=peers))
        except WireguardDriverError as exc:
            raise KernelError(f"wireguard device {self.device.spec.name}: {exc}") from None

    async def apply(self, changes: Mapping[IPv4Network, Lease | None]) -> ReconcileResult:
        """Only the peers named: one configuration request for all of them."""
        async with self._lock:
            assert self.wg.public_key is not None
            ops: list[PeerConfig] = []
            before = set(self.programmed)
            for subnet, lease in changes.items():
                ops += self._change(subnet, self.wanted(lease), self.wg.public_key)
            await self._configure(ops)
            self._greet([op for op in ops if not op.remove and op.public_key not in before])
            return ReconcileResult(applied=len(ops))

    def _greet(self, added: Sequence[PeerConfig]) -> None:
        """Start the handshake with new peers from one side only: the node whose public key
        is the lower one.  Two nodes whose first packets cross start two handshakes at once,
        and wireguard-go then drops both answers and waits 5 s (REKEY_TIMEOUT) to try again
        (measured in the lab: both directions silent for 5 s after start, 2 runs in 5).

        That hello can come too early, though: a node that joins publishes its lease before
        it programs its peers, so the hello of a node that saw the lease at once finds no
        peer there, is dropped, and is tried again only after those 5 s (a lab test's first
        ping between two nodes failed 4 runs in 6).  So the higher key greets too, after
        GREET_FALLBACK, each of its new peers it has had no handshake with: it has sent that
        peer nothing yet, so its hello goes out at once and crosses nothing."""
        assert self.wg.public_key is not None
        own = self.wg.public_key.raw
        mine = [op for op in added if own < op.public_key.raw]
        if mine:
            kick_handshakes(mine)
        theirs = {op.public_key for op in added if own > op.public_key.raw}
        if theirs:
            self._unanswered |= theirs
            if self._fallback is None or self._fallback.done():
                self._fallback = asyncio.create_task(self._greet_unanswered(),
                                                     name=f"{self.device.spec.name}-greet")

    async def _greet_unanswered(self) -> None:
        while self._unanswered:  # peers added while the device was read: one more round
            await asyncio.sleep(GREET_FALLBACK)
            keys, self._unanswered = self._unanswered, set()
            try:
                state = await self.wg.driver.state(self.device.spec.name)
            except WireguardDriverError as exc:  # a repair will find out what is wrong
                log.debug("reading %s for the hellos: %s", self.device.spec.name, exc)
                continue
            self.wg.observe_health(self.device, state, time.time())  # one read serves both
            silent = [self.programmed[p.public_key][1] for p in state.peers
                      if p.public_key in keys and not p.last_handshake
                      and p.public_key in self.programmed]
            if silent:
                kick_handshakes(silent)

    async def close(self) -> None:
        await _stop(self._fallback)
        self._fallback = None

    def _change(self, subnet: IPv4Network, lease: Lease | None, own: Key) -> list[PeerConfig]:
        old_key = self._key_of.get(subnet)
        old = self.programmed.get(old_key) if old_key is not None else None
        new = peer_config(self.device.spec, lease) if lease is not None else None
        if new is not None:
            problem = key_problem(new.public_key, own, self.programmed.get(new.public_key),
                                  subnet)
            if problem is not None:
                log_event(log, "peer not programmed", level=logging.WARNING, subnet=subnet,
                          device=self.device.spec.name, reason=problem)
                new = None
        if self.announce:
            log_peer_change(log, old[0] if old is not None else None,
                            lease if new is not None else None)
        ops: list[PeerConfig] = []
        if old is not None and old_key is not None and (new is None or new.public_key != old_key):
            ops.append(removal(old_key))  # a new key for the same node replaces the old peer
            del self.programmed[old_key]
            del self._key_of[subnet]
        if new is not None and (old is None or old[1] != new):
            assert lease is not None
            ops.append(new)
            self.programmed[new.public_key] = (lease, new)
            self._key_of[subnet] = new.public_key
        return ops

    def _drift(self, op: PeerConfig) -> bool:
        """A repair's change the device should not have needed: a peer we never told it
        (removed), or one we told it exactly so (made again)."""
        told = self.programmed.get(op.public_key)
        if op.remove:
            return told is None
        return told is not None and told[1] == op

    async def repair(self, leases: Mapping[IPv4Network, Lease]) -> ReconcileResult:
        """Re-make the device if it was lost, check its addresses and route, read its peers
        and converge them to ``leases``; drift: what we had told it and it lacked, or what
        it had and nobody told it."""
        async with self._lock:
            wg, dev = self.wg, self.device
            assert wg.public_key is not None
            setup_ops, state, fresh = await wg.setup_device(dev)  # one read if all is well
            address_ops = await self.set_addresses()
            if state is None:
                try:
                    state = await wg.driver.state(dev.spec.name)
                except WireguardDriverError as exc:
                    raise KernelError(f"wireguard device {dev.spec.name}: {exc}") from None
            peers = [p for p in (self.wanted(lease) for lease in leases.values()) if p]
            # Who holds a key contested by two leases: the lease that holds it now, else the
            # oldest (the same rule as events, so a repair never flips a peer to another).
            held = {lease.subnet for lease, _ in self.programmed.values()}
            peers.sort(key=lambda p: (p.subnet not in held, p.created, p.subnet.network_address))
            desired, refused = desired_peers(dev.spec, wg.public_key, peers)
            for lease, why in refused:
                log_event(log, "peer not programmed", level=logging.WARNING,
                          subnet=lease.subnet, device=dev.spec.name, reason=why)
            ops = plan(desired, state.peers)
            await self._configure(ops)
            if not ops:  # the read is the device as it is now: it serves the health too
                wg.observe_health(dev, state, time.time())
            if fresh and self.programmed:
                # A device made again (wireguard-go restarted) has no sessions: peers that
                # only send to us would wait for WireGuard's 15 s retry.  Say hello now.
                kick_handshakes([peer for _, peer in desired.values()])
            else:
                self._greet([op for op in ops if not op.remove
                             and op.public_key not in self.programmed])
            repaired = sum(1 for op in ops if self._drift(op))
            self.programmed = dict(desired)
            self._key_of = {lease.subnet: key for key, (lease, _) in desired.items()}
            return ReconcileResult(applied=setup_ops + address_ops + len(ops),
                                   repaired=repaired + (address_ops if not setup_ops else 0))
