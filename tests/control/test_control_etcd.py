"""The subnet manager and the lease watcher against a real etcd (Debian etcd-server)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from etcd_server import EtcdServer, etcdctl

from flanneld.errors import OutOfSubnetsError, StoreUnavailableError
from flanneld.etcd_store import EtcdStore, parse_endpoints
from flanneld.lease import LeaseAttrs, subnets_prefix
from flanneld.lease_watch import LeaseEventKind, LeaseWatcher
from flanneld.netconfig import parse_network_config
from flanneld.subnet_manager import SubnetManager

pytestmark = pytest.mark.etcd
NET16 = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}')


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(f"198.18.{n // 250}.{n % 250 + 1}"), "host-gw")


def store_for(server: EtcdServer, timeout: float = 3.0) -> EtcdStore:
    return EtcdStore(parse_endpoints(server.endpoint), timeout=timeout)


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = store_for(etcd_server)
    yield s
    await s.close()


async def test_lease_is_written_exactly_as_go_writes_it(
    store: EtcdStore, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    lease = await SubnetManager(store, etcd_prefix).acquire(attrs(1), NET16)
    key = f"{etcd_prefix}/subnets/{lease.subnet.network_address}-24"
    out = etcdctl(etcd_server, "get", key, "--print-value-only").strip()
    assert out == '{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"host-gw"}'
    ttl_out = etcdctl(etcd_server, "lease", "timetolive", f"{lease.etcd_lease_id:x}")
    assert "remaining(" in ttl_out
    remaining = int(ttl_out.split("remaining(")[1].split("s")[0])
    assert 86000 < remaining <= 86400  # flannel's 24 h


async def test_restart_reacquires_by_public_ip_and_by_subnet_file(store: EtcdStore, etcd_prefix: str) -> None:
    mgr = SubnetManager(store, etcd_prefix, rng=random.Random(3))
    first = await mgr.acquire(attrs(1), NET16)
    again = await SubnetManager(store, etcd_prefix, rng=random.Random(4)).acquire(attrs(1), NET16)
    assert again.subnet == first.subnet
    # A new PublicIP (node re-addressed) but the subnet file still names the old subnet:
    await mgr.delete_lease(first.subnet)
    moved = await mgr.acquire(attrs(2), NET16, previous=first.subnet)
    assert moved.subnet == first.subnet


async def test_fifty_concurrent_acquirers_distinct(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    stores = [store_for(etcd_server) for _ in range(50)]
    try:
        leases = await asyncio.gather(
            *(SubnetManager(s, etcd_prefix, rng=random.Random(n)).acquire(attrs(n), NET16)
              for n, s in enumerate(stores))
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert len({lease.subnet for lease in leases}) == 50


async def test_exhaustion_and_reservations(store: EtcdStore, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    small = parse_network_config('{"Network":"10.7.0.0/24","SubnetLen":26}')  # 3 usable subnets
    mgr = SubnetManager(store, etcd_prefix)
    await mgr.put_reservation(IPv4Network("10.7.0.64/26"), attrs(50))
    got = {(await mgr.acquire(attrs(n), small)).subnet for n in (1, 2)}
    assert got == {IPv4Network("10.7.0.128/26"), IPv4Network("10.7.0.192/26")}
    with pytest.raises(OutOfSubnetsError, match=r"10\.7\.0\.0/24.*/26|/26.*10\.7\.0\.0/24"):
        await mgr.acquire(attrs(3), small)
    owner = await mgr.acquire(attrs(50), small)
    assert owner.subnet == IPv4Network("10.7.0.64/26") and owner.reserved
    fields = etcdctl(etcd_server, "get", f"{etcd_prefix}/subnets/10.7.0.64-26", "-w", "fields")
    assert '"Lease" : 0' in fields  # still a key without an etcd lease


async def test_watch_survives_compaction_without_losing_events(
    store: EtcdStore, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    mgr = SubnetManager(store, etcd_prefix)
    leases, _, revision = await mgr.list_leases()
    resets: list[str] = []
    watcher = LeaseWatcher(mgr, leases, revision, on_reset=resets.append)
    prefix = subnets_prefix(etcd_prefix)
    # Events happen, then etcd compacts past them before the watch starts.
    await store.put(prefix + "10.5.1.0-24", attrs(1).to_json().encode())
    await store.put(prefix + "10.5.2.0-24", attrs(2).to_json().encode())
    await store.delete(prefix + "10.5.1.0-24")
    head = (await store.list_prefix(prefix)).revision
    etcdctl(etcd_server, "compaction", str(head))
    batch = await asyncio.wait_for(anext(watcher.events()), 10)
    assert resets == ["compaction"]
    assert [(e.kind, str(e.lease.subnet)) for e in batch] == [(LeaseEventKind.ADDED, "10.5.2.0/24")]


async def test_watch_resumes_after_etcd_restart(fresh_etcd: EtcdServer, etcd_prefix: str) -> None:
    store = store_for(fresh_etcd, timeout=2)
    try:
        mgr = SubnetManager(store, etcd_prefix)
        leases, _, revision = await mgr.list_leases()
        resets: list[str] = []
        watcher = LeaseWatcher(mgr, leases, revision, on_reset=resets.append)
        events = watcher.events()
        prefix = subnets_prefix(etcd_prefix)
        await store.put(prefix + "10.5.1.0-24", attrs(1).to_json().encode())
        first = await asyncio.wait_for(anext(events), 10)
        assert str(first[0].lease.subnet) == "10.5.1.0/24"

        nxt = asyncio.ensure_future(anext(events))
        fresh_etcd.stop()
        with pytest.raises(StoreUnavailableError):
            await store.put(prefix + "10.5.9.0-24", b"{}")
        fresh_etcd.start()
        # Written after the restart; the watcher must resume and deliver it.
        writer = store_for(fresh_etcd)
        await writer.put(prefix + "10.5.3.0-24", attrs(3).to_json().encode())
        await writer.close()
        batch = await asyncio.wait_for(nxt, 30)
        assert [str(e.lease.subnet) for e in batch] == ["10.5.3.0/24"]
        assert "reconnect" in resets
    finally:
        await store.close()


async def test_malformed_values_are_skipped_and_reported_once_aggregated(
    store: EtcdStore, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = subnets_prefix(etcd_prefix)
    await store.put(prefix + "10.5.1.0-24", b"{not json")
    await store.put(prefix + "10.5.2.0-24", b'{"PublicIP":"nope"}')
    await store.put(prefix + "garbage-key", attrs(1).to_json().encode())
    await store.put(prefix + "10.5.3.0-24", attrs(3).to_json().encode())
    mgr = SubnetManager(store, etcd_prefix)
    for _ in range(3):
        leases, taken, _ = await mgr.list_leases()
    assert [str(lease.subnet) for lease in leases] == ["10.5.3.0/24"]
    assert {str(s) for s in taken} == {"10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"}
    # One line per reason, then one summary of the rest; three listings add nothing.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3, warnings
    assert any("(bad_value)" in w and "not JSON" in w for w in warnings)
    assert any("(bad_key)" in w and "malformed subnet key" in w for w in warnings)
    assert any("1 more leases (bad_value=1)" in w and "10.5.2.0-24" in w for w in warnings)


async def test_unreachable_etcd_is_a_clear_error_after_the_timeout() -> None:
    store = EtcdStore(parse_endpoints("http://127.0.0.1:9,http://127.0.0.1:10"), timeout=1)
    try:
        with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:9.*127\.0\.0\.1:10"):
            await store.get("/x")
    finally:
        await store.close()


async def test_failover_to_the_next_endpoint(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    store = EtcdStore(parse_endpoints(f"http://127.0.0.1:9,{etcd_server.endpoint}"), timeout=2)
    try:
        await store.put(etcd_prefix + "/probe", b"1")
        kv = await store.get(etcd_prefix + "/probe")
        assert kv is not None and kv.value == b"1"
        assert store.current_endpoint.port == etcd_server.client_port
    finally:
        await store.close()
