"""Allocation logic over the in-memory store: acquire order, races, reservations, renewal."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from flanneld.errors import OutOfSubnetsError
from flanneld.lease import LeaseAttrs, subnets_prefix
from flanneld.lease_watch import LeaseEvent, LeaseEventKind, LeaseWatcher, diff_leases
from flanneld.memory_store import MemoryStore
from flanneld.netconfig import parse_network_config
from flanneld.subnet_manager import LeaseLostError, SubnetManager

pytestmark = pytest.mark.unit
PREFIX = "/coreos.com/network"
SMALL = parse_network_config('{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0"}')


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "host-gw")


def manager(store: MemoryStore, seed: int = 1) -> SubnetManager:
    return SubnetManager(store, PREFIX, ttl=100, rng=random.Random(seed))


async def test_acquire_creates_a_key_with_an_etcd_lease() -> None:
    store = MemoryStore()
    lease = await manager(store).acquire(attrs(1), SMALL)
    kv = await store.get(subnets_prefix(PREFIX) + f"{lease.subnet.network_address}-24")
    assert kv is not None and kv.lease_id == lease.etcd_lease_id != 0
    assert kv.value == attrs(1).to_json().encode()
    assert SMALL.contains_subnet(lease.subnet)


async def test_same_public_ip_gets_the_same_subnet_and_old_etcd_lease_is_revoked() -> None:
    store = MemoryStore()
    first = await manager(store, 1).acquire(attrs(1), SMALL)
    again = await manager(store, 2).acquire(attrs(1), SMALL)
    assert again.subnet == first.subnet
    assert again.etcd_lease_id != first.etcd_lease_id
    assert await store.time_to_live(first.etcd_lease_id) == -1  # revoked: Go leaks it
    assert len((await store.list_prefix(subnets_prefix(PREFIX))).kvs) == 1


async def test_previous_subnet_from_the_subnet_file_is_preferred_when_free() -> None:
    store = MemoryStore()
    lease = await manager(store).acquire(attrs(1), SMALL, previous=IPv4Network("10.5.3.0/24"))
    assert lease.subnet == IPv4Network("10.5.3.0/24")
    # Taken by someone else, or outside the config: ignored.
    other = await manager(store).acquire(attrs(2), SMALL, previous=IPv4Network("10.5.3.0/24"))
    assert other.subnet != lease.subnet
    outside = await manager(store).acquire(attrs(3), SMALL, previous=IPv4Network("10.5.9.0/24"))
    assert outside.subnet != IPv4Network("10.5.9.0/24")


async def test_exhaustion_names_network_len_min_max() -> None:
    store = MemoryStore()
    for n in range(1, 5):
        await manager(store, n).acquire(attrs(n), SMALL)
    with pytest.raises(OutOfSubnetsError) as info:
        await manager(store).acquire(attrs(9), SMALL)
    message = str(info.value)
    for part in ("out of subnets", "10.5.0.0/16", "/24", "10.5.1.0", "10.5.4.0"):
        assert part in message


async def test_reservation_is_never_taken_and_is_reused_by_its_owner() -> None:
    store = MemoryStore()
    mgr = manager(store)
    await mgr.put_reservation(IPv4Network("10.5.2.0/24"), attrs(7))
    others = [await manager(store, n).acquire(attrs(n), SMALL) for n in (1, 2, 3)]
    assert IPv4Network("10.5.2.0/24") not in {lease.subnet for lease in others}
    with pytest.raises(OutOfSubnetsError):
        await manager(store).acquire(attrs(4), SMALL)
    owner = await manager(store).acquire(attrs(7), SMALL)
    assert owner.subnet == IPv4Network("10.5.2.0/24") and owner.reserved
    kv = await store.get(subnets_prefix(PREFIX) + "10.5.2.0-24")
    assert kv is not None and kv.lease_id == 0  # still a reservation


async def test_undecodable_values_still_hold_their_subnet() -> None:
    store = MemoryStore()
    for n in (1, 2, 3):
        await store.put(subnets_prefix(PREFIX) + f"10.5.{n}.0-24", b"garbage")
    lease = await manager(store).acquire(attrs(1), SMALL)
    assert lease.subnet == IPv4Network("10.5.4.0/24")


async def test_lost_creation_race_picks_another_subnet() -> None:
    store = MemoryStore()
    real_create = store.create
    stolen: list[str] = []

    async def racing_create(key: str, value: bytes, lease_id: int) -> int | None:
        if not stolen:  # another node wins the first subnet we try, just before us
            stolen.append(key)
            await store.put(key, attrs(99).to_json().encode())
        return await real_create(key, value, lease_id)

    store.create = racing_create  # type: ignore[method-assign]
    lease = await manager(store).acquire(attrs(1), SMALL)
    assert stolen and not stolen[0].endswith(f"{lease.subnet.network_address}-24")
    assert "revoke" in store.requests  # the loser's fresh etcd lease is not leaked


async def test_fifty_concurrent_acquirers_get_distinct_subnets() -> None:
    store = MemoryStore()
    config = parse_network_config('{"Network":"10.5.0.0/16"}')
    leases = await asyncio.gather(*(manager(store, n).acquire(attrs(n), config) for n in range(1, 51)))
    assert len({lease.subnet for lease in leases}) == 50


async def test_renew_grants_a_new_lease_and_revokes_the_old() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    mgr = SubnetManager(store, PREFIX, ttl=100, clock=clock)
    lease = await mgr.acquire(attrs(1), SMALL)
    clock.now += 90
    renewed = await mgr.renew(lease)
    assert renewed.subnet == lease.subnet
    assert renewed.expiration is not None and lease.expiration is not None
    assert renewed.expiration > lease.expiration
    assert await store.time_to_live(lease.etcd_lease_id) == -1
    clock.now += 50  # past the first lease's expiry, within the renewed one
    await store.expire()
    assert await store.get(subnets_prefix(PREFIX) + f"{lease.subnet.network_address}-24") is not None


async def test_renew_after_the_key_changed_hands_raises_lease_lost() -> None:
    store = MemoryStore()
    mgr = manager(store)
    lease = await mgr.acquire(attrs(1), SMALL)
    key = subnets_prefix(PREFIX) + f"{lease.subnet.network_address}-24"
    await store.put(key, attrs(2).to_json().encode())
    with pytest.raises(LeaseLostError):
        await mgr.renew(lease)
    kv = await store.get(key)
    assert kv is not None and kv.value == attrs(2).to_json().encode()  # not stolen back
    await store.delete(key)
    with pytest.raises(LeaseLostError):
        await mgr.renew(lease)


async def test_watcher_follows_puts_deletes_bad_values_and_compaction() -> None:
    store = MemoryStore()
    mgr = manager(store)
    leases, _, revision = await mgr.list_leases()
    watcher = LeaseWatcher(mgr, leases, revision)
    events = watcher.events()
    prefix = subnets_prefix(PREFIX)

    await store.put(prefix + "10.5.1.0-24", attrs(1).to_json().encode())
    batch = await anext(events)
    assert [(e.kind, str(e.lease.subnet)) for e in batch] == [(LeaseEventKind.ADDED, "10.5.1.0/24")]

    await store.put(prefix + "10.5.1.0-24", b"{broken")  # a bad value removes the peer
    assert (await anext(events))[0].kind is LeaseEventKind.REMOVED
    await store.put(prefix + "10.5.1.0-24", attrs(1).to_json().encode())
    assert (await anext(events))[0].kind is LeaseEventKind.ADDED

    # Compaction while the watcher is behind: it re-lists and diffs.
    watcher2 = LeaseWatcher(mgr, [], 1)
    store.compact()
    await store.put(prefix + "10.5.2.0-24", attrs(2).to_json().encode())
    diff = await anext(watcher2.events())
    assert {str(e.lease.subnet) for e in diff} == {"10.5.1.0/24", "10.5.2.0/24"}


def test_diff_leases_is_pure_and_minimal() -> None:
    from flanneld.lease import Lease

    def lease(n: int, ip: int) -> Lease:
        return Lease(IPv4Network(f"10.5.{n}.0/24"), attrs(ip), etcd_lease_id=5)

    old = {lease(1, 1).subnet: lease(1, 1), lease(2, 2).subnet: lease(2, 2)}
    new = {lease(2, 3).subnet: lease(2, 3), lease(3, 3).subnet: lease(3, 3)}
    events = diff_leases(old, new)
    assert [(e.kind, str(e.lease.subnet), str(e.lease.attrs.public_ip)) for e in events] == [
        (LeaseEventKind.REMOVED, "10.5.1.0/24", "198.18.0.1"),
        (LeaseEventKind.ADDED, "10.5.2.0/24", "198.18.0.3"),
        (LeaseEventKind.ADDED, "10.5.3.0/24", "198.18.0.3"),
    ]
    assert diff_leases(new, dict(new)) == []


async def test_resync_reports_what_the_watch_missed_and_late_events_lose() -> None:
    store = MemoryStore()
    mgr = manager(store)
    prefix = subnets_prefix(PREFIX)
    await store.put(prefix + "10.5.1.0-24", attrs(1).to_json().encode())
    leases, _, revision = await mgr.list_leases()
    watcher = LeaseWatcher(mgr, leases, revision)
    # Changes the watch stream never delivered (the watcher is not iterated here):
    await store.delete(prefix + "10.5.1.0-24")
    await store.put(prefix + "10.5.2.0-24", attrs(2).to_json().encode())
    events = await watcher.resync()
    assert sorted((e.kind.value, str(e.lease.subnet)) for e in events) == [
        ("added", "10.5.2.0/24"), ("removed", "10.5.1.0/24")]
    assert await watcher.resync() == []  # nothing new the second time
    # The stream now delivers those same, older events late: they change nothing.
    late = [e async for e in _ready_events(watcher.events())]
    assert late == []
    assert set(watcher.known) == {IPv4Network("10.5.2.0/24")}


async def _ready_events(events: AsyncIterator[list[LeaseEvent]]) -> AsyncIterator[LeaseEvent]:
    """The events already available, without waiting for more."""
    iterator = events.__aiter__()
    while True:
        try:
            batch = await asyncio.wait_for(anext(iterator), 0.2)
        except TimeoutError:
            return
        for event in batch:
            yield event
