"""The udp datapath's inlined hot path, run as it runs, against core's readable forms (no root).

Why: four functions forward in the datapath thread and each inlines, for speed, the receive
checks and the TTL/checksum patch that `core` holds in readable, tested form:

- "plain-inline": `Datapath._forward_poll`'s lone-packet branches (TTL patch as
  ``(HC + CSUM_TTL_STEP) % 0xffff`` on a native-order view, header checksum as a sum of
  native 32-bit words, addresses against native-order masks);
- "offload-inline": the same branches over the offload mode's buffers (10 bytes further on);
- "plain-drain": `Datapath._on_tun` / `_on_sock` (RFC 1624 patch written out, big-endian
  checks);
- "offload-drain": `gso.OffloadPath.on_tun` / `on_sock` (the same, behind the virtio-net header).

The reference forms are `core.decrement_ttl` (TTL and checksum), `core.from_tun` (what becomes of a
packet read from the TUN) and `core.check_received` (what may be written into the TUN). The tests
feed crafted packets to the four running functions over the loopback pair (a unix datagram
socketpair stands in for the TUN fd) and compare what comes out (the datagrams sent, the packets
written into the TUN, the drop counters that moved, per reason) with what the reference decides
for the same input, packet by packet. Where the inline checks decline a packet the running code
hands it to core's form itself; whether it did is recorded too (`Outcome.inline`), so a check
that lets a bad packet through the inline path, or sends the common case off it, fails.

`_forward_poll` forwards until stopped and picks its inline branch or a drain by what poll()
reported in the previous round: `Rounds` stands in for `select.poll` in the datapath module, a
real poll(2) on the thread's own fds that the test calls at chosen moments, so the loop runs in
the test's thread and reads every packet through its inline branch (a drain call fails the test).
"""

from __future__ import annotations

import functools
import itertools
import random
import select
import socket
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flanneld.backends.udp import core, datapath, gso
from flanneld.backends.udp.core import DropReason

sys.path.insert(0, str(Path(__file__).parent))
import loopback_pair as lp

pytestmark = pytest.mark.unit

A_NET, B_NET = lp.SUBNETS  # 10.244.1.0/24 (the node forwarding from its TUN), 10.244.2.0/24
MTU = lp.MTU
VNET = bytes(gso.VNET_HDR_LEN)
SEND_FAILS = "10.244.9.0/24"  # node A routes it to 127.0.0.2 port 0: every sendto fails (EINVAL)
LEASES = {  # node B's table: underlay host -> the subnets it leases
    "127.0.0.1": ("10.244.1.0/24",),
    "127.0.0.2": ("10.244.3.0/24",),
    "127.0.0.3": ("10.244.4.0/24", "10.244.5.0/25"),  # two subnets: no inline source key
}
STRANGER = "127.0.0.9"  # holds no lease
REF_FROM_TUN = core.from_tun  # the reference forms, before a test counts their calls
REF_CHECK_RECEIVED = core.check_received


# -- packets ------------------------------------------------------------------------------------

def ipv4(src: str = "10.244.1.2", dst: str = "10.244.2.2", payload: bytes = b"", *, ttl: int = 64,
         ident: int = 0, df: bool = False, options: bytes = b"") -> bytearray:
    """An IPv4/UDP-protocol packet with a valid header checksum."""
    ihl = 20 + len(options)
    pkt = bytearray(ihl) + payload
    pkt[0] = 0x40 | ihl >> 2
    pkt[2:4] = len(pkt).to_bytes(2, "big")
    pkt[4:6] = ident.to_bytes(2, "big")
    pkt[6] = 0x40 if df else 0
    pkt[8], pkt[9] = ttl, core.PROTO_UDP
    pkt[12:16] = socket.inet_aton(src)
    pkt[16:20] = socket.inet_aton(dst)
    pkt[20:ihl] = options
    core.set_ipv4_header_checksum(pkt, ihl)
    return pkt


def edited(pkt: bytes | bytearray, resum: bool = True, **at: int) -> bytes:
    """`pkt` with byte ``b<i>`` set to the given value, the header checksum recomputed after."""
    out = bytearray(pkt)
    for k, v in at.items():
        out[int(k[1:])] = v
    if resum:
        core.set_ipv4_header_checksum(out, 20)
    return bytes(out)


def with_checksum_field(hc: int, ttl: int, tag: int, valid: bool = True) -> bytes:
    """A 24-byte packet whose header checksum field holds `hc`, the IP id chosen so that the
    header verifies (`valid`) or is one off (the id is at most 0xfffe, so id + 1 never wraps
    to an equivalent sum). Every value 0..0xffff is a valid field for some id: 0x0000 and
    0xffff both stand for a zero sum. `tag` (the payload) tells the packets apart."""
    pkt = bytearray(ipv4(payload=tag.to_bytes(4, "big"), ttl=ttl))
    pkt[4:6] = pkt[10:12] = b"\0\0"
    ident = -(int.from_bytes(pkt[:20], "big") + hc) % 0xFFFF + (0 if valid else 1)
    pkt[4:6] = ident.to_bytes(2, "big")
    pkt[10:12] = hc.to_bytes(2, "big")
    assert core.ipv4_header_checksum_ok(pkt, 20) is valid
    return bytes(pkt)


@functools.cache
def ttl_sweep() -> tuple[tuple[bytes, bytes], ...]:
    """Every header checksum field value in a header that verifies, TTL 2..255, beside what
    the reference, `core.decrement_ttl`, makes of it."""
    out = []
    for hc in range(65536):
        pkt = with_checksum_field(hc, ttl=2 + hc % 254, tag=hc)
        ref = bytearray(pkt)
        assert core.decrement_ttl(ref)
        out.append((pkt, bytes(ref)))
    return tuple(out)


