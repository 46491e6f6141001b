"""Subnet arithmetic on integers (flanneld/subnets.py): the same answers as ipaddress's
``subnet_of`` and ``overlaps`` for every pair tried, both families, and none of the per-object
caches those fill in (a lease subnet that was checked once carried ~270 B more for good)."""

from __future__ import annotations

import random
from ipaddress import IPv4Network, IPv6Network

import pytest

from flanneld.subnets import overlaps, within

pytestmark = pytest.mark.unit


def random_net(rng: random.Random, v6: bool) -> IPv4Network | IPv6Network:
    bits = 128 if v6 else 32
    # a few fixed tops so that nesting and overlap are common, not vanishingly rare
    top = rng.choice([0x0A000000, 0x0AF40000, 0xC6120000]) << (96 if v6 else 0)
    plen = rng.randint(0, bits)
    addr = (top | rng.getrandbits(bits - 8)) >> (bits - plen) << (bits - plen) if plen else 0
    return (IPv6Network if v6 else IPv4Network)((addr, plen))


@pytest.mark.parametrize("v6", [False, True])
def test_within_and_overlaps_agree_with_ipaddress(v6: bool) -> None:
    rng = random.Random(11 + v6)
    nets = [random_net(rng, v6) for _ in range(300)]
    nested = overlapping = 0
    for a in nets:
        for b in nets[:60]:
            want_in, want_ov = a.subnet_of(b), a.overlaps(b)  # type: ignore[arg-type]
            assert within(a, b) is want_in, (a, b)
            assert overlaps(a, b) is want_ov, (a, b)
            nested += want_in
            overlapping += want_ov
    assert nested > 100 and overlapping > nested  # the pairs tried include both answers


def test_other_family_is_neither_within_nor_overlapping() -> None:
    v4, v6 = IPv4Network("0.0.0.0/0"), IPv6Network("::/0")
    assert not within(v4, v6) and not within(v6, v4)
    assert not overlaps(v4, v6) and not overlaps(v6, v4)


def test_no_cache_is_left_on_either_network() -> None:
    inner, outer = IPv4Network("10.244.3.0/24"), IPv4Network("10.244.0.0/16")
    as_made = set(vars(inner))
    assert within(inner, outer) and overlaps(inner, outer) and overlaps(outer, inner)
    assert set(vars(inner)) == as_made == set(vars(outer))
    inner.subnet_of(outer)  # what ipaddress itself does: caches broadcast_address on both
    assert "broadcast_address" in set(vars(inner)) - as_made
