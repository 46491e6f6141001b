"""The Kubernetes API as a lease store: nodes' annotations read as flannel's etcd keys.

With ``--kube-subnet-mgr`` there is no etcd: each node's lease is its ``spec.podCIDR(s)`` and the
annotations its flanneld publishes (Go flannel's ``pkg/subnet/kube``):

    <prefix>/kube-subnet-manager   "true" (a node counts as a peer only with it and a podCIDR)
    <prefix>/backend-type          "vxlan"
    <prefix>/backend-data          '{"VNI":1,"VtepMAC":"..."}'
    <prefix>/public-ip             "198.18.0.2"   (<prefix>/public-ip-overwrite wins when set)
    <prefix>/public-ipv6           dual stack     (<prefix>/public-ipv6-overwrite wins)
    <prefix>/backend-v6-data       dual stack

``KubeStore`` shows every such node as the key/value etcd would hold for it
(``<etcd prefix>/subnets/10.244.1.0-24[&<v6>]`` -> Go's lease JSON), so the lease book, its
validation of hostile content, the watcher and everything downstream run unchanged: the subnet
manager is one more store behind the same interface.  The mapping:

- list: the node list (pages of 500); its ``resourceVersion`` is the revision; ``node_of``
  maps each key to its node's name (flannelctl shows it);
- watch: the node watch from that revision, bookmarks asked for; the request is answered
  before the first (empty) batch says "established", so an apiserver that is down never looks
  connected; a node event becomes a PUT or DELETE only when what the lease is made of changed
  (kubelet's status heartbeats change nothing here); a moved podCIDR is a DELETE of the old key
  and a PUT of the new; a 410 Gone is ``CompactedError`` (the watcher re-lists and diffs); a
  server that ends the watch (its timeout) is watched again from the last resourceVersion seen,
  bookmarks included (one that ends it at once, with nothing, counts as unavailable: no tight
  loop); what each node was last seen as is the watch's own view, based on the listing the
  watch starts from: a later listing (the periodic resync, ``get``) never changes it, since it
  may be ahead of the stream and would swallow the stream's events;
- requests are reported to the daemon's observer (``list``, ``get``, ``watch``: metrics and
  reachability, as for etcd);
- a key's mod revision is the node's resourceVersion at the change, its create revision the
  node's creation time (the same on every node: competing claims are ordered alike);
- ``<etcd prefix>/config`` is the net-conf.json file (``--net-config-path``), never changing.

Writes go through ``KubeSubnetManager`` (annotation patches of our own node), not here: the
store refuses them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from flanneld.errors import StoreUnavailableError
from flanneld.kube_client import GoneError, JsonObject, KubeApiError, KubeClient
from flanneld.lease import config_key, subnet_key, subnets_prefix
from flanneld.store import (
    CompactedError,
    EventKind,
    Grant,
    KeyValue,
    RequestObserver,
    Snapshot,
    WatchEvent,
)

log = logging.getLogger(__name__)

DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com"
# What a peer's lease "expires" at: node leases do not expire (a deleted Node is the end).
NEVER = 4102444800.0  # 2100-01-01
NODE_LEASE_ID = 1  # a nonzero etcd lease id: not a reservation


@dataclass(frozen=True)
class Annotations:
    """The annotation names under one prefix (``--kube-annotation-prefix``)."""

    prefix: str = DEFAULT_ANNOTATION_PREFIX

    @property
    def subnet_manager(self) -> str:
        return f"{self.prefix}/kube-subnet-manager"

    @property
    def backend_type(self) -> str:
        return f"{self.prefix}/backend-type"

    @property
    def backend_data(self) -> str:
        return f"{self.prefix}/backend-data"

    @property
    def backend_v6_data(self) -> str:
        return f"{self.prefix}/backend-v6-data"

    @property
    def public_ip(self) -> str:
        return f"{self.prefix}/public-ip"

    @property
    def public_ip_overwrite(self) -> str:
        return f"{self.prefix}/public-ip-overwrite"

    @property
    def public_ipv6(self) -> str:
        return f"{self.prefix}/public-ipv6"

    @property
    def public_ipv6_overwrite(self) -> str:
        return f"{self.prefix}/public-ipv6-overwrite"


def node_annotations(node: Mapping[str, Any]) -> dict[str, str]:
    """A node's annotations ({} when ``metadata.annotations`` is absent, as on a fresh Node:
    Go flannel v0.20.2 panicked there)."""
    meta = node.get("metadata") or {}
    raw = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}


def node_name(node: Mapping[str, Any]) -> str:
    meta = node.get("metadata") or {}
    return str(meta.get("name") or "") if isinstance(meta, Mapping) else ""


def pod_cidrs(node: Mapping[str, Any]) -> tuple[IPv4Network | None, IPv6Network | None]:
    """The node's IPv4 and IPv6 pod CIDRs (``spec.podCIDRs``, else ``spec.podCIDR``); an
    unparsable entry is skipped."""
    spec = node.get("spec") or {}
    if not isinstance(spec, Mapping):
        return None, None
    raw = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for text in raw if isinstance(raw, list) else []:
        try:
            net = ip_network(str(text), strict=False)
        except ValueError:
            continue
        if isinstance(net, IPv4Network) and v4 is None:
            v4 = net
        elif isinstance(net, IPv6Network) and v6 is None:
            v6 = net
    return v4, v6


def _data(text: str | None) -> Any:
    """Backend data as a JSON value (re-encoded, never spliced: an annotation cannot add
    fields to the lease); text that is not JSON stays a string (the lease book refuses the
    lease for what its backend needs)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def lease_value(annotations: Mapping[str, str], names: Annotations) -> bytes:
    """Go's lease JSON made of a node's annotations."""
    public_ip = annotations.get(names.public_ip_overwrite) or annotations.get(names.public_ip, "")
    public_ipv6 = (annotations.get(names.public_ipv6_overwrite)
                   or annotations.get(names.public_ipv6) or None)
    obj: dict[str, Any] = {"PublicIP": public_ip, "PublicIPv6": public_ipv6}
    btype = annotations.get(names.backend_type, "")
    if btype:
        obj["BackendType"] = btype
    data = _data(annotations.get(names.backend_data))
    if data is not None:
        obj["BackendData"] = data
    v6 = _data(annotations.get(names.backend_v6_data))
    if v6 is not None:
        obj["BackendV6Data"] = v6
    return json.dumps(obj, separators=(",", ":")).encode()


