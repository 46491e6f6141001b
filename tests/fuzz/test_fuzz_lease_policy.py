"""Fuzz the lease validation (LeasePolicy + LeaseBook): whatever is written under subnets/,
no accepted lease leaves the Network, has another prefix length, has an unusable PublicIP,
covers a protected address, or overlaps another accepted lease; every live key is either
accepted or rejected (never both, never lost); the first holder of a subnet wins; and a book
fed event by event agrees with one loaded from a listing of the end state."""

from __future__ import annotations

import itertools
import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanneld.lease_book import LeaseBook
from flanneld.lease_policy import LeasePolicy, public_ip_problem
from flanneld.store import KeyValue

from .strategies import chance, ints
from .tally import MIN_CASES, Tally

pytestmark = pytest.mark.unit

PREFIX = "/coreos.com/network/subnets/"
_IPS = st.sampled_from(["198.18.0.2", "198.18.0.3", "0.0.0.0", "255.255.255.255", "127.0.0.1",
                        "224.0.0.1", "240.0.0.1", "10.200.0.1", "169.254.0.1", "198.18.0.100"])
_MACS = st.sampled_from(["0e:00:00:00:00:02", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff",
                         "01:00:5e:00:00:01", "nope"])


@st.composite
def scenario(draw: st.DrawFn) -> tuple[LeasePolicy, list[tuple[str, bytes | None]]]:
    plen = draw(ints(8, 26))
    base = draw(ints(0, 0xFFFFFFFF)) & ~((1 << (32 - plen)) - 1)
    network = IPv4Network((base, plen))
    subnet_len = draw(ints(plen + 2, min(plen + 8, 30)))
    # protected addresses: sometimes inside the Network (a Network configured over the underlay)
    protected = [IPv4Address(draw(ints(int(network.network_address),
                                       int(network.broadcast_address)))) if chance(draw, 3)
                 else IPv4Address("198.18.0.100")]
    policy = LeasePolicy.build(network, subnet_len, protected)
    writes: list[tuple[str, bytes | None]] = []
    for _ in range(draw(ints(1, 8))):
        # a subnet near the Network: inside it, around it, of any length
        length = draw(st.sampled_from([subnet_len, subnet_len, subnet_len, subnet_len - 1,
                                       subnet_len + 1, plen, max(plen - 1, 0), 32]))
        addr = int(network.network_address) + draw(ints(0, (1 << (32 - plen)) * 2)) - (
            (1 << (32 - plen)) // 2 if chance(draw, 4) else 0)
        addr &= 0xFFFFFFFF
        subnet = IPv4Network((addr & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF, length))
        name = f"{subnet.network_address}-{length}"
        if chance(draw, 4):  # same IPv4 subnet through another key: an IPv6 half
            name += draw(st.sampled_from(["&fc00::-64", "&fc00:0:0:1::-64"]))
        if chance(draw, 8):
            writes.append((name, None))
            continue
        btype = draw(st.sampled_from(["vxlan", "host-gw", ""]))
        obj: dict[str, object] = {"PublicIP": draw(_IPS), "PublicIPv6": None}
        if btype:
            obj["BackendType"] = btype
        if btype == "vxlan":
            obj["BackendData"] = {"VNI": 1, "VtepMAC": draw(_MACS)}
        value = json.dumps(obj).encode() if not chance(draw, 10) else b"{junk"
        writes.append((name, value))
    return policy, writes


def _check(policy: LeasePolicy, book: LeaseBook, live: dict[str, KeyValue]) -> None:
    accepted = list(book.accepted.values())
    for lease in accepted:
        assert lease.subnet.subnet_of(policy.network), lease
        assert lease.subnet.prefixlen == policy.subnet_len, lease
        assert public_ip_problem(lease.attrs.public_ip, policy.network) is None, lease
        assert not any(a in lease.subnet for a in policy.protected), lease
    ordered = sorted(accepted, key=lambda lease: int(lease.subnet.network_address))
    for a, b in itertools.pairwise(ordered):
        assert not a.subnet.overlaps(b.subnet), (a, b)
    names = set(book._holders.values())
    assert {book.key_of(lease.subnet) for lease in accepted} == names
    assert not names & set(book.rejected), names & set(book.rejected)
    assert names | set(book.rejected) == set(live), (names, set(book.rejected), set(live))
    assert sum(book.counts.values()) == len(book.rejected)
    # first holder wins: the accepted key is the earliest-created valid claim on its subnet
    for lease in accepted:
        rivals = [book._shadowed[n] for n in book._shadowed if book._shadowed[n].subnet == lease.subnet]
        assert all(lease.created <= r.created for r in rivals), (lease, rivals)


def test_fuzz_lease_validation() -> None:
    tally = Tally("lease validation (policy + book)")

    @settings(max_examples=MIN_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(scenario())
    def run(case: tuple[LeasePolicy, list[tuple[str, bytes | None]]]) -> None:
        policy, writes = case
        book = LeaseBook(policy)
        live: dict[str, KeyValue] = {}
        revision = 1
        for name, value in writes:
            revision += 1
            key = PREFIX + name
            if value is None:
                live.pop(key, None)
                book.delete(key, revision)
            else:
                old = live.get(key)
                kv = KeyValue(key, value, 7, revision, old.create_revision if old else revision)
                live[key] = kv
                book.put(kv)
            _check(policy, book, live)
        listed = LeaseBook(policy)
        listed.load(sorted(live.values(), key=lambda kv: kv.key), revision)
        assert listed.accepted == book.accepted
        assert {k: r.reason for k, r in listed.rejected.items()} == \
            {k: r.reason for k, r in book.rejected.items()}
        if book.rejected:
            for r in book.rejected.values():
                tally.reasons[r.reason.value] += 1
        tally.cases += 1
        tally.accepted += bool(book.accepted)

    run()
    tally.report()
    assert tally.cases >= MIN_CASES
    # the generator reached every kind of refusal
    assert set(tally.reasons) >= {"outside_network", "wrong_prefix_length", "overlap",
                                  "bad_public_ip", "covers_underlay", "bad_backend_data",
                                  "bad_value"}, tally.reasons
