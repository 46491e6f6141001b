"""Dual-stack allocation over the in-memory store: the IPv6 half of a lease, as Go's
local_manager.go picks it (and where it does better: keeping the IPv4 half of a lease that
lacks an IPv6 one, yielding a half another key took first)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import TypeVar

import pytest

from flanneld.allocation import free_ipv6_subnets, free_subnets, pick_ipv6_subnet
from flanneld.errors import NetworkConfigError, OutOfSubnetsError
from flanneld.lease import LeaseAttrs, make_backend_data, subnets_prefix
from flanneld.memory_store import MemoryStore
from flanneld.netconfig import parse_network_config
from flanneld.subnet_env import SubnetEnv, previous_subnets, write_subnet_env
from flanneld.subnet_manager import SubnetManager

pytestmark = pytest.mark.unit
PREFIX = "/coreos.com/network"
SUBNETS = subnets_prefix(PREFIX)
V4_SMALL = '"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0"'
DUAL = parse_network_config('{' + V4_SMALL + ',"EnableIPv6":true,"IPv6Network":"fc00::/48"}')
V4_ONLY = parse_network_config('{' + V4_SMALL + '}')
# three IPv6 subnets: fc00::40/122, fc00::80/122, fc00::c0/122
DUAL_TINY_V6 = parse_network_config(
    '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120"}')

T = TypeVar("T")


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "host-gw", public_ipv6=IPv6Address(f"2001:db8::{n}"))


def manager(store: MemoryStore, seed: int = 1) -> SubnetManager:
    return SubnetManager(store, PREFIX, ttl=100, rng=random.Random(seed))


async def names(store: MemoryStore) -> list[str]:
    return [kv.key.removeprefix(SUBNETS) for kv in (await store.list_prefix(SUBNETS)).kvs]


class LastChoice(random.Random):
    """An injected random source that always takes the last candidate and remembers how many
    it was offered."""

    offered: list[int]

    def __init__(self) -> None:
        super().__init__(0)
        self.offered = []

    def choice(self, seq: Sequence[T]) -> T:
        self.offered.append(len(seq))
        return seq[-1]


async def test_dual_key_and_value_are_gos() -> None:
    store = MemoryStore()
    a = LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan", make_backend_data({"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:01"}),
                   public_ipv6=IPv6Address("2001:db8::1"),
                   backend_v6_data=make_backend_data({"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:02"}))
    lease = await manager(store).acquire(a, DUAL)
    assert DUAL.contains_subnet(lease.subnet) and lease.ipv6_subnet is not None
    assert DUAL.contains_ipv6_subnet(lease.ipv6_subnet)
    name = f"{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address}-64"
    assert await names(store) == [name] and lease.key == name
    kv = await store.get(SUBNETS + name)
    assert kv is not None and kv.lease_id == lease.etcd_lease_id != 0
    assert kv.value == (
        b'{"PublicIP":"198.18.0.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:01"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:02"}}')


async def test_ipv4_only_network_writes_no_ipv6_half() -> None:
    store = MemoryStore()
    lease = await manager(store).acquire(attrs(1), V4_ONLY)
    assert lease.ipv6_subnet is None and await names(store) == [f"{lease.subnet.network_address}-24"]


async def test_ipv6_half_is_a_random_pick_among_the_first_free_ones() -> None:
    """Go's allocateSubnet: walk up from IPv6SubnetMin collecting up to 100 free subnets, then
    pick one at random; the injected random source decides."""
    store = MemoryStore()
    rng = LastChoice()
    lease = await SubnetManager(store, PREFIX, ttl=100, rng=rng).acquire(attrs(1), DUAL)
    assert rng.offered == [4, 100]  # 4 free IPv4 subnets, the first 100 of 65535 IPv6 ones
    assert lease.subnet == IPv4Network("10.5.4.0/24")
    assert lease.ipv6_subnet == IPv6Network("fc00:0:0:64::/64")  # the 100th from fc00:0:0:1::


def test_ipv6_walk_is_bounded_in_a_range_of_2_to_the_64_subnets() -> None:
    huge = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,'
                                '"IPv6Network":"fc00::/8","IPv6SubnetLen":72}')
    assert huge.ipv6_subnet_count == (1 << 64) - 1
    first = int(IPv6Address("fc00::")) + (1 << 56)
    # a /16 key covers 2^56 candidates: the walk jumps past it in one step
    taken = {IPv6Network((first, 72)), IPv6Network("fc01::/16")}
    free = free_ipv6_subnets(huge, taken, limit=3)
    assert free == [IPv6Network((first + (1 << 56) * k, 72)) for k in (1, 2, 3)]
    rng = LastChoice()
    picked = pick_ipv6_subnet(huge, set(), None, rng)
    assert rng.offered == [100] and picked == IPv6Network((first + 99 * (1 << 56), 72))


def test_a_key_of_another_prefix_length_blocks_what_it_overlaps() -> None:
    """Go's Overlaps: a /63 key holds both /64s in it, a /25 key the /24 around it."""
    assert free_ipv6_subnets(DUAL, {IPv6Network("fc00:0:0:2::/63")}, limit=3) == [
        IPv6Network("fc00:0:0:1::/64"), IPv6Network("fc00:0:0:4::/64"), IPv6Network("fc00:0:0:5::/64")]
    assert free_subnets(V4_ONLY, {IPv4Network("10.5.2.128/25")}) == [
        IPv4Network("10.5.1.0/24"), IPv4Network("10.5.3.0/24"), IPv4Network("10.5.4.0/24")]