@functools.cache
def checksum_sweep() -> tuple[tuple[bytes, bool], ...]:
    """Every header checksum field value, in a header that verifies and in one that does not."""
    return tuple((with_checksum_field(hc, ttl=63, tag=hc, valid=ok), ok)
                 for hc in range(65536) for ok in (True, False))


# -- what one packet became ---------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    sent: tuple[bytes, ...] = ()  # datagrams that reached the underlay peer
    written: tuple[bytes, ...] = ()  # packets written into the TUN (vnet header stripped)
    drops: tuple[tuple[str, int], ...] = ()  # drop counters that moved, by reason
    inline: bool | None = None  # core's form did not run for it (expected: None = either way)
    # (packets, bytes) the peer counters counted: sent on the TUN side, received on the other
    traffic: tuple[int, int] = (0, 0)

    def agrees(self, want: Outcome) -> bool:
        return ((self.sent, self.written, self.drops, self.traffic)
                == (want.sent, want.written, want.drops, want.traffic)
                and want.inline in (None, self.inline))


def traffic(pkts: tuple[bytes, ...]) -> tuple[int, int]:
    return len(pkts), sum(map(len, pkts))


def dropped(*reasons: DropReason, inline: bool | None = False) -> Outcome:
    counts = Counter(reasons)
    return Outcome(drops=tuple((r.name.lower(), counts[r]) for r in DropReason if counts[r]),
                   inline=inline)


def moved(before: list[int], after: list[int]) -> tuple[tuple[str, int], ...]:
    return tuple((r.name.lower(), after[r] - before[r]) for r in DropReason if after[r] != before[r])


def take_datagrams(sock: socket.socket, n: int, timeout: float = 2.0) -> tuple[bytes, ...]:
    """The `n` datagrams the datapath counted as sent to `sock`, and any more already there."""
    got: list[bytes] = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            if len(got) >= n or not select.select([sock], [], [], timeout)[0]:
                return tuple(got)


class Recorder:
    """Per packet fed to `node`: the `Outcome` (`settle()` after the datapath handled it). Whether
    core's form ran is told by counting calls of `core.<slow>` (the datapath calls it there).
    With `rx` (the TUN side) it reads the datagrams sent there and the tx counters, else the
    rx counters."""

    def __init__(self, node: lp.Node, rx: socket.socket | None, slow: str,
                 mp: pytest.MonkeyPatch, tun: bool = True) -> None:
        self.node, self.rx, self.tun = node, rx, tun
        self.outcomes: list[Outcome] = []
        self.slow_calls = 0
        real = getattr(core, slow)

        def counted(*args: Any) -> Any:
            self.slow_calls += 1
            return real(*args)

        mp.setattr(core, slow, counted)
        self._mark()

    def _counted(self) -> tuple[int, int]:
        i = 0 if self.rx is not None else 2  # tx_packets, tx_bytes / rx_packets, rx_bytes
        entries = list(self.node.dp.peers.values())
        return sum(e[i] for e in entries), sum(e[i + 1] for e in entries)

    def _mark(self) -> None:
        self.drops, self.calls = list(self.node.dp.drops), self.slow_calls
        self.counted = self._counted()

    def settle(self) -> None:
        now = self._counted()
        count = (now[0] - self.counted[0], now[1] - self.counted[1])
        sent = take_datagrams(self.rx, count[0]) if self.rx is not None else ()
        written = tuple(self.node.take()) if self.tun else ()
        self.outcomes.append(Outcome(sent, written, moved(self.drops, self.node.dp.drops),
                                     self.slow_calls == self.calls, count))
        self._mark()


# -- running the four functions -----------------------------------------------------------------

class Rounds:
    """`select.poll` for the datapath module while `_forward_poll` runs in the test's thread.

    Each round the loop asks for alternates: put the next packet in front of it (`feeds`) and
    return what the real poll(2) reports (exactly one readable fd, so the loop reads it through
    its inline branch); then record what the packet became (`settle`) and return an idle round
    (the real poll, which must find nothing left), so no fd is "busy" in the next. After the
    last packet it stops the loop."""

    def __init__(self, dp: datapath.Datapath, feeds: Iterable[Callable[[], object]],
                 settle: Callable[[], None]) -> None:
        self.dp, self.feeds, self.settle = dp, iter(feeds), settle
        self.real = select.poll()
        self.fed = False

    def register(self, fd: int, events: int) -> None:
        self.real.register(fd, events)

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        if self.fed:
            self.fed = False
            self.settle()
            ready = self.real.poll(0)
            assert ready == [], f"readable after one packet was handled: {ready}"
            return ready
        feed = next(self.feeds, None)
        if feed is None:
            self.dp._stopping = True
            return []
        feed()
        self.fed = True
        ready = self.real.poll(2000)
        assert len(ready) == 1, f"one fd readable expected, poll gave {ready}"
        return ready


def no_drain(budget: int = datapath.BATCH) -> int:
    raise AssertionError("a drain ran: the packet did not take the inline branch")


