"""Offload mode of the udp datapath: TCP super-packets in, flannel's ordinary wire out.

Why: per-packet work is what makes a Python forwarder slow. With IFF_VNET_HDR and
TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4) the kernel hands us 64 KB TCP super-packets. We cut each
into ordinary <= MTU IPv4/TCP packets (so a flannel C proxy on the other end sees its usual
wire), with the IP and TCP headers and checksums of all segments computed at once in numpy, and
send them with one sendmsg(UDP_SEGMENT). The receiving socket has UDP_GRO, so it gets such a
train back as one buffer; consecutive segments of one TCP flow are coalesced into one GSO write
(virtio-net header, checksum left partial) to the TUN. Everything else goes packet by packet.
Packets the TUN hands over with a partial checksum (TUN_F_CSUM) have it finished here.
Small packets already queued in the TUN for the same peer leave as one sendmsg(UDP_SEGMENT)
train too (still one inner packet per datagram on the wire): one syscall per train, not per
packet, on both nodes (the receiver's UDP_GRO hands the train over in one recvmsg).

Same-flow segments received from the underlay passed the outer UDP checksum; like other
GRO implementations (wireguard-go) we do not re-verify their inner TCP checksum.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Any, Protocol

import numpy as np

from flanneld.backends.udp import core
from flanneld.backends.udp.core import DropReason
from flanneld.backends.udp.tun import Tun


class Datapath(Protocol):
    """What the offload callbacks use of `datapath.Datapath` (its tables and counters)."""

    tun: Tun
    sock: socket.socket
    mtu: int
    local: core.LocalSubnet
    routes: core.RouteTable
    drops: list[int]
    peers: dict[str, list[Any]]

    fast_routes: dict[int, list[Any]]
    _leased: dict[str, list[Any]]  # leased host -> its peers entry (with its inner-source key)

    def peer_counters(self, host: str) -> list[Any]: ...

    def route_entry(self, dst: memoryview) -> list[Any] | None: ...

    def route_miss(self, dst: memoryview) -> list[Any] | None: ...

    def write_tun(self, pkt: bytes) -> None: ...

    def tun_slow_path(self, pkt: memoryview) -> None: ...

SOL_UDP = 17  # Python 3.11 lacks these
UDP_SEGMENT = 103
UDP_GRO = 104
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off
VNET_HDR_LEN = VNET_HDR.size
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_ECN = 0x80
NO_VNET = bytes(VNET_HDR_LEN)
MAX_GSO_BYTES = 65000  # one sendmsg(UDP_SEGMENT): total payload must fit one UDP datagram
MAX_GSO_SEGS = 64  # UDP_MAX_SEGMENTS of older kernels
TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80
BATCH = 64
NO_UDP_GSO = frozenset({errno.EIO, errno.EINVAL, errno.EOPNOTSUPP})  # sendmsg(UDP_SEGMENT)
NO_PEER: list[Any] = []  # "no train yet": never a peers entry
BYTEORDER = sys.byteorder  # cmsg data is in host order


def finish_checksum(pkt: bytearray | memoryview, csum_start: int, csum_offset: int) -> bool:
    """Complete a CHECKSUM_PARTIAL packet: the field already holds the pseudo-header sum."""
    pos = csum_start + csum_offset
    if pos + 2 > len(pkt) or csum_start > len(pkt):
        return False
    c = core.checksum(pkt[csum_start:])
    if c == 0 and pkt[9] == core.PROTO_UDP:
        c = 0xFFFF
    pkt[pos] = c >> 8
    pkt[pos + 1] = c & 0xFF
    return True


def _fold(s: np.ndarray) -> np.ndarray:
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    return s


def segment_tcp4(pkt: memoryview, mss: int, out: np.ndarray) -> tuple[int, int, int]:
    """Cut TCP/IPv4 super-packet `pkt` (TTL already patched) into <= hl+mss packets in `out`.

    Segments are laid end to end (all of size hl+mss but the last), ready for UDP_SEGMENT.
    Returns (total bytes, segment size, number of segments). Raises ValueError when malformed.
    """
    ihl = (pkt[0] & 0x0F) << 2
    if len(pkt) < ihl + 20 or pkt[9] != core.PROTO_TCP:
        raise ValueError("not TCP/IPv4")
    thl = (pkt[ihl + 12] >> 4) << 2
    hl = ihl + thl
    plen = len(pkt) - hl
    if thl < 20 or plen <= 0 or mss <= 0 or mss & 1:
        raise ValueError("bad TCP header, payload or mss")
    nseg = -(-plen // mss)
    seglen = hl + mss
    last = plen - (nseg - 1) * mss
    total = (nseg - 1) * seglen + hl + last
    if nseg * seglen > out.size:
        raise ValueError("super-packet too large")
    src = np.frombuffer(pkt, dtype=np.uint8)
    rows = out[: nseg * seglen].reshape(nseg, seglen)
    rows[:, :hl] = src[:hl]
    nfull = nseg - 1 if last != mss else nseg
    if nfull:
        rows[:nfull, hl:] = src[hl: hl + nfull * mss].reshape(nfull, mss)
    if nfull != nseg:
        rows[nseg - 1, hl: hl + last] = src[hl + nfull * mss:]
    # per-segment lengths, IP ids, TCP sequence numbers and flags
    idx = np.arange(nseg, dtype=np.uint64)
    paylen = np.full(nseg, mss, dtype=np.uint64)
    paylen[-1] = last
    tot = paylen + hl
    ident = (int.from_bytes(pkt[4:6], "big") + idx) & 0xFFFF
    seq = (int.from_bytes(pkt[ihl + 4: ihl + 8], "big") + idx * mss) & 0xFFFFFFFF
    flags = np.full(nseg, pkt[ihl + 13] & ~(TCP_FIN | TCP_PSH | TCP_CWR), dtype=np.uint64)
    flags[0] |= pkt[ihl + 13] & TCP_CWR
    flags[-1] |= pkt[ihl + 13] & (TCP_FIN | TCP_PSH)
    # IP header checksum: constant part + total length + id
    hdr = bytearray(pkt[:ihl])
    hdr[2:6] = bytes(4)
    hdr[10:12] = b"\0\0"
    ip_sum = _fold(core.ones_sum(hdr) + tot + ident) ^ 0xFFFF
    # TCP checksum: pseudo header + header (seq, flags word, csum variable) + payload
    th = bytearray(pkt[ihl:hl])
    th[4:8] = bytes(4)
    th[13] = 0
    th[16:18] = b"\0\0"
    const = core.ones_sum(th) + core.ones_sum(bytes(pkt[12:20])) + core.PROTO_TCP
    pay16 = np.frombuffer(pkt, dtype=">u2", offset=hl, count=nfull * mss // 2)
    paysum = np.zeros(nseg, dtype=np.uint64)
    if nfull:
        paysum[:nfull] = pay16.reshape(nfull, mss // 2).sum(axis=1, dtype=np.uint64)
    if nfull != nseg:
        paysum[-1] = core.ones_sum(pkt[hl + nfull * mss:])
    tcp_sum = _fold(const + thl + paylen + (seq >> 16) + (seq & 0xFFFF) + flags + paysum)
    tcp_sum ^= 0xFFFF
    for col, val in ((2, tot >> 8), (3, tot), (4, ident >> 8), (5, ident), (10, ip_sum >> 8),
                     (11, ip_sum), (ihl + 4, seq >> 24), (ihl + 5, seq >> 16),
                     (ihl + 6, seq >> 8), (ihl + 7, seq), (ihl + 13, flags),
                     (ihl + 16, tcp_sum >> 8), (ihl + 17, tcp_sum)):
        rows[:, col] = val & 0xFF
    return total, seglen, nseg


def coalescable(p: memoryview) -> bool:
    """A plain TCP/IPv4 data segment (no options in IP, not a fragment, only ACK/PSH set)."""
    return (p[0] == 0x45 and p[9] == core.PROTO_TCP and not (p[6] & 0x3F or p[7])
            and p[33] & ~(TCP_ACK | TCP_PSH) == 0 and len(p) > 20 + ((p[32] >> 4) << 2))


class OffloadPath:
    """The two readable callbacks of the offload mode, sharing the datapath's tables."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        dp.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        self.buf = bytearray(VNET_HDR_LEN + 65536)
        self.view = memoryview(self.buf)
        self.tdst = self.view[VNET_HDR_LEN + 16:VNET_HDR_LEN + 20].cast("I")  # route cache key
        self.out = np.zeros(65536 + 64 * 128, dtype=np.uint8)  # room for re-added headers
        self.out_view = memoryview(self.out.data).cast("B")
        self.train_view = memoryview(bytearray(MAX_GSO_BYTES))  # small packets, back to back
        self.rbuf = bytearray(VNET_HDR_LEN + 65536 + 1024)  # starts with a zero vnet header
        self.rview = memoryview(self.rbuf)[VNET_HDR_LEN:]
        self.rsrc = self.rview[12:16].cast("I")  # inner source, native order (sender keys)
        self.rbufs = [self.rview]
        self.cmsg_space = socket.CMSG_SPACE(4)
        self.super_packets_tx = 0
        self.udp_gso = True  # False once the kernel refused UDP_SEGMENT on this path
        self.super_packets_rx = 0

    # -- TUN -> underlay ------------------------------------------------------------------
    def on_tun(self, budget: int = BATCH) -> int:
        """Forward up to `budget` TUN reads. Consecutive small packets to one peer that are
        already queued leave in one sendmsg(UDP_SEGMENT) (separate datagrams on the wire, as
        flannel sends them): one syscall per train instead of one per packet. Nothing waits
        for a train to fill: it is sent when the queue is empty or the budget used."""
        dp, fd, bufs, view, raw = self.dp, self.dp.tun.fd, [self.buf], self.view, self.buf
        fast, miss, tdst = dp.fast_routes, dp.route_miss, self.tdst
        readv, limit = os.readv, dp.mtu + VNET_HDR_LEN
        train, send = self.train_view, self._send
        tpeer: list[Any] = NO_PEER
        tseg = tcount = tlen = 0
        for i in range(budget):
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                if tcount:
                    send(train[:tlen], tpeer, tseg, tcount)
                return i
            if raw[1] != GSO_NONE:
                if tcount:
                    send(train[:tlen], tpeer, tseg, tcount)
                    tcount = 0
                self.tun_super(view[:n])
                continue
            if raw[0] & F_NEEDS_CSUM and not finish_checksum(
                    view[VNET_HDR_LEN:n], raw[6] | raw[7] << 8, raw[8] | raw[9] << 8):
                dp.drops[DropReason.BAD_OFFLOAD] += 1
                continue
            # the plain mode's inline path, 10 bytes further on (see Datapath._on_tun)
            ttl = raw[18]
            peer = (fast.get(tdst[0]) or miss(view[26:30])) \
                if 30 <= n <= limit and raw[10] == 0x45 and ttl > 1 else None
            if peer is None:
                if tcount:
                    send(train[:tlen], tpeer, tseg, tcount)
                    tcount = 0
                self.tun_slow_path(view[:n])
                continue
            hc = (((raw[20] << 8) | raw[21]) ^ 0xFFFF) + 0xFEFF
            hc = ((hc & 0xFFFF) + (hc >> 16)) ^ 0xFFFF
            raw[18] = ttl - 1
            raw[20] = hc >> 8
            raw[21] = hc & 0xFF
            size = n - VNET_HDR_LEN
            if tcount and (peer is not tpeer or size > tseg or tcount == MAX_GSO_SEGS
                           or tlen + size > MAX_GSO_BYTES):
                send(train[:tlen], tpeer, tseg, tcount)
                tcount = 0
            if not tcount:
                tpeer, tseg, tlen = peer, size, 0
            train[tlen: tlen + size] = view[VNET_HDR_LEN:n]
            tlen += size
            tcount += 1
            if size < tseg:  # a shorter datagram can only end a UDP_SEGMENT train
                send(train[:tlen], tpeer, tseg, tcount)
                tcount = 0
        if tcount:
            send(train[:tlen], tpeer, tseg, tcount)
        return budget

    def tun_one(self, frame: memoryview) -> None:
        """One TUN read outside the inline path: a super-packet, a partial checksum to finish,
        or whatever the slow path makes of it (forward or count the drop)."""
        if len(frame) >= VNET_HDR_LEN:
            if frame[1] != GSO_NONE:
                self.tun_super(frame)
                return
            if frame[0] & F_NEEDS_CSUM and not finish_checksum(
                    frame[VNET_HDR_LEN:], frame[6] | frame[7] << 8, frame[8] | frame[9] << 8):
                self.dp.drops[DropReason.BAD_OFFLOAD] += 1
                return
        self.tun_slow_path(frame)

    def tun_super(self, frame: memoryview) -> None:
        """A TUN read with a GSO type: a TCP super-packet to segment, anything else dropped."""
        if len(frame) < VNET_HDR_LEN + core.IPV4_MIN_HEADER:
            self.dp.drops[DropReason.TRUNCATED] += 1
        elif frame[1] & ~GSO_ECN == GSO_TCPV4:
            self._send_super(frame[VNET_HDR_LEN:], frame[4] | frame[5] << 8)
        else:
            self.dp.drops[DropReason.BAD_OFFLOAD] += 1

    def tun_slow_path(self, frame: memoryview) -> None:
        if len(frame) < VNET_HDR_LEN:
            self.dp.drops[DropReason.TRUNCATED] += 1
        else:
            self.dp.tun_slow_path(frame[VNET_HDR_LEN:])

    def _send_super(self, pkt: memoryview, mss: int) -> None:
        dp = self.dp
        if pkt[0] >> 4 != 4:
            dp.drops[DropReason.NOT_IPV4] += 1
            return
        peer = dp.route_entry(pkt[16:20])
        if peer is None:
            dp.drops[DropReason.NO_ROUTE] += 1
            reply = core.build_net_unreachable(pkt)
            if reply is not None:
                dp.write_tun(reply)
            return
        if not core.decrement_ttl(pkt):
            dp.drops[DropReason.TTL_EXPIRED] += 1
            return
        try:
            total, seglen, nseg = segment_tcp4(pkt, mss, self.out)
        except ValueError:
            dp.drops[DropReason.BAD_OFFLOAD] += 1
            return
        if seglen > dp.mtu:
            dp.drops[DropReason.TOO_BIG] += nseg
            return
        self.super_packets_tx += 1
        per = min(MAX_GSO_SEGS, MAX_GSO_BYTES // seglen)
        for first in range(0, nseg, per):
            start = first * seglen
            end = min(total, start + per * seglen)
            self._send(self.out_view[start:end], peer, seglen, min(per, nseg - first))

    def _send(self, data: memoryview, peer: list[Any], seglen: int, nseg: int) -> None:
        """Send `nseg` datagrams of `seglen` bytes (the last may be shorter) to the peers
        entry `peer`, and count them in it."""
        sock, addr = self.dp.sock, peer[4]
        try:
            if nseg == 1:
                sock.sendto(data, addr)
            elif self.udp_gso:
                sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, seglen.to_bytes(2, BYTEORDER))],
                              0, addr)
            else:
                for off in range(0, len(data), seglen):
                    sock.sendto(data[off: off + seglen], addr)
        except OSError as e:
            if nseg > 1 and self.udp_gso and e.errno in NO_UDP_GSO:
                # an underlay device without checksum offload refuses UDP GSO: send one by one
                self.udp_gso = False
                self._send(data, peer, seglen, nseg)
                return
            self.dp.drops[DropReason.SEND_FAILED] += nseg
            return
        peer[0] += nseg
        peer[1] += len(data)

    # -- underlay -> TUN ------------------------------------------------------------------
    def on_sock(self, budget: int = BATCH) -> int:
        dp, recv, bufs, view, raw = self.dp, self.dp.sock.recvmsg_into, self.rbufs, self.rview, \
            self.rview
        whole, fd, write, space = memoryview(self.rbuf), dp.tun.fd, os.write, self.cmsg_space
        routes, local, peers, leased, rsrc = dp.routes, dp.local, dp.peers, dp._leased, self.rsrc
        mask, net = local.mask, local.network
        for i in range(budget):
            try:
                n, anc, _flags, (host, _port) = recv(bufs, space)
            except BlockingIOError:
                return i
            if anc:  # a UDP_GRO train of segments
                self.receive_train(n, anc, host)
                continue
            # one packet: validate inline (see Datapath._on_sock), write behind the zero vnet hdr
            if not ((c := leased.get(host)) is not None and n >= 20 and raw[0] == 0x45
                    and (raw[2] << 8) | raw[3] == n and not int.from_bytes(raw[:20], "big") % 0xFFFF
                    and int.from_bytes(raw[16:20], "big") & mask == net
                    and rsrc[0] & (k := c[5])[0] == k[1]):
                if not core.accept_received(view[:n], host, routes, local, dp.drops):
                    continue
                c = peers.get(host) or dp.peer_counters(host)
            try:
                write(fd, whole[: VNET_HDR_LEN + n])
            except OSError:
                dp.drops[DropReason.TUN_WRITE_FAILED] += 1
                continue
            c[2] += 1
            c[3] += n
        return budget

    def receive_train(self, n: int, anc: list[tuple[int, int, bytes]], host: str) -> None:
        dp, view, local, routes = self.dp, self.rview, self.dp.local, self.dp.routes
        if host not in routes.leased:
            dp.drops[DropReason.SOURCE_NO_LEASE] += 1
            return
        # the sender's inner-source key in network order (see Datapath.peers); a miss
        # (NO_SOURCE: several subnets) asks the route table
        e = dp._leased.get(host)
        smask, snet = (core.NO_SOURCE if e is None else e[5])[2:]
        dmask, dnet = local.mask, local.network
        seg = n
        for level, kind, data in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                seg = int.from_bytes(data[:4], "little") or n
        good: list[memoryview] = []
        for off in range(0, n, seg):
            p = view[off: min(n, off + seg)]
            bad = core.check_ipv4(p)
            if bad is None:
                addrs = int.from_bytes(p[12:20], "big")  # source << 32 | destination
                if addrs & dmask != dnet:  # dmask < 2**32: only the destination's bits
                    bad = DropReason.DESTINATION_NOT_LOCAL
                elif (addrs >> 32) & smask != snet and not routes.holds(host, addrs >> 32):
                    bad = DropReason.SOURCE_NOT_PEER_SUBNET
            if bad is not None:
                dp.drops[bad] += 1
            else:
                good.append(p)
        if good:
            self._write(good, host)

    def _write(self, pkts: list[memoryview], host: str) -> None:
        """Write `pkts` into the TUN, coalescing runs of one TCP flow into GSO super-packets."""
        c = self.dp.peers.get(host) or self.dp.peer_counters(host)
        i, n = 0, len(pkts)
        while i < n:
            p = pkts[i]
            j = i + 1
            if coalescable(p) and not p[33] & TCP_PSH:
                hl = 20 + ((p[32] >> 4) << 2)
                mss = len(p) - hl
                key = p[12:24].tobytes()  # addresses and ports
                seq = int.from_bytes(p[24:28], "big") + mss
                while j < n:
                    q = pkts[j]
                    if (len(q) > hl + mss or not coalescable(q) or q[12:24] != key
                            or (q[32] >> 4) << 2 != hl - 20 or q[1] != p[1]
                            or int.from_bytes(q[24:28], "big") != seq & 0xFFFFFFFF
                            or q[28:33] != p[28:33] or q[34:36] != p[34:36]
                            or q[38:hl] != p[38:hl]):
                        break
                    seq += len(q) - hl
                    j += 1
                    if len(q) - hl != mss or q[33] & TCP_PSH:
                        break
            try:
                if j - i > 1:
                    self._write_super(pkts[i:j], hl, mss)
                else:
                    os.writev(self.dp.tun.fd, [NO_VNET, p])
            except OSError:
                self.dp.drops[DropReason.TUN_WRITE_FAILED] += j - i
            else:
                c[2] += j - i
                c[3] += sum(len(q) for q in pkts[i:j])
            i = j

    def _write_super(self, run: list[memoryview], hl: int, mss: int) -> None:
        first, last = run[0], run[-1]
        payload = sum(len(q) for q in run) - hl * len(run)
        hdr = bytearray(first[:hl])
        tot = hl + payload
        hdr[2] = tot >> 8
        hdr[3] = tot & 0xFF
        core.set_ipv4_header_checksum(hdr)
        hdr[33] |= last[33] & TCP_PSH
        # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel finishes the rest
        ph = core.pseudo_header_sum(first[12:16], first[16:20], core.PROTO_TCP, tot - 20)
        hdr[36] = ph >> 8
        hdr[37] = ph & 0xFF
        vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, hl, mss, 20, 16)
        os.writev(self.dp.tun.fd, [vnet, hdr, *(q[hl:] for q in run)])
        self.super_packets_rx += 1
