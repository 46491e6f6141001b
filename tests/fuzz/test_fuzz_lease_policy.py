"""Fuzz the lease validation (LeasePolicy + LeaseBook): whatever is written under subnets/,
no accepted lease leaves the Network, has another prefix length, has an unusable PublicIP,
covers a protected address, or overlaps another accepted lease; in a dual-stack network the
same for every accepted IPv6 half (and no two accepted IPv6 halves overlap); every live key
is either accepted or rejected (never both, never lost); the accepted keys are exactly what
"first holder wins" (create order, both halves) gives for the live keys, whatever order the
events came in; and a book fed event by event agrees with one loaded from a listing of the
end state."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanneld.lease import Lease
from flanneld.lease_book import LeaseBook, judge
from flanneld.lease_policy import LeasePolicy, Rejection, public_ip_problem, public_ipv6_problem
from flanneld.store import KeyValue

from .strategies import chance, ints
from .tally import MIN_CASES, Tally

pytestmark = pytest.mark.unit

PREFIX = "/coreos.com/network/subnets/"
# usable values most of the time (so that keys compete), each kind of bad one now and then
_IPS = ["198.18.0.2", "198.18.0.3", "169.254.0.1"] * 3 + [
    "0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1", "240.0.0.1", "10.200.0.1",
    "198.18.0.100"]
_MACS = ["0e:00:00:00:00:02", "0e:00:00:00:00:03"] * 3 + [
    "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "nope"]
_IPS6 = ["2001:db8:18::2", "2001:db8:18::3", "fd12::1"] * 3 + [
    "::", "::1", "ff02::1", "fe80::1", "::ffff:198.18.0.2", "fec0::1", "100::1", "2001:db8:18::100"]
_V6_KEY_PREFIX = IPv6Network("fd00::/8")  # where the IPv6 halves of an IPv4-only network lie
_T = TypeVar("_T")


class _Choices:
    """Many small choices read from one drawn integer (one hypothesis draw per write instead of
    twenty keeps 10,000 cases fast); 0, where hypothesis shrinks to, picks every first option."""

    def __init__(self, n: int) -> None:
        self.n = n

    def pick(self, options: Sequence[_T]) -> _T:
        self.n, i = divmod(self.n, len(options))
        return options[i]

    def one_in(self, k: int) -> bool:
        return self.pick(range(k)) == k - 1


@st.composite
def scenario(draw: st.DrawFn) -> tuple[LeasePolicy, list[tuple[str, bytes | None]]]:
    plen = draw(ints(8, 26))
    base = draw(ints(0, 0xFFFFFFFF)) & ~((1 << (32 - plen)) - 1)
    network = IPv4Network((base, plen))
    subnet_len = draw(ints(plen + 2, min(plen + 8, 30)))
    # protected addresses: sometimes inside the Network (a Network configured over the underlay)
    protected: list[IPv4Address | IPv6Address] = [
        IPv4Address(draw(ints(int(network.network_address), int(network.broadcast_address))))
        if chance(draw, 3) else IPv4Address("198.18.0.100")]
    network6: IPv6Network | None = None
    subnet_len6 = 0
    if draw(st.booleans()):  # dual stack
        plen6 = draw(ints(40, 60))
        network6 = IPv6Network((int(IPv6Address("fd00::")) + (draw(ints(0, 255)) << (128 - plen6)),
                                plen6))
        subnet_len6 = plen6 + draw(ints(2, 4))
        protected.append(IPv6Address("2001:db8:18::100"))
        if chance(draw, 3):  # etcd (or the node) on an address inside the IPv6Network
            protected.append(network6.network_address + draw(ints(0, 4)) * (1 << (128 - subnet_len6))
                             + 5)
    policy = LeasePolicy.build(network, subnet_len, protected, ipv6_network=network6,
                               ipv6_subnet_len=subnet_len6)
    space6 = network6 if network6 is not None else _V6_KEY_PREFIX
    len6 = subnet_len6 or 64
    writes: list[tuple[str, bytes | None]] = []
    lengths = [subnet_len] * 6 + [subnet_len - 1, subnet_len + 1, plen, max(plen - 1, 0), 31]
    lengths6 = [len6] * 4 + [len6 - 1, len6 + 1]
    for _ in range(draw(ints(1, 12))):
        c = _Choices(draw(ints(0, (1 << 64) - 1)))
        # a subnet near the Network: inside it, around it, of any length; mostly one of the
        # first few subnets of the Network, so that keys collide often
        length = c.pick(lengths)
        if c.one_in(2):
            addr = int(network.network_address) + draw(ints(0, (1 << (32 - plen)) * 2))
        else:
            addr = int(network.network_address) + (draw(ints(0, 3)) << (32 - subnet_len))
        addr -= (1 << (32 - plen)) // 2 if c.one_in(6) else 0
        addr &= 0xFFFFFFFF
        subnet = IPv4Network((addr & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF, length))
        name = f"{subnet.network_address}-{length}"
        if c.one_in(3) or (network6 is not None and not c.one_in(4)):  # an IPv6 half
            length6 = c.pick(lengths6)
            start = int(space6.network_address) + (draw(ints(0, 2)) << (128 - len6))
            if c.one_in(8):  # outside the IPv6Network
                start += 1 << (128 - space6.prefixlen)
            half = IPv6Network((start >> (128 - length6) << (128 - length6), length6))
            name += f"&{half.network_address.compressed}-{length6}"
        if c.one_in(5):
            writes.append((name, None))
            continue
        c = _Choices(draw(ints(0, (1 << 64) - 1)))  # the value's choices
        btype = c.pick(["vxlan", "host-gw", ""])
        obj: dict[str, object] = {"PublicIP": c.pick(_IPS), "PublicIPv6": None}
        if not c.one_in(6):
            obj["PublicIPv6"] = (str(space6.network_address + 9) if c.one_in(10)  # inside
                                 else c.pick(_IPS6))
        if btype:
            obj["BackendType"] = btype
        if btype == "vxlan":
            obj["BackendData"] = {"VNI": 1, "VtepMAC": c.pick(_MACS)}
            if not c.one_in(8):
                obj["BackendV6Data"] = {"VNI": 1, "VtepMAC": c.pick(_MACS)}
        value = json.dumps(obj).encode() if not c.one_in(20) else b"{junk"
        writes.append((name, value))
    return policy, writes


_Verdicts = dict[tuple[str, bytes, int], Lease | Rejection]


def _first_holders(policy: LeasePolicy, live: dict[str, KeyValue],
                   verdicts: _Verdicts) -> dict[IPv4Network, Lease]:
    """The reference: the valid leases in create order (then key), each taken when no lease
    taken before holds its subnet (or, dual stack, its IPv6 half).  ``verdicts``: judge's
    answers so far by key, value and etcd lease (judging is the costly part; the revisions
    do not change a verdict, nor how a Lease compares)."""
    valid: list[tuple[KeyValue, Lease]] = []
    for kv in live.values():
        verdict = verdicts.get((kv.key, kv.value, kv.lease_id))
        if verdict is None:
            verdict = verdicts[kv.key, kv.value, kv.lease_id] = judge(kv, policy)
        if isinstance(verdict, Lease):
            valid.append((kv, verdict))
    valid.sort(key=lambda c: (c[0].create_revision, c[0].key))
    taken: set[IPv4Network | IPv6Network] = set()
    out: dict[IPv4Network, Lease] = {}
    for _, lease in valid:
        halves: list[IPv4Network | IPv6Network] = [lease.subnet]
        if policy.dual_stack and lease.ipv6_subnet is not None:
            halves.append(lease.ipv6_subnet)
        if not taken.intersection(halves):
            taken.update(halves)
            out[lease.subnet] = lease
    return out


def _check(policy: LeasePolicy, book: LeaseBook, live: dict[str, KeyValue], tally: Tally,
           verdicts: _Verdicts) -> None:
    accepted = list(book.accepted.values())
    for lease in accepted:
        assert lease.subnet.subnet_of(policy.network), lease
        assert lease.subnet.prefixlen == policy.subnet_len, lease
        assert public_ip_problem(lease.attrs.public_ip, policy.network) is None, lease
        assert not any(a in lease.subnet for a in policy.protected), lease
        if policy.ipv6_network is not None and lease.ipv6_subnet is not None:
            tally.reasons["(accepted IPv6 half)"] += 1
            assert lease.ipv6_subnet.subnet_of(policy.ipv6_network), lease
            assert lease.ipv6_subnet.prefixlen == policy.ipv6_subnet_len, lease
            assert lease.attrs.public_ipv6 is not None, lease
            assert public_ipv6_problem(lease.attrs.public_ipv6, policy.ipv6_network) is None, lease
            assert not any(a in lease.ipv6_subnet for a in policy.protected6), lease
    ordered = sorted(accepted, key=lambda lease: int(lease.subnet.network_address))
    for a, b in itertools.pairwise(ordered):
        assert not a.subnet.overlaps(b.subnet), (a, b)
    if policy.dual_stack:
        halves = sorted((lease.ipv6_subnet for lease in accepted if lease.ipv6_subnet is not None),
                        key=lambda n: int(n.network_address))
        for x, y in itertools.pairwise(halves):
            assert not x.overlaps(y), (x, y)
    names = {book.key_of(lease.subnet) for lease in accepted}
    assert None not in names and len(names) == len(accepted)
    assert not names & set(book.rejected), names & set(book.rejected)
    assert names | set(book.rejected) == set(live), (names, set(book.rejected), set(live))
    assert sum(book.counts.values()) == len(book.rejected)
    # first holder wins, on both halves: exactly the reference's choice
    assert book.accepted == _first_holders(policy, live, verdicts)


def test_fuzz_lease_validation() -> None:
    tally = Tally("lease validation (policy + book)")

    @settings(max_examples=MIN_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(scenario())
    def run(case: tuple[LeasePolicy, list[tuple[str, bytes | None]]]) -> None:
        policy, writes = case
        book = LeaseBook(policy)
        live: dict[str, KeyValue] = {}
        history: list[tuple[str, KeyValue | None, int]] = []
        verdicts: _Verdicts = {}
        revision = 1
        for name, value in writes:
            revision += 1
            key = PREFIX + name
            if value is None:
                live.pop(key, None)
                book.delete(key, revision)
                history.append((key, None, revision))
            else:
                old = live.get(key)
                kv = KeyValue(key, value, 7, revision, old.create_revision if old else revision)
                live[key] = kv
                book.put(kv)
                history.append((key, kv, revision))
            _check(policy, book, live, tally, verdicts)
        reasons = {k: r.reason for k, r in book.rejected.items()}
        # a listing of the end state (in key order), and the live keys put latest first: the
        # same choice
        listed = LeaseBook(policy)
        listed.load(sorted(live.values(), key=lambda kv: kv.key), revision)
        backwards = LeaseBook(policy)
        for kv in sorted(live.values(), key=lambda kv: -kv.create_revision):
            backwards.put(kv)
        for other in (listed, backwards):
            assert other.accepted == book.accepted
            assert {k: r.reason for k, r in other.rejected.items()} == reasons
        # every event again, late: nothing changes
        accepted = dict(book.accepted)
        for key, kv, rev in history:
            assert (book.put(kv) if kv is not None else book.delete(key, rev)) == []
        assert book.accepted == accepted and {k: r.reason for k, r in book.rejected.items()} == reasons
        if book.rejected:
            for r in book.rejected.values():
                tally.reasons[r.reason.value] += 1
                if r.detail.startswith("IPv6 half: ") or "(the IPv6 half)" in r.detail:
                    tally.reasons["ipv6 " + r.reason.value] += 1
        tally.cases += 1
        tally.accepted += bool(book.accepted)

    run()
    tally.report()
    assert tally.cases >= MIN_CASES
    # the generator reached every kind of refusal
    assert set(tally.reasons) >= {"outside_network", "wrong_prefix_length", "overlap",
                                  "bad_public_ip", "covers_underlay", "bad_backend_data",
                                  "bad_value"}, tally.reasons
    assert {"ipv6 outside_network", "ipv6 wrong_prefix_length", "ipv6 overlap",
            "ipv6 bad_public_ip", "ipv6 covers_underlay", "ipv6 bad_backend_data",
            "(accepted IPv6 half)"} <= set(tally.reasons), tally.reasons


# -- competition: valid leases on a handful of subnets and IPv6 halves, written, rewritten,
# deleted and re-created in any order; the book must keep choosing what the reference chooses
# (chains of claims: a freed half passed over a claim that is blocked elsewhere, displaced
# holders freeing their other half).  Sequences, like the store end to end target.
COMPETITION_CASES = 2_000

_DUAL = LeasePolicy.build(IPv4Network("10.244.0.0/16"), 24, ipv6_network=IPv6Network("fd00::/56"),
                          ipv6_subnet_len=64)
_NAMES = [f"10.244.{a}.0-24" + (f"&fd00:0:0:{b}::-64" if b else "")
          for a in range(4) for b in range(4)]  # 4 IPv4 subnets x (no half, 3 IPv6 halves)
_VALUES = [json.dumps({"PublicIP": ip, "PublicIPv6": ip6, "BackendType": "host-gw"}).encode()
           for ip, ip6 in (("198.18.0.2", "2001:db8:18::2"), ("198.18.0.3", "2001:db8:18::3"),
                           ("198.18.0.4", "fe80::4"))]  # the last one: a bad IPv6 half


def test_fuzz_first_holder_wins_on_both_halves() -> None:
    tally = Tally("first holder wins (both halves)")

    @settings(max_examples=COMPETITION_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(ints(0, len(_NAMES) - 1), ints(0, len(_VALUES))), min_size=1,
                    max_size=16))
    def run(writes: list[tuple[int, int]]) -> None:
        book = LeaseBook(_DUAL)
        live: dict[str, KeyValue] = {}
        verdicts: _Verdicts = {}
        for revision, (n, v) in enumerate(writes, start=2):
            key = PREFIX + _NAMES[n]
            if v == len(_VALUES):
                live.pop(key, None)
                book.delete(key, revision)
            else:
                old = live.get(key)
                kv = KeyValue(key, _VALUES[v], 7, revision, old.create_revision if old else revision)
                live[key] = kv
                book.put(kv)
            assert book.accepted == _first_holders(_DUAL, live, verdicts)
            assert len(book.accepted) + len(book.rejected) == len(live)
        tally.cases += 1
        tally.accepted += bool(book.accepted)
        for r in book.rejected.values():
            tally.reasons[r.reason.value] += 1
            if "(the IPv6 half)" in r.detail:
                tally.reasons["ipv6 overlap"] += 1

    run()
    tally.report()
    assert tally.cases >= COMPETITION_CASES
    assert tally.reasons["overlap"] > 500 and tally.reasons["ipv6 overlap"] > 200, tally.reasons
