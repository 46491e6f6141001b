"""The datapath thread (io="poll") forwards and stops, over loopback (no root)."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flanneld.backends.udp import core

sys.path.insert(0, str(Path(__file__).parent))
import loopback_pair as lp

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_datapath_thread_forwards_both_ways_and_stops(offload: bool) -> None:
    a, b = lp.pair(offload)
    try:
        a.dp.start()
        b.dp.start()
        for _ in range(200):  # a burst: trains in offload mode
            a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", bytes(64)))
        b.inject(lp.udp_packet("10.244.2.2", "10.244.1.2", bytes(64)))
        got_b: list[bytes] = []
        got_a: list[bytes] = []
        deadline = time.monotonic() + 5
        while (len(got_b) < 200 or not got_a) and time.monotonic() < deadline:
            got_b += b.take()
            got_a += a.take()
            time.sleep(0.005)
        assert len(got_b) == 200 and len(got_a) == 1
        # intact, TTL decremented with the checksum patched (the directions share no buffer)
        assert set(got_b) == {lp.udp_packet("10.244.1.2", "10.244.2.2", bytes(64), ttl=63)}
        assert got_a == [lp.udp_packet("10.244.2.2", "10.244.1.2", bytes(64), ttl=63)]
        t0 = time.monotonic()
        a.dp.stop()
        b.dp.stop()
        assert time.monotonic() - t0 < 2
        assert a.dp.stats()["peers"]["127.0.0.1"]["tx_packets"] == 200
        assert b.dp.stats()["peers"]["127.0.0.1"]["rx_packets"] == 200
    finally:
        a.dp.stop()
        b.dp.stop()
        a.close()
        b.close()


def test_trains_without_udp_gso_are_sent_one_by_one() -> None:
    """The fallback for an underlay that refuses UDP_SEGMENT (no checksum offload)."""
    a, b = lp.pair(offload=True)
    try:
        a.dp._gso.udp_gso = False
        for i in range(10):
            a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", bytes([i]) * 64))
        tx, _ = a.dp.handlers()
        _, rx = b.dp.handlers()
        while tx() + rx():
            pass
        got = b.take()
        assert got == [lp.udp_packet("10.244.1.2", "10.244.2.2", bytes([i]) * 64, ttl=63)
                       for i in range(10)]
        assert a.dp.stats()["peers"]["127.0.0.1"]["tx_packets"] == 10
    finally:
        a.close()
        b.close()


def collect(node: lp.Node, into: list[bytes]) -> bool:
    into += node.take()
    return bool(into)


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_lone_packets_take_the_inline_path_or_the_checked_one(offload: bool) -> None:
    """The lone-packet path: a plain packet forwarded inline; TTL 1, no route and (offload) a
    partial checksum take the per-packet path, which counts or answers them."""
    a, b = lp.pair(offload)
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    try:
        a.dp.start()
        b.dp.start()
        ok = lp.udp_packet("10.244.1.2", "10.244.2.2", b"lone")
        a.inject(ok)
        wait_until(lambda: collect(b, got_b), "the lone packet")
        assert got_b == [lp.udp_packet("10.244.1.2", "10.244.2.2", b"lone", ttl=63)]
        a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", b"ttl", ttl=1))
        wait_until(lambda: a.dp.stats()["drops"]["ttl_expired"] == 1, "the TTL drop")
        a.inject(lp.udp_packet("10.244.1.2", "10.99.0.1", b"nowhere"))
        wait_until(lambda: collect(a, got_a), "the ICMP reply")
        assert got_a[0][9] == 1 and got_a[0][20:22] == b"\x03\x00"  # net unreachable
        assert a.dp.stats()["drops"]["no_route"] == 1
        if offload:  # CHECKSUM_PARTIAL: the UDP checksum field holds the pseudo-header sum
            pkt = bytearray(lp.udp_packet("10.244.1.2", "10.244.2.2", b"partial"))
            ph = core.pseudo_header_sum(bytes(pkt[12:16]), bytes(pkt[16:20]), core.PROTO_UDP, len(pkt) - 20)
            pkt[26:28] = ph.to_bytes(2, "big")
            a.vnet = bytes([1, 0, 0, 0, 0, 0, 20, 0, 6, 0])  # NEEDS_CSUM, start 20, offset 6
            a.inject(bytes(pkt))
            got_b.clear()
            wait_until(lambda: collect(b, got_b), "the partial packet")
            out = got_b[0]
            assert out[8] == 63 and out[28:] == b"partial" and out[26:28] != b"\0\0"
            assert core.checksum(out[20:], ph) == 0  # finished: verifies with the pseudo header
        assert a.dp.stats()["peers"]["127.0.0.1"]["tx_packets"] == (2 if offload else 1)
    finally:
        a.dp.stop()
        b.dp.stop()
        a.close()
        b.close()


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_received_datagrams_are_checked_before_the_tun(offload: bool) -> None:
    """What the running datapath takes from the underlay: a valid packet from a leased host
    reaches the TUN; a bad header checksum, a destination outside our subnet, an unleased
    sender and garbage are counted, never written."""
    a, b = lp.pair(offload)
    port = b.dp.sock.getsockname()[1]
    leased = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    leased.bind(("127.0.0.1", 0))
    stranger.bind(("127.0.0.2", 0))
    got: list[bytes] = []
    try:
        b.dp.start()
        good = lp.udp_packet("10.244.1.2", "10.244.2.2", b"good")
        bad_sum = bytearray(good)
        bad_sum[10] ^= 0xFF
        for pkt in (bytes(bad_sum), lp.udp_packet("10.244.1.2", "10.244.3.2", b"elsewhere"),
                    b"\x45garbage"):
            leased.sendto(pkt, ("127.0.0.1", port))
        stranger.sendto(good, ("127.0.0.1", port))
        leased.sendto(good, ("127.0.0.1", port))
        wait_until(lambda: collect(b, got), "the valid packet")
        drops = b.dp.stats()["drops"]
        wait_until(lambda: b.dp.stats()["drops"]["source_no_lease"] == 1, "the stranger's drop")
        drops = b.dp.stats()["drops"]
        assert (drops["bad_header_checksum"], drops["destination_not_local"], drops["truncated"]) \
            == (1, 1, 1)
        assert got == [good]
        # the thread counts right after its TUN write: poll, the packet may be read first
        wait_until(lambda: b.dp.stats()["peers"]["127.0.0.1"]["rx_packets"] == 1, "rx counted")
        assert b.dp.stats()["peers"]["127.0.0.1"]["rx_packets"] == 1
    finally:
        b.dp.stop()
        leased.close()
        stranger.close()
        a.close()
        b.close()


def test_an_unexpected_error_is_logged_and_forwarding_resumes(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from flanneld.backends.udp import datapath

    monkeypatch.setattr(datapath, "RETRY_AFTER_ERROR", 0.01)
    a, b = lp.pair()
    got: list[bytes] = []
    try:
        def broken(pkt: memoryview) -> None:
            raise RuntimeError("a bug in the slow path")

        monkeypatch.setattr(a.dp, "tun_slow_path", broken)
        a.dp.start()
        b.dp.start()
        a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", b"ttl", ttl=1))  # slow path: raises
        wait_until(lambda: "a bug in the slow path" in caplog.text, "the logged error")
        a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", b"after"))
        wait_until(lambda: collect(b, got), "forwarding after the error")
        assert got == [lp.udp_packet("10.244.1.2", "10.244.2.2", b"after", ttl=63)]
        assert a.dp._thread is not None and a.dp._thread.is_alive()
    finally:
        a.dp.stop()
        b.dp.stop()
        a.close()
        b.close()


def test_10000_hostile_datagrams_to_the_running_datapath_are_all_accounted() -> None:
    """Random bytes, bit-flipped and truncated valid packets, foreign destinations, from a
    leased host, to the running thread (inline path and drains alike): it stays up, writes
    only valid packets, and every datagram is either written or counted as a drop."""
    import random

    rng = random.Random(4)
    a, b = lp.pair()
    port = b.dp.sock.getsockname()[1]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    valid = lp.udp_packet("10.244.1.2", "10.244.2.2", bytes(32))
    delivered: list[bytes] = []

    def hostile() -> bytes:
        kind = rng.randrange(4)
        if kind == 0:
            return rng.randbytes(rng.randrange(0, 80))
        pkt = bytearray(valid)
        if kind == 1:
            for _ in range(rng.randrange(1, 4)):
                pkt[rng.randrange(len(pkt))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            del pkt[rng.randrange(len(pkt)):]
        else:
            return lp.udp_packet("10.244.1.2", f"10.{rng.randrange(256)}.{rng.randrange(256)}.9", b"x")
        return bytes(pkt)

    def accounted() -> int:
        st = b.dp.stats()
        return st["peers"].get("127.0.0.1", {}).get("rx_packets", 0) + sum(st["drops"].values())

    sent = 0

    def settled() -> bool:
        delivered.extend(b.take())  # keep the fake TUN's buffer drained
        return accounted() == sent

    try:
        b.dp.start()
        for _ in range(20):  # paced: 500 at a time, so the socket buffer never overflows
            for _ in range(500):
                sender.sendto(hostile(), ("127.0.0.1", port))
                sent += 1
            wait_until(settled, "the batch accounted for", timeout=10)
        assert b.dp._thread is not None and b.dp._thread.is_alive()
        assert len(delivered) == b.dp.stats()["peers"]["127.0.0.1"]["rx_packets"]
        for pkt in delivered:  # only well-formed packets for our subnet reached the TUN
            assert core.check_received(pkt, "127.0.0.1", b.dp.routes, b.dp.local) is None
        sender.sendto(valid, ("127.0.0.1", port))
        wait_until(lambda: valid in b.take(), "a valid packet after the storm")
    finally:
        b.dp.stop()
        sender.close()
        a.close()
        b.close()
