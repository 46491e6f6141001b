"""The Kubernetes mode without a server: ``flanneld.kube_store`` (Node objects read as flannel's
etcd keys) and ``flanneld.kube_subnet_manager`` (acquire, the annotation patch, defend, the
node condition, the node's name) over a fake ``KubeClient`` that keeps nodes in memory and
plays a watch from a script; ``flannelctl --kube-subnet-mgr subnets`` over the same fake.  The
same against the real kube-apiserver: tests/kube/test_kube_daemon.py."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from flanneld import ctl
from flanneld.errors import ConfigError, StoreUnavailableError
from flanneld.kube_client import GoneError, KubeApiError, KubeUnavailableError, api_error
from flanneld.kube_store import NODE_LEASE_ID, Annotations, KubeStore, lease_value, node_kv
from flanneld.kube_subnet_manager import (
    KubeSubnetManager,
    NodeNotFoundError,
    PodCidrNotAssignedError,
    node_identity,
)
from flanneld.lease import LeaseAttrs, config_key, decode_lease_attrs, subnets_prefix
from flanneld.lease_book import LeaseBook, LeaseEventKind, lease_from_kv
from flanneld.lease_policy import LeasePolicy, Rejection, RejectReason
from flanneld.lease_watch import LeaseWatcher
from flanneld.netconfig import parse_network_config
from flanneld.store import CompactedError, WatchEvent
from flanneld.subnet_manager import LeaseLostError

pytestmark = pytest.mark.unit

ETCD_PREFIX = "/coreos.com/network"
SUBNETS = subnets_prefix(ETCD_PREFIX)
P = "flannel.alpha.coreos.com"
NAMES = Annotations()
MAC = "82:1f:1b:aa:bb:01"
NETCONF_TEXT = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
NETCONF = parse_network_config(b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
POLICY = LeasePolicy.build(IPv4Network("10.244.0.0/16"), 24)
ATTRS = LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan", json.dumps({"VNI": 1, "VtepMAC": MAC},
                                                                  separators=(",", ":")))


def go_annotations(ip: str, mac: str = MAC, **extra: str) -> dict[str, str]:
    return {f"{P}/backend-type": "vxlan",
            f"{P}/backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
            f"{P}/kube-subnet-manager": "true", f"{P}/public-ip": ip,
            **{f"{P}/{k.replace('_', '-')}": v for k, v in extra.items()}}


def node(name: str, cidr: str | None = None, annotations: dict[str, str] | None = None, *,
         rv: int = 1, cidrs: list[str] | None = None, created: str = "2026-01-01T00:00:00Z",
         status: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": str(rv), "creationTimestamp": created}
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {}
    if cidr:
        spec["podCIDR"] = cidr
    if cidrs is not None or cidr:
        spec["podCIDRs"] = cidrs if cidrs is not None else [cidr]
    return {"kind": "Node", "metadata": meta, "spec": spec, "status": status or {}}


def bookmark(rv: int) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"resourceVersion": str(rv)}}


# -- a fake KubeClient ----------------------------------------------------------------------------


class FakeWatch:
    def __init__(self, client: FakeClient, rv: str) -> None:
        self.client, self.rv = client, rv
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | BaseException | None] = asyncio.Queue()

    async def open(self) -> None:
        if self.client.open_error is not None:
            exc, self.client.open_error = self.client.open_error, None
            raise exc

    async def __aenter__(self) -> FakeWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.watches.remove(self)

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._events()

    async def _events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return  # the server ended the watch (its timeout)
            if isinstance(item, BaseException):
                raise item
            yield item


class FakeClient:
    """Nodes by name; ``watch_nodes`` records the resourceVersion of every watch opened."""

    def __init__(self, *nodes: dict[str, Any], rv: int = 10) -> None:
        self.nodes = {n["metadata"]["name"]: copy.deepcopy(n) for n in nodes}
        self.rv = rv
        self.watches: list[FakeWatch] = []
        self.watched_from: list[str] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.open_error: BaseException | None = None
        self.patch_error: BaseException | None = None
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.closed = False

    async def list_nodes(self, resource_version: str | None = None) -> tuple[list[dict[str, Any]], str]:
        return [copy.deepcopy(n) for n in self.nodes.values()], str(self.rv)

    async def get_node(self, name: str) -> dict[str, Any]:
        if name not in self.nodes:
            raise api_error(404, {"kind": "Status", "code": 404, "reason": "NotFound",
                                  "message": f'nodes "{name}" not found'},
                            verb="get", resource=f'nodes "{name}"')
        return copy.deepcopy(self.nodes[name])

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        if self.patch_error is not None:
            raise self.patch_error
        self.patches.append((name, copy.deepcopy(patch)))
        obj = self.nodes[name]
        ann = patch.get("metadata", {}).get("annotations")
        if ann:
            obj["metadata"].setdefault("annotations", {}).update(ann)
        if "status" in patch:
            obj["status"]["conditions"] = patch["status"]["conditions"]
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.pods[(namespace, name)]

    def watch_nodes(self, resource_version: str) -> FakeWatch:
        self.watched_from.append(resource_version)
        w = FakeWatch(self, resource_version)
        self.watches.append(w)
        return w

    async def close(self) -> None:
        self.closed = True

    def push(self, *items: tuple[str, dict[str, Any]] | BaseException | None) -> None:
        """Feed the open watch."""
        assert self.watches, "no watch open"
        for item in items:
            self.watches[-1].queue.put_nowait(item)


@pytest.fixture
def netconf_file(tmp_path: Path) -> Path:
    path = tmp_path / "net-conf.json"
    path.write_text(NETCONF_TEXT)
    return path


def remove(path: Path) -> None:
    path.unlink()


async def until(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the event loop run until ``check()`` holds (the fake has no events for it)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


def make_store(client: FakeClient, netconf_file: Path) -> KubeStore:
    return KubeStore(client, etcd_prefix=ETCD_PREFIX, net_config_path=str(netconf_file))  # type: ignore[arg-type]


class Stream:
    """A store's watch_prefix driven step by step."""

    def __init__(self, store: KubeStore, start_revision: int) -> None:
        self.gen = store.watch_prefix(SUBNETS, start_revision)

    async def next(self, timeout: float = 2.0) -> list[WatchEvent]:
        return await asyncio.wait_for(anext(self.gen), timeout)

    async def nothing(self) -> None:
        """No batch comes (the fake's events were all filtered out)."""
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._peek()), 0.05)

    async def _peek(self) -> None:
        self.pending = asyncio.ensure_future(anext(self.gen))
        await self.pending

    async def close(self) -> None:
        pending = getattr(self, "pending", None)
        if pending is not None:
            pending.cancel()
        await self.gen.aclose()


