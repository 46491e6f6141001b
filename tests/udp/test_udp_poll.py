"""The poll thread's inline path: its route cache and inner-source keys (no root).

Its TTL/checksum patch and receive checks run in test_udp_hot_path.py, through `_forward_poll`
itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flanneld.backends.udp import core
from flanneld.backends.udp.datapath import native_u32

sys.path.insert(0, str(Path(__file__).parent))
import loopback_pair as lp

pytestmark = pytest.mark.unit


def test_native_u32_reads_like_a_view() -> None:
    pkt = bytes([0, 0, 0, 0, 10, 244, 2, 7])
    assert memoryview(pkt)[4:8].cast("I")[0] & native_u32(0xFFFFFF00) == native_u32(0x0AF40200)


def test_route_cache_follows_route_changes() -> None:
    a, b = lp.pair()
    try:
        dp = a.dp
        dst = memoryview(bytes([10, 244, 2, 9]))
        entry = dp.route_miss(dst)
        assert entry is not None and entry[4] == ("127.0.0.1", b.dp.sock.getsockname()[1])
        assert dp.fast_routes == {dst.cast("I")[0]: entry}
        assert dp._leased == {"127.0.0.1": entry}
        entry[0] += 5  # counters live in the entry and survive route changes
        dp.set_route("10.244.3.0/24", "127.0.0.2")
        assert dp.fast_routes == {}
        assert set(dp._leased) == {"127.0.0.1", "127.0.0.2"}
        dp.set_route("10.244.3.0/24", "127.0.0.3")  # the subnet moves: 127.0.0.2 holds nothing
        assert set(dp._leased) == {"127.0.0.1", "127.0.0.3"}
        with pytest.raises(ValueError):
            dp.set_route("10.244.4.0/24", "not-an-address")
        assert set(dp._leased) == {"127.0.0.1", "127.0.0.3"}
        assert dp.del_route("10.244.2.0/24")
        assert dp.route_miss(dst) is None and dp.fast_routes == {}
        assert set(dp._leased) == {"127.0.0.3"}
        assert dp.stats()["peers"]["127.0.0.1"]["tx_packets"] == 5
    finally:
        a.close()
        b.close()


def test_route_miss_racing_a_route_change_leaves_no_stale_entry() -> None:
    """A cache fill computed from the old table while the control side changes the routes is
    undone: the next packet looks the route up again."""
    a, b = lp.pair()
    try:
        dp = a.dp

        class Racing(core.RouteTable):
            def lookup(self, dst: int) -> tuple[str, int] | None:
                peer = super().lookup(dst)
                dp.del_route("10.244.2.0/24")  # the control side, between lookup and fill
                return peer

        racing = Racing()
        racing.set("10.244.2.0/24", "127.0.0.1", 8285)
        dp.routes = racing
        assert dp.route_miss(memoryview(bytes([10, 244, 2, 9]))) is not None  # old answer
        assert dp.fast_routes == {}  # ... but not remembered
    finally:
        a.close()
        b.close()


def test_inner_source_keys_follow_route_changes() -> None:
    """Each leased host's entry carries its one subnet as (mask, network), native order and
    network order (what the inline paths test the inner source against); several subnets or
    none: NO_SOURCE, which matches no address."""
    a, b = lp.pair()
    try:
        dp = b.dp
        key = (native_u32(0xFFFFFF00), native_u32(0x0AF40100), 0xFFFFFF00, 0x0AF40100)
        entry = dp._leased["127.0.0.1"]
        assert entry[5] == key  # 10.244.1.0/24
        dp.set_route("10.244.4.0/25", "127.0.0.1")
        assert entry[5] == core.NO_SOURCE
        assert all(s & core.NO_SOURCE[0] != core.NO_SOURCE[1] for s in (0, 2**32 - 1))
        dp.set_route("10.244.4.0/25", "127.0.0.2")  # moves away: one subnet again
        assert entry[5] == key
        assert dp._leased["127.0.0.2"][5] == (native_u32(0xFFFFFF80), native_u32(0x0AF40400),
                                              0xFFFFFF80, 0x0AF40400)
        assert dp.del_route("10.244.4.0/25")
        assert "127.0.0.2" not in dp._leased and dp.peers["127.0.0.2"][5] == core.NO_SOURCE
        assert dp.del_route(lp.SUBNETS[0])
        assert entry[5] == core.NO_SOURCE and "127.0.0.1" not in dp._leased
    finally:
        a.close()
        b.close()