async def test_restart_with_the_lease_still_there_reuses_both_halves() -> None:
    store = MemoryStore()
    first = await manager(store, 1).acquire(attrs(1), DUAL)
    again = await manager(store, 2).acquire(attrs(1), DUAL)
    assert (again.subnet, again.ipv6_subnet) == (first.subnet, first.ipv6_subnet)
    assert again.etcd_lease_id != first.etcd_lease_id
    assert await store.time_to_live(first.etcd_lease_id) == -1
    assert await names(store) == [first.key]


async def test_restart_after_expiry_takes_both_halves_back_from_subnet_env(tmp_path: Path) -> None:
    """The lease expired while the node was down: FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET of the
    subnet file bring both halves back (fc00:0:0:ff00:: is far beyond the 100 candidates a
    fresh pick would choose from)."""
    path = tmp_path / "subnet.env"
    write_subnet_env(str(path), SubnetEnv(DUAL.network, IPv4Network("10.5.3.0/24"), 1450, False,
                                          DUAL.ipv6_network, IPv6Network("fc00:0:0:ff00::/64")))
    previous, previous6 = previous_subnets(str(path))
    store = MemoryStore()
    lease = await manager(store).acquire(attrs(1), DUAL, previous=previous, previous_ipv6=previous6)
    assert (lease.subnet, lease.ipv6_subnet) == (IPv4Network("10.5.3.0/24"), IPv6Network("fc00:0:0:ff00::/64"))
    assert await names(store) == ["10.5.3.0-24&fc00:0:0:ff00::-64"]


async def test_previous_ipv6_half_is_ignored_when_taken_or_outside_the_config() -> None:
    store = MemoryStore()
    await manager(store).put_reservation(IPv4Network("10.5.1.0/24"), attrs(9), IPv6Network("fc00:0:0:ff00::/64"))
    taken = await manager(store).acquire(attrs(1), DUAL, previous_ipv6=IPv6Network("fc00:0:0:ff00::/64"))
    outside = await manager(store).acquire(attrs(2), DUAL, previous_ipv6=IPv6Network("fd00::/64"))
    wrong_len = await manager(store).acquire(attrs(3), DUAL, previous_ipv6=IPv6Network("fc00:0:0:fe00::/80"))
    for lease in (taken, outside, wrong_len):
        assert lease.ipv6_subnet is not None and DUAL.contains_ipv6_subnet(lease.ipv6_subnet)
    assert taken.ipv6_subnet != IPv6Network("fc00:0:0:ff00::/64")


