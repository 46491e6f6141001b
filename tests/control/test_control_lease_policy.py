"""Hostile etcd content: the lease policy, the lease book (first holder wins, late events),
aggregated rejection logs, the store's reachability bound, and defending our own lease.

Pure or on the in-memory store; the lab tests (tests/lab/test_lab_hostile.py) run the same
attacks against real daemons.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from polling import until

from flanneld.health import Readiness
from flanneld.lease import Lease, LeaseAttrs, parse_subnet_key, subnets_prefix
from flanneld.lease_book import LeaseBook, LeaseEventKind
from flanneld.lease_policy import LeasePolicy, RejectReason, public_ip_problem, public_ipv6_problem
from flanneld.memory_store import MemoryStore
from flanneld.rejection_log import RejectionLog
from flanneld.store import KeyValue
from flanneld.store_health import StoreHealth
from flanneld.subnet_manager import LeaseLostError, SubnetManager

pytestmark = pytest.mark.unit

PREFIX = "/coreos.com/network"
NET = IPv4Network("10.244.0.0/16")
POLICY = LeasePolicy.build(NET, 24, [IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100")])
MAC = "0e:00:00:00:00:02"


def value(ip: str = "198.18.0.2", mac: str | None = MAC, btype: str = "vxlan") -> bytes:
    obj: dict[str, object] = {"PublicIP": ip, "PublicIPv6": None, "BackendType": btype}
    if mac is not None:
        obj["BackendData"] = {"VNI": 1, "VtepMAC": mac}
    return json.dumps(obj).encode()


def kv(name: str, val: bytes, rev: int, created: int | None = None, lease_id: int = 7) -> KeyValue:
    return KeyValue(subnets_prefix(PREFIX) + name, val, lease_id, rev,
                    rev if created is None else created)


def reason(book: LeaseBook, name: str) -> RejectReason:
    return book.rejected[subnets_prefix(PREFIX) + name].reason


# ---- the policy: every item of the hostile-input issue --------------------------------------

@pytest.mark.parametrize(("name", "val", "why"), [
    ("198.18.0.0-25", value(), RejectReason.OUTSIDE_NETWORK),  # blackholes the underlay
    ("10.0.0.0-8", value(), RejectReason.OUTSIDE_NETWORK),  # covers the Network itself
    ("10.244.59.0-25", value(), RejectReason.WRONG_PREFIX_LENGTH),  # half of a peer's /24
    ("10.244.0.0-16", value(), RejectReason.WRONG_PREFIX_LENGTH),
    ("10.244.3.0-24", value("0.0.0.0"), RejectReason.BAD_PUBLIC_IP),
    ("10.244.3.0-24", value("255.255.255.255"), RejectReason.BAD_PUBLIC_IP),
    ("10.244.3.0-24", value("127.0.0.1"), RejectReason.BAD_PUBLIC_IP),
    ("10.244.3.0-24", value("224.0.0.1"), RejectReason.BAD_PUBLIC_IP),
    ("10.244.3.0-24", value("240.0.0.9"), RejectReason.BAD_PUBLIC_IP),
    ("10.244.3.0-24", value("10.244.9.9"), RejectReason.BAD_PUBLIC_IP),  # inside the Network
    ("10.244.3.0-24", value(mac="00:00:00:00:00:00"), RejectReason.BAD_BACKEND_DATA),
    ("10.244.3.0-24", value(mac="ff:ff:ff:ff:ff:ff"), RejectReason.BAD_BACKEND_DATA),
    ("10.244.3.0-24", value(mac="01:00:5e:00:00:01"), RejectReason.BAD_BACKEND_DATA),
    ("10.244.3.0-24", value(mac=None), RejectReason.BAD_BACKEND_DATA),
    ("10.244.3.0-24", b"{junk", RejectReason.BAD_VALUE),
    ("10.244.3.0-24x", value(), RejectReason.BAD_KEY),
])
def test_policy_rejects_each_hostile_lease(name: str, val: bytes, why: RejectReason) -> None:
    book = LeaseBook(POLICY)
    assert book.put(kv(name, val, 5)) == []
    assert reason(book, name) is why
    assert book.accepted == {}
    assert book.counts == {why: 1}


def test_a_subnet_covering_a_protected_address_is_refused() -> None:
    # A Network configured over the underlay: a lease there would swallow etcd's address.
    policy = LeasePolicy.build(IPv4Network("198.18.0.0/16"), 24, [IPv4Address("198.18.0.100")])
    book = LeaseBook(policy)
    book.put(kv("198.18.0.0-24", value("198.19.0.2"), 5))
    assert reason(book, "198.18.0.0-24") is RejectReason.COVERS_UNDERLAY
    assert "198.18.0.100" in book.rejected[subnets_prefix(PREFIX) + "198.18.0.0-24"].detail
    assert book.put(kv("198.18.7.0-24", value("198.19.0.2"), 6))[0].kind is LeaseEventKind.ADDED


def test_usable_leases_pass_and_other_backends_are_not_judged_on_vxlan_data() -> None:
    book = LeaseBook(POLICY)
    assert [e.kind for e in book.put(kv("10.244.2.0-24", value(), 5))] == [LeaseEventKind.ADDED]
    # host-gw and udp leases carry no VtepMAC: nothing to check there
    book.put(kv("10.244.3.0-24", value("198.18.0.3", None, "host-gw"), 6))
    book.put(kv("10.244.4.0-24", value("198.18.0.4", None, ""), 7))
    assert sorted(str(s) for s in book.accepted) == ["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]
    assert book.rejected == {}
    assert public_ip_problem(IPv4Address("169.254.1.1")) is None  # link-local underlays exist


def test_a_good_lease_that_turns_bad_is_removed_and_comes_back() -> None:
    book = LeaseBook(POLICY)
    book.put(kv("10.244.2.0-24", value(), 5))
    events = book.put(kv("10.244.2.0-24", value("0.0.0.0"), 6))
    assert [(e.kind, str(e.lease.subnet)) for e in events] == [(LeaseEventKind.REMOVED, "10.244.2.0/24")]
    assert reason(book, "10.244.2.0-24") is RejectReason.BAD_PUBLIC_IP
    events = book.put(kv("10.244.2.0-24", value(), 7))
    assert [e.kind for e in events] == [LeaseEventKind.ADDED]
    assert book.rejected == {} and book.counts == {}


def test_first_holder_wins_by_create_revision_and_the_next_takes_over() -> None:
    book = LeaseBook(POLICY)
    book.put(kv("10.244.2.0-24&fc00::-64", value("198.18.0.2"), 10))
    # a later key for the same IPv4 subnet: rejected as overlap, the first stays
    assert book.put(kv("10.244.2.0-24", value("198.18.0.9"), 11)) == []
    assert book.accepted[IPv4Network("10.244.2.0/24")].attrs.public_ip == IPv4Address("198.18.0.2")
    assert reason(book, "10.244.2.0-24") is RejectReason.OVERLAP
    # another node that lists both at once (in key order: the later key first) agrees
    other = LeaseBook(POLICY)
    other.load([kv("10.244.2.0-24", value("198.18.0.9"), 11),
                kv("10.244.2.0-24&fc00::-64", value("198.18.0.2"), 10)], 11)
    assert other.accepted == book.accepted and set(other.rejected) == set(book.rejected)
    # the holder goes: the other claim takes over
    events = book.delete(subnets_prefix(PREFIX) + "10.244.2.0-24&fc00::-64", 12)
    assert [(e.kind, str(e.lease.attrs.public_ip)) for e in events] == [(LeaseEventKind.ADDED, "198.18.0.9")]
    assert book.rejected == {} and book.counts == {}


def test_late_events_and_older_listings_undo_nothing() -> None:
    book = LeaseBook(POLICY)
    book.put(kv("10.244.2.0-24", value(), 5))
    assert book.put(kv("10.244.2.0-24", value("0.0.0.0"), 4)) == []  # older than what we have
    assert book.delete(subnets_prefix(PREFIX) + "10.244.2.0-24", 5) == []
    # a delete seen by the watch at revision 9 survives a listing taken at revision 8
    book.delete(subnets_prefix(PREFIX) + "10.244.2.0-24", 9)
    assert book.load([kv("10.244.2.0-24", value(), 5)], 8) == []
    assert book.accepted == {}
    # a listing after the delete knows best: the tombstone is dropped
    assert [e.kind for e in book.load([kv("10.244.2.0-24", value(), 10)], 10)] == [LeaseEventKind.ADDED]


def test_listings_report_each_rejection_once() -> None:
    seen: list[str] = []
    book = LeaseBook(POLICY, on_rejected=lambda r: seen.append(r.name))
    kvs = [kv("10.244.2.0-24", b"junk", 5), kv("198.18.0.0-25", value(), 6)]
    book.load(kvs, 6)
    book.load(kvs, 7)
    assert sorted(seen) == ["10.244.2.0-24", "198.18.0.0-25"]
    book.load([kv("10.244.2.0-24", b"junk2", 8), kvs[1]], 8)  # rewritten: reported again
    assert seen.count("10.244.2.0-24") == 2


def test_disowned_routes_name_only_policy_refusals() -> None:
    book = LeaseBook(POLICY)
    book.put(kv("198.18.0.0-25", value("198.18.0.0"), 5))
    book.put(kv("10.244.2.0-24", b"junk", 6))
    assert book.disowned_routes() == {(IPv4Network("198.18.0.0/25"), IPv4Address("198.18.0.0"))}


# ---- dual stack: the IPv6 half of a lease ----------------------------------------------------

NET6 = IPv6Network("fd00:244::/56")
DUAL = LeasePolicy.build(NET, 24, [IPv4Address("198.18.0.1"), IPv6Address("2001:db8:18::1"),
                                   IPv6Address("fd00:244:0:9::5")],  # e.g. etcd on a ULA
                         ipv6_network=NET6, ipv6_subnet_len=64)
MAC6 = "0e:00:00:00:00:06"


def dvalue(ip6: str | None = "2001:db8:18::2", mac6: str | None = MAC6, btype: str = "vxlan",
           ip: str = "198.18.0.2") -> bytes:
    obj: dict[str, object] = {"PublicIP": ip, "PublicIPv6": ip6, "BackendType": btype}
    if btype == "vxlan":
        obj["BackendData"] = {"VNI": 1, "VtepMAC": MAC}
    if mac6 is not None:
        obj["BackendV6Data"] = {"VNI": 1, "VtepMAC": mac6}
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("name", "val", "why", "what"), [
    ("10.244.3.0-24&fd01::-64", dvalue(), RejectReason.OUTSIDE_NETWORK, "outside the IPv6Network"),
    ("10.244.3.0-24&fd00:244::-56", dvalue(), RejectReason.WRONG_PREFIX_LENGTH, "IPv6SubnetLen"),
    ("10.244.3.0-24&fd00:244:0:3::-80", dvalue(), RejectReason.WRONG_PREFIX_LENGTH, "/80"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue(None), RejectReason.BAD_PUBLIC_IP, "not set"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("::"), RejectReason.BAD_PUBLIC_IP, "unspecified"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("::1"), RejectReason.BAD_PUBLIC_IP, "loopback"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("ff02::1"), RejectReason.BAD_PUBLIC_IP, "multicast"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("fe80::1"), RejectReason.BAD_PUBLIC_IP, "link-local"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("::ffff:198.18.0.2"), RejectReason.BAD_PUBLIC_IP,
     "IPv4-mapped"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("fec0::1"), RejectReason.BAD_PUBLIC_IP, "site-local"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("100::1"), RejectReason.BAD_PUBLIC_IP,
     "neither a global unicast"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue("fd00:244:0:7::1"), RejectReason.BAD_PUBLIC_IP,
     "inside the IPv6Network"),
    ("10.244.3.0-24&fd00:244:0:9::-64", dvalue(), RejectReason.COVERS_UNDERLAY, "fd00:244:0:9::5"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue(mac6=None), RejectReason.BAD_BACKEND_DATA,
     "BackendV6Data.VtepMAC"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue(mac6="00:00:00:00:00:00"),
     RejectReason.BAD_BACKEND_DATA, "all-zero"),
    ("10.244.3.0-24&fd00:244:0:3::-64", dvalue(mac6="33:33:00:00:00:01"),
     RejectReason.BAD_BACKEND_DATA, "multicast"),
])
def test_dual_policy_rejects_each_hostile_ipv6_half(name: str, val: bytes, why: RejectReason,
                                                    what: str) -> None:
    book = LeaseBook(DUAL)
    assert book.put(kv(name, val, 5)) == []
    rejection = book.rejected[subnets_prefix(PREFIX) + name]
    assert rejection.reason is why
    assert rejection.detail.startswith("IPv6 half: ") and what in rejection.detail, rejection.detail
    assert book.accepted == {} and book.counts == {why: 1}
    # the same lease in an IPv4-only network: judged on its IPv4 half only
    assert [e.kind for e in LeaseBook(POLICY).put(kv(name, val, 5))] == [LeaseEventKind.ADDED]


def test_dual_policy_accepts_good_halves_and_ipv4_only_nodes() -> None:
    book = LeaseBook(DUAL)
    book.put(kv("10.244.1.0-24&fd00:244:0:1::-64", dvalue(), 5))
    book.put(kv("10.244.2.0-24&fd00:244:0:2::-64", dvalue("fd00:1::2", ip="198.18.0.3"), 6))
    book.put(kv("10.244.3.0-24", value("198.18.0.4"), 7))  # an IPv4-only node (mixed cluster)
    # host-gw carries no BackendV6Data: nothing to check there
    book.put(kv("10.244.4.0-24&fd00:244:0:4::-64", dvalue(mac6=None, btype="host-gw"), 8))
    assert book.rejected == {}
    assert sorted(str(s) for s in book.accepted) == [
        "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]
    assert book.accepted[IPv4Network("10.244.1.0/24")].ipv6_subnet == IPv6Network("fd00:244:0:1::/64")
    assert book.key_of(IPv6Network("fd00:244:0:2::/64")) == subnets_prefix(PREFIX) + \
        "10.244.2.0-24&fd00:244:0:2::-64"
    assert public_ipv6_problem(IPv6Address("2001:db8:18::1")) is None  # documentation range
    assert public_ipv6_problem(IPv6Address("fd12::1"), NET6) is None  # a ULA underlay
    assert DUAL.dual_stack and not POLICY.dual_stack
    with pytest.raises(ValueError, match="IPv6SubnetLen"):
        LeasePolicy.build(NET, 24, ipv6_network=NET6)


def test_an_ipv4_half_still_fails_first_in_a_dual_network() -> None:
    book = LeaseBook(DUAL)
    book.put(kv("10.244.3.0-24&fd01::-64", dvalue(ip="0.0.0.0"), 5))
    rejection = book.rejected[subnets_prefix(PREFIX) + "10.244.3.0-24&fd01::-64"]
    assert rejection.reason is RejectReason.BAD_PUBLIC_IP and "IPv6" not in rejection.detail
    assert book.disowned_routes6() == {(IPv6Network("fd01::/64"), IPv6Address("2001:db8:18::2"))}


A6 = "10.244.1.0-24&fd00:244:0:1::-64"
B6 = "10.244.2.0-24&fd00:244:0:1::-64"  # another IPv4 subnet, the same IPv6 half
C6 = "10.244.2.0-24&fd00:244:0:2::-64"  # B's IPv4 subnet, another IPv6 half


def test_first_holder_of_an_ipv6_half_wins_and_the_next_takes_over() -> None:
    book = LeaseBook(DUAL)
    book.put(kv(A6, dvalue("2001:db8:18::2"), 10))
    assert book.put(kv(B6, dvalue("2001:db8:18::9", ip="198.18.0.9"), 11)) == []
    assert list(book.accepted) == [IPv4Network("10.244.1.0/24")]
    rejection = book.rejected[subnets_prefix(PREFIX) + B6]
    assert rejection.reason is RejectReason.OVERLAP
    assert "fd00:244:0:1::/64 (the IPv6 half)" in rejection.detail and A6 in rejection.detail
    # another node that lists both at once (in key order: the later key last) agrees, and so
    # does one that saw them in the other order
    for kvs in ([kv(A6, dvalue(), 10), kv(B6, dvalue(ip="198.18.0.9"), 11)],
                [kv(B6, dvalue(ip="198.18.0.9"), 11), kv(A6, dvalue(), 10)]):
        other = LeaseBook(DUAL)
        other.load(kvs, 11)
        assert list(other.accepted) == list(book.accepted) and set(other.rejected) == set(book.rejected)
    # in an IPv4-only network the IPv6 halves do not compete
    v4 = LeaseBook(POLICY)
    v4.put(kv(A6, dvalue(), 10))
    v4.put(kv(B6, dvalue(ip="198.18.0.9"), 11))
    assert len(v4.accepted) == 2 and v4.rejected == {}
    # the holder goes: the other claim takes over, announced after the removal
    events = book.delete(subnets_prefix(PREFIX) + A6, 12)
    assert [(e.kind, str(e.lease.subnet)) for e in events] == [
        (LeaseEventKind.REMOVED, "10.244.1.0/24"), (LeaseEventKind.ADDED, "10.244.2.0/24")]
    assert book.rejected == {} and book.counts == {}
    assert book.key_of(IPv6Network("fd00:244:0:1::/64")) == subnets_prefix(PREFIX) + B6
    # a late replay of the first holder's write undoes nothing
    assert book.put(kv(A6, dvalue(), 10)) == []
    assert list(book.accepted) == [IPv4Network("10.244.2.0/24")]
    # it comes back (a new key: created after B): B keeps the half
    assert book.put(kv(A6, dvalue(), 13)) == []
    assert reason(book, A6) is RejectReason.OVERLAP


def test_a_freed_claim_moves_down_the_chain_of_holders() -> None:
    # A holds fd00:244:0:1::/64, so B (same half) loses, so C takes B's IPv4 subnet.
    book = LeaseBook(DUAL)
    book.put(kv(A6, dvalue(), 10))
    book.put(kv(B6, dvalue(ip="198.18.0.9"), 11))
    book.put(kv(C6, dvalue(ip="198.18.0.8"), 12))
    assert {book.key_of(s) for s in book.accepted} == {subnets_prefix(PREFIX) + n for n in (A6, C6)}
    # A goes: B (created before C) takes both its halves, C loses its IPv4 subnet to B
    events = book.delete(subnets_prefix(PREFIX) + A6, 13)
    assert [(e.kind, str(e.lease.attrs.public_ip)) for e in events] == [
        (LeaseEventKind.REMOVED, "198.18.0.2"), (LeaseEventKind.ADDED, "198.18.0.9")]
    assert list(book.rejected) == [subnets_prefix(PREFIX) + C6]
    assert "subnet 10.244.2.0/24 is already held by key " + B6 in book.rejected[
        subnets_prefix(PREFIX) + C6].detail
    # B turns bad (policy): C takes over again
    events = book.put(kv(B6, dvalue("fe80::9", ip="198.18.0.9"), 14, created=11))
    assert [(e.kind, str(e.lease.attrs.public_ip)) for e in events] == [
        (LeaseEventKind.ADDED, "198.18.0.8")]
    assert reason(book, B6) is RejectReason.BAD_PUBLIC_IP and len(book.rejected) == 1
    # a listing of the end state agrees with the book fed event by event
    listed = LeaseBook(DUAL)
    listed.load([kv(B6, dvalue("fe80::9", ip="198.18.0.9"), 14, created=11),
                 kv(C6, dvalue(ip="198.18.0.8"), 12)], 14)
    assert listed.accepted == book.accepted
    assert {k: r.reason for k, r in listed.rejected.items()} == {
        k: r.reason for k, r in book.rejected.items()}


def test_a_freed_half_passes_over_a_claim_blocked_elsewhere() -> None:
    e, h = "10.244.5.0-24&fd00:244:0:5::-64", "10.244.1.0-24&fd00:244:0:1::-64"
    c1 = "10.244.5.0-24&fd00:244:0:1::-64"  # wants H's IPv6 half, but E holds its IPv4 subnet
    c2 = "10.244.2.0-24&fd00:244:0:1::-64"  # wants H's IPv6 half only
    book = LeaseBook(DUAL)
    for i, name in enumerate((e, h, c1, c2)):
        book.put(kv(name, dvalue(ip=f"198.18.0.{i + 2}"), 10 + i))
    assert {book.key_of(s) for s in book.accepted} == {subnets_prefix(PREFIX) + n for n in (e, h)}
    # H goes: C1 is next for the IPv6 half but cannot take it (E), so C2 takes it
    events = book.delete(subnets_prefix(PREFIX) + h, 20)
    assert [(e.kind, str(e.lease.subnet)) for e in events] == [
        (LeaseEventKind.REMOVED, "10.244.1.0/24"), (LeaseEventKind.ADDED, "10.244.2.0/24")]
    assert book.key_of(IPv6Network("fd00:244:0:1::/64")) == subnets_prefix(PREFIX) + c2
    assert list(book.rejected) == [subnets_prefix(PREFIX) + c1]
    # E goes too: C1 (created before C2) takes both its halves, C2 loses the IPv6 half
    events = book.delete(subnets_prefix(PREFIX) + e, 21)
    assert [(e.kind, str(e.lease.subnet)) for e in events] == [
        (LeaseEventKind.REMOVED, "10.244.2.0/24"), (LeaseEventKind.ADDED, "10.244.5.0/24")]
    assert list(book.rejected) == [subnets_prefix(PREFIX) + c2]


def test_many_claims_on_one_half_hand_over_in_create_order() -> None:
    # 2000 keys for one IPv4 subnet, 2000 for one IPv6 half; listed latest first (each one
    # displaces the one before), then the holders go one by one and the next takes over
    # (each change looks at the claims it frees, not at all of them).
    policy = LeasePolicy.build(IPv4Network("10.0.0.0/8"), 24, ipv6_network=IPv6Network("fd00::/48"),
                               ipv6_subnet_len=64)
    book = LeaseBook(policy)
    one_v4 = [kv(f"10.244.7.0-24&fd00:0:0:{i + 1:x}::-64", dvalue(), 10 + i) for i in range(2000)]
    one_v6 = [kv(f"10.{i // 250 + 1}.{i % 250}.0-24&fd00:0:0:ffff::-64", dvalue(), 4000 + i)
              for i in range(2000)]
    book.load(reversed(one_v4 + one_v6), 9000)
    assert book.key_of(IPv4Network("10.244.7.0/24")) == one_v4[0].key
    assert book.key_of(IPv6Network("fd00:0:0:ffff::/64")) == one_v6[0].key
    assert len(book.accepted) == 2 and book.counts == {RejectReason.OVERLAP: 3998}
    revision = 10000
    for i in range(1999):
        revision += 1
        events = book.delete(one_v4[i].key, revision)  # the same subnet, its next holder
        assert [(e.kind, e.lease.ipv6_subnet) for e in events] == [
            (LeaseEventKind.ADDED, parse_subnet_key(one_v4[i + 1].key)[1])]
        revision += 1
        events = book.delete(one_v6[i].key, revision)  # the next holder of the IPv6 half
        assert [(e.kind, str(e.lease.subnet)) for e in events] == [
            (LeaseEventKind.REMOVED, str(parse_subnet_key(one_v6[i].key)[0])),
            (LeaseEventKind.ADDED, str(parse_subnet_key(one_v6[i + 1].key)[0]))]
    assert book.rejected == {} and len(book.accepted) == 2


# ---- aggregated logs -------------------------------------------------------------------------

def test_ten_thousand_garbage_keys_log_a_few_short_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("test.rejections")
    log = RejectionLog(logger, window=60.0, clock=lambda: now[0])
    book = LeaseBook(POLICY, on_rejected=log.rejected)
    with caplog.at_level(logging.WARNING, logger="test.rejections"):
        book.load([kv(f"junk-{i}-" + "x" * 2000, b"{}", i + 1) for i in range(5000)]
                  + [kv(f"10.{i // 256}.{i % 256}.0-24", b"\x00" * 1000, 6000 + i) for i in range(5000)], 11000)
        log.flush(force=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # one per reason, one summary
    assert max(len(line) for line in lines) < 400
    assert "ignoring 9998 more leases (bad_key=4999, bad_value=4999)" in lines[-1]
    assert book.counts == {RejectReason.BAD_KEY: 5000, RejectReason.BAD_VALUE: 5000}
    # the next window logs the first of a reason again
    now[0] = 61.0
    with caplog.at_level(logging.WARNING, logger="test.rejections"):
        book.put(kv("10.244.9.0-24", b"again", 20000))
    assert caplog.records[-1].getMessage().startswith("ignoring lease 10.244.9.0-24 (bad_value)")


# ---- store reachability and readiness -------------------------------------------------------

def test_store_health_bound() -> None:
    now = [100.0]
    health = StoreHealth(30.0, clock=lambda: now[0])
    health.observe("ok")
    health.observe("error")
    now[0] = 129.0
    assert health.problem() is None and not health.reachable
    health.observe("timeout")  # still the same outage
    now[0] = 131.0
    assert health.problem() == "etcd unreachable for 31s"
    health.observe("ok")
    assert health.problem() is None and health.reachable
    assert StoreHealth(0).problem() is None


def test_readiness_reports_conflict_store_and_file_problems() -> None:
    r = Readiness()
    r.set_lease_held(True)
    r.set_backend_programmed(True)
    r.set_subnet_file_written(False, "/run/flannel/subnet.env: Read-only file system")
    assert not r.ready and r.reason == "subnet.env not written: /run/flannel/subnet.env: Read-only file system"
    r.set_subnet_file_written(True)
    assert r.ready
    r.set_store_problem("etcd unreachable for 31s")
    r.set_lease_conflict("lease conflict: our key 10.244.1.0/24 holds PublicIP 198.18.0.99")
    assert not r.ready
    assert r.reason == ("lease conflict: our key 10.244.1.0/24 holds PublicIP 198.18.0.99; "
                        "etcd unreachable for 31s")
    r.set_lease_conflict(None)
    r.set_store_problem(None)
    assert r.ready and r.reason == "ready"


# ---- defending our own lease ----------------------------------------------------------------

ATTRS = LeaseAttrs(IPv4Address("198.18.0.1"), "host-gw")


async def _holder() -> tuple[MemoryStore, SubnetManager, Lease]:
    from flanneld.netconfig import parse_network_config

    store = MemoryStore()
    manager = SubnetManager(store, PREFIX)
    config = parse_network_config(b'{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    return store, manager, await manager.acquire(ATTRS, config)


async def test_defend_reasserts_a_rewritten_key_while_our_etcd_lease_lives() -> None:
    store, manager, lease = await _holder()
    key = manager.key(lease.subnet)
    await store.put(key, value("198.18.0.99", None, "host-gw"))  # etcdctl put: no etcd lease
    defended, how = await manager.defend(lease)
    assert how == "reasserted" and defended.subnet == lease.subnet
    kv_now = await store.get(key)
    assert kv_now is not None and kv_now.value == ATTRS.to_json().encode()
    assert kv_now.lease_id == lease.etcd_lease_id
    # junk over our key: the same
    await store.put(key, b"\x00junk")
    assert (await manager.defend(defended))[1] == "reasserted"
    # deleted by hand: re-created with our live etcd lease
    await store.delete(key)
    restored, how = await manager.defend(defended)
    assert how == "restored" and (await store.get(key)) is not None
    assert (await manager.defend(restored))[1] == "intact"


async def test_defend_gives_up_once_our_etcd_lease_is_gone() -> None:
    store, manager, lease = await _holder()
    key = manager.key(lease.subnet)
    await store.revoke(lease.etcd_lease_id)  # e.g. expired during an outage
    grant = await store.grant(60)
    await store.create(key, value("198.18.0.99", None, "host-gw"), grant.lease_id)
    with pytest.raises(LeaseLostError, match="our etcd lease is gone"):
        await manager.defend(lease)
    kv_now = await store.get(key)
    assert kv_now is not None and kv_now.lease_id == grant.lease_id  # the new holder keeps it


# ---- the watch across an outage ---------------------------------------------------------------

async def _until(predicate: Callable[[], bool]) -> None:
    await until(predicate, 5.0, 0.001)


async def test_watch_counts_one_reset_per_outage_and_logs_resumed_without_an_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from flanneld.lease_watch import LeaseWatcher

    store = MemoryStore()
    manager = SubnetManager(store, PREFIX)
    resets: list[str] = []
    pauses: list[float] = []

    async def sleep(delay: float) -> None:
        pauses.append(delay)
        await asyncio.sleep(0)

    watcher = LeaseWatcher(manager, [], 1, on_reset=resets.append, sleep=sleep)
    task = asyncio.create_task(anext(watcher.events()))
    try:
        await asyncio.sleep(0.01)
        store.available = False
        await store.poke()
        await _until(lambda: len(pauses) >= 5)  # five failed attempts to watch again
        assert resets == ["reconnect"]
        with caplog.at_level(logging.INFO, logger="flanneld.lease_watch"):
            store.available = True
            await _until(lambda: watcher.connected)
        assert any("lease watch resumed" in r.getMessage() for r in caplog.records)
        assert not task.done()  # no lease event was needed for it
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_judging_leases_leaves_their_subnets_as_parsed() -> None:
    """The policy's checks (inside the Network, both halves) do not fill ipaddress's caches
    on the subnets the book keeps: 5000 leases carried ~2 MB of cached broadcast addresses."""
    book = LeaseBook(DUAL)
    book.load([kv(f"10.244.{i}.0-24&fd00:244:0:{i:x}::-64", dvalue(), i) for i in range(10, 49)],
              100)
    assert len(book.accepted) == 39
    as_parsed = set(vars(IPv4Network("10.244.1.0/24")))
    for lease in book.accepted.values():
        assert set(vars(lease.subnet)) == as_parsed
        assert lease.ipv6_subnet is not None and set(vars(lease.ipv6_subnet)) == as_parsed