def _created(node: Mapping[str, Any]) -> int:
    meta = node.get("metadata") or {}
    stamp = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _revision(node: Mapping[str, Any]) -> int:
    meta = node.get("metadata") or {}
    try:
        return int(str(meta.get("resourceVersion") or 0)) if isinstance(meta, Mapping) else 0
    except ValueError:
        return 0


def node_kv(node: Mapping[str, Any], etcd_prefix: str, names: Annotations) -> KeyValue | None:
    """The key/value etcd would hold for the node's lease; None: not a flannel peer (no
    ``kube-subnet-manager: "true"`` or no IPv4 podCIDR)."""
    annotations = node_annotations(node)
    if annotations.get(names.subnet_manager) != "true":
        return None
    v4, v6 = pod_cidrs(node)
    if v4 is None:
        return None
    key = subnets_prefix(etcd_prefix) + subnet_key(v4, v6)
    return KeyValue(key, lease_value(annotations, names), NODE_LEASE_ID, _revision(node),
                    _created(node))


class KubeStore:
    """``LeaseStore`` over the Kubernetes API (see the module docstring)."""

    # A watch the server ends sooner than this without a single event is not a normal end
    # (that comes after timeoutSeconds): it is reported as an outage, so the watcher's backoff
    # applies instead of a tight re-watch loop.
    MIN_WATCH_SECONDS = 1.0

    def __init__(self, client: KubeClient, *, etcd_prefix: str, net_config_path: str,
                 annotation_prefix: str = DEFAULT_ANNOTATION_PREFIX,
                 observer: RequestObserver | None = None) -> None:
        self.client = client
        self.etcd_prefix = etcd_prefix
        self.net_config_path = net_config_path
        self.names = Annotations(annotation_prefix)
        self._observer = observer or (lambda op, result, seconds: None)
        # The watch's view: what each flannel node was last seen as by the watch (name -> its
        # key/value), so that a node event is a lease event only when the lease changed.  It
        # is the watch's alone: a listing (a resync, ``get``) never changes it, since the
        # listing may be ahead of the stream and would swallow the stream's events.
        self._seen: dict[str, KeyValue] = {}
        self._resume: int = 0  # the newest resourceVersion the watch saw (events, bookmarks)
        # The last listing (its resourceVersion and nodes): the base of a watch started from
        # exactly that revision (at start-up, and after a 410).
        self._listed: tuple[int, dict[str, KeyValue]] | None = None
        # key -> node name, from the last listing (flannelctl shows it).
        self.node_of: dict[str, str] = {}

    def observe(self, op: str, result: str, started: float) -> None:
        """Report one request to the daemon (metrics, reachability)."""
        self._observer(op, result, time.monotonic() - started)

    # -- reading ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        if key == config_key(self.etcd_prefix):
            return self._config()
        _, nodes = await self._list("get")
        return next((kv for kv in nodes.values() if kv.key == key), None)

    def _config(self) -> KeyValue | None:
        try:
            raw = Path(self.net_config_path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailableError(f"--net-config-path {self.net_config_path}: "
                                        f"{exc.strerror or exc}") from None
        return KeyValue(config_key(self.etcd_prefix), raw, 0, 1, 1)

    async def _list(self, op: str) -> tuple[int, dict[str, KeyValue]]:
        """Every flannel node's key/value by node name, and the list's resourceVersion."""
        started = time.monotonic()
        try:
            nodes, rv = await self.client.list_nodes()
        except KubeApiError as exc:
            self.observe(op, "error", started)
            raise _unavailable(exc) from None
        except StoreUnavailableError:
            self.observe(op, "error", started)
            raise
        self.observe(op, "ok", started)
        out: dict[str, KeyValue] = {}
        for node in nodes:
            kv = node_kv(node, self.etcd_prefix, self.names)
            if kv is not None:
                out[node_name(node)] = kv
        return (int(rv) if rv.isdigit() else 0), out

    async def list_prefix(self, prefix: str) -> Snapshot:
        if prefix != subnets_prefix(self.etcd_prefix):
            if config_key(self.etcd_prefix).startswith(prefix):
                kv = self._config()
                return Snapshot((kv,) if kv else (), 1)
            return Snapshot((), 1)
        revision, nodes = await self._list("list")
        self._listed = (revision, nodes)
        self.node_of = {kv.key: name for name, kv in nodes.items()}
        return Snapshot(tuple(nodes.values()), revision)

    # -- watching --------------------------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int,
                           ) -> AsyncIterator[list[WatchEvent]]:
        if prefix != subnets_prefix(self.etcd_prefix):
            # The config file does not change under a running daemon (as in Go's kube mode).
            yield []
            await asyncio.Event().wait()
            return
        base = start_revision - 1
        listed = self._listed
        if listed is not None and listed[0] == base and base >= self._resume:
            # Watching from a listing (start-up, after a 410): the listing is the base.
            self._seen = dict(listed[1])
            rv = base
        else:
            # Resuming a broken watch: from what the watch saw last (bookmarks included).
            rv = max(base, self._resume)
        established = False
        while True:
            started = time.monotonic()
            events = 0
            try:
                async with self.client.watch_nodes(str(rv)) as stream:
                    await stream.open()
                    self.observe("watch", "ok", started)
                    if not established:
                        established = True
                        yield []
                    async for type_, node in stream:
                        events += 1
                        rv = max(rv, _revision(node))
                        self._resume = rv
                        if type_ == "BOOKMARK":
                            continue
                        batch = self._node_event(type_, node)
                        if batch:
                            yield batch
            except GoneError as exc:
                self.observe("watch", "error", started)
                raise ResourceVersionExpiredError(exc) from exc
            except KubeApiError as exc:
                self.observe("watch", "error", started)
                raise _unavailable(exc) from None
            except StoreUnavailableError:
                self.observe("watch", "error", started)
                raise
            if not events and time.monotonic() - started < self.MIN_WATCH_SECONDS:
                raise StoreUnavailableError("watch nodes: the apiserver ended the watch at once")
            # The server ended the watch (its timeout): watch again from where it was.

    def _node_event(self, type_: str, node: JsonObject) -> list[WatchEvent]:
        name = node_name(node)
        old = self._seen.get(name)
        new = None if type_ == "DELETED" else node_kv(node, self.etcd_prefix, self.names)
        if new is None:
            self._seen.pop(name, None)
        else:
            self._seen[name] = new
        revision = _revision(node)
        events: list[WatchEvent] = []
        if old is not None and (new is None or new.key != old.key):
            events.append(WatchEvent(EventKind.DELETE, KeyValue(old.key, b"", 0, revision)))
        if new is not None and (old is None or (old.key, old.value) != (new.key, new.value)):
            events.append(WatchEvent(EventKind.PUT, new))
        return events

    # -- what etcd has and the Kubernetes API does not ----------------------------------------

    async def grant(self, ttl: int) -> Grant:
        return Grant(NODE_LEASE_ID, NEVER)

    async def revoke(self, lease_id: int) -> None:
        return None

    async def time_to_live(self, lease_id: int) -> int:
        return -1 if lease_id != NODE_LEASE_ID else 0x7FFFFFFF

    async def create(self, key: str, value: bytes, lease_id: int) -> int | None:
        raise _read_only(key)

    async def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        raise _read_only(key)

    async def update(self, key: str, value: bytes, lease_id: int, mod_revision: int) -> int | None:
        raise _read_only(key)

    async def delete(self, key: str) -> bool:
        raise _read_only(key)

    async def close(self) -> None:
        await self.client.close()


class ResourceVersionExpiredError(CompactedError):
    """A 410 Gone on the node watch: etcd's compaction, as the lease watcher knows it (it
    re-lists and diffs), with the apiserver's words."""

    def __init__(self, gone: GoneError) -> None:
        super().__init__(0)
        Exception.__init__(self, f"resourceVersion expired ({gone.message or gone.reason}: 410)")


def _read_only(key: str) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"{key}: in Kubernetes mode leases are node annotations, written by each node's "
        "flanneld (nothing to write here)")


def _unavailable(exc: KubeApiError) -> StoreUnavailableError:
    """An API error as the daemon's "store unavailable" (retried with backoff), its text
    kept (a 403 names the missing permission)."""
    return StoreUnavailableError(str(exc))
