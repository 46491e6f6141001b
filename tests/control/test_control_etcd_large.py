"""Large listings and values against a real etcd: over grpc's 4 MiB default, paged listings.

A `<prefix>/subnets/` holding more than 4 MiB (e.g. a few 1 MB junk keys) once kept the daemon
from starting ("Received message larger than max"); Go flannel starts fine with the same keys.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest
from etcd_server import EtcdServer, etcdctl

from flanneld.errors import StoreUnavailableError
from flanneld.etcd_store import EtcdStore, parse_endpoints
from flanneld.lease import LeaseAttrs
from flanneld.store import EventKind, RequestObserver
from flanneld.subnet_manager import SubnetManager

pytestmark = pytest.mark.etcd

GO_PREFIX = "/coreos.com/network"
SUBNETS = GO_PREFIX + "/subnets/"
MB = 1_000_000


def lease_value(n: int) -> bytes:
    return LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "host-gw").to_json().encode()


def store_for(server: EtcdServer, observer: RequestObserver | None = None, **kwargs: int) -> EtcdStore:
    return EtcdStore(parse_endpoints(server.endpoint), timeout=5, observer=observer, **kwargs)


@pytest.fixture
async def writer(etcd_server: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = store_for(etcd_server)
    yield s
    await s.close()


async def put_all(store: EtcdStore, items: dict[str, bytes], parallel: int = 32) -> int:
    """Put every item (a few at a time); the highest revision written."""
    gate = asyncio.Semaphore(parallel)

    async def one(key: str, value: bytes) -> int:
        async with gate:
            return await store.put(key, value)

    return max(await asyncio.gather(*(one(k, v) for k, v in items.items())))


async def test_listing_over_4mib_returns_every_key_at_one_revision(fresh_etcd: EtcdServer) -> None:
    calls: list[tuple[str, str]] = []
    store = store_for(fresh_etcd, observer=lambda op, result, _s: calls.append((op, result)))
    try:
        junk = {f"{SUBNETS}junk-{i}": os.urandom(MB) for i in range(5)}  # not even UTF-8
        valid = {f"{SUBNETS}10.5.{n}.0-24": lease_value(n) for n in (1, 2, 3)}
        head = await put_all(store, junk | valid, parallel=4)
        calls.clear()

        snap = await store.list_prefix(SUBNETS)

        assert [kv.key for kv in snap.kvs] == sorted(junk | valid)
        assert {kv.key: kv.value for kv in snap.kvs} == junk | valid
        assert all(isinstance(kv.value, bytes) for kv in snap.kvs)
        assert snap.revision == head
        assert all(kv.mod_revision <= snap.revision for kv in snap.kvs)
        assert calls and all(call == ("list", "ok") for call in calls)

        # What the daemon does at start-up: the valid leases come through, the junk is skipped.
        leases, _, revision = await SubnetManager(store, GO_PREFIX).list_leases()
        assert sorted(str(lease.subnet) for lease in leases) == [
            "10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"
        ]
        assert revision == head
    finally:
        await store.close()


async def test_paged_listing_is_one_snapshot_while_keys_are_written(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    prefix = etcd_prefix + "/subnets/"
    pages: list[str] = []
    first_page = asyncio.Event()

    def observe(op: str, result: str, _seconds: float) -> None:
        if op == "list":
            pages.append(result)
            first_page.set()

    store = store_for(etcd_server, observer=observe, list_page_keys=50)
    try:
        initial = {f"{prefix}k{i:05d}": f"v{i}".encode() for i in range(0, 5000, 2)}  # 2500 keys
        head = await put_all(writer, initial)
        written: list[tuple[str, int, int]] = []  # key, its revision, pages read when it landed
        listed = asyncio.Event()

        async def write_during_listing() -> None:
            await first_page.wait()
            # Keys that sort into pages not read yet (and one before everything).  A flag, not
            # only cancel(), stops it: asyncio.wait_for in 3.11 may swallow a cancellation.
            for n, i in enumerate(range(4999, 0, -2)):
                if listed.is_set():
                    return
                key = f"{prefix}k{i:05d}" if n % 10 else f"{prefix}a{n:05d}"
                written.append((key, await writer.put(key, b"new"), len(pages)))

        task = asyncio.create_task(write_during_listing())
        try:
            snap = await store.list_prefix(prefix)
            pages_read = len(pages)
        finally:
            listed.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        assert pages_read >= 50 and set(pages) == {"ok"}
        assert [kv.key for kv in snap.kvs] == sorted(initial)  # each once, in key order
        assert {kv.key: kv.value for kv in snap.kvs} == initial
        assert snap.revision == head  # the first page's revision (the writer waited for it)
        during = [w for w in written if w[2] < pages_read]
        assert len(during) >= 3, f"the writer did not overlap the listing: {written[:5]}"
        assert all(revision > snap.revision for _, revision, _ in written)

        # The new keys are really there and a fresh listing (a later revision) sees them.
        later = await store.list_prefix(prefix)
        assert {key for key, _, _ in written} <= {kv.key for kv in later.kvs}
        assert later.revision >= max(revision for _, revision, _ in written)
    finally:
        await store.close()


async def test_page_halves_until_it_fits_the_receive_limit(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    prefix = etcd_prefix + "/subnets/"
    results: list[str] = []
    store = store_for(
        etcd_server,
        observer=lambda op, result, _s: results.append(result) if op == "list" else None,
        max_receive_bytes=256 * 1024,
    )
    try:
        items = {f"{prefix}big-{i:03d}": os.urandom(20_000) for i in range(60)}  # 1.2 MB
        head = await put_all(writer, items)
        snap = await store.list_prefix(prefix)
        assert [kv.key for kv in snap.kvs] == sorted(items)
        assert {kv.key: kv.value for kv in snap.kvs} == items
        assert snap.revision == head
        # 500, 250, 125, 62, 31, 15 keys are too large for 256 KiB; then pages of 7 keys fit.
        assert results[:6] == ["error"] * 6
        assert results[6:] == ["ok"] * 9
    finally:
        await store.close()


async def test_a_single_value_over_the_receive_limit_is_a_clear_error(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    prefix = etcd_prefix + "/subnets/"
    store = store_for(etcd_server, max_receive_bytes=64 * 1024)
    try:
        await writer.put(prefix + "a-small", b"x")
        await writer.put(prefix + "b-huge", os.urandom(100_000))
        with pytest.raises(StoreUnavailableError, match=r"larger than .*65536"):
            await store.list_prefix(prefix)
    finally:
        await store.close()


async def test_page_size_one_reads_each_key_in_its_own_request(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    prefix = etcd_prefix + "/subnets/"
    calls: list[str] = []
    store = store_for(etcd_server, observer=lambda op, _r, _s: calls.append(op), list_page_keys=1)
    try:
        items = {f"{prefix}10.5.{n}.0-24": lease_value(n) for n in range(1, 6)}
        await put_all(writer, items)
        await writer.put(etcd_prefix + "/subnets", b"not under the prefix")  # the prefix's parent
        head = await writer.put(etcd_prefix + "/subnets0", b"sorts right after the range")
        snap = await store.list_prefix(prefix)
        assert [(kv.key, kv.value) for kv in snap.kvs] == sorted(items.items())
        assert snap.revision == head
        assert calls == ["list"] * 5
        assert (await store.list_prefix(etcd_prefix + "/nothing/")).kvs == ()
    finally:
        await store.close()


async def test_paged_listing_fails_over_to_the_next_endpoint(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    prefix = etcd_prefix + "/subnets/"
    results: list[str] = []
    store = EtcdStore(
        parse_endpoints(f"http://127.0.0.1:9,{etcd_server.endpoint}"),
        timeout=2,
        observer=lambda op, result, _s: results.append(result) if op == "list" else None,
        list_page_keys=2,
    )
    try:
        items = {f"{prefix}k{i}": b"v" for i in range(5)}
        head = await put_all(writer, items)
        snap = await store.list_prefix(prefix)
        assert [kv.key for kv in snap.kvs] == sorted(items) and snap.revision == head
        assert results == ["error", "ok", "ok", "ok"]  # the dead endpoint, then three pages
    finally:
        await store.close()


async def test_listing_restarts_when_its_revision_is_compacted(
    fresh_etcd: EtcdServer, etcd_prefix: str
) -> None:
    prefix = etcd_prefix + "/subnets/"
    pages: list[str] = []

    def observe(op: str, result: str, _seconds: float) -> None:
        pages.append(result)
        if len(pages) == 1:  # between the first and the second page: write, then compact
            out = etcdctl(fresh_etcd, "put", prefix + "k-new", "new", "-w", "json")
            etcdctl(fresh_etcd, "compaction", str(json.loads(out)["header"]["revision"]))

    store = store_for(fresh_etcd, observer=observe, list_page_keys=2)
    writer = store_for(fresh_etcd)
    try:
        items = {f"{prefix}k{i}": b"v" for i in range(6)}
        head = await put_all(writer, items)
        snap = await store.list_prefix(prefix)
        assert [kv.key for kv in snap.kvs] == sorted([*items, prefix + "k-new"])
        assert snap.revision == head + 1
        assert pages[:2] == ["ok", "error"]  # the second page hit the compaction
    finally:
        await asyncio.gather(store.close(), writer.close())


async def test_a_1_4_mb_value_arrives_intact_through_the_watch(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    prefix = etcd_prefix + "/subnets/"
    store = store_for(etcd_server)
    value = os.urandom(1_400_000)
    try:
        start = (await store.list_prefix(prefix)).revision + 1
        events = store.watch_prefix(prefix, start)
        try:
            assert await asyncio.wait_for(anext(events), 10) == []  # established
            revision = await writer.put(prefix + "10.5.1.0-24", value)
            batch = await asyncio.wait_for(anext(events), 10)
        finally:
            await events.aclose()
        assert [(e.kind, e.kv.key, e.kv.mod_revision) for e in batch] == [
            (EventKind.PUT, prefix + "10.5.1.0-24", revision)
        ]
        assert batch[0].kv.value == value
    finally:
        await store.close()


async def test_a_watch_catching_up_over_4mib_of_events_gets_them_all(
    etcd_server: EtcdServer, etcd_prefix: str, writer: EtcdStore
) -> None:
    """etcd sends the backlog of a watch that starts in the past in one response when it can."""
    prefix = etcd_prefix + "/subnets/"
    store = store_for(etcd_server)
    values = {f"{prefix}junk-{i}": os.urandom(1_400_000) for i in range(4)}  # 5.6 MB in all
    try:
        start = (await store.list_prefix(prefix)).revision + 1
        for key, value in values.items():
            await writer.put(key, value)
        got: dict[str, bytes] = {}
        events = store.watch_prefix(prefix, start)
        try:
            while len(got) < len(values):
                for event in await asyncio.wait_for(anext(events), 10):
                    got[event.kv.key] = event.kv.value
        finally:
            await events.aclose()
        assert got == values
    finally:
        await store.close()
