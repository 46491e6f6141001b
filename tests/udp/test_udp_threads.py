"""The datapath threads (io="threads") forward and stop, over loopback (no root)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import loopback_pair as lp

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_threads_forward_both_ways_and_stop(offload: bool) -> None:
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
