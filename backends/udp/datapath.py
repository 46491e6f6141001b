"""The udp backend's hot loop: TUN <-> UDP socket, flannel's wire (payload = inner IPv4).

Why: Go flannel forwards in a C poll() loop (proxy.c), and so do we, in one thread
(`io="poll"`, the default) beside the daemon's event loop: it sleeps in poll() with the GIL
released, forwards a lone packet inline with as little Python as possible between the wake-up
and the syscall (what a Python forwarder's round-trip time is made of), and drains an fd that
stays readable in batches (`BATCH`) into preallocated buffers. `io="loop"` keeps the older
design (two asyncio readers on the caller's loop). All packet logic is the sans-IO `core` (and
`gso` for the offload mode), with the common case inlined. Route updates are plain method calls
from any thread (`set_route`/`del_route`, also over a JSON-lines unix control socket like
flannel's): a lookup sees the old or the new table. Counters are plain lists bumped in place;
`stats()` exports them as plain data, `telemetry.samples()` as metrics samples.

Run standalone inside a namespace (as root):
    python -m flanneld.backends.udp.datapath --tun flannel0 --bind 198.18.0.1:8285 \
        --subnet 10.244.1.0/24 --network 10.244.0.0/16 --route 10.244.2.0/24=198.18.0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from flanneld.backends.udp import core
from flanneld.backends.udp.core import DropReason
from flanneld.backends.udp.tun import Tun, open_tun

DEFAULT_PORT = 8285
SOCKET_BUFFER = 4 * 1024 * 1024  # same as bench/udp/cfwd.c: 212 KB loses 13% under load
BATCH = 64  # packets per readable callback before yielding to the other direction
SOL_UDP = 17
SO_SNDBUFFORCE = 32  # not exported by Python 3.11's socket module
SO_RCVBUFFORCE = 33
IO_MODES = ("poll", "loop")
RETRY_AFTER_ERROR = 0.5  # seconds the datapath thread waits after an unexpected error
POLL_TIMEOUT_MS = 200  # the poll thread's stop check (stop() also wakes it through the TUN)
VNET_HDR_LEN = 10  # struct virtio_net_hdr ahead of each TUN read in offload mode (gso.VNET_HDR)
# virtio_net_hdr's first two bytes (flags, gso_type) read as a native 16-bit word: any GSO type
# or NEEDS_CSUM (flags bit 0) sends a TUN read off the inline path
VNET_GSO_OR_CSUM = int.from_bytes(bytes([0x01, 0xFF]), sys.byteorder)
FAST_ROUTES_MAX = 65536  # per-destination route cache entries before it starts over
# TTL - 1 patched into the header checksum read as a native-order 16-bit word: RFC 1624's
# HC' = ~(~HC + 0xfeff) is HC' = (HC + 0x100) % 0xffff in network order and, byte-swapped,
# (HC + 1) % 0xffff on a little-endian host (tests/udp/test_udp_hot_path.py runs all 65536 values
# through the running loop)
CSUM_TTL_STEP = 1 if sys.byteorder == "little" else 0x100


def native_u32(value: int) -> int:
    """`value` (an IPv4 address or mask) as read from packet bytes by a native-order view."""
    return int.from_bytes(value.to_bytes(4, "big"), sys.byteorder)


log = logging.getLogger(__name__)


class Drain(Protocol):
    """Reads up to `budget` packets from one fd and forwards them; returns how many it read
    (0: nothing was there)."""

    def __call__(self, budget: int = BATCH) -> int: ...



def open_socket(host: str, port: int, bufsize: int = SOCKET_BUFFER) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, bufsize)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, bufsize)
    sock.bind((host, port))
    return sock


class Datapath:
    """One TUN, one UDP socket, one route table.

    Control methods (`set_route`, `del_route`, `stats`) run on the caller's thread while the
    datapath thread forwards: route updates replace whole dict/tuple entries or change the
    inline path's dicts one atomic step at a time, so a lookup sees the old or the new table.
    Counters have one writer, the datapath thread (or the loop in ``io="loop"``).
    """

    def __init__(self, tun: Tun, sock: socket.socket, subnet: str, mtu: int,
                 port: int = DEFAULT_PORT, offload: bool | None = None,
                 io: str = "poll") -> None:
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, got {io!r}")
        self.tun, self.sock, self.port, self.mtu = tun, sock, port, mtu
        self.io = io
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.local = core.LocalSubnet.parse(subnet)
        self.routes = core.RouteTable()
        self.drops = core.new_drop_counters()
        self.icmp_sent = 0
        # peer underlay host -> [tx_packets, tx_bytes, rx_packets, rx_bytes, (host, port), key]:
        # the key is the inner-source check of a leased host, its one subnet as (mask, network)
        # in native order (what a 32-bit view of the packet's source reads) and in network
        # order (what int.from_bytes(..., "big") reads), or core.NO_SOURCE (several subnets or
        # none: the slow path decides)
        self.peers: dict[str, list[Any]] = {}
        # the poll thread's inline path: leased host -> its peers entry, and a per-destination
        # route cache (native-order address -> peers entry), both mutated in place
        self._leased: dict[str, list[Any]] = {}
        self.fast_routes: dict[int, list[Any]] = {}
        self._route_gen = 0
        self.offload = tun.vnet_hdr if offload is None else offload
        # one buffer per direction (a received packet's answer is read while it is written)
        self._buf = bytearray(65536 + 16)
        self._view = memoryview(self._buf)
        self._tdst = self._view[16:20].cast("I")  # destination, as the route cache keys it
        self._rx_buf = bytearray(65536 + 16)
        self._rx_view = memoryview(self._rx_buf)
        self._rsrc = self._rx_view[12:16].cast("I")  # inner source, as the source keys read it
        self._gso: Any = None
        if self.offload:
            from flanneld.backends.udp.gso import OffloadPath  # numpy only in this mode

            self._gso = OffloadPath(self)

    # -- control interface ----------------------------------------------------------------
    def set_route(self, subnet: str, underlay: str, port: int | None = None) -> None:
        addr = (underlay, self.port if port is None else port)
        old = self.routes.set(subnet, *addr)  # validates; the slow paths follow it at once
        entry = self.peer_counters(underlay)
        entry[4] = addr
        self._source_changed(underlay)  # before the entry enters the lease map
        self._leased[underlay] = entry
        self._routes_changed(old)

    def del_route(self, subnet: str) -> bool:
        old = self.routes.remove(subnet)
        self._routes_changed(old)
        return old is not None

    def _routes_changed(self, old: tuple[str, int] | None) -> None:
        """After one route change: the host that lost its last route leaves the lease map, and
        the route cache starts over (a fill racing with this change is undone by
        `route_miss`, which sees the generation move). Each step is atomic under the GIL, so
        the datapath thread sees the old or the new state."""
        if old is not None:
            self._source_changed(old[0])
            if old[0] not in self.routes.leased:
                self._leased.pop(old[0], None)
        self._route_gen += 1
        self.fast_routes.clear()

    def _source_changed(self, host: str) -> None:
        """Recompute `host`'s inner-source key after a route change, O(1): its one subnet's
        (mask, network) in native and in network order, else NO_SOURCE. One tuple replaced in
        one step, so the datapath thread reads the old or the new key, never half of each."""
        entry = self.peers.get(host)
        if entry is not None:
            sub = self.routes.sole_subnet(host)
            entry[5] = core.NO_SOURCE if sub is None else (
                native_u32(sub[1]), native_u32(sub[0]), sub[1], sub[0])

    def route_entry(self, dst: memoryview) -> list[Any] | None:
        """The peers entry routing destination `dst` (4 bytes), through the route cache; the
        hot loops inline this as ``fast_routes.get(view[0]) or route_miss(dst)``."""
        return self.fast_routes.get(int.from_bytes(dst, sys.byteorder)) or self.route_miss(dst)

    def route_miss(self, dst: memoryview) -> list[Any] | None:
        """Route cache miss of the poll thread: look `dst` (4 bytes) up, remember the entry."""
        gen, fast = self._route_gen, self.fast_routes
        peer = self.routes.lookup(int.from_bytes(dst, "big"))
        if peer is None:
            return None
        entry = self.peers.get(peer[0]) or self.peer_counters(peer[0])
        if len(fast) >= FAST_ROUTES_MAX:
            fast.clear()
        fast[int.from_bytes(dst, sys.byteorder)] = entry
        if self._route_gen != gen:  # a route changed meanwhile: the entry may be stale
            fast.clear()
        return entry

    def stats(self) -> dict[str, Any]:
        return {
            # list(): one C call, safe against a datapath thread adding a peer meanwhile
            "peers": {h: {"tx_packets": c[0], "tx_bytes": c[1], "rx_packets": c[2],
                          "rx_bytes": c[3]} for h, c in list(self.peers.items())},
            "drops": core.drops_by_name(self.drops),
            "icmp_sent": self.icmp_sent,
            "routes": {str(n): h for n, (h, _) in self.routes.items()},
            "offload": self.offload,
            "super_packets": {"tx": self._gso.super_packets_tx, "rx": self._gso.super_packets_rx}
            if self._gso else {"tx": 0, "rx": 0},
        }

    def peer_counters(self, host: str) -> list[Any]:
        # setdefault: atomic under the GIL, the two datapath threads may meet a new peer at once
        return self.peers.setdefault(host, [0, 0, 0, 0, (host, self.port), core.NO_SOURCE])

    # -- the hot loop ---------------------------------------------------------------------
    def handlers(self) -> tuple[Drain, Drain]:
        """The two drain functions (TUN -> underlay, underlay -> TUN) of the selected mode."""
        if self._gso is not None:
            return self._gso.on_tun, self._gso.on_sock
        return self._on_tun, self._on_sock

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start forwarding: the datapath thread (``io="poll"``) or two readers on ``loop``
        (``io="loop"``)."""
        if self.io == "loop":
            if loop is None:
                raise ValueError("io='loop' needs the event loop")
            on_tun, on_sock = self.handlers()
            loop.add_reader(self.tun.fd, on_tun)
            loop.add_reader(self.sock.fileno(), on_sock)
            self._loop = loop
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="udp-datapath")
        self._thread.start()

    def stop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun.fd)
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        if self._thread is not None:
            self._stopping = True
            self.tun.wake()  # ends poll() at once; without a waker, within POLL_TIMEOUT_MS
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        """The datapath thread: forward until `stop()`; an unexpected error (a bug, the TUN
        gone) is logged and forwarding resumes, so one bad packet cannot end the datapath."""
        while not self._stopping:
            try:
                self._forward_poll()
            except Exception:
                log.exception("udp datapath: unexpected error, forwarding resumes in %.1f s",
                              RETRY_AFTER_ERROR)
                time.sleep(RETRY_AFTER_ERROR)

    def _forward_poll(self) -> None:
        """One thread, flannel's design: poll() both fds, forward what is readable.

        Why one thread: a packet written into the TUN whose answer the kernel produces within
        the same write() (a pod answering a ping) is read by the same, awake thread in the next
        round, as in the C proxy; with a thread per direction a second, cold thread had to be
        woken for it. A lone packet is forwarded inline with as little Python as possible
        between the wake-up and the syscall (on a cache-cold interpreter every bytecode costs
        microseconds): a per-destination route cache, the TTL/checksum patch on a native-order
        view, counters in the peer's own list. An fd readable in two consecutive rounds may
        have a backlog and goes through its drain (batches, trains) until a drain finds at most
        one packet. Whatever the inline checks do not take goes through the same slow paths as
        in the drains, which count the drops."""
        tfd, sfd = self.tun.fd, self.sock.fileno()
        os.set_blocking(tfd, False)
        self.sock.setblocking(False)
        poller = select.poll()
        poller.register(tfd, select.POLLIN)
        poller.register(sfd, select.POLLIN)
        poll, readv, sendto, recv, write = poller.poll, os.readv, self.sock.sendto, \
            self.sock.recvmsg_into, os.write
        on_tun, on_sock = self.handlers()
        fast, leased, drops, miss = self.fast_routes, self._leased, self.drops, self.route_miss
        mask_n, net_n = native_u32(self.local.mask), native_u32(self.local.network)
        gso = self._gso
        if gso is not None:
            raw, view, off, one, tdst = gso.buf, gso.view, VNET_HDR_LEN, gso.tun_one, gso.tdst
            rbufs, rwhole, space = gso.rbufs, memoryview(gso.rbuf), gso.cmsg_space
        else:
            raw, view, off, one, tdst = self._buf, self._view, 0, self.tun_slow_path, self._tdst
            rbufs, rwhole, space = [self._rx_view], self._rx_view, 0
        tbufs, rpkt, rslow = [raw], rbufs[0], self.sock_slow_path
        rhdr, rsrc, rdst = rpkt[:20].cast("I"), rpkt[12:16].cast("I"), rpkt[16:20].cast("I")
        thc = view[off + 10:off + 12].cast("H")
        # offload: the virtio-net header's flags and gso_type (no GSO, no partial checksum)
        vnet = view[:2].cast("H") if off else memoryview(bytearray(2)).cast("H")
        lo, limit, at_ttl, step, total = off + 20, self.mtu + off, off + 8, CSUM_TTL_STEP, sum
        tun_busy = sock_busy = False
        while not self._stopping:
            tun_ready = sock_ready = False
            for f, _ev in poll(POLL_TIMEOUT_MS):
                if f == sfd:
                    if sock_busy:  # readable twice in a row: drain (a lone packet ends it)
                        sock_ready = on_sock(BATCH) > 1
                        continue
                    sock_ready = True
                    try:
                        n, anc, _fl, (host, _port) = recv(rbufs, space)
                    except BlockingIOError:
                        continue
                    # leased sender, IPv4 without options, total length, header checksum
                    # (native-order words: the ones' complement sum is byte-order independent),
                    # destination in our subnet, inner source in the sender's subnet (its key:
                    # native (mask, network) first; NO_SOURCE matches nothing -> the slow path)
                    if ((e := leased.get(host)) is not None and not anc and n >= 20
                            and rpkt[0] == 0x45 and (rpkt[2] << 8) | rpkt[3] == n
                            and not total(rhdr) % 0xFFFF and rdst[0] & mask_n == net_n
                            and rsrc[0] & (k := e[5])[0] == k[1]):
                        try:
                            write(tfd, rwhole[:off + n])
                        except OSError:
                            drops[DropReason.TUN_WRITE_FAILED] += 1
                        else:
                            e[2] += 1
                            e[3] += n
                    else:
                        rslow(n, anc, host)
                else:
                    if tun_busy:
                        tun_ready = on_tun(BATCH) > 1
                        continue
                    tun_ready = True
                    try:
                        n = readv(tfd, tbufs)
                    except BlockingIOError:
                        continue
                    if ((e := fast.get(tdst[0]) or miss(view[off + 16:off + 20])) is not None
                            and raw[off] == 0x45 and lo <= n <= limit and (ttl := raw[at_ttl]) > 1
                            and not vnet[0] & VNET_GSO_OR_CSUM):
                        raw[at_ttl] = ttl - 1
                        thc[0] = (thc[0] + step) % 0xFFFF  # RFC 1624, see CSUM_TTL_STEP
                        try:
                            sendto(view[off:n], e[4])
                        except OSError:
                            drops[DropReason.SEND_FAILED] += 1
                        else:
                            e[0] += 1
                            e[1] += n - off
                    else:
                        one(view[:n])
            tun_busy, sock_busy = tun_ready, sock_ready

    # The drains inline the common case (IPv4 without options, TTL > 1, a route / a leased
    # sender, valid header checksum, destination ours, inner source in the sender's subnet by
    # the sender's key, as in the poll thread's inline path): every extra call or attribute
    # look-up is paid many times over when a lone packet (a ping) wakes a cache-cold process.
    # All else takes the slow path through `core`, which also counts the drops.

    def _on_tun(self, budget: int = BATCH) -> int:
        fd, bufs, view, raw, tdst = self.tun.fd, [self._buf], self._view, self._buf, self._tdst
        sendto, mtu, fast, miss, readv = self.sock.sendto, self.mtu, self.fast_routes, \
            self.route_miss, os.readv
        for i in range(budget):
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                return i
            ttl = raw[8]
            peer = (fast.get(tdst[0]) or miss(view[16:20])) \
                if 20 <= n <= mtu and raw[0] == 0x45 and ttl > 1 else None
            if peer is None:
                self.tun_slow_path(view[:n])
                continue
            # TTL - 1 with the RFC 1624 checksum patch: HC' = ~(~HC + 0xfeff), one fold
            hc = (((raw[10] << 8) | raw[11]) ^ 0xFFFF) + 0xFEFF
            hc = ((hc & 0xFFFF) + (hc >> 16)) ^ 0xFFFF
            raw[8] = ttl - 1
            raw[10] = hc >> 8
            raw[11] = hc & 0xFF
            try:
                sendto(view[:n], peer[4])
            except OSError:
                self.drops[DropReason.SEND_FAILED] += 1
                continue
            peer[0] += 1
            peer[1] += n
        return budget

    def tun_slow_path(self, pkt: memoryview) -> None:
        """A packet from the TUN the inline path did not take: forward it or count the drop."""
        if self._stopping:  # Tun.wake's packet
            return
        v = core.from_tun(pkt, self.routes, self.mtu)
        if v.peer is None:
            # `is None`, not `or`: TRUNCATED is 0, a false IntEnum
            self.drops[DropReason.NO_ROUTE if v.drop is None else v.drop] += 1
            if v.reply is not None:
                self.write_tun(v.reply)
            return
        try:
            self.sock.sendto(pkt, v.peer)
        except OSError:
            self.drops[DropReason.SEND_FAILED] += 1
            return
        c = self.peer_counters(v.peer[0])
        c[0] += 1
        c[1] += len(pkt)

    def sock_slow_path(self, n: int, anc: list[tuple[int, int, bytes]], host: str) -> None:
        """A datagram the poll thread's inline checks did not take: an offload train, or one
        packet validated (and its drop counted) by `core`."""
        gso = self._gso
        if gso is not None:
            if anc:
                gso.receive_train(n, anc, host)
                return
            pkt, whole = gso.rview[:n], memoryview(gso.rbuf)[:VNET_HDR_LEN + n]
        else:
            pkt = whole = self._rx_view[:n]
        if not core.accept_received(pkt, host, self.routes, self.local, self.drops):
            return
        try:
            os.write(self.tun.fd, whole)
        except OSError:
            self.drops[DropReason.TUN_WRITE_FAILED] += 1
            return
        c = self.peers.get(host) or self.peer_counters(host)
        c[2] += 1
        c[3] += n

    def _on_sock(self, budget: int = BATCH) -> int:
        recv, view, raw, fd, write = self.sock.recvfrom_into, self._rx_view, self._rx_buf, \
            self.tun.fd, os.write
        routes, local, peers, leased, rsrc = self.routes, self.local, self.peers, self._leased, \
            self._rsrc
        mask, net = local.mask, local.network
        for i in range(budget):
            try:
                n, (host, _port) = recv(raw)
            except BlockingIOError:
                return i
            if not ((c := leased.get(host)) is not None and n >= 20 and raw[0] == 0x45
                    and (raw[2] << 8) | raw[3] == n and not int.from_bytes(raw[:20], "big") % 0xFFFF
                    and int.from_bytes(raw[16:20], "big") & mask == net
                    and rsrc[0] & (k := c[5])[0] == k[1]):
                if not core.accept_received(view[:n], host, routes, local, self.drops):
                    continue
                c = peers.get(host) or self.peer_counters(host)
            try:
                write(fd, view[:n])
            except OSError:
                self.drops[DropReason.TUN_WRITE_FAILED] += 1
                continue
            c[2] += 1
            c[3] += n
        return budget

    def write_tun(self, pkt: bytes) -> None:
        """Write one locally built packet (an ICMP error) into the TUN."""
        try:
            os.write(self.tun.fd, (bytes(10) if self.tun.vnet_hdr else b"") + pkt)
            self.icmp_sent += 1
        except OSError:
            self.drops[DropReason.TUN_WRITE_FAILED] += 1