def kinds(batch: list[WatchEvent]) -> list[tuple[str, str]]:
    return [(e.kind.value, e.kv.key.removeprefix(SUBNETS)) for e in batch]


# -- the mapping: node -> key/value ---------------------------------------------------------------


def test_node_is_the_key_and_go_lease_json_etcd_would_hold() -> None:
    kv = node_kv(node("n1", "10.244.1.0/24", go_annotations("198.18.0.1"), rv=42,
                      created="2026-03-04T05:06:07Z"), ETCD_PREFIX, NAMES)
    assert kv is not None
    assert kv.key == f"{SUBNETS}10.244.1.0-24"
    assert json.loads(kv.value) == {"PublicIP": "198.18.0.1", "PublicIPv6": None, "BackendType": "vxlan",
                                    "BackendData": {"VNI": 1, "VtepMAC": MAC}}
    assert (kv.lease_id, kv.mod_revision, kv.create_revision) == (NODE_LEASE_ID, 42, 1772600767)
    lease = lease_from_kv(kv)
    assert lease.subnet == IPv4Network("10.244.1.0/24") and lease.attrs.public_ip == IPv4Address("198.18.0.1")
    assert lease.attrs.backend_data_obj() == {"VNI": 1, "VtepMAC": MAC}
    assert not isinstance(LeaseBook(POLICY).put(kv)[0].lease, Rejection)


def test_public_ip_overwrite_wins() -> None:
    ann = go_annotations("198.18.0.1", public_ip_overwrite="203.0.113.7")
    kv = node_kv(node("n1", "10.244.1.0/24", ann), ETCD_PREFIX, NAMES)
    assert kv is not None and decode_lease_attrs(kv.value).public_ip == IPv4Address("203.0.113.7")
    # An empty overwrite is no overwrite.
    ann[f"{P}/public-ip-overwrite"] = ""
    kv = node_kv(node("n1", "10.244.1.0/24", ann), ETCD_PREFIX, NAMES)
    assert kv is not None and decode_lease_attrs(kv.value).public_ip == IPv4Address("198.18.0.1")


def test_backend_data_that_is_not_json_is_a_string_the_lease_book_refuses() -> None:
    ann = go_annotations("198.18.0.1")
    ann[f"{P}/backend-data"] = '{"VNI":1,"VtepMAC":'  # cut short
    kv = node_kv(node("n1", "10.244.1.0/24", ann), ETCD_PREFIX, NAMES)
    assert kv is not None and json.loads(kv.value)["BackendData"] == '{"VNI":1,"VtepMAC":'
    book = LeaseBook(POLICY)
    assert book.put(kv) == []
    assert book.rejected[kv.key].reason is RejectReason.BAD_VALUE
    assert "BackendData: must be a JSON object" in book.rejected[kv.key].detail