def run(dp: datapath.Datapath, path: str, side: str, feeds: Iterable[Callable[[], object]],
        settle: Callable[[], None], batch: int = 1) -> None:
    """Feed packets to `path` ("inline": `_forward_poll`, one at a time; "drain": the mode's
    drain of `side`, "tun" or "sock", `batch` packets queued per call), `settle()` after
    each packet (after each batch, once per packet in it, when `batch` > 1)."""
    if path == "inline":
        rounds = Rounds(dp, feeds, settle)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(datapath, "select", types.SimpleNamespace(poll=lambda: rounds,
                                                                 POLLIN=select.POLLIN))
            mp.setattr(dp, "handlers", lambda: (no_drain, no_drain))
            dp._forward_poll()
        dp._stopping = False
        return
    drain = dp.handlers()[0 if side == "tun" else 1]
    sfd = dp.sock.fileno()
    chunk: list[Callable[[], object]] = []
    for feed in itertools.chain(feeds, [None]):
        if feed is not None:
            chunk.append(feed)
            if len(chunk) < batch:
                continue
        for f in chunk:
            f()
        done = 0
        while done < len(chunk):
            if side == "sock":
                assert select.select([sfd], [], [], 2)[0], "the datagram never arrived"
            read = drain(len(chunk) - done)
            assert read or side == "sock", "the TUN read found nothing"
            done += read
        for _ in chunk:
            settle()
        chunk.clear()


