"""The lease keeper on the in-memory store with an injected clock: renewal times, expiry during
an etcd outage, our key deleted, rewritten, or taken after our etcd lease died (re-acquired
elsewhere); the same for a dual-stack lease (one key naming both halves).  No real time
passes: the injected wait advances the clock."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import TypeVar

import pytest

from flanneld.lease import Lease, LeaseAttrs
from flanneld.lease_keeper import KeeperHooks, LeaseKeeper
from flanneld.memory_store import MemoryStore
from flanneld.netconfig import parse_network_config
from flanneld.subnet_manager import SubnetManager

pytestmark = pytest.mark.unit

PREFIX = "/coreos.com/network"
ATTRS = LeaseAttrs(IPv4Address("198.18.0.1"), "host-gw")
NETCONF = parse_network_config(
    b'{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0",'
    b'"Backend":{"Type":"host-gw"}}')  # room for two subnets
TTL = 100
DUAL_ATTRS = LeaseAttrs(IPv4Address("198.18.0.1"), "host-gw",
                        public_ipv6=IPv6Address("2001:db8:18::1"))
DUAL_NETCONF = parse_network_config(
    b'{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0",'
    b'"EnableIPv6":true,"IPv6Network":"fd00:244::/56","IPv6SubnetMin":"fd00:244:0:1::",'
    b'"IPv6SubnetMax":"fd00:244:0:4::","Backend":{"Type":"host-gw"}}')  # 2 IPv4, 4 IPv6 halves
V6_FIRST = IPv6Network("fd00:244:0:1::/64")

T = TypeVar("T")


class LastPick(random.Random):
    """Always picks the last candidate: a half asked for again comes back only when the keeper
    asks for it (otherwise the pick is another one)."""

    def choice(self, seq: Sequence[T]) -> T:
        return seq[-1]


class World:
    """A fake clock shared by the store and the keeper, and everything the hooks were told."""

    def __init__(self, dual: bool = False) -> None:
        self.now = 1000.0
        self.dual = dual
        self.store = MemoryStore(clock=lambda: self.now)
        self.manager = SubnetManager(self.store, PREFIX, ttl=TTL, clock=lambda: self.now,
                                     rng=LastPick() if dual else None)
        self.log: list[tuple[str, object]] = []
        self.moved: list[tuple[Lease, Lease]] = []
        self.renewed_at: list[float] = []
        self.on_wait: Callable[[World], None] = lambda world: None

        async def moved(new: Lease, old: Lease) -> None:
            self.moved.append((new, old))

        def event(name: str, ok: bool) -> None:
            self.log.append(("event", (name, ok)))
            if name == "renew" and ok:
                self.renewed_at.append(self.now)

        self.hooks = KeeperHooks(
            held=lambda held: self.log.append(("held", held)),
            conflict=lambda text: self.log.append(("conflict", text)),
            event=event, expiry=lambda ts: self.log.append(("expiry", ts)),
            store_back=lambda: self.log.append(("store_back", None)), moved=moved)

    async def wait(self, event: asyncio.Event, delay: float | None) -> None:
        """Advance the clock by ``delay`` unless ``event`` is set; let other tasks run."""
        await asyncio.sleep(0)
        if event.is_set():
            return
        self.now += delay if delay is not None else 1.0
        self.on_wait(self)
        await asyncio.sleep(0)

    def keeper(self) -> LeaseKeeper:
        attrs, netconf = (DUAL_ATTRS, DUAL_NETCONF) if self.dual else (ATTRS, NETCONF)
        return LeaseKeeper(self.manager, attrs, netconf, renew_margin=3600.0, ttl=TTL,
                           hooks=self.hooks, wall=lambda: self.now, mono=lambda: self.now,
                           wait=self.wait)

    def seen(self, kind: str) -> list[object]:
        return [value for k, value in self.log if k == kind]


async def run_until(keeper: LeaseKeeper, done: Callable[[], bool], turns: int = 2000) -> None:
    task = asyncio.create_task(keeper.run())
    try:
        for _ in range(turns):
            if done() or task.done():
                break
            await asyncio.sleep(0)
        if task.done():
            task.result()
        assert done(), "condition not reached"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_renews_at_expiry_minus_half_the_ttl() -> None:
    world = World()
    keeper = world.keeper()
    lease = await keeper.acquire(None)
    assert lease.expiration == 1100.0
    assert keeper.renew_delay() == 50.0  # margin capped at ttl/2
    await run_until(keeper, lambda: len(world.renewed_at) >= 3)
    assert world.renewed_at[:3] == [1050.0, 1100.0, 1150.0]
    assert keeper.lease is not None and keeper.lease.subnet == lease.subnet
    kv = await world.store.get(world.manager.key(lease.subnet))
    assert kv is not None and kv.lease_id == keeper.lease.etcd_lease_id
    assert await world.store.time_to_live(lease.etcd_lease_id) == -1  # superseded: revoked


async def test_expiry_by_our_clock_during_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    keeper = world.keeper()
    await keeper.acquire(None)

    def outage(w: World) -> None:  # etcd gone from t=1040 to t=1130
        w.store.available = not 1040 <= w.now < 1130

    world.on_wait = outage
    with caplog.at_level(logging.WARNING, logger="flanneld"):
        await run_until(keeper, lambda: len(world.renewed_at) >= 1)
    # renewed within the retry cap (3 s, +20 % jitter) of etcd's return
    assert 1130 <= world.renewed_at[0] <= 1130 + keeper.RENEW_RETRY_CAP * 1.2
    held = world.seen("held")
    assert held == [False, True]  # not ready once the lease ran out by our clock, then ready
    assert world.seen("store_back") == [None]
    failures = [e for e in world.seen("event") if e == ("renew", False)]
    assert len(failures) >= 25  # retried every 1-3 s for 80 s
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 5, lines  # start, ran out, one reminder, renewed
    assert any("ran out by our clock" in line for line in lines)


async def test_our_key_deleted_is_recreated_with_our_etcd_lease() -> None:
    world = World()
    keeper = world.keeper()
    lease = await keeper.acquire(None)
    key = world.manager.key(lease.subnet)
    await world.store.delete(key)
    keeper.trouble()
    await run_until(keeper, lambda: ("event", ("reacquire", True)) in world.log)
    kv = await world.store.get(key)
    assert kv is not None and kv.lease_id == lease.etcd_lease_id
    assert keeper.lease is not None and keeper.lease.subnet == lease.subnet
    assert world.seen("held") == [False, True]
    assert world.moved == []


async def test_our_key_rewritten_is_reasserted() -> None:
    world = World()
    keeper = world.keeper()
    lease = await keeper.acquire(None)
    key = world.manager.key(lease.subnet)
    await world.store.put(key, LeaseAttrs(IPv4Address("198.18.0.99"), "host-gw").to_json().encode())
    keeper.trouble()
    await run_until(keeper, lambda: ("event", ("conflict", True)) in world.log)
    kv = await world.store.get(key)
    assert kv is not None and kv.value == ATTRS.to_json().encode()
    conflicts = world.seen("conflict")
    assert conflicts[0] == f"lease conflict: our key {lease.subnet} holds PublicIP 198.18.0.99"
    assert conflicts[-1] is None
    assert world.moved == []


async def test_taken_after_our_etcd_lease_died_moves_to_another_subnet() -> None:
    world = World()
    keeper = world.keeper()
    lease = await keeper.acquire(None)
    key = world.manager.key(lease.subnet)
    await world.store.revoke(lease.etcd_lease_id)  # e.g. expired in a long partition
    grant = await world.store.grant(600)
    other = LeaseAttrs(IPv4Address("198.18.0.2"), "host-gw").to_json().encode()
    assert await world.store.create(key, other, grant.lease_id) is not None
    keeper.trouble()
    await run_until(keeper, lambda: bool(world.moved))
    new, old = world.moved[0]
    assert old.subnet == lease.subnet and new.subnet != lease.subnet
    assert keeper.lease == new
    assert (await world.store.get(key)).value == other  # type: ignore[union-attr]
    held = world.seen("held")
    assert held[-2:] == [False, True]
    assert ("event", ("lose", True)) in world.log and ("event", ("reacquire", True)) in world.log


async def test_a_full_range_keeps_retrying_until_room_appears() -> None:
    world = World()
    keeper = world.keeper()
    lease = await keeper.acquire(None)
    key = world.manager.key(lease.subnet)
    await world.store.revoke(lease.etcd_lease_id)
    grant = await world.store.grant(600)
    squatter = LeaseAttrs(IPv4Address("198.18.0.2"), "host-gw").to_json().encode()
    await world.store.create(key, squatter, grant.lease_id)
    other_subnet = "10.244.2.0-24" if str(lease.subnet) == "10.244.1.0/24" else "10.244.1.0-24"
    await world.store.create(f"{PREFIX}/subnets/{other_subnet}", squatter, grant.lease_id)
    keeper.trouble()
    freed: list[asyncio.Task[bool]] = []

    def free_later(w: World) -> None:
        if w.now > 1200 and not freed:
            freed.append(asyncio.ensure_future(w.store.delete(key)))

    world.on_wait = free_later
    await run_until(keeper, lambda: ("event", ("reacquire", True)) in world.log, turns=20000)
    assert ("event", ("acquire", False)) in world.log  # out of subnets meanwhile
    assert keeper.lease is not None and keeper.lease.subnet == lease.subnet  # same subnet back
    assert world.moved == []


# ---- a dual-stack lease: one key, ``10.244.x.0-24&fd00:244:0:y::-64``, for both halves ----------

async def _keys(world: World) -> list[str]:
    return [kv.key for kv in (await world.manager.list_snapshot()).kvs]


async def test_dual_lease_is_renewed_under_its_dual_key() -> None:
    world = World(dual=True)
    keeper = world.keeper()
    lease = await keeper.acquire(None, previous_ipv6=V6_FIRST)
    assert lease.ipv6_subnet == V6_FIRST  # the previous IPv6 half, asked for, comes back
    key = world.manager.key_of(lease)
    assert key.endswith("&fd00:244:0:1::-64")
    await run_until(keeper, lambda: len(world.renewed_at) >= 2)
    assert keeper.lease is not None and keeper.lease.ipv6_subnet == V6_FIRST
    kv = await world.store.get(key)
    assert kv is not None and kv.lease_id == keeper.lease.etcd_lease_id
    assert await _keys(world) == [key]  # no IPv4-only twin
    assert world.seen("conflict") == [] and world.moved == []


async def test_dual_key_deleted_is_recreated_with_the_same_dual_key() -> None:
    world = World(dual=True)
    keeper = world.keeper()
    lease = await keeper.acquire(None, previous_ipv6=V6_FIRST)
    key = world.manager.key_of(lease)
    await world.store.delete(key)
    keeper.trouble()
    await run_until(keeper, lambda: ("event", ("reacquire", True)) in world.log)
    kv = await world.store.get(key)
    assert kv is not None and kv.lease_id == lease.etcd_lease_id
    assert kv.value == DUAL_ATTRS.to_json().encode()
    assert await _keys(world) == [key]
    assert keeper.lease is not None and world.manager.key_of(keeper.lease) == key
    assert world.seen("held") == [False, True] and world.moved == []


async def test_dual_key_rewritten_is_reasserted_not_taken_for_deleted() -> None:
    world = World(dual=True)
    keeper = world.keeper()
    lease = await keeper.acquire(None, previous_ipv6=V6_FIRST)
    key = world.manager.key_of(lease)
    await world.store.put(key, LeaseAttrs(IPv4Address("198.18.0.99"), "host-gw").to_json().encode())
    keeper.trouble()
    await run_until(keeper, lambda: ("event", ("conflict", True)) in world.log)
    kv = await world.store.get(key)
    assert kv is not None and kv.value == DUAL_ATTRS.to_json().encode()
    assert world.seen("conflict")[0] == (
        f"lease conflict: our key {lease.subnet} + {V6_FIRST} holds PublicIP 198.18.0.99")
    assert ("event", ("lose", True)) not in world.log and world.seen("held") == [True]  # never False


async def test_dual_lease_lost_is_reacquired_with_both_halves() -> None:
    world = World(dual=True)
    keeper = world.keeper()
    lease = await keeper.acquire(None, previous_ipv6=V6_FIRST)
    await world.store.revoke(lease.etcd_lease_id)  # expired in a partition: the key goes with it
    assert await _keys(world) == []
    keeper.trouble()
    await run_until(keeper, lambda: ("event", ("reacquire", True)) in world.log)
    new = keeper.lease
    assert new is not None and new.etcd_lease_id != lease.etcd_lease_id
    # both halves asked for again and free: the same two (the picker alone takes the last ones)
    assert (new.subnet, new.ipv6_subnet) == (lease.subnet, V6_FIRST)
    assert await _keys(world) == [world.manager.key_of(lease)]
    assert world.moved == []
    assert world.seen("held")[-2:] == [False, True]


async def test_dual_lease_taken_moves_and_reports_both_halves() -> None:
    world = World(dual=True)
    keeper = world.keeper()
    lease = await keeper.acquire(None, previous_ipv6=V6_FIRST)
    key = world.manager.key_of(lease)
    await world.store.revoke(lease.etcd_lease_id)
    grant = await world.store.grant(600)
    other = LeaseAttrs(IPv4Address("198.18.0.2"), "host-gw",
                       public_ipv6=IPv6Address("2001:db8:18::2")).to_json().encode()
    assert await world.store.create(key, other, grant.lease_id) is not None
    keeper.trouble()
    await run_until(keeper, lambda: bool(world.moved))
    new, old = world.moved[0]
    assert (old.subnet, old.ipv6_subnet) == (lease.subnet, V6_FIRST)
    assert new.subnet != lease.subnet and new.ipv6_subnet not in (None, V6_FIRST)
    assert keeper.lease == new
    assert sorted(await _keys(world)) == sorted([key, world.manager.key_of(new)])


async def test_dual_lease_lost_with_its_ipv6_half_taken_keeps_ipv4_and_moves() -> None:
    world = World(dual=True)
    keeper = world.keeper()
    lease = await keeper.acquire(None, previous_ipv6=V6_FIRST)
    await world.store.revoke(lease.etcd_lease_id)
    other_v4 = "10.244.1.0-24" if str(lease.subnet) == "10.244.2.0/24" else "10.244.2.0-24"
    squatter = f"{PREFIX}/subnets/{other_v4}&fd00:244:0:1::-64"  # another key, our IPv6 half
    grant = await world.store.grant(600)
    await world.store.create(squatter, LeaseAttrs(IPv4Address("198.18.0.2")).to_json().encode(),
                             grant.lease_id)
    keeper.trouble()
    await run_until(keeper, lambda: bool(world.moved))
    new, old = world.moved[0]  # only the IPv6 half changed: still a move to reprogram
    assert new.subnet == old.subnet == lease.subnet
    assert old.ipv6_subnet == V6_FIRST and new.ipv6_subnet not in (None, V6_FIRST)