async def test_previous_ipv4_subnet_is_kept_when_the_subnet_file_had_no_ipv6_half() -> None:
    """Go ignores a previous subnet without a fitting IPv6 half; the IPv4 half is kept here."""
    store = MemoryStore()
    lease = await manager(store).acquire(attrs(1), DUAL, previous=IPv4Network("10.5.3.0/24"))
    assert lease.subnet == IPv4Network("10.5.3.0/24") and lease.ipv6_subnet is not None


async def test_ipv6_exhaustion_names_ipv6_and_its_range() -> None:
    store = MemoryStore()
    leases = [await manager(store, n).acquire(attrs(n), DUAL_TINY_V6) for n in (1, 2, 3)]
    assert {lease.ipv6_subnet for lease in leases} == {
        IPv6Network("fc00::40/122"), IPv6Network("fc00::80/122"), IPv6Network("fc00::c0/122")}
    with pytest.raises(OutOfSubnetsError) as info:
        await manager(store).acquire(attrs(4), DUAL_TINY_V6)  # IPv4 has 252 free /24s left
    message = str(info.value)
    assert message.startswith("out of subnets (IPv6): ")
    for part in ("IPv6Network fc00::/120", "/122", "IPv6SubnetMin fc00::40", "IPv6SubnetMax fc00::c0",
                 "(3 subnets)"):
        assert part in message, message
    assert len(await names(store)) == 3  # nothing half-written


async def test_ipv4_exhaustion_in_a_dual_stack_network_names_ipv4() -> None:
    store = MemoryStore()
    for n in range(1, 5):
        await manager(store, n).acquire(attrs(n), DUAL)
    with pytest.raises(OutOfSubnetsError) as info:
        await manager(store).acquire(attrs(9), DUAL)
    assert str(info.value).startswith("out of subnets (IPv4): every /24 of Network 10.5.0.0/16")


async def test_an_ipv4_only_lease_gets_an_ipv6_half_and_keeps_its_ipv4_subnet() -> None:
    """Go deletes the lease (isIPv6SubnetConfigCompat is false) and picks both halves anew,
    so the node's pods change IPv4 subnet; here only the IPv6 half is added."""
    store = MemoryStore()
    old = await manager(store, 1).acquire(attrs(1), V4_ONLY, previous=IPv4Network("10.5.3.0/24"))
    assert await names(store) == ["10.5.3.0-24"]
    new = await manager(store, 2).acquire(attrs(1), DUAL, previous_ipv6=IPv6Network("fc00:0:0:33::/64"))
    assert (new.subnet, new.ipv6_subnet) == (IPv4Network("10.5.3.0/24"), IPv6Network("fc00:0:0:33::/64"))
    assert await names(store) == ["10.5.3.0-24&fc00:0:0:33::-64"]
    kv = await store.get(SUBNETS + new.key)
    assert kv is not None and kv.lease_id == new.etcd_lease_id != 0 and kv.value == attrs(1).to_json().encode()
    assert await store.time_to_live(old.etcd_lease_id) == -1  # the old etcd lease is revoked
    # renewing and defending use the dual key
    renewed = await manager(store).renew(new)
    assert renewed.key == new.key and await names(store) == [new.key]
    await store.delete(SUBNETS + new.key)
    restored, how = await manager(store).defend(renewed)
    assert how == "restored" and restored.key == new.key and await names(store) == [new.key]


async def test_a_lease_loses_its_ipv6_half_when_the_network_disables_ipv6() -> None:
    store = MemoryStore()
    dual = await manager(store).acquire(attrs(1), DUAL)
    v4 = await manager(store).acquire(attrs(1), V4_ONLY)
    assert (v4.subnet, v4.ipv6_subnet) == (dual.subnet, None)
    assert await names(store) == [f"{dual.subnet.network_address}-24"]


async def test_an_ipv4_only_reservation_stays_a_reservation_with_an_ipv6_half() -> None:
    store = MemoryStore()
    await manager(store).put_reservation(IPv4Network("10.5.2.0/24"), attrs(7))
    lease = await manager(store).acquire(attrs(7), DUAL)
    assert lease.subnet == IPv4Network("10.5.2.0/24") and lease.ipv6_subnet is not None and lease.reserved
    assert await names(store) == [lease.key]
    kv = await store.get(SUBNETS + lease.key)
    assert kv is not None and kv.lease_id == 0