# -- control socket (JSON lines, like flannel's proxy control socket) --------------------------

def handle_command(dp: Datapath, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    try:
        if op == "set_route":
            dp.set_route(str(cmd["subnet"]), str(cmd["underlay"]), cmd.get("port"))
            return {"ok": True}
        if op == "del_route":
            return {"ok": True, "found": dp.del_route(str(cmd["subnet"]))}
        if op == "stats":
            return {"ok": True, "stats": dp.stats()}
    except (KeyError, ValueError, TypeError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": False, "error": f"unknown op {op!r}"}


async def serve_control(dp: Datapath, path: str) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    cmd = json.loads(line)
                    reply = handle_command(dp, cmd) if isinstance(cmd, dict) else \
                        {"ok": False, "error": "not an object"}
                except json.JSONDecodeError as e:
                    reply = {"ok": False, "error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return await asyncio.start_unix_server(client, path)


def control(path: str, **cmd: Any) -> dict[str, Any]:
    """Blocking client for the control socket (tests, bench, a parent daemon)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(json.dumps(cmd).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


# -- standalone entry point ---------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tun", default="flannel0")
    p.add_argument("--bind", required=True, help="public ip[:port] of this node")
    p.add_argument("--subnet", required=True, help="this node's lease subnet")
    p.add_argument("--network", help="flannel Network; with it the TUN gets addr + route")
    p.add_argument("--external-mtu", type=int, default=1500)
    p.add_argument("--route", action="append", default=[], metavar="SUBNET=UNDERLAY_IP")
    p.add_argument("--offload", action="store_true", help="IFF_VNET_HDR + TSO + UDP GSO/GRO")
    p.add_argument("--control", help="unix socket path for set_route/del_route/stats")
    p.add_argument("--bufsize", type=int, default=SOCKET_BUFFER)
    p.add_argument("--io", choices=IO_MODES, default="poll",
                   help="one poll() thread beside the event loop, or two asyncio readers")
    p.add_argument("--ready-file", help="touched once the datapath forwards")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Datapath:
    """Open the TUN and configure it (before the datapath's own event loop runs)."""
    host, _, port_s = args.bind.partition(":")
    port = int(port_s) if port_s else DEFAULT_PORT
    mtu = args.external_mtu - core.UDP_ENCAP_OVERHEAD
    tun = open_tun(args.tun, offload=args.offload, mtu=mtu)
    try:
        if args.network:
            from flanneld.backends.udp import device

            device.configure(socket.if_nametoindex(tun.name), args.subnet, args.network)
        sock = open_socket(host, port, args.bufsize)
    except BaseException:
        tun.close()
        raise
    dp = Datapath(tun, sock, args.subnet, mtu, port, io=args.io)
    for r in args.route:
        subnet, _, underlay = r.partition("=")
        dp.set_route(subnet, underlay)
    return dp


async def run(dp: Datapath, control_path: str | None = None,
              ready_file: str | None = None) -> None:
    """Forward until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    server = await serve_control(dp, control_path) if control_path else None
    dp.start(loop)
    if ready_file:
        Path(ready_file).write_text(str(os.getpid()))  # noqa: ASYNC240 (tiny, once)
    try:
        await stopped
    finally:
        dp.stop(loop)
        if server is not None:
            server.close()
        if control_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(control_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ipaddress.IPv4Network(args.subnet)
    try:
        dp = build(args)
    except OSError as e:
        print(f"udp datapath: {e}", file=sys.stderr)
        return 1 if e.errno != errno.EPERM else 2
    try:
        asyncio.run(run(dp, args.control, args.ready_file))
    finally:
        dp.sock.close()
        dp.tun.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