@pytest.fixture(params=[False, True], ids=["plain", "offload"])
def offload(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


ONLY_OFFLOAD = pytest.mark.parametrize("offload", [True], ids=["offload"])  # overrides the fixture


@pytest.fixture(params=["inline", "drain"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class TunSide:
    """Node A (10.244.1.0/24) forwarding from its TUN; 10.244.2.0/24 routes to `rx`, a plain
    UDP socket (no UDP_GRO: it reads every datagram as sent), 10.244.9.0/24 to 127.0.0.2 port 0
    (every sendto fails)."""

    node: lp.Node
    rx: socket.socket

    def frame(self, pkt: bytes | bytearray) -> bytes:
        return (VNET if self.node.dp.offload else b"") + bytes(pkt)

    def feeds(self, frames: Iterable[bytes]) -> Iterator[Callable[[], object]]:
        return (functools.partial(self.node.pod.send, f) for f in frames)

    def expected(self, frame: bytes) -> Outcome:
        """The reference, `core.from_tun`, on a copy of the packet (behind a zero vnet header
        in offload mode): sent after its TTL patch (the inline branch must take exactly the
        packets without IP options that it sends), or dropped with its reason and reply."""
        pkt = bytearray(frame[gso.VNET_HDR_LEN:] if self.node.dp.offload else frame)
        v = REF_FROM_TUN(pkt, self.node.dp.routes, MTU)
        if v.peer is None:
            assert v.drop is not None
            return Outcome(written=(v.reply,) if v.reply is not None else (),
                           drops=dropped(v.drop).drops, inline=False)
        inline = pkt[0] == 0x45
        if v.peer[1] == 0:
            return dropped(DropReason.SEND_FAILED, inline=inline)
        return Outcome(sent=(bytes(pkt),), inline=inline, traffic=traffic((bytes(pkt),)))

    def outcomes(self, path: str, frames: list[bytes]) -> list[Outcome]:
        with pytest.MonkeyPatch.context() as mp:
            rec = Recorder(self.node, self.rx, "from_tun", mp)
            run(self.node.dp, path, "tun", self.feeds(frames), rec.settle)
        assert take_datagrams(self.rx, 0, timeout=0.02) == (), "datagrams nobody counted"
        return rec.outcomes


@pytest.fixture
def tun_side(offload: bool) -> Iterator[TunSide]:
    node = lp.node(A_NET, offload)
    rx = datapath.open_socket("127.0.0.1", 0)
    node.dp.set_route(B_NET, "127.0.0.1", rx.getsockname()[1])
    node.dp.set_route(SEND_FAILS, "127.0.0.2", 0)  # its own host: one address per host
    try:
        yield TunSide(node, rx)
    finally:
        rx.close()
        node.close()


@dataclass
class SockSide:
    """Node B (10.244.2.0/24) receiving from the underlay: `senders` are UDP sockets bound to
    the hosts of `LEASES` and to `STRANGER`."""

    node: lp.Node
    senders: dict[str, socket.socket] = field(default_factory=dict)

    def feeds(self, datagrams: Iterable[tuple[str, bytes | list[bytes]]]
              ) -> Iterator[Callable[[], object]]:
        addr = self.node.dp.sock.getsockname()

        def feed(host: str, data: bytes | list[bytes]) -> None:
            if isinstance(data, list):  # one UDP_SEGMENT send: a UDP_GRO train for node B
                seg = len(data[0]).to_bytes(2, sys.byteorder)
                self.senders[host].sendmsg([b"".join(data)], [(17, 103, seg)], 0, addr)
            else:
                self.senders[host].sendto(data, addr)

        return (functools.partial(feed, h, d) for h, d in datagrams)

    def expected(self, host: str, data: bytes | list[bytes]) -> Outcome:
        """The reference, `core.check_received`, on each packet: written into the TUN as it
        came, or dropped with its reason. The inline checks must take exactly the valid packets
        without IP options from a sender whose one subnet is its source key; a UDP_GRO train
        goes to the offload mode's train receiver (one verdict per segment), not core."""
        dp = self.node.dp
        pkts = data if isinstance(data, list) else [data]
        verdicts = [REF_CHECK_RECEIVED(p, host, dp.routes, dp.local) for p in pkts]
        written = tuple(p for p, bad in zip(pkts, verdicts, strict=True) if bad is None)
        drops = dropped(*(bad for bad in verdicts if bad is not None)).drops
        if isinstance(data, list):
            return Outcome(written=written, drops=drops, inline=None, traffic=traffic(written))
        inline = verdicts[0] is None and data[0] == 0x45 and dp.routes.sole_subnet(host) is not None
        return Outcome(written=written, drops=drops, inline=inline, traffic=traffic(written))

    def outcomes(self, path: str, datagrams: list[tuple[str, bytes | list[bytes]]],
                 tun: bool = True) -> list[Outcome]:
        with pytest.MonkeyPatch.context() as mp:
            rec = Recorder(self.node, None, "accept_received", mp, tun=tun)
            run(self.node.dp, path, "sock", self.feeds(datagrams), rec.settle)
        return rec.outcomes


@pytest.fixture
def sock_side(offload: bool) -> Iterator[SockSide]:
    node = lp.node(B_NET, offload)
    side = SockSide(node)
    try:
        for host, subnets in LEASES.items():
            for subnet in subnets:
                node.dp.set_route(subnet, host, 8285)
        for host in (*LEASES, STRANGER):
            s = side.senders[host] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
        yield side
    finally:
        for s in side.senders.values():
            s.close()
        node.close()


def assert_agree(names: list[str], got: list[Outcome], want: list[Outcome]) -> None:
    assert len(got) == len(want)
    bad = [f"{name}:\n  ran:       {g}\n  reference: {w}"
           for name, g, w in zip(names, got, want, strict=True) if not g.agrees(w)]
    assert not bad, f"{len(bad)} of {len(want)} packets differ from core:\n" + "\n".join(bad[:5])


# -- the TTL / checksum patch -------------------------------------------------------------------

def test_ttl_patch_of_the_running_path_on_every_checksum_value(tun_side: TunSide, path: str) -> None:
    """All 65536 header checksum values (0x0000, 0xfffe, 0xffff and the values whose patch wraps
    among them), each in a header that verifies, TTL 2..255, through the running TUN -> underlay
    path. Reference: `core.decrement_ttl` (RFC 1624 eqn 3). Runs: plain-inline / offload-inline
    (`_forward_poll`'s ``(HC + CSUM_TTL_STEP) % 0xffff``), plain-drain (`_on_tun`),
    offload-drain (`OffloadPath.on_tun`). Every packet must leave through that path (core's
    `from_tun` never runs), byte for byte as the reference patches it, still verifying."""
    frames = [tun_side.frame(pkt) for pkt, _ref in ttl_sweep()]
    want = [ref for _pkt, ref in ttl_sweep()]
    got: list[bytes] = []
    rx, done = tun_side.rx, [0]

    def settle() -> None:  # keep the receiver's buffer from filling: read it now and then
        done[0] += 1
        if done[0] % 512 == 0:
            got.extend(take_datagrams(rx, 0, timeout=0))

    def no_core(*args: Any) -> Any:
        raise AssertionError("core.from_tun ran: the packet left the inline path")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "from_tun", no_core)
        run(tun_side.node.dp, path, "tun", tun_side.feeds(frames), settle, batch=256)
    got.extend(take_datagrams(rx, len(want) - len(got)))
    assert tun_side.node.dp.drops == core.new_drop_counters()
    assert len(got) == len(want)
    entry = tun_side.node.dp.peers["127.0.0.1"]
    assert entry[:2] == [len(want), sum(map(len, want))], "the tx counters"
    wrong = [(hc, g.hex(), w.hex()) for hc, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not wrong, f"{len(wrong)} checksum values patched wrong, first (hc, got, want): {wrong[0]}"
    assert all(core.ipv4_header_checksum_ok(g, 20) for g in got)


# -- the receive checks -------------------------------------------------------------------------

def test_receive_checksum_check_of_the_running_path_on_every_checksum_value(
        sock_side: SockSide, path: str) -> None:
    """All 65536 header checksum field values, each once in a header that verifies and once in
    one that does not, from the leased sender, through the running underlay -> TUN path.
    Reference: `core.check_received` (``int.from_bytes(header) % 0xffff``). Runs: plain-inline /
    offload-inline (`_forward_poll`: the sum of the header's native 32-bit words), plain-drain
    (`_on_sock`), offload-drain (`OffloadPath.on_sock`). The valid ones must reach the TUN
    through the inline checks, in order; each other one is counted bad_header_checksum by
    core's form, which the inline checks hand it to."""
    node, slow = sock_side.node, [0]
    datagrams: list[tuple[str, bytes | list[bytes]]] = [("127.0.0.1", p) for p, _ok in checksum_sweep()]
    valid = [p for p, ok in checksum_sweep() if ok]
    for p, ok in checksum_sweep():
        assert (REF_CHECK_RECEIVED(p, "127.0.0.1", node.dp.routes, node.dp.local) is None) is ok
    got: list[bytes] = []
    done = [0]

    def settle() -> None:
        done[0] += 1
        if done[0] % 512 == 0:
            got.extend(node.take())

    real = core.accept_received

    def counted(*args: Any) -> bool:
        slow[0] += 1
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "accept_received", counted)
        run(node.dp, path, "sock", sock_side.feeds(datagrams), settle, batch=256)
    got.extend(node.take())
    first = next((i for i, (g, w) in enumerate(zip(got, valid, strict=False)) if g != w), None)
    assert first is None and len(got) == len(valid), \
        f"TUN got other than the valid packets, from checksum value {first}"
    assert core.drops_by_name(node.dp.drops) == {
        **core.drops_by_name(core.new_drop_counters()), "bad_header_checksum": 65536}
    assert slow[0] == 65536, "the valid packets must pass the inline checks, the others not"
    assert node.dp.peers["127.0.0.1"][2:4] == [len(valid), sum(map(len, valid))], "the rx counters"


def receive_cases() -> dict[str, tuple[str, bytes, DropReason | None]]:
    """One datagram per check and per drop reason of the receive path: (sender, datagram, what
    the table expects: None = written into the TUN)."""
    good = ipv4(payload=b"good")
    opts = ipv4(payload=b"opts", options=b"\x01\x01\x01\x00")
    mine = "127.0.0.1"
    zero = bytearray(ipv4("10.244.1.2", "10.244.2.2", b"0000"))  # find a header summing to -0
    zero[4:6] = (-(int.from_bytes(zero[:20], "big") - int.from_bytes(zero[10:12], "big"))
                 % 0xFFFF).to_bytes(2, "big")
    zero[10:12] = b"\0\0"
    assert core.checksum(zero[:20]) == 0
    zero_ffff = edited(zero, resum=False, b10=0xFF, b11=0xFF)
    short19 = edited(ipv4(), b3=19)[:19]  # with its 20th byte (2) the header would verify
    return {
        "a pod of the sender": (mine, bytes(good), None),
        "the sender's flannel0 address (its ICMP errors)": (mine, bytes(ipv4("10.244.1.0")), None),
        "the sender's last address, to our last": (mine, bytes(ipv4("10.244.1.255", "10.244.2.255")), None),
        "to our flannel0 address": (mine, bytes(ipv4(dst="10.244.2.0")), None),
        "checksum 0x0000 of a header summing to -0": (mine, bytes(zero), None),
        "checksum field 0xffff for a computed 0x0000": (mine, zero_ffff, None),
        "the largest datagram": (mine, bytes(ipv4(payload=bytes(MTU - 20))), None),
        "another leased peer, its own subnet": ("127.0.0.2", bytes(ipv4("10.244.3.5")), None),
        "IP options (IHL 6): core decides": (mine, bytes(opts), None),
        "a sender with two subnets, the first": ("127.0.0.3", bytes(ipv4("10.244.4.9")), None),
        "a sender with two subnets, the second": ("127.0.0.3", bytes(ipv4("10.244.5.127")), None),
        "a sender with two subnets, neither": ("127.0.0.3", bytes(ipv4("10.244.5.128")),
                                               DropReason.SOURCE_NOT_PEER_SUBNET),
        "an unleased sender": (STRANGER, bytes(good), DropReason.SOURCE_NO_LEASE),
        "an unleased sender's garbage": (STRANGER, b"x", DropReason.SOURCE_NO_LEASE),
        "empty": (mine, b"", DropReason.TRUNCATED),
        "19 bytes": (mine, bytes(good[:19]), DropReason.TRUNCATED),
        # the datagram before leaves byte 19 of the receive buffer as a 20-byte header needs it
        "header only, to 10.244.2.2": (mine, bytes(ipv4()), None),
        "its first 19 bytes, claiming 19": (mine, short19, DropReason.TRUNCATED),
        "one byte short of its total length": (mine, bytes(good[:-1]), DropReason.TRUNCATED),
        "one byte beyond its total length": (mine, bytes(good) + b"\0", DropReason.BAD_TOTAL_LENGTH),
        "IPv6": (mine, edited(good, b0=0x65), DropReason.NOT_IPV4),
        "version 0": (mine, edited(good, b0=0x05), DropReason.NOT_IPV4),
        "IHL 4": (mine, edited(good, b0=0x44), DropReason.BAD_HEADER_LENGTH),
        "IHL 15, longer than the packet": (mine, edited(ipv4(payload=bytes(20)), b0=0x4F),
                                           DropReason.BAD_HEADER_LENGTH),
        "IP options, bad checksum": (mine, edited(opts, resum=False, b11=opts[11] ^ 1),
                                     DropReason.BAD_HEADER_CHECKSUM),
        "bad header checksum": (mine, edited(good, resum=False, b10=good[10] ^ 0x80),
                                DropReason.BAD_HEADER_CHECKSUM),
        "a bit flipped in the source": (mine, edited(good, resum=False, b15=good[15] ^ 1),
                                        DropReason.BAD_HEADER_CHECKSUM),
        "to another peer's subnet": (mine, bytes(ipv4(dst="10.244.3.2")), DropReason.DESTINATION_NOT_LOCAL),
        "to the sender's subnet": (mine, bytes(ipv4(dst="10.244.1.9")), DropReason.DESTINATION_NOT_LOCAL),
        "to the address above our subnet": (mine, bytes(ipv4(dst="10.244.3.0")),
                                            DropReason.DESTINATION_NOT_LOCAL),
        "to the address below our subnet": (mine, bytes(ipv4(dst="10.244.1.255")),
                                            DropReason.DESTINATION_NOT_LOCAL),
        "to ours but for the first octet": (mine, bytes(ipv4(dst="11.244.2.2")),
                                            DropReason.DESTINATION_NOT_LOCAL),
        "from outside every subnet": (mine, bytes(ipv4("8.8.8.8")), DropReason.SOURCE_NOT_PEER_SUBNET),
        "from another leased peer's subnet": (mine, bytes(ipv4("10.244.3.5")),
                                              DropReason.SOURCE_NOT_PEER_SUBNET),
        "from our own subnet": (mine, bytes(ipv4("10.244.2.7")), DropReason.SOURCE_NOT_PEER_SUBNET),
        "from just below the sender's subnet": (mine, bytes(ipv4("10.244.0.255")),
                                                DropReason.SOURCE_NOT_PEER_SUBNET),
        "from just above the sender's subnet": (mine, bytes(ipv4("10.244.2.0")),
                                                DropReason.SOURCE_NOT_PEER_SUBNET),
        "from the sender's subnet but for the first octet": (mine, bytes(ipv4("11.244.1.2")),
                                                             DropReason.SOURCE_NOT_PEER_SUBNET),
        "another peer, from the first sender's subnet": ("127.0.0.2", bytes(good),
                                                         DropReason.SOURCE_NOT_PEER_SUBNET),
    }


def test_every_receive_check_of_the_running_path_agrees_with_core(sock_side: SockSide,
                                                                   path: str) -> None:
    """One datagram per check and drop reason, then each twice more in a row (the buffers now
    hold the previous datagram), through the running underlay -> TUN path. Reference:
    `core.check_received`; it must also say what the table says. Runs: plain-inline /
    offload-inline (`_forward_poll`), plain-drain (`_on_sock`), offload-drain
    (`OffloadPath.on_sock`)."""
    cases = receive_cases()
    dp = sock_side.node.dp
    for name, (host, pkt, reason) in cases.items():
        assert REF_CHECK_RECEIVED(pkt, host, dp.routes, dp.local) is reason, name
    assert {r for _h, _p, r in cases.values()} >= {
        DropReason.SOURCE_NO_LEASE, DropReason.TRUNCATED, DropReason.NOT_IPV4,
        DropReason.BAD_HEADER_LENGTH, DropReason.BAD_TOTAL_LENGTH,
        DropReason.BAD_HEADER_CHECKSUM, DropReason.DESTINATION_NOT_LOCAL,
        DropReason.SOURCE_NOT_PEER_SUBNET}
    names = [*cases, *(f"{n} (again)" for n in cases for _ in range(2))]
    datagrams: list[tuple[str, bytes | list[bytes]]] = [
        (h, p) for n in names for h, p, _r in [cases[n.removesuffix(" (again)")]]]
    want = [sock_side.expected(h, p) for h, p in datagrams]
    assert_agree(names, sock_side.outcomes(path, datagrams), want)
    assert sum(bool(w.inline) for w in want) >= 3 * 8  # the inline checks accepted these


def hostile(rng: random.Random) -> tuple[str, bytes]:
    """A datagram from a random sender: valid ones between random addresses near the subnets,
    with bytes flipped, cut or added, header fields replaced, or random bytes."""
    host = rng.choice([*["127.0.0.1"] * 5, "127.0.0.2", "127.0.0.3", STRANGER])

    def addr(likely: tuple[int, int, int]) -> str:
        net = rng.choice([*[likely] * 12, (10, 244, 1), (10, 244, 2), (10, 244, 3), (10, 244, 4),
                          (10, 244, 5), (10, 244, 0), (11, 244, 2), (10, 245, 2),
                          (rng.randrange(256),) * 3])
        return ".".join(map(str, (*net, rng.choice([0, 1, 127, 128, 254, 255, rng.randrange(256)]))))

    src = addr({"127.0.0.2": (10, 244, 3), "127.0.0.3": (10, 244, 5)}.get(host, (10, 244, 1)))
    pkt = bytearray(ipv4(src, addr((10, 244, 2)), rng.randbytes(rng.randrange(40)),
                         ttl=rng.randrange(256), ident=rng.randrange(65536), df=rng.random() < 0.5,
                         options=b"\x01\x01\x01\x00" if rng.random() < 0.1 else b""))
    kind = rng.choice([0] * 5 + [1, 2, 3, 4, 5])  # half of them left as built
    if kind == 1:
        for _ in range(rng.randrange(1, 3)):
            pkt[rng.randrange(len(pkt))] ^= 1 << rng.randrange(8)
    elif kind == 2:
        del pkt[rng.randrange(len(pkt)):]
    elif kind == 3:
        pkt += rng.randbytes(rng.randrange(1, 4))
    elif kind == 4:
        i = rng.choice([0, 2, 3, 12, 13, 16, 19])
        pkt = bytearray(edited(pkt, resum=rng.random() < 0.8, **{f"b{i}": rng.randrange(256)}))
    elif kind == 5:
        pkt = bytearray(rng.randbytes(rng.randrange(64)))
    return host, bytes(pkt)


def test_random_datagrams_to_the_running_path_agree_with_core(sock_side: SockSide, path: str) -> None:
    """600 random datagrams (valid, corrupted, cut, extended, random; random senders and inner
    addresses), one by one through the running underlay -> TUN path. Reference:
    `core.check_received`. Runs: plain-inline / offload-inline (`_forward_poll`), plain-drain
    (`_on_sock`), offload-drain (`OffloadPath.on_sock`)."""
    rng = random.Random(1624)
    pkts = [hostile(rng) for _ in range(600)]
    want = [sock_side.expected(h, p) for h, p in pkts]
    got = sock_side.outcomes(path, list(pkts))
    assert_agree([f"#{i} from {h}: {p.hex()}" for i, (h, p) in enumerate(pkts)], got, want)
    assert sum(bool(w.inline) for w in want) > 50
    assert {name for w in want for name, _n in w.drops} == {
        "source_no_lease", "truncated", "not_ipv4", "bad_header_length", "bad_total_length",
        "bad_header_checksum", "destination_not_local", "source_not_peer_subnet"}


@ONLY_OFFLOAD
def test_gro_trains_through_the_running_path_agree_with_core(sock_side: SockSide, path: str) -> None:
    """Offload mode: UDP_GRO trains (one recvmsg of several equal datagrams) of valid and bad
    segments, from a sender with one subnet and from one with two. Reference:
    `core.check_received` per segment. Runs: `_forward_poll`'s inline branch, which hands a
    train to `OffloadPath.receive_train`, and the drain `OffloadPath.on_sock`, which does too.
    (Not here: an unleased sender's train, which `receive_train` counts as one source_no_lease
    drop where the reference counts one per segment.)"""
    def seg(src: str, dst: str = "10.244.2.2", tag: int = 0) -> bytes:
        return bytes(ipv4(src, dst, tag.to_bytes(2, "big") + bytes(34)))

    bad = bytearray(seg("10.244.1.3", tag=9))
    bad[10] ^= 1
    trains: list[tuple[str, bytes | list[bytes]]] = [
        ("127.0.0.1", [seg("10.244.1.2", tag=i) for i in range(8)]),
        ("127.0.0.1", [seg("10.244.1.2", tag=1), seg("8.8.8.8"), bytes(bad), seg("10.244.1.2", "10.244.3.3"),
                       seg("10.244.2.9"), seg("10.244.1.255", tag=2), seg("10.244.3.1"), seg("11.244.1.2")]),
        ("127.0.0.3", [seg("10.244.4.1"), seg("10.244.5.1"), seg("10.244.5.200"), seg("10.244.1.2")]),
    ]
    want = [sock_side.expected(h, p) for h, p in trains]
    assert_agree([f"train {i}" for i in range(len(trains))], sock_side.outcomes(path, trains), want)


def test_tun_write_failures_of_the_running_path_are_counted(sock_side: SockSide, path: str) -> None:
    """A TUN that refuses the write (its reader shut down): the packet the inline checks took
    and one core took are each counted tun_write_failed, not received. Reference: none, core has
    no form of this (only the datapath writes). Runs: plain-inline / offload-inline
    (`_forward_poll`), plain-drain (`_on_sock`), offload-drain (`OffloadPath.on_sock`)."""
    sock_side.node.pod.shutdown(socket.SHUT_RD)
    datagrams: list[tuple[str, bytes | list[bytes]]] = [
        ("127.0.0.1", bytes(ipv4())), ("127.0.0.1", bytes(ipv4(options=b"\x01\x01\x01\x00")))]
    got = sock_side.outcomes(path, datagrams, tun=False)
    assert got == [dropped(DropReason.TUN_WRITE_FAILED, inline=True),
                   dropped(DropReason.TUN_WRITE_FAILED, inline=False)]
    assert sock_side.node.dp.peers["127.0.0.1"][2] == 0


# -- the TUN side's checks ----------------------------------------------------------------------

def tun_cases() -> dict[str, tuple[bytes, DropReason | None]]:
    """One packet per check and drop reason of the TUN -> underlay path: (packet, what the table
    expects: None = sent)."""
    over = MTU - 20 + 1
    return {
        "a pod's packet": (bytes(ipv4(payload=b"ok")), None),
        "TTL 2, leaves with 1": (bytes(ipv4(ttl=2)), None),
        "TTL 255": (bytes(ipv4(ttl=255)), None),
        "header only": (bytes(ipv4()), None),
        "exactly the MTU": (bytes(ipv4(payload=bytes(MTU - 20), df=True)), None),
        "to the peer's last address": (bytes(ipv4(dst="10.244.2.255")), None),
        "IP options (IHL 6): core forwards it": (bytes(ipv4(options=b"\x01\x01\x01\x00")), None),
        "IHL 4: core forwards it": (edited(ipv4(), b0=0x44), None),
        "TTL 1": (bytes(ipv4(ttl=1)), DropReason.TTL_EXPIRED),
        "TTL 0": (bytes(ipv4(ttl=0)), DropReason.TTL_EXPIRED),
        "IP options, TTL 1": (bytes(ipv4(ttl=1, options=b"\x01\x01\x01\x00")), DropReason.TTL_EXPIRED),
        "one byte over the MTU, DF (frag needed)": (bytes(ipv4(payload=bytes(over), df=True)),
                                                    DropReason.TOO_BIG),
        "one byte over the MTU": (bytes(ipv4(payload=bytes(over))), DropReason.TOO_BIG),
        "19 bytes": (bytes(ipv4())[:19], DropReason.TRUNCATED),
        "empty": (b"", DropReason.TRUNCATED),
        "IPv6": (edited(ipv4(), b0=0x65), DropReason.NOT_IPV4),
        "version 0 (the stop wake-up's packet)": (bytes(20), DropReason.NOT_IPV4),
        "no route (net unreachable)": (bytes(ipv4(dst="10.99.0.1")), DropReason.NO_ROUTE),
        "no route to our own subnet": (bytes(ipv4(dst="10.244.1.7")), DropReason.NO_ROUTE),
        "no route, TTL 1": (bytes(ipv4(dst="10.99.0.1", ttl=1)), DropReason.NO_ROUTE),
        "to the peer's subnet but for the first octet": (bytes(ipv4(dst="11.244.2.2")),
                                                         DropReason.NO_ROUTE),
        "the underlay refuses it": (bytes(ipv4(dst="10.244.9.9")), DropReason.SEND_FAILED),
        "the underlay would refuse it, TTL 1": (bytes(ipv4(dst="10.244.9.9", ttl=1)),
                                                DropReason.TTL_EXPIRED),
    }


def test_every_tun_check_of_the_running_path_agrees_with_core(tun_side: TunSide, path: str) -> None:
    """One packet per check and drop reason, then each twice more in a row (the buffer now holds
    the previous packet; the route cache is warm), through the running TUN -> underlay path.
    Reference: `core.from_tun` (with `decrement_ttl`); it must also say what the table says.
    Runs: plain-inline / offload-inline (`_forward_poll`), plain-drain (`_on_tun`),
    offload-drain (`OffloadPath.on_tun`)."""
    cases = tun_cases()
    routes = tun_side.node.dp.routes
    for name, (pkt, reason) in cases.items():
        v = REF_FROM_TUN(bytearray(pkt), routes, MTU)
        said = v.drop if v.peer is None else DropReason.SEND_FAILED if v.peer[1] == 0 else None
        assert said is reason, name
    assert {r for _p, r in cases.values()} >= {
        DropReason.TTL_EXPIRED, DropReason.TOO_BIG, DropReason.TRUNCATED, DropReason.NOT_IPV4,
        DropReason.NO_ROUTE, DropReason.SEND_FAILED}
    names = [*cases, *(f"{n} (again)" for n in cases for _ in range(2))]
    frames = [tun_side.frame(cases[n.removesuffix(" (again)")][0]) for n in names]
    want = [tun_side.expected(f) for f in frames]
    assert_agree(names, tun_side.outcomes(path, frames), want)
    assert sum(bool(w.inline) for w in want) >= 3 * 7  # the inline checks sent these
    assert any(w.written for w in want)  # and the ICMP errors core answers with came back


@ONLY_OFFLOAD
def test_virtio_net_headers_the_inline_path_must_not_take(tun_side: TunSide, path: str) -> None:
    """Offload mode: TUN reads whose virtio-net header asks for work (a partial checksum to
    finish, a GSO type), or shorter than that header. Reference: `gso.finish_checksum` then
    `core.from_tun` for the partial checksum; the drop reasons otherwise. Runs: `_forward_poll`'s
    inline branch (its `VNET_GSO_OR_CSUM` test sends them to `OffloadPath.tun_one`) and the
    drain `OffloadPath.on_tun` (which finishes the checksum itself, then patches inline)."""
    pkt = ipv4(payload=b"partial" + bytes(5))
    pkt[20:28] = (4000).to_bytes(2, "big") + (5000).to_bytes(2, "big") + (20).to_bytes(2, "big") + b"\0\0"
    partial = bytearray(pkt)
    ph = core.pseudo_header_sum(bytes(pkt[12:16]), bytes(pkt[16:20]), core.PROTO_UDP, len(pkt) - 20)
    partial[26:28] = ph.to_bytes(2, "big")
    finished = bytearray(partial)
    assert gso.finish_checksum(finished, 20, 6)
    assert core.checksum(finished[20:], ph) == 0
    needs_csum = bytes([gso.F_NEEDS_CSUM, 0, 0, 0, 0, 0, 20, 0, 6, 0])
    v = REF_FROM_TUN(finished, tun_side.node.dp.routes, MTU)
    assert v.peer is not None
    cases = {
        "a partial UDP checksum": (needs_csum + partial,  # inline: either (see above)
                                   Outcome(sent=(bytes(finished),), traffic=(1, len(finished)))),
        "a partial checksum past the packet": (bytes([1, 0, 0, 0, 0, 0, 200, 0, 6, 0]) + partial,
                                               dropped(DropReason.BAD_OFFLOAD, inline=None)),
        "GSO type UDP": (bytes([0, 3, 0, 0, 0, 0, 0, 0, 0, 0]) + pkt,
                         dropped(DropReason.BAD_OFFLOAD, inline=None)),
        "GSO type TCPv4, too short": (bytes([0, 1, 0, 0, 0, 0, 0, 0, 0, 0]) + pkt[:19],
                                      dropped(DropReason.TRUNCATED, inline=None)),
        "shorter than a virtio-net header": (b"\x00" * 5, dropped(DropReason.TRUNCATED, inline=None)),
        "a virtio-net header alone": (VNET, dropped(DropReason.TRUNCATED, inline=None)),
        "then a plain packet again": (VNET + bytes(pkt), tun_side.expected(VNET + bytes(pkt))),
    }
    names = list(cases)
    got = tun_side.outcomes(path, [f for f, _w in cases.values()])
    assert_agree(names, got, [w for _f, w in cases.values()])


def random_tun_packet(rng: random.Random) -> bytes:
    """A packet a pod might hand the TUN, or a broken one: random destination (routed, refused,
    unrouted, ours), TTL, size (to past the MTU), DF, IP options, first byte, length."""
    dst = rng.choice(["10.244.2.2", "10.244.2.255", "10.244.2.0", "10.244.9.1", "10.99.0.1",
                      "10.244.1.5", "11.244.2.2", "10.244.3.1", f"10.244.2.{rng.randrange(256)}"])
    size = rng.choice([20, 21, 100, MTU - 1, MTU, MTU + 1, MTU + 20, rng.randrange(MTU)])
    options = b"\x01\x01\x01\x00" if rng.random() < 0.1 else b""
    pkt = bytearray(ipv4(f"10.244.1.{rng.randrange(256)}", dst,
                         rng.randbytes(max(0, size - 20 - len(options))),
                         ttl=rng.choice([0, 1, 2, 3, 64, 254, 255, rng.randrange(256)]),
                         ident=rng.randrange(65536), df=rng.random() < 0.5, options=options))
    kind = rng.randrange(5)
    if kind == 1:
        pkt[0] = rng.randrange(256)
    elif kind == 2:
        del pkt[rng.randrange(len(pkt)):]
    elif kind == 3:
        pkt[10:12] = rng.randbytes(2)  # a checksum the TUN side does not verify: patched anyway
    return bytes(pkt)


def test_random_tun_packets_through_the_running_path_agree_with_core(tun_side: TunSide,
                                                                     path: str) -> None:
    """600 random packets from the TUN (see `random_tun_packet`), one by one through the running
    TUN -> underlay path. Reference: `core.from_tun`. Runs: plain-inline / offload-inline
    (`_forward_poll`), plain-drain (`_on_tun`), offload-drain (`OffloadPath.on_tun`)."""
    rng = random.Random(791)
    frames = [tun_side.frame(random_tun_packet(rng)) for _ in range(600)]
    want = [tun_side.expected(f) for f in frames]
    got = tun_side.outcomes(path, frames)
    assert_agree([f"#{i}: {f.hex()}" for i, f in enumerate(frames)], got, want)
    assert sum(bool(w.inline) for w in want) > 60
    assert {name for w in want for name, _n in w.drops} == {
        "truncated", "not_ipv4", "no_route", "too_big", "ttl_expired", "send_failed"}