async def test_no_ipv6_subnet_left_keeps_the_ipv4_only_lease() -> None:
    store = MemoryStore()
    for n in (1, 2, 3):
        await manager(store, n).acquire(attrs(n), DUAL_TINY_V6)
    await manager(store).put_reservation(IPv4Network("10.5.9.0/24"), attrs(9))
    with pytest.raises(OutOfSubnetsError, match=r"\(IPv6\)"):
        await manager(store).acquire(attrs(9), DUAL_TINY_V6)
    assert "10.5.9.0-24" in await names(store)  # not deleted first, as Go would


async def test_reservation_with_an_ipv6_half_is_never_taken_and_is_reused_by_its_owner() -> None:
    store = MemoryStore()
    await manager(store).put_reservation(IPv4Network("10.5.2.0/24"), attrs(7), IPv6Network("fc00::80/122"))
    others = [await manager(store, n).acquire(attrs(n), DUAL_TINY_V6) for n in (1, 2)]
    assert IPv6Network("fc00::80/122") not in {lease.ipv6_subnet for lease in others}
    assert IPv4Network("10.5.2.0/24") not in {lease.subnet for lease in others}
    with pytest.raises(OutOfSubnetsError, match=r"\(IPv6\)"):
        await manager(store).acquire(attrs(3), DUAL_TINY_V6)
    owner = await manager(store).acquire(attrs(7), DUAL_TINY_V6)
    assert (owner.subnet, owner.ipv6_subnet, owner.reserved) == (
        IPv4Network("10.5.2.0/24"), IPv6Network("fc00::80/122"), True)
    kv = await store.get(SUBNETS + "10.5.2.0-24&fc00::80-122")
    assert kv is not None and kv.lease_id == 0 and kv.value == attrs(7).to_json().encode()


async def test_an_ipv6_half_another_key_took_first_is_yielded() -> None:
    """Create-if-absent guards the key's name only: another node may take our IPv6 half under
    another IPv4 subnet just before us.  The key created first keeps it; we pick again."""
    store = MemoryStore()
    real_create = store.create
    stolen: list[str] = []

    async def racing_create(key: str, value: bytes, lease_id: int) -> int | None:
        if not stolen:
            ipv6 = key.rsplit("&", 1)[1]
            stolen.append(f"10.5.200.0-24&{ipv6}")
            await store.put(SUBNETS + stolen[0], attrs(99).to_json().encode())
        return await real_create(key, value, lease_id)

    store.create = racing_create  # type: ignore[method-assign]
    config = parse_network_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    lease = await manager(store).acquire(attrs(1), config)
    assert stolen and lease.ipv6_subnet is not None
    assert not stolen[0].endswith(f"&{lease.ipv6_subnet.network_address}-64")
    assert sorted(await names(store)) == sorted([stolen[0], lease.key])  # ours is gone, theirs kept
    assert "revoke" in store.requests


async def test_ipv6_only_configs_are_not_allocated() -> None:
    config = parse_network_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    with pytest.raises(NetworkConfigError) as info:
        await manager(MemoryStore()).acquire(attrs(1), config)
    assert info.value.field == "EnableIPv4"


@pytest.mark.parametrize(("config", "reason"), [
    (b'{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"udp"}}',
     "EnableIPv6: the udp backend carries IPv4 only (as Go flannel's); use vxlan or host-gw for a dual-stack network"),
    (b'{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}',
     "EnableIPv6: IPv6-only networks are not supported yet"),
])
async def test_the_daemon_s_network_config_refuses_what_it_cannot_run_yet(config: bytes, reason: str) -> None:
    """SubnetManager.network_config (what the daemon reads at start) asks unsupported_reason."""
    store = MemoryStore()
    await store.put("/coreos.com/network/config", config)
    with pytest.raises(NetworkConfigError) as info:
        await manager(store).network_config()
    assert info.value.field == "EnableIPv6" and str(info.value) == f"network config: {reason}"
    await store.put("/coreos.com/network/config", b'{"Network":"10.5.0.0/16"}')
    assert (await manager(store).network_config()).enable_ipv6 is False
