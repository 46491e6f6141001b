"""Forged inner sources: the running poll thread drops (and counts as `source_not_peer_subnet`)
every received datagram whose inner IPv4 source lies outside the subnet leased by the underlay
address it came from, on each receive path: the inline lone-packet path, the drains (plain and
offload) and the offload mode's UDP_GRO trains; valid sources still reach the TUN (no root).

Datagrams are built with scapy and sent over loopback from 127.0.0.1, the address that holds
node A's lease (10.244.1.0/24) in node B's table, to node B's running datapath thread. Which
path handled a datagram is read off wrappers around the functions the thread calls (its drain,
its slow path, the train receiver): the real functions still do all the work.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Raw

from flanneld.backends.udp import core, datapath

sys.path.insert(0, str(Path(__file__).parent))
import loopback_pair as lp

pytestmark = pytest.mark.unit

HOST = "127.0.0.1"  # holds node A's lease, 10.244.1.0/24, in node B's table
OTHER_PEER = ("10.244.3.0/24", "127.0.0.2")  # another leased peer (nothing runs behind it)
POD_B = "10.244.2.2"
REASON = "source_not_peer_subnet"
FORGED = {  # inner sources a datagram from HOST must not carry
    "outside every subnet": "8.8.8.8",
    "another leased peer's subnet": "10.244.3.5",
    "the receiving node's own subnet": "10.244.2.7",
    "the receiving node's flannel0 address": "10.244.2.0",
    "the neighbour below the sender's subnet": "10.244.0.255",
}
VALID = {  # inside 10.244.1.0/24
    "a pod of the sender": "10.244.1.2",
    "the sender's flannel0 address": "10.244.1.0",
    "the sender's last address": "10.244.1.255",
}
SIZE = 64  # every forged packet has this size (a UDP_GRO train needs equal segments)


def forged(src: str, tag: str) -> bytes:
    pkt = bytes(IP(src=src, dst=POD_B, ttl=9) / UDP(sport=5555, dport=9999)
                / Raw(tag.encode()[:SIZE - 28].ljust(SIZE - 28, b".")))
    assert len(pkt) == SIZE
    return pkt


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


class Probe:
    """Per receive path of node B's running thread: datagrams read, delivered into the TUN and
    dropped as forged. Paths: "drain" (the socket's drain: plain `_on_sock` or offload
    `on_sock`), "slow" (`sock_slow_path`, where the inline path sends what its checks do not
    take), "train" (offload: `receive_train`, called from the drain or the slow path). What no
    wrapper saw was delivered by the inline path itself."""

    def __init__(self, dp: datapath.Datapath) -> None:
        self.dp = dp
        self.read = 0  # datagrams read by the drain
        self.delivered = dict.fromkeys(("drain", "slow", "train"), 0)
        self.dropped = dict.fromkeys(("drain", "slow", "train"), 0)
        tun_drain, sock_drain = dp.handlers()

        def drain(budget: int = datapath.BATCH) -> int:
            n: int = self._measured("drain", sock_drain, budget)
            self.read += n
            return n

        # set before start(): the thread picks its functions up from the instance
        dp.handlers = lambda: (tun_drain, drain)  # type: ignore[method-assign]
        slow = dp.sock_slow_path
        dp.sock_slow_path = lambda *a: self._measured("slow", slow, *a)  # type: ignore[method-assign]
        if dp._gso is not None:
            train = dp._gso.receive_train
            dp._gso.receive_train = lambda *a: self._measured("train", train, *a)

    def counts(self) -> tuple[int, int]:
        e = self.dp.peers.get(HOST)
        return (e[2] if e else 0), core.drops_by_name(self.dp.drops).get(REASON, 0)

    def _measured(self, path: str, fn: Callable[..., Any], *args: Any) -> Any:
        rx, drop = self.counts()
        try:
            return fn(*args)
        finally:
            rx2, drop2 = self.counts()
            self.delivered[path] += rx2 - rx
            self.dropped[path] += drop2 - drop


class Harness:
    def __init__(self, a: lp.Node, b: lp.Node) -> None:
        self.a, self.b = a, b
        self.probe = Probe(b.dp)
        self.addr = b.dp.sock.getsockname()
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind((HOST, 0))
        self.got: list[bytes] = []

    def accounted(self) -> int:
        st = self.b.dp.stats()
        return st["peers"].get(HOST, {}).get("rx_packets", 0) + sum(st["drops"].values())

    def drops(self) -> int:
        return self.b.dp.stats()["drops"].get(REASON, 0)

    def settle(self, expected: int, what: str) -> None:
        def done() -> bool:
            self.got += self.b.take()
            return self.accounted() >= expected

        wait_until(done, what, timeout=10)
        self.got += self.b.take()

    def lone(self, pkt: bytes, what: str, delivered: bool) -> str:
        """Send `pkt` on its own until the inline path (not the drain) read it; check the
        outcome of each attempt. Returns the path that decided: "inline" (delivered by the
        inline checks) or "slow" (the inline checks passed it to the slow path)."""
        for _ in range(20):
            time.sleep(0.03)  # > POLL_TIMEOUT_MS: an idle round, the socket is no longer "busy"
            read, before, drops = self.probe.read, self.accounted(), self.drops()
            slow = self.probe.delivered["slow"] + self.probe.dropped["slow"]
            self.got.clear()
            self.sender.sendto(pkt, self.addr)
            self.settle(before + 1, what)
            if delivered:
                assert self.got == [pkt], f"{what}: not delivered intact"
                assert self.drops() == drops
            else:
                assert self.got == [], f"{what}: the forged datagram reached the TUN"
                assert self.drops() == drops + 1, f"{what}: not counted as {REASON}"
            if self.probe.read == read:  # the inline path read it
                decided = self.probe.delivered["slow"] + self.probe.dropped["slow"] != slow
                return "slow" if decided else "inline"
        raise AssertionError(f"{what}: never read by the inline path")

    def burst(self, pkts: list[tuple[bytes, bool]], send: Callable[[list[bytes]], None]) -> None:
        before, drops = self.accounted(), self.drops()
        self.got.clear()
        send([p for p, _ in pkts])
        self.settle(before + len(pkts), "the burst accounted for")
        good = sorted(p for p, ok in pkts if ok)
        assert self.drops() - drops == len(pkts) - len(good), "forged datagrams not counted"
        assert sorted(self.got) == good, "the TUN got other than the valid datagrams"

    def sendto_each(self, pkts: list[bytes]) -> None:
        for p in pkts:
            self.sender.sendto(p, self.addr)

    def send_trains(self, pkts: list[bytes]) -> None:
        """UDP_SEGMENT sends of up to 32 equal datagrams: a receiver with UDP_GRO (offload
        mode) gets each train in one recvmsg; a plain one gets separate datagrams."""
        for i in range(0, len(pkts), 32):
            chunk = pkts[i:i + 32]
            self.sender.sendmsg([b"".join(chunk)], [(17, 103, SIZE.to_bytes(2, sys.byteorder))],
                               0, self.addr)

    def close(self) -> None:
        self.b.dp.stop()
        self.sender.close()
        self.a.close()
        self.b.close()


@pytest.fixture(params=[False, True], ids=["plain", "offload"])
def harness(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setattr(datapath, "POLL_TIMEOUT_MS", 5)  # idle rounds come quickly
    a, b = lp.pair(offload=request.param)
    b.dp.set_route(*OTHER_PEER)
    h = Harness(a, b)
    try:
        b.dp.start()
        yield h
    finally:
        h.close()


def test_lone_forged_datagrams_are_dropped_by_the_inline_path(harness: Harness) -> None:
    h = harness
    for what, src in FORGED.items():
        assert h.lone(forged(src, what), f"inner source {src} ({what})", delivered=False) == "slow"
    for what, src in VALID.items():
        assert h.lone(forged(src, what), f"inner source {src} ({what})", delivered=True) \
            == "inline"
    # an ICMP error from the sender's node: sourced from its flannel0 address, inside its subnet
    quote = forged("10.244.2.2", "offender")[:28]
    err = bytes(IP(src="10.244.1.0", dst=POD_B) / ICMP(type=3, code=1) / Raw(quote))
    assert h.lone(err, "ICMP error from the sender's flannel0", delivered=True) == "inline"
    assert h.probe.dropped["slow"] == len(FORGED)


def test_a_burst_of_forged_datagrams_is_dropped_by_the_drain(harness: Harness) -> None:
    h = harness
    cases = [*((s, False) for s in FORGED.values()), *((s, True) for s in VALID.values())]
    pkts = [(forged(src, f"{src} #{i}"), ok) for i in range(40) for src, ok in cases]
    h.burst(pkts, h.sendto_each)
    assert h.probe.read > 0, "the drain never ran"
    assert h.probe.dropped["drain"] > 0 and h.probe.delivered["drain"] > 0
    if h.b.dp.offload:  # the drain's own inline checks, not its trains
        assert h.probe.dropped["drain"] > h.probe.dropped["train"]


def test_forged_segments_of_a_gro_train_are_dropped(harness: Harness) -> None:
    h = harness
    forged_only = [(forged(src, f"{src} #{i}"), False) for i in range(8) for src in FORGED.values()]
    h.burst(forged_only, h.send_trains)
    mixed = [(forged(src, f"{src} #{i}"), ok) for i in range(8) for src, ok in
             [*((s, False) for s in FORGED.values()), *((s, True) for s in VALID.values())]]
    h.burst(mixed, h.send_trains)
    if h.b.dp.offload:
        assert h.probe.dropped["train"] == len(forged_only) + 8 * len(FORGED)
        assert h.probe.delivered["train"] == 8 * len(VALID)


def test_a_public_ip_with_two_leases_may_source_from_both(harness: Harness) -> None:
    """The sender's key follows route changes while the thread runs: with two subnets the
    inline path defers to the slow path (which checks both), with one it decides itself."""
    h = harness
    h.b.dp.set_route("10.244.4.0/24", HOST, h.a.dp.sock.getsockname()[1])
    assert h.lone(forged("10.244.4.9", "second lease"), "the second lease", delivered=True) == "slow"
    assert h.lone(forged("10.244.1.2", "first lease"), "the first lease", delivered=True) == "slow"
    assert h.lone(forged("10.244.3.5", "other"), "another peer's subnet", delivered=False) == "slow"
    assert h.b.dp.del_route("10.244.4.0/24")
    assert h.lone(forged("10.244.4.9", "gone"), "a deleted lease", delivered=False) == "slow"
    assert h.lone(forged("10.244.1.2", "first lease"), "the first lease", delivered=True) == "inline"
