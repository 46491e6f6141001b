"""Golden-packet and fuzz tests of the udp backend's sans-IO core (scapy builds the packets)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.packet import Raw

from flanneld.backends.udp import core
from flanneld.backends.udp.core import DropReason

pytestmark = pytest.mark.unit

LOCAL = core.LocalSubnet.parse("10.244.1.0/24")
PEER = "198.18.0.2"


def routes() -> core.RouteTable:
    t = core.RouteTable()
    t.set("10.244.2.0/24", PEER, 8285)
    t.set("10.244.3.0/24", "198.18.0.3", 8285)
    return t


def golden(dst: str = "10.244.1.5", src: str = "10.244.2.7", ttl: int = 64,
           flags: str = "") -> bytes:
    return bytes(IP(src=src, dst=dst, ttl=ttl, id=0x1234, flags=flags) / TCP(sport=40000, dport=80)
                 / Raw(b"x" * 100))


def test_valid_packet_accepted() -> None:
    assert core.check_ipv4(golden()) is None
    assert core.check_received(golden(), PEER, routes(), LOCAL) is None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:19], DropReason.TRUNCATED),
        (lambda p: b"", DropReason.TRUNCATED),
        (lambda p: p[:-1], DropReason.TRUNCATED),
        (lambda p: p + b"\0", DropReason.BAD_TOTAL_LENGTH),
        (lambda p: b"\x65" + p[1:], DropReason.NOT_IPV4),
        (lambda p: b"\x44" + p[1:], DropReason.BAD_HEADER_LENGTH),
        (lambda p: p[:10] + bytes([p[10] ^ 1]) + p[11:], DropReason.BAD_HEADER_CHECKSUM),
        (lambda p: p[:15] + bytes([p[15] ^ 1]) + p[16:], DropReason.BAD_HEADER_CHECKSUM),
    ],
)
def test_invalid_packets(mutate: object, reason: DropReason) -> None:
    assert callable(mutate)
    assert core.check_ipv4(mutate(golden())) is reason


def test_header_longer_than_packet() -> None:
    # IHL 15 (60 bytes) but total length 40: scapy fixes the checksum for us
    pkt = bytes(IP(ihl=15, len=40, dst="10.244.1.5", options=[]) / Raw(b"a" * 20))[:40]
    assert core.check_ipv4(pkt) is DropReason.BAD_HEADER_LENGTH


def test_ip_options_packet_valid() -> None:
    from scapy.layers.inet import IPOption_NOP

    pkt = bytes(IP(dst="10.244.1.5", options=[IPOption_NOP()] * 4) / UDP() / Raw(b"q"))
    assert (pkt[0] & 0xF) == 6
    assert core.check_ipv4(pkt) is None


def test_received_from_unleased_sender() -> None:
    assert core.check_received(golden(), "198.18.0.99", routes(), LOCAL) is \
        DropReason.SOURCE_NO_LEASE


def test_received_for_foreign_destination() -> None:
    assert core.check_received(golden(dst="10.244.2.9"), PEER, routes(), LOCAL) is \
        DropReason.DESTINATION_NOT_LOCAL


def test_lease_check_comes_first() -> None:
    assert core.check_received(b"junk", "198.18.0.99", routes(), LOCAL) is \
        DropReason.SOURCE_NO_LEASE


# PEER (198.18.0.2) holds 10.244.2.0/24, 198.18.0.3 holds 10.244.3.0/24, we hold 10.244.1.0/24
FORGED_SOURCES = {
    "outside every subnet": "8.8.8.8",
    "another peer's subnet": "10.244.3.7",
    "the receiver's own subnet": "10.244.1.9",
    "the receiver's flannel0 address": "10.244.1.0",
    "the neighbour below the sender's subnet": "10.244.1.255",
    "the neighbour above the sender's subnet (another peer's first address)": "10.244.3.0",
    "the sender's subnet in another /16": "10.245.2.7",
    "zero": "0.0.0.0",
    "broadcast": "255.255.255.255",
}


@pytest.mark.parametrize("src", FORGED_SOURCES.values(), ids=FORGED_SOURCES.keys())
def test_inner_source_outside_the_senders_subnet_is_dropped_and_counted(src: str) -> None:
    """A datagram from a leased underlay address (trivially forged) whose inner source is not
    inside the subnet that address leases is dropped, under its own reason."""
    pkt = golden(src=src)
    assert core.check_ipv4(pkt) is None
    assert core.check_received(pkt, PEER, routes(), LOCAL) is DropReason.SOURCE_NOT_PEER_SUBNET
    drops = core.new_drop_counters()
    assert not core.accept_received(pkt, PEER, routes(), LOCAL, drops)
    assert drops[DropReason.SOURCE_NOT_PEER_SUBNET] == 1 and sum(drops) == 1
    assert core.drops_by_name(drops)["source_not_peer_subnet"] == 1


@pytest.mark.parametrize("src", ["10.244.2.0", "10.244.2.1", "10.244.2.7", "10.244.2.255"])
def test_inner_source_inside_the_senders_subnet_is_accepted(src: str) -> None:
    drops = core.new_drop_counters()
    assert core.accept_received(golden(src=src), PEER, routes(), LOCAL, drops)
    assert sum(drops) == 0


def test_icmp_error_from_the_peers_flannel0_address_passes() -> None:
    """The peer node's kernel sources its ICMP errors from its flannel0 address (<subnet>.0),
    which lies inside its subnet."""
    offender = golden(src="10.244.1.5", dst="10.244.2.9")
    err = bytes(IP(src="10.244.2.0", dst="10.244.1.5") / ICMP(type=3, code=1) / offender[:28])
    assert core.check_received(err, PEER, routes(), LOCAL) is None
    assert core.check_received(err, "198.18.0.3", routes(), LOCAL) is \
        DropReason.SOURCE_NOT_PEER_SUBNET


def test_inner_source_check_comes_after_the_header_checks() -> None:
    bad = bytearray(golden(src="8.8.8.8"))
    bad[10] ^= 0xFF
    assert core.check_received(bytes(bad), PEER, routes(), LOCAL) is DropReason.BAD_HEADER_CHECKSUM
    assert core.check_received(golden(src="8.8.8.8"), "198.18.0.99", routes(), LOCAL) is \
        DropReason.SOURCE_NO_LEASE


def test_a_public_ip_holding_several_leases_may_source_from_each() -> None:
    t = routes()
    t.set("10.244.5.0/25", PEER, 8285)
    assert t.sole_subnet(PEER) is None  # several: no single (network, mask)
    for src in ("10.244.2.7", "10.244.5.0", "10.244.5.127"):
        assert core.check_received(golden(src=src), PEER, t, LOCAL) is None, src
    for src in ("10.244.5.128", "10.244.3.7", "10.244.4.1"):
        assert core.check_received(golden(src=src), PEER, t, LOCAL) is \
            DropReason.SOURCE_NOT_PEER_SUBNET, src
    assert t.remove("10.244.2.0/24") is not None
    assert t.sole_subnet(PEER) == (0x0AF40500, 0xFFFFFF80)
    assert core.check_received(golden(src="10.244.2.7"), PEER, t, LOCAL) is \
        DropReason.SOURCE_NOT_PEER_SUBNET
    assert core.check_received(golden(src="10.244.5.9"), PEER, t, LOCAL) is None


def test_inner_source_follows_a_subnet_that_moves_to_another_host() -> None:
    t = routes()
    assert t.sole_subnet("198.18.0.3") == (0x0AF40300, 0xFFFFFF00)
    t.set("10.244.3.0/24", PEER, 8285)  # 198.18.0.3's lease went to PEER
    assert t.sole_subnet("198.18.0.3") is None and "198.18.0.3" not in t.leased
    assert core.check_received(golden(src="10.244.3.7"), PEER, t, LOCAL) is None
    assert core.check_received(golden(src="10.244.3.7"), "198.18.0.3", t, LOCAL) is \
        DropReason.SOURCE_NO_LEASE


def test_overlapping_subnets_each_sender_sources_from_its_own() -> None:
    """'Inside a subnet of that sender', not 'the longest-prefix route points at it'."""
    t = routes()
    t.set("10.244.2.128/25", "198.18.0.9", 8285)
    assert core.check_received(golden(src="10.244.2.200"), PEER, t, LOCAL) is None
    assert core.check_received(golden(src="10.244.2.200"), "198.18.0.9", t, LOCAL) is None
    assert core.check_received(golden(src="10.244.2.7"), "198.18.0.9", t, LOCAL) is \
        DropReason.SOURCE_NOT_PEER_SUBNET


@given(ttl=st.integers(2, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255),
       proto=st.integers(0, 255), flags=st.sampled_from([0, 2]),
       src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1))
@settings(max_examples=2000, deadline=None)
def test_ttl_decrement_matches_full_recompute(ttl: int, ident: int, tos: int, proto: int,
                                               flags: int, src: int, dst: int) -> None:
    s, d = str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst))
    pkt = bytearray(bytes(IP(src=s, dst=d, ttl=ttl, id=ident, tos=tos, proto=proto,
                             flags=flags) / Raw(b"p")))
    assert core.decrement_ttl(pkt)
    want = bytes(IP(src=s, dst=d, ttl=ttl - 1, id=ident, tos=tos, proto=proto, flags=flags)
                 / Raw(b"p"))
    assert pkt[8] == ttl - 1
    assert core.check_ipv4(pkt) is None
    # equal to a full recompute, up to the two representations of zero (0x0000/0xffff)
    got_ck, want_ck = (pkt[10] << 8) | pkt[11], (want[10] << 8) | want[11]
    assert got_ck == want_ck or {got_ck, want_ck} == {0, 0xFFFF}
    assert pkt[:10] == want[:10] and pkt[12:] == want[12:]


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_expired_leaves_packet_untouched(ttl: int) -> None:
    pkt = bytearray(golden(ttl=ttl))
    before = bytes(pkt)
    assert not core.decrement_ttl(pkt)
    assert bytes(pkt) == before


def test_checksum_matches_scapy() -> None:
    pkt = IP(bytes(IP(src="10.244.1.2", dst="10.244.2.2") / UDP(sport=1, dport=2) / Raw(b"abc")))
    want = pkt[UDP].chksum
    raw = bytearray(bytes(pkt[UDP]))
    raw[6:8] = b"\0\0"
    ph = core.pseudo_header_sum(bytes(pkt)[12:16], bytes(pkt)[16:20], 17, len(raw))
    assert core.checksum(raw, ph) == want


def test_route_lookup() -> None:
    t = routes()
    dst = int(ipaddress.IPv4Address("10.244.2.200"))
    assert t.lookup(dst) == (PEER, 8285)
    assert t.lookup(int(ipaddress.IPv4Address("10.244.9.1"))) is None
    assert t.leased == {PEER, "198.18.0.3"}
    t.set("10.244.2.128/25", "198.18.0.9", 8285)  # a longer prefix wins
    assert t.lookup(dst) == ("198.18.0.9", 8285)
    assert t.lookup(int(ipaddress.IPv4Address("10.244.2.1"))) == (PEER, 8285)
    assert t.delete("10.244.2.128/25")
    assert not t.delete("10.244.2.128/25")
    assert t.delete("10.244.2.0/24")
    assert t.lookup(dst) is None
    assert t.leased == {"198.18.0.3"}
    assert len(t) == 1


def test_net_unreachable_golden() -> None:
    offender = golden(src="10.244.1.5", dst="10.244.9.9")
    reply = core.build_net_unreachable(offender)
    assert reply is not None
    p = IP(reply)
    assert (p.src, p.dst, p.proto) == ("10.244.9.9", "10.244.1.5", 1)
    assert (p[ICMP].type, p[ICMP].code) == (3, 0)
    assert bytes(p[IPerror])[:28] == offender[:28]
    # scapy recomputes both checksums: they must equal ours
    again = IP(reply)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again) == reply


def test_frag_needed_golden() -> None:
    offender = golden(src="10.244.1.5", dst="10.244.2.9", flags="DF")
    reply = core.build_frag_needed(offender, 1472)
    assert reply is not None
    p = IP(reply)
    assert (p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (3, 4, 1472)
    again = IP(reply)
    del again.chksum
    del again[ICMP].chksum
    assert bytes(again) == reply


def test_no_icmp_about_icmp_errors_or_fragments() -> None:
    err = core.build_net_unreachable(golden(src="10.244.1.5", dst="10.244.9.9"))
    assert err is not None
    assert core.build_net_unreachable(err) is None
    frag = bytes(IP(src="10.244.1.5", dst="10.244.9.9", frag=10) / Raw(b"z" * 16))
    assert core.build_net_unreachable(frag) is None
    echo = bytes(IP(src="10.244.1.5", dst="10.244.9.9") / ICMP(type=8))
    assert core.build_net_unreachable(echo) is not None


def test_from_tun_verdicts() -> None:
    t = routes()
    ok = bytearray(golden(src="10.244.1.5", dst="10.244.3.3"))
    v = core.from_tun(ok, t, 1472)
    assert v.peer == ("198.18.0.3", 8285) and v.drop is None and ok[8] == 63
    v = core.from_tun(bytearray(golden(src="10.244.1.5", dst="10.244.7.3")), t, 1472)
    assert v.drop is DropReason.NO_ROUTE and v.reply is not None
    big = bytearray(bytes(IP(src="10.244.1.5", dst="10.244.2.3", flags="DF") / Raw(b"b" * 1500)))
    v = core.from_tun(big, t, 1472)
    assert v.drop is DropReason.TOO_BIG and v.reply is not None
    assert IP(v.reply)[ICMP].nexthopmtu == 1472
    v = core.from_tun(bytearray(golden(src="10.244.1.5", dst="10.244.2.3", ttl=1)), t, 1472)
    assert v.drop is DropReason.TTL_EXPIRED
    assert core.from_tun(bytearray(b"\x60" + bytes(39)), t, 1472).drop is DropReason.NOT_IPV4


# ---------------------------------------------------------------------------------------------
# fuzz: >= 10,000 garbage / truncated / bit-flipped datagrams; nothing escapes, all is counted

_VALID = golden()
_datagrams = st.one_of(
    st.binary(max_size=1600),
    st.sampled_from([_VALID, golden(src="8.8.8.8"), golden(src="10.244.3.3"),
                     golden(src="10.244.1.7")]),
    st.integers(0, len(_VALID)).map(lambda n: _VALID[:n]),
    st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)).map(
        lambda t: _VALID[: t[0]] + bytes([_VALID[t[0]] ^ t[1]]) + _VALID[t[0] + 1:]),
    st.binary(min_size=20, max_size=80).map(lambda b: b"\x45" + b[1:]),
)
_senders = st.sampled_from([PEER, "198.18.0.3", "198.18.0.99", "127.0.0.1"])
_FUZZ: dict[str, int] = {"seen": 0, "accepted": 0}
_FUZZ_DROPS = core.new_drop_counters()


@given(pkt=_datagrams, sender=_senders)
@settings(max_examples=10_000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_received_datagrams_never_raise_and_are_counted(pkt: bytes, sender: str) -> None:
    t = routes()
    drops = core.new_drop_counters()
    accepted = core.accept_received(pkt, sender, t, LOCAL, drops)
    assert sum(drops) == (0 if accepted else 1)
    if accepted:
        assert sender in t.leased and core.check_ipv4(pkt) is None
        assert t.holds(sender, int.from_bytes(pkt[12:16], "big"))  # inner source: the sender's
    # and the TUN-side decision never raises either
    v = core.from_tun(bytearray(pkt), t, 1472)
    assert (v.peer is None) == (v.drop is not None)
    _FUZZ["seen"] += 1
    _FUZZ["accepted"] += int(accepted)
    for i, n in enumerate(drops):
        _FUZZ_DROPS[i] += n


def test_fuzz_totals() -> None:
    """Runs after the fuzz test (file order): every datagram was accepted or counted once."""
    if _FUZZ["seen"] == 0:
        pytest.skip("fuzz test not run in this session")
    drops = _FUZZ_DROPS
    assert _FUZZ["seen"] >= 10_000
    assert _FUZZ["accepted"] + sum(drops) == _FUZZ["seen"]
    # the generator reaches every validation reason
    for r in (DropReason.TRUNCATED, DropReason.NOT_IPV4, DropReason.BAD_HEADER_LENGTH,
              DropReason.BAD_HEADER_CHECKSUM, DropReason.SOURCE_NO_LEASE,
              DropReason.BAD_TOTAL_LENGTH, DropReason.SOURCE_NOT_PEER_SUBNET):
        assert drops[r] > 0, r


def test_route_table_follows_hosts_per_change() -> None:
    """`leased` is kept per change (no re-walk): a host leaves it with its last route, a
    replaced route moves its subnet to the new host, an invalid route changes nothing."""
    t = core.RouteTable()
    assert t.set("10.244.2.0/24", PEER, 8285) is None
    assert t.set("10.244.3.0/24", PEER, 8285) is None
    assert t.sole_subnet(PEER) is None  # two subnets
    assert t.set("10.244.3.0/24", "198.18.0.3", 8285) == (PEER, 8285)
    assert t.leased == {PEER, "198.18.0.3"}
    # the per-host subnets follow each change: the inner-source check's (network, mask)
    assert t.sole_subnet(PEER) == (0x0AF40200, 0xFFFFFF00)
    assert t.sole_subnet("198.18.0.3") == (0x0AF40300, 0xFFFFFF00)
    assert t.holds(PEER, 0x0AF402FF) and not t.holds(PEER, 0x0AF40301)
    assert t.remove("10.244.2.0/24") == (PEER, 8285)
    assert t.leased == {"198.18.0.3"} and t.lookup(0x0AF40201) is None
    assert t.sole_subnet(PEER) is None and not t.holds(PEER, 0x0AF40201)
    with pytest.raises(ValueError):
        t.set("10.244.4.0/24", "not-an-ip", 8285)
    assert t.leased == {"198.18.0.3"} and len(t) == 1
    assert t.sole_subnet("198.18.0.3") == (0x0AF40300, 0xFFFFFF00)
    assert not t.delete("10.244.9.0/24")
    assert t.delete("10.244.3.0/24") and t.leased == set() and len(t) == 0


def test_route_table_changes_do_not_rewalk_the_table() -> None:
    """5000 routes set one by one stay linear: the 5000th change touches no other route."""
    t = core.RouteTable()
    for i in range(5000):
        t.set(f"10.{i >> 8}.{i & 255}.0/24", f"198.18.{i >> 8}.{(i & 255) or 1}", 8285)
    calls = 0
    original = core.RouteTable._reindex

    def counting(self: core.RouteTable) -> None:
        nonlocal calls
        calls += 1
        original(self)

    core.RouteTable._reindex = counting  # type: ignore[method-assign]
    try:
        t.set("10.200.0.0/24", "198.18.99.1", 8285)
        t.remove("10.200.0.0/24")
    finally:
        core.RouteTable._reindex = original  # type: ignore[method-assign]
    assert calls == 0