def test_an_annotation_cannot_inject_other_lease_fields() -> None:
    ann = go_annotations("198.18.0.1")
    ann[f"{P}/backend-type"] = 'vxlan","PublicIP":"6.6.6.6'
    ann[f"{P}/backend-data"] = json.dumps({"VNI": 1, "VtepMAC": MAC, "PublicIP": "6.6.6.6"})
    kv = node_kv(node("n1", "10.244.1.0/24", ann), ETCD_PREFIX, NAMES)
    assert kv is not None
    obj = json.loads(kv.value)
    assert set(obj) == {"PublicIP", "PublicIPv6", "BackendType", "BackendData"}
    assert obj["PublicIP"] == "198.18.0.1" and obj["BackendType"] == 'vxlan","PublicIP":"6.6.6.6'
    assert decode_lease_attrs(kv.value).public_ip == IPv4Address("198.18.0.1")
    # A public-ip that is not an address is a lease the book refuses, not a crash.
    ann = go_annotations('1.2.3.4","BackendType":"host-gw')
    kv = node_kv(node("n1", "10.244.1.0/24", ann), ETCD_PREFIX, NAMES)
    assert kv is not None
    book = LeaseBook(POLICY)
    book.put(kv)
    assert book.rejected[kv.key].reason is RejectReason.BAD_VALUE


@pytest.mark.parametrize("obj", [
    node("n1", "10.244.1.0/24"),  # no metadata.annotations at all
    node("n1", "10.244.1.0/24", {}),
    node("n1", "10.244.1.0/24", {**go_annotations("198.18.0.1"), f"{P}/kube-subnet-manager": "false"}),
    node("n1", None, go_annotations("198.18.0.1")),  # no podCIDR yet
    node("n1", None, go_annotations("198.18.0.1"), cidrs=["fd00::/64"]),  # IPv6 only
    node("n1", None, go_annotations("198.18.0.1"), cidrs=["not-a-cidr"]),
    {"metadata": None, "spec": None},
    {},
], ids=["no-annotations", "empty", "not-managed", "no-podcidr", "ipv6-only", "bad-cidr", "nulls", "empty-obj"])
def test_not_a_flannel_peer(obj: dict[str, Any]) -> None:
    assert node_kv(obj, ETCD_PREFIX, NAMES) is None


def test_dual_stack_pod_cidrs_name_both_halves_and_pod_cidrs_wins() -> None:
    ann = {**go_annotations("198.18.0.1"), f"{P}/public-ipv6": "2001:db8::1",
           f"{P}/backend-v6-data": json.dumps({"VNI": 1, "VtepMAC": MAC})}
    obj = node("n1", "10.244.9.0/24", ann, cidrs=["bogus", "fd00:244:0:1::/64", "10.244.1.0/24"])
    kv = node_kv(obj, ETCD_PREFIX, NAMES)
    assert kv is not None and kv.key == f"{SUBNETS}10.244.1.0-24&fd00:244:0:1::-64"
    attrs = decode_lease_attrs(kv.value)
    assert attrs.public_ipv6 == IPv6Address("2001:db8::1") and attrs.backend_v6_data
    # lease_value itself: host-gw's "null" backend data is no BackendData (Go writes "null").
    value = lease_value({f"{P}/backend-type": "host-gw", f"{P}/backend-data": "null",
                         f"{P}/public-ip": "198.18.0.2"}, NAMES)
    assert json.loads(value) == {"PublicIP": "198.18.0.2", "PublicIPv6": None, "BackendType": "host-gw"}


# -- the store: listing ---------------------------------------------------------------------------


