"""The udp backend's hot loop: TUN <-> UDP socket, flannel's wire (payload = inner IPv4).

Why: Go flannel forwards in a C poll() loop (proxy.c). Here each direction has its own thread
that sleeps in read()/recvfrom() with the GIL released (`io="threads"`, the default): a lone
packet wakes the one thread that forwards it, with no event-loop pass around it, which is what
the round-trip time of a Python forwarder is made of. Under load the threads drain in batches
(`BATCH`) into preallocated buffers, one per direction. `io="loop"` keeps the older design (two
asyncio readers on the caller's loop). All packet logic is the sans-IO `core` (and `gso` for the
offload mode), with the common case inlined in the drains. Route updates are plain method calls
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
import os
import select
import signal
import socket
import struct
import sys
import threading
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
IO_MODES = ("threads", "loop")
VNET_HDR_LEN = 10  # struct virtio_net_hdr ahead of each TUN read in offload mode (gso.VNET_HDR)
RCV_TIMEOUT = struct.pack("ll", 0, 200_000)  # struct timeval: the socket thread's stop check


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
    datapath threads forward: route updates replace whole dict/tuple entries, so a lookup sees
    the old or the new table. Per-peer counters have one writer thread each (tx: the TUN
    thread, rx: the socket thread); a drop reason both directions can hit (e.g. truncated)
    may lose an increment when both bump it at the same instant (no lock in the hot path).
    """

    def __init__(self, tun: Tun, sock: socket.socket, subnet: str, mtu: int,
                 port: int = DEFAULT_PORT, offload: bool | None = None,
                 io: str = "threads") -> None:
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {IO_MODES}, got {io!r}")
        self.tun, self.sock, self.port, self.mtu = tun, sock, port, mtu
        self.io = io
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.local = core.LocalSubnet.parse(subnet)
        self.routes = core.RouteTable()
        self.drops = core.new_drop_counters()
        self.icmp_sent = 0
        # peer underlay host -> [tx_packets, tx_bytes, rx_packets, rx_bytes]
        self.peers: dict[str, list[int]] = {}
        self.offload = tun.vnet_hdr if offload is None else offload
        # one buffer per direction: the two directions run on two threads
        self._buf = bytearray(65536 + 16)
        self._view = memoryview(self._buf)
        self._rx_buf = bytearray(65536 + 16)
        self._rx_view = memoryview(self._rx_buf)
        self._gso: Any = None
        if self.offload:
            from flanneld.backends.udp.gso import OffloadPath  # numpy only in this mode

            self._gso = OffloadPath(self)

    # -- control interface ----------------------------------------------------------------
    def set_route(self, subnet: str, underlay: str, port: int | None = None) -> None:
        self.routes.set(subnet, underlay, self.port if port is None else port)

    def del_route(self, subnet: str) -> bool:
        return self.routes.delete(subnet)

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

    def peer_counters(self, host: str) -> list[int]:
        # setdefault: atomic under the GIL, the two datapath threads may meet a new peer at once
        return self.peers.setdefault(host, [0, 0, 0, 0])

    # -- the hot loop ---------------------------------------------------------------------
    def handlers(self) -> tuple[Drain, Drain]:
        """The two drain functions (TUN -> underlay, underlay -> TUN) of the selected mode."""
        if self._gso is not None:
            return self._gso.on_tun, self._gso.on_sock
        return self._on_tun, self._on_sock

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start forwarding: one thread per direction (``io="threads"``) or two readers on
        ``loop`` (``io="loop"``)."""
        on_tun, on_sock = self.handlers()
        if self.io == "loop":
            if loop is None:
                raise ValueError("io='loop' needs the event loop")
            loop.add_reader(self.tun.fd, on_tun)
            loop.add_reader(self.sock.fileno(), on_sock)
            self._loop = loop
            return
        # One thread per direction, each sleeping in the kernel with the GIL released, so a
        # packet wakes exactly the thread that forwards it, straight out of read()/recvfrom():
        # no poll() and no EAGAIN read on the way of a lone packet. SO_RCVTIMEO bounds the
        # socket thread's wait (it checks `stop()`); the TUN thread is woken by `Tun.wake`.
        self._stopping = False
        self.sock.setblocking(True)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, RCV_TIMEOUT)
        for name, target, drain in (("tun", self._forward_tun, on_tun),
                                    ("udp", self._forward_sock, on_sock)):
            t = threading.Thread(target=target, args=(drain,), daemon=True,
                                 name=f"udp-datapath-{name}")
            t.start()
            self._threads.append(t)

    def stop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun.fd)
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        if self._threads:
            self._stopping = True
            tun_thread = self._threads[0]
            for _ in range(100):  # without a waker, give up on the TUN thread after 5 s
                self.tun.wake()
                tun_thread.join(0.05)
                if not tun_thread.is_alive():
                    break
            self._threads[1].join()
            self._threads = []
            os.set_blocking(self.tun.fd, False)
            self.sock.setblocking(False)

    def _forward_sock(self, drain: Drain) -> None:
        while not self._stopping:
            drain(BATCH)

    def _forward_tun(self, drain: Drain) -> None:
        """The TUN thread: sleep in read(), forward a lone packet with as little Python as
        possible between the wake-up and sendto() (the round-trip time of a ping is made of
        this path on a cache-cold interpreter: no call layers, no train, every name a local),
        count it after the send, then poll(0) whether more is queued: a backlog goes through
        the drains (batches, trains) until the queue is empty. Anything the inline checks do
        not take (options, TTL <= 1, no route, GSO super-packets) goes through the same
        per-packet handling as in the drains, which counts the drops."""
        fd, gso = self.tun.fd, self._gso
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poll, set_blocking, readv, sendto = poller.poll, os.set_blocking, os.readv, \
            self.sock.sendto
        lookup, peers, drops = self.routes.lookup, self.peers, self.drops
        if gso is not None:
            raw, view, off, one = gso.buf, gso.view, VNET_HDR_LEN, gso.tun_one
        else:
            raw, view, off, one = self._buf, self._view, 0, self.tun_slow_path
        bufs, limit, lo = [raw], self.mtu + off, off + 20
        at_ttl, at_hc, at_dst, end_dst = off + 8, off + 10, off + 16, off + 20
        set_blocking(fd, True)
        while not self._stopping:
            n = readv(fd, bufs)
            ttl = raw[at_ttl]
            if (lo <= n <= limit and raw[off] == 0x45 and ttl > 1
                    and not (off and (raw[1] or raw[0] & 1))  # offload: no GSO, no partial csum
                    and (peer := lookup(int.from_bytes(raw[at_dst:end_dst], "big"))) is not None):
                hc = (((raw[at_hc] << 8) | raw[at_hc + 1]) ^ 0xFFFF) + 0xFEFF
                hc = ((hc & 0xFFFF) + (hc >> 16)) ^ 0xFFFF
                raw[at_ttl] = ttl - 1
                raw[at_hc] = hc >> 8
                raw[at_hc + 1] = hc & 0xFF
                try:
                    sendto(view[off:n], peer)
                except OSError:
                    drops[DropReason.SEND_FAILED] += 1
                else:
                    c = peers.get(peer[0]) or self.peer_counters(peer[0])
                    c[0] += 1
                    c[1] += n - off
            else:
                one(view[:n])
            if poll(0):
                set_blocking(fd, False)
                while not self._stopping and drain(BATCH) == BATCH:
                    pass
                set_blocking(fd, True)

    # The drains inline the common case (IPv4 without options, TTL > 1, a route / a leased
    # sender, valid header checksum, destination ours): every extra call or attribute look-up
    # is paid many times over when a lone packet (a ping) wakes a cache-cold process. All
    # else takes the slow path through `core`, which also counts the drops.

    def _on_tun(self, budget: int = BATCH) -> int:
        fd, bufs, view, raw = self.tun.fd, [self._buf], self._view, self._buf
        sendto, mtu, lookup, peers, readv = self.sock.sendto, self.mtu, self.routes.lookup, \
            self.peers, os.readv
        for i in range(budget):
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                return i
            ttl = raw[8]
            peer = lookup(int.from_bytes(raw[16:20], "big")) \
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
                sendto(view[:n], peer)
            except OSError:
                self.drops[DropReason.SEND_FAILED] += 1
                continue
            c = peers.get(peer[0]) or self.peer_counters(peer[0])
            c[0] += 1
            c[1] += n
        return budget

    def tun_slow_path(self, pkt: memoryview) -> None:
        """A packet from the TUN the inline path did not take: forward it or count the drop."""
        if self._stopping:  # Tun.wake's packet
            return
        v = core.from_tun(pkt, self.routes, self.mtu)
        if v.peer is None:
            self.drops[v.drop or DropReason.NO_ROUTE] += 1
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

    def _on_sock(self, budget: int = BATCH) -> int:
        recv, view, raw, fd, write = self.sock.recvfrom_into, self._rx_view, self._rx_buf, \
            self.tun.fd, os.write
        routes, local, peers = self.routes, self.local, self.peers
        mask, net = local.mask, local.network
        for i in range(budget):
            try:
                n, (host, _port) = recv(raw)
            except BlockingIOError:
                return i
            if not (host in routes.leased and n >= 20 and raw[0] == 0x45
                    and (raw[2] << 8) | raw[3] == n and not int.from_bytes(raw[:20], "big") % 0xFFFF
                    and int.from_bytes(raw[16:20], "big") & mask == net) \
                    and not core.accept_received(view[:n], host, routes, local, self.drops):
                continue
            try:
                write(fd, view[:n])
            except OSError:
                self.drops[DropReason.TUN_WRITE_FAILED] += 1
                continue
            c = peers.get(host) or self.peer_counters(host)
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
    p.add_argument("--io", choices=IO_MODES, default="threads",
                   help="one blocking thread per direction, or two asyncio readers")
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
