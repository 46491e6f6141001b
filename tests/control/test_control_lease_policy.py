"""Hostile etcd content: the lease policy, the lease book (first holder wins, late events),
aggregated rejection logs, the store's reachability bound, and defending our own lease.

Pure or on the in-memory store; the lab tests (tests/lab/test_lab_hostile.py) run the same
attacks against real daemons.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest
from polling import until

from flanneld.health import Readiness
from flanneld.lease import Lease, LeaseAttrs, subnets_prefix
from flanneld.lease_book import LeaseBook, LeaseEventKind
from flanneld.lease_policy import LeasePolicy, RejectReason, public_ip_problem
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