async def test_list_get_and_the_config_file(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24", go_annotations("198.18.0.1"), rv=3),
                        node("kubelet-only", "10.244.7.0/24", rv=4),
                        node("n2", "10.244.2.0/24", go_annotations("198.18.0.2"), rv=5), rv=9)
    store = make_store(client, netconf_file)
    snap = await store.list_prefix(SUBNETS)
    assert snap.revision == 9
    assert sorted(kv.key.removeprefix(SUBNETS) for kv in snap.kvs) == ["10.244.1.0-24", "10.244.2.0-24"]
    assert store.node_of == {f"{SUBNETS}10.244.1.0-24": "n1", f"{SUBNETS}10.244.2.0-24": "n2"}
    kv = await store.get(f"{SUBNETS}10.244.2.0-24")
    assert kv is not None and kv.mod_revision == 5
    assert await store.get(f"{SUBNETS}10.244.7.0-24") is None
    cfg = await store.get(config_key(ETCD_PREFIX))
    assert cfg is not None and cfg.value == NETCONF_TEXT.encode()
    assert (await store.list_prefix(ETCD_PREFIX)).kvs == (cfg,)
    remove(netconf_file)
    assert await store.get(config_key(ETCD_PREFIX)) is None
    with pytest.raises(StoreUnavailableError, match=r"written by each node"):
        await store.put(f"{SUBNETS}10.244.3.0-24", b"{}")
    # API errors are "store unavailable" (retried), their text kept.
    client.list_nodes = _raise(api_error(403, {"kind": "Status", "code": 403, "reason": "Forbidden",  # type: ignore[method-assign]
                                              "message": 'cannot list resource "nodes"'}, verb="list",
                                         resource="nodes"))
    with pytest.raises(StoreUnavailableError, match='cannot list resource "nodes"'):
        await store.list_prefix(SUBNETS)


def _raise(exc: BaseException) -> Any:
    async def fn(*args: Any, **kwargs: Any) -> Any:
        raise exc
    return fn


# -- the store: watching --------------------------------------------------------------------------


async def test_watch_maps_node_events_to_lease_events(netconf_file: Path) -> None:
    n1 = node("n1", "10.244.1.0/24", go_annotations("198.18.0.1"), rv=3)
    client = FakeClient(n1, rv=10)
    store = make_store(client, netconf_file)
    snap = await store.list_prefix(SUBNETS)
    s = Stream(store, snap.revision + 1)
    assert await s.next() == []  # established
    assert client.watched_from == ["10"]

    # kubelet's heartbeats: status and resourceVersion change, the lease does not.
    beat = copy.deepcopy(n1)
    beat["metadata"]["resourceVersion"] = "11"
    beat["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    client.push(("MODIFIED", beat))
    # A node that is not a flannel peer, added and changed.
    client.push(("ADDED", node("other", "10.244.8.0/24", rv=12)),
                ("MODIFIED", node("other", "10.244.8.0/24", {"x": "y"}, rv=13)))
    # An annotation of the lease changed: a PUT.
    client.push(("MODIFIED", node("n1", "10.244.1.0/24", go_annotations("198.18.0.1", "82:1f:1b:aa:bb:02"), rv=14)))
    batch = await s.next()
    assert kinds(batch) == [("put", "10.244.1.0-24")]
    assert batch[0].kv.mod_revision == 14
    assert json.loads(batch[0].kv.value)["BackendData"]["VtepMAC"] == "82:1f:1b:aa:bb:02"

    # The podCIDR moved (a node re-created under the same name): DELETE old + PUT new.
    client.push(("MODIFIED", node("n1", "10.244.5.0/24", go_annotations("198.18.0.1", "82:1f:1b:aa:bb:02"), rv=15)))
    assert kinds(await s.next()) == [("delete", "10.244.1.0-24"), ("put", "10.244.5.0-24")]
    # A node becomes a peer (annotated later), stops being one, then is deleted.
    client.push(("MODIFIED", node("other", "10.244.8.0/24", go_annotations("198.18.0.8"), rv=16)))
    assert kinds(await s.next()) == [("put", "10.244.8.0-24")]
    client.push(("MODIFIED", node("other", "10.244.8.0/24", {"x": "y"}, rv=17)))
    batch = await s.next()
    assert kinds(batch) == [("delete", "10.244.8.0-24")] and batch[0].kv.mod_revision == 17
    client.push(("DELETED", node("other", "10.244.8.0/24", {"x": "y"}, rv=18)))
    client.push(("DELETED", node("n1", "10.244.5.0/24", go_annotations("198.18.0.1"), rv=19)))
    batch = await s.next()
    assert kinds(batch) == [("delete", "10.244.5.0-24")] and batch[0].kv.mod_revision == 19
    await s.close()


async def test_bookmarks_advance_the_resume_revision(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24", go_annotations("198.18.0.1"), rv=3), rv=10)
    store = make_store(client, netconf_file)
    await store.list_prefix(SUBNETS)
    s = Stream(store, 11)
    assert await s.next() == []
    client.push(("BOOKMARK", bookmark(25)), None)  # then the server ends the watch (timeout)
    # The new watch goes on from the bookmark; the fake routes pushes to the newest watch, so
    # wait for the re-watch before feeding it.
    batch_task = asyncio.ensure_future(s.next())
    await until(lambda: len(client.watched_from) == 2)
    client.push(("ADDED", node("n2", "10.244.2.0/24", go_annotations("198.18.0.2"), rv=26)))
    assert kinds(await batch_task) == [("put", "10.244.2.0-24")]
    assert client.watched_from == ["10", "25"]
    # The watch breaks; a new watch_prefix from the watcher's (older) revision resumes from
    # the newest one the store saw, events or bookmarks.
    client.push(("BOOKMARK", bookmark(30)), KubeUnavailableError("watch nodes: stream broke"))
    with pytest.raises(StoreUnavailableError):
        await s.next()
    s2 = Stream(store, 27)
    assert await s2.next() == []
    assert client.watched_from[-1] == "30"
    await s2.close()


async def test_gone_is_compacted_and_a_watcher_relists(netconf_file: Path) -> None:
    n1 = node("n1", "10.244.1.0/24", go_annotations("198.18.0.1"), rv=3)
    client = FakeClient(n1, rv=10)
    store = make_store(client, netconf_file)
    # 410 on the watch request itself, and as a watch ERROR event.
    client.open_error = GoneError(410, "Expired", "too old resource version: 10 (20)")
    s = Stream(store, 11)
    with pytest.raises(CompactedError):
        await s.next()
    s = Stream(store, 11)
    assert await s.next() == []
    client.push(api_error(500, {"kind": "Status", "code": 410, "reason": "Expired",
                                "message": "too old resource version: 10 (20)"}, verb="watch", resource="nodes"))
    with pytest.raises(CompactedError):
        await s.next()

    # The lease watcher: 410 -> re-list and diff -> what changed meanwhile comes out, once,
    # and the watch goes on from the new listing's revision.
    class Manager:
        prefix = ETCD_PREFIX

        def __init__(self) -> None:
            self.store = store

        async def list_snapshot(self) -> Any:
            return await store.list_prefix(SUBNETS)

    snap = await store.list_prefix(SUBNETS)
    book = LeaseBook(POLICY)
    book.load(snap.kvs, snap.revision)
    resets: list[str] = []
    watcher = LeaseWatcher(Manager(), (), snap.revision, book=book, on_reset=resets.append)  # type: ignore[arg-type]
    events = watcher.events()
    first = asyncio.ensure_future(anext(events))
    await until(lambda: len(client.watches) == 1)
    # Meanwhile: n2 added, n1 deleted; the watch says 410.
    client.nodes["n2"] = node("n2", "10.244.2.0/24", go_annotations("198.18.0.2"), rv=21)
    del client.nodes["n1"]
    client.rv = 22
    client.push(GoneError(410, "Expired", "too old resource version"))
    got = await asyncio.wait_for(first, 2)
    assert sorted((e.kind.value, str(e.lease.subnet)) for e in got) == [
        ("added", "10.244.2.0/24"), ("removed", "10.244.1.0/24")]
    assert resets == ["compaction"]
    second = asyncio.ensure_future(anext(events))
    await until(lambda: client.watched_from[-1] == "22")
    client.push(("MODIFIED", node("n2", "10.244.2.0/24", go_annotations("198.18.0.2"), rv=23)))  # no change
    client.push(("ADDED", node("n3", "10.244.3.0/24", go_annotations("198.18.0.3"), rv=24)))
    got = await asyncio.wait_for(second, 2)
    assert [(e.kind, str(e.lease.subnet)) for e in got] == [(LeaseEventKind.ADDED, "10.244.3.0/24")]
    second.cancel()
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_listing_meanwhile_never_swallows_a_watch_event(netconf_file: Path) -> None:
    # The keeper's get() and the periodic resync list while the watch runs: the listing may
    # be ahead of the stream; the stream's event must still come out (the watch's view is its
    # own).
    client = FakeClient(node("n1", "10.244.1.0/24", go_annotations("198.18.0.1"), rv=3), rv=10)
    store = make_store(client, netconf_file)
    await store.list_prefix(SUBNETS)
    s = Stream(store, 11)
    assert await s.next() == []
    changed = node("n1", "10.244.1.0/24", go_annotations("198.18.0.9"), rv=12)
    client.nodes["n1"] = changed
    client.rv = 12
    assert await store.get(f"{SUBNETS}10.244.1.0-24") is not None
    await store.list_prefix(SUBNETS)
    client.push(("MODIFIED", changed))
    assert kinds(await s.next()) == [("put", "10.244.1.0-24")]
    await s.close()


async def test_a_watch_that_fails_or_ends_at_once_is_an_outage(netconf_file: Path) -> None:
    client = FakeClient(rv=10)
    store = make_store(client, netconf_file)
    await store.list_prefix(SUBNETS)
    # The apiserver is down: nothing is yielded (no "resumed" before a connection exists).
    client.open_error = KubeUnavailableError("watch nodes: apiserver unreachable: Connection refused")
    with pytest.raises(StoreUnavailableError, match="Connection refused"):
        await Stream(store, 11).next()
    # A 403 on the watch: unavailable, with the apiserver's words.
    client.open_error = KubeApiError(403, "Forbidden", 'cannot watch resource "nodes"')
    with pytest.raises(StoreUnavailableError, match='cannot watch resource "nodes"'):
        await Stream(store, 11).next()
    # A server that ends every watch at once: an outage (the watcher backs off), no hot loop.
    s = Stream(store, 11)
    assert await s.next() == []
    client.push(None)
    with pytest.raises(StoreUnavailableError, match="ended the watch at once"):
        await s.next()


async def test_observer_sees_list_watch_and_get(netconf_file: Path) -> None:
    seen: list[tuple[str, str]] = []
    client = FakeClient(rv=10)
    store = KubeStore(client, etcd_prefix=ETCD_PREFIX, net_config_path=str(netconf_file),  # type: ignore[arg-type]
                      observer=lambda op, result, seconds: seen.append((op, result)))
    await store.list_prefix(SUBNETS)
    await store.get(f"{SUBNETS}10.244.1.0-24")
    client.open_error = KubeUnavailableError("down")
    with pytest.raises(StoreUnavailableError):
        await Stream(store, 11).next()
    assert seen == [("list", "ok"), ("get", "ok"), ("watch", "error")]


# -- the subnet manager ---------------------------------------------------------------------------


def manager(client: FakeClient, netconf_file: Path, *, unavailable: bool = True) -> KubeSubnetManager:
    return KubeSubnetManager(make_store(client, netconf_file), "n1", prefix=ETCD_PREFIX,
                             set_network_unavailable=unavailable)


async def test_acquire_waits_for_a_pod_cidr_inside_the_network(netconf_file: Path) -> None:
    client = FakeClient(node("n1"))
    m = manager(client, netconf_file)
    with pytest.raises(PodCidrNotAssignedError, match=r"^node n1 pod cidr not assigned$"):
        await m.acquire(ATTRS, NETCONF)
    client.nodes["n1"] = node("n1", "10.99.1.0/24")
    with pytest.raises(PodCidrNotAssignedError, match=r"lies outside the Network 10.244.0.0/16"):
        await m.acquire(ATTRS, NETCONF)
    client.nodes["n1"] = node("n1", None, cidrs=["10.244.1.0/24", "fd00::/64", "10.244.2.0/24"])
    with pytest.raises(PodCidrNotAssignedError, match="IPv4/IPv6 only or dualstack"):
        await m.acquire(ATTRS, NETCONF)
    assert client.patches == []  # nothing was published
    del client.nodes["n1"]
    with pytest.raises(NodeNotFoundError, match="node n1 not found"):
        await m.acquire(ATTRS, NETCONF)


async def test_acquire_publishes_go_annotations_with_one_status_patch(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24"))  # no metadata.annotations at all
    m = manager(client, netconf_file)
    lease = await m.acquire(ATTRS, NETCONF)
    assert lease.subnet == IPv4Network("10.244.1.0/24") and lease.ipv6_subnet is None
    assert lease.expiration is None and lease.etcd_lease_id == NODE_LEASE_ID and lease.attrs == ATTRS
    assert client.patches == [("n1", {"metadata": {"annotations": {
        f"{P}/kube-subnet-manager": "true", f"{P}/backend-type": "vxlan",
        f"{P}/backend-data": f'{{"VNI":1,"VtepMAC":"{MAC}"}}', f"{P}/public-ip": "198.18.0.1"}}})]
    # What was published reads back as the same lease through the store.
    kv = node_kv(client.nodes["n1"], ETCD_PREFIX, NAMES)
    assert kv is not None and decode_lease_attrs(kv.value) == ATTRS
    # Again (a restart): the annotations are right already, nothing is patched.
    await m.acquire(ATTRS, NETCONF)
    assert len(client.patches) == 1
    # host-gw: backend-data "null", as Go writes it; only what differs is patched.
    await m.acquire(LeaseAttrs(IPv4Address("198.18.0.1"), "host-gw"), NETCONF)
    assert client.patches[-1][1] == {"metadata": {"annotations": {
        f"{P}/backend-type": "host-gw", f"{P}/backend-data": "null"}}}


async def test_acquire_public_ip_overwrite_and_dual_stack(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24", {f"{P}/public-ip-overwrite": "203.0.113.1"}))
    m = manager(client, netconf_file)
    lease = await m.acquire(ATTRS, NETCONF)
    assert lease.attrs.public_ip == IPv4Address("203.0.113.1")  # what the others see, as Go
    assert client.patches[-1][1]["metadata"]["annotations"][f"{P}/public-ip"] == "203.0.113.1"

    dual = parse_network_config(b'{"Network":"10.244.0.0/16","EnableIPv6":true,'
                                b'"IPv6Network":"fd00:244::/56","Backend":{"Type":"vxlan"}}')
    attrs6 = LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan", ATTRS.backend_data,
                        IPv6Address("2001:db8::1"), ATTRS.backend_data)
    client.nodes["n1"] = node("n1", "10.244.1.0/24")
    with pytest.raises(PodCidrNotAssignedError, match="IPv6 pod cidr not assigned"):
        await m.acquire(attrs6, dual)
    client.nodes["n1"] = node("n1", None, cidrs=["10.244.1.0/24", "fd00:999::/64"])
    with pytest.raises(PodCidrNotAssignedError, match="outside the IPv6Network fd00:244::/56"):
        await m.acquire(attrs6, dual)
    client.nodes["n1"] = node("n1", None, cidrs=["10.244.1.0/24", "fd00:244:0:1::/64"])
    lease = await m.acquire(attrs6, dual)
    assert lease.ipv6_subnet == IPv6Network("fd00:244:0:1::/64")
    ann = client.patches[-1][1]["metadata"]["annotations"]
    assert ann[f"{P}/public-ipv6"] == "2001:db8::1" and ann[f"{P}/backend-v6-data"] == ATTRS.backend_data
    kv = node_kv(client.nodes["n1"], ETCD_PREFIX, NAMES)
    assert kv is not None and kv.key == f"{SUBNETS}10.244.1.0-24&fd00:244:0:1::-64"


async def test_defend(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24"))
    m = manager(client, netconf_file)
    lease = await m.acquire(ATTRS, NETCONF)
    assert await m.defend(lease) == (lease, "intact")
    # Edited by hand: put back.
    client.nodes["n1"]["metadata"]["annotations"][f"{P}/backend-data"] = '{"VNI":1,"VtepMAC":"00:11:22:33:44:55"}'
    again, how = await m.defend(lease)
    assert (again, how) == (lease, "reasserted")
    assert client.patches[-1][1] == {"metadata": {"annotations": {f"{P}/backend-data": ATTRS.backend_data}}}
    # An overwrite added later is taken as our PublicIP (the lease we hold is what the
    # others see); removed again, our own address comes back.
    client.nodes["n1"]["metadata"]["annotations"][f"{P}/public-ip-overwrite"] = "203.0.113.1"
    moved, how = await m.defend(lease)
    assert moved.attrs.public_ip == IPv4Address("203.0.113.1") and how == "reasserted"
    del client.nodes["n1"]["metadata"]["annotations"][f"{P}/public-ip-overwrite"]
    back, _ = await m.defend(moved)
    assert back.attrs == ATTRS
    assert client.nodes["n1"]["metadata"]["annotations"][f"{P}/public-ip"] == "198.18.0.1"
    # Another podCIDR (the node was re-created), or no node at all: the lease is lost.
    client.nodes["n1"]["spec"] = {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]}
    with pytest.raises(LeaseLostError, match=r"pod cidr is now 10.244.9.0/24"):
        await m.defend(lease)
    del client.nodes["n1"]
    with pytest.raises(LeaseLostError, match="node n1 not found"):
        await m.defend(lease)
    assert await m.renew(lease) is lease


async def test_forbidden_patch_names_the_permission_and_is_reported(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24"))
    m = manager(client, netconf_file)
    reported: list[tuple[str, str | None]] = []
    m.report = lambda name, text: reported.append((name, text))
    message = ('nodes "n1" is forbidden: User "system:serviceaccount:kube-flannel:flannel" cannot '
               'patch resource "nodes/status" in API group "" at the cluster scope')
    client.patch_error = api_error(403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                                         "message": message}, verb="patch", resource='nodes/status "n1"')
    with pytest.raises(StoreUnavailableError) as err:
        await m.acquire(ATTRS, NETCONF)
    assert str(err.value) == f'patch nodes/status "n1": 403 Forbidden: {message}'
    assert reported[-1] == ("kube", f'Kubernetes API: patch nodes/status "n1": 403 Forbidden: {message}')
    client.patch_error = None
    await m.acquire(ATTRS, NETCONF)
    assert reported[-1] == ("kube", None)


async def test_datapath_ready_sets_network_unavailable_false_once(netconf_file: Path) -> None:
    client = FakeClient(node("n1", "10.244.1.0/24"))
    m = manager(client, netconf_file)
    await m.datapath_ready()
    await m.datapath_ready()
    [(name, patch)] = client.patches
    [cond] = patch["status"]["conditions"]
    assert name == "n1" and set(patch) == {"status"}
    assert {k: cond[k] for k in ("type", "status", "reason", "message")} == {
        "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
        "message": "Flannel is running on this node"}
    assert cond["lastTransitionTime"].endswith("Z") and cond["lastHeartbeatTime"] == cond["lastTransitionTime"]
    off = manager(client, netconf_file, unavailable=False)
    await off.datapath_ready()
    assert len(client.patches) == 1


async def test_network_config_is_the_file(netconf_file: Path) -> None:
    m = manager(FakeClient(), netconf_file)
    assert (await m.network_config()).network == IPv4Network("10.244.0.0/16")
    remove(netconf_file)
    with pytest.raises(Exception, match=r"no network config file at .*--net-config-path"):
        await m.network_config()


async def test_node_identity() -> None:
    client = FakeClient()
    assert await node_identity(client, {"NODE_NAME": "n7", "POD_NAME": "x"}) == "n7"  # type: ignore[arg-type]
    client.pods[("kube-flannel", "kube-flannel-ds-abcde")] = {"spec": {"nodeName": "n8"}}
    env = {"POD_NAME": "kube-flannel-ds-abcde", "POD_NAMESPACE": "kube-flannel"}
    assert await node_identity(client, env) == "n8"  # type: ignore[arg-type]
    client.pods[("kube-flannel", "unscheduled")] = {"spec": {}}
    with pytest.raises(ConfigError, match=r"has no spec.nodeName"):
        await node_identity(client, {"POD_NAME": "unscheduled", "POD_NAMESPACE": "kube-flannel"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="set NODE_NAME"):
        await node_identity(client, {"POD_NAME": "only-the-pod"})  # type: ignore[arg-type]


# -- flannelctl --kube-subnet-mgr -----------------------------------------------------------------


@pytest.fixture
def kube_store(netconf_file: Path) -> Iterator[KubeStore]:
    bad = go_annotations("198.18.0.3")
    bad[f"{P}/backend-data"] = "junk"
    client = FakeClient(node("n1", "10.244.1.0/24", go_annotations("198.18.0.1")),
                        node("n2", "10.244.2.0/24", go_annotations("198.18.0.2", public_ip_overwrite="198.18.0.22")),
                        node("n3", "10.244.3.0/24", bad), node("bare", "10.244.4.0/24"))
    yield make_store(client, netconf_file)


async def test_flannelctl_subnets_over_a_kube_store(kube_store: KubeStore,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rows = await ctl._subnet_rows(kube_store, ETCD_PREFIX)
    by_node = {r["node"]: r for r in rows}
    assert list(by_node) == ["n1", "n2", "n3"]
    assert by_node["n1"]["public_ip"] == "198.18.0.1" and by_node["n1"]["vtep_mac"] == MAC
    assert by_node["n2"]["public_ip"] == "198.18.0.22"
    assert (by_node["n1"]["reserved"], by_node["n1"]["expires_at"], by_node["n1"]["ttl_seconds"]) == (
        False, None, None)
    assert by_node["n3"]["rejected"] == "bad_value" and by_node["n1"]["rejected"] is None
    json.dumps(rows)
    ctl._print_table(rows)
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["SUBNET", "NODE", "PUBLIC"]
    assert lines[0].split()[:4] == ["10.244.1.0/24", "n1", "198.18.0.1", "vxlan"]
    assert lines[0].split()[-1] == "ok" and lines[0].split()[5:7] == ["-", "-"]  # EXPIRES, TTL
    assert "REJECTED bad_value" in lines[2]


def test_flannelctl_kube_mode_refuses_writes_and_reads_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_:
        ctl.main(["--kube-subnet-mgr", "subnets", "release", "10.244.1.0/24"])
    assert exit_.value.code == 2
    parser = ctl.build_parser()
    args = parser.parse_args(["--kube-subnet-mgr", "--kubeconfig-file", "/k", "--kube-api-url",
                              "https://10.0.0.1:6443", "subnets", "-o", "json"])
    kube = ctl.kube_settings(parser, args)
    assert kube is not None and (kube.kubeconfig_file, kube.kube_api_url) == ("/k", "https://10.0.0.1:6443")
    assert kube.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert ctl.kube_settings(parser, parser.parse_args(["subnets"])) is None
    monkeypatch.setenv("FLANNELD_KUBE_SUBNET_MGR", "true")
    monkeypatch.setenv("FLANNELD_NET_CONFIG_PATH", "/n.json")
    kube = ctl.kube_settings(parser, parser.parse_args(["subnets"]))
    assert kube is not None and kube.net_config_path == "/n.json"
