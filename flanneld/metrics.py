"""Prometheus metrics of the daemon, on a registry of its own.

Go flannel exports no metrics at all; an operator of ours should see what the fabric does.
Everything lives on a dedicated ``CollectorRegistry`` (never the process-global one), so two
daemons in one test process, or a test and the daemon, never see each other's series.

Naming follows Prometheus conventions: one ``flannel_`` prefix (beside prometheus_client's
standard ``process_*`` and ``python_*`` collectors), base units (seconds, bytes),
``_total`` counters, and labels whose values come from small closed sets. A label value outside
its set is folded into ``other`` instead of growing the series count without bound. Per-peer
series (one per remote subnet) only exist when the daemon enables them (``per_peer=True``).

Forwarded traffic and drops are not incremented per packet through prometheus-client (its lock
is too slow for the udp hot path). They are read at scrape time from *forwarding sources*:
callables the backends register that return :class:`TrafficSample` / :class:`DropSample`
values (kernel counters of the fabric device for vxlan and host-gw, the userspace datapath's own
counters for udp). Userspace drops may also be counted with :meth:`Metrics.packets_dropped`,
which is a plain dict increment.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from flanneld import __version__
from flanneld.store import STORE_OPS

if TYPE_CHECKING:
    from flanneld.netconfig import NetworkConfig
    from flanneld.netops import Outcome

# The ``*_created`` gauges double the exposition size and no dashboard of ours reads them.
# (A process-wide switch of prometheus-client; this module owns the daemon's metrics.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Closed label value sets: anything else becomes "other".
ETCD_OPS = frozenset(STORE_OPS)  # the names the stores use, from one place
ETCD_RESULTS = frozenset({"ok", "error", "timeout"})
LEASE_EVENTS = frozenset({"acquire", "renew", "lose", "reacquire", "release", "conflict"})
FILES = frozenset({"subnet_env", "docker_opts", "cni_conf"})
WATCH_RESET_REASONS = frozenset({"compaction", "reconnect"})
RECONCILE_KINDS = frozenset({"full", "incremental"})
FAMILIES = frozenset({"ipv4", "ipv6"})
NETLINK_KINDS = frozenset({"route", "neigh", "fdb", "link", "address", "masq_rules"})
NETLINK_RESULTS = frozenset({"ok", "exists", "missing", "error"})
# Outcome results of flanneld.netops as NETLINK_RESULTS values.
_NETLINK_RESULT_LABELS = {"ok": "ok", "already_present": "exists", "already_gone": "missing",
                          "failed": "error"}


def netlink_labels(op_kind: str, result: str) -> tuple[str, str]:
    """(kind, result) labels of an outcome: ``route_replace`` and ``unreachable_replace`` ->
    route, ``addr_delete`` -> address, ``link_create`` -> link; ``already_present`` ->
    exists, ..."""
    kind = op_kind.split("_")[0]
    kind = {"addr": "address", "unreachable": "route"}.get(kind, kind)
    return kind, _NETLINK_RESULT_LABELS.get(result, "error")


DRIFT_KINDS = frozenset({"route", "neigh", "fdb", "link", "address", "masq_rules"})
DROP_REASONS = frozenset(
    {
        "no_route",
        "ttl_exceeded",
        "malformed",
        "unknown_peer",
        "queue_full",
        "send_error",
        "kernel_rx",
        "kernel_tx",
        "not_local",
        "too_big",
        "tun_write_error",
        "inner_source_not_peer",
    }
)
DIRECTIONS = ("rx", "tx")

Direction = Literal["rx", "tx"]

# Bucket boundaries in seconds. etcd calls are ~1-10 ms on a healthy cluster, seconds when sick.
ETCD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class TrafficSample:
    """Cumulative forwarded traffic in one direction.

    ``peer=None``: the whole fabric (e.g. the kernel counters of flannel.1 or flannel0);
    these samples are summed into ``flannel_forwarded_{packets,bytes}_total``.
    ``peer="10.244.3.0/24"`` (the remote subnet): a per-peer breakdown, exported only when
    per-peer series are enabled, in ``flannel_peer_forwarded_{packets,bytes}_total``.
    ``tx`` is node -> fabric (encapsulated towards peers), ``rx`` is fabric -> node.
    """

    direction: Direction
    packets: int
    bytes: int
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class DropSample:
    """Cumulative dropped packets for one reason (a value of ``DROP_REASONS``)."""

    reason: str
    packets: int


ForwardingSource = Callable[[], Iterable[TrafficSample | DropSample]]


def subnet_pool_usage(config: NetworkConfig, subnets: Iterable[IPv4Network]) -> tuple[int, int]:
    """(leased, total) for :meth:`Metrics.set_subnet_pool`: how many distinct ``subnets`` lie
    in the pool (SubnetLen blocks of Network between SubnetMin and SubnetMax), and its size.

    Pass the subnet of every key under ``subnets/`` the daemon knows (accepted leases, its own,
    reservations, and rejected keys whose name parses): the allocator counts them all as taken.
    """
    leased = {s for s in subnets if config.contains_subnet(s)}
    return len(leased), config.subnet_count


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


def _classify_error(exc: BaseException) -> str:
    """Map an exception from an etcd call to a bounded result label."""
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return "timeout"
    return "error"


class _ForwardingCollector(Collector):
    """Reads forwarding sources at scrape time and emits traffic and drop counters."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[CounterMetricFamily]:
        # Names only, so the registry can detect clashes without calling the sources.
        yield CounterMetricFamily("flannel_forwarded_packets", "", labels=["direction"])
        yield CounterMetricFamily("flannel_forwarded_bytes", "", labels=["direction"])
        yield CounterMetricFamily("flannel_dropped_packets", "", labels=["reason"])
        yield CounterMetricFamily("flannel_metrics_source_errors", "")
        if self._owner.per_peer:
            yield CounterMetricFamily("flannel_peer_forwarded_packets", "", labels=["peer", "direction"])
            yield CounterMetricFamily("flannel_peer_forwarded_bytes", "", labels=["peer", "direction"])

    def collect(self) -> Iterable[CounterMetricFamily]:
        owner = self._owner
        packets: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        octets: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        drops: dict[str, int] = defaultdict(int, owner._userspace_drops)
        peer_packets: dict[tuple[str, str], int] = defaultdict(int)
        peer_octets: dict[tuple[str, str], int] = defaultdict(int)
        for source in list(owner._sources):
            try:
                samples = list(source())
            except Exception:  # a broken source must not break the whole scrape
                owner._source_errors += 1
                continue
            for s in samples:
                if isinstance(s, DropSample):
                    drops[_bounded(s.reason, DROP_REASONS)] += s.packets
                elif s.direction not in DIRECTIONS:
                    continue
                elif s.peer is None:
                    packets[s.direction] += s.packets
                    octets[s.direction] += s.bytes
                elif owner.per_peer:
                    peer_packets[(s.peer, s.direction)] += s.packets
                    peer_octets[(s.peer, s.direction)] += s.bytes

        fp = CounterMetricFamily(
            "flannel_forwarded_packets",
            "Packets forwarded through the fabric device, by direction (tx: to peers).",
            labels=["direction"],
        )
        fb = CounterMetricFamily(
            "flannel_forwarded_bytes",
            "Bytes forwarded through the fabric device, by direction (tx: to peers).",
            labels=["direction"],
        )
        for d in DIRECTIONS:
            fp.add_metric([d], packets[d])
            fb.add_metric([d], octets[d])
        yield fp
        yield fb

        dp = CounterMetricFamily(
            "flannel_dropped_packets",
            "Packets dropped by the datapath, by reason.",
            labels=["reason"],
        )
        for reason in sorted(drops):
            dp.add_metric([reason], drops[reason])
        yield dp
        yield CounterMetricFamily(
            "flannel_metrics_source_errors",
            "Forwarding counter sources that raised while being scraped.",
            value=owner._source_errors,
        )

        if owner.per_peer:
            pp = CounterMetricFamily(
                "flannel_peer_forwarded_packets",
                "Packets forwarded per peer subnet, by direction (only with per-peer metrics).",
                labels=["peer", "direction"],
            )
            pb = CounterMetricFamily(
                "flannel_peer_forwarded_bytes",
                "Bytes forwarded per peer subnet, by direction (only with per-peer metrics).",
                labels=["peer", "direction"],
            )
            for key in sorted(peer_packets):
                pp.add_metric(list(key), peer_packets[key])
                pb.add_metric(list(key), peer_octets[key])
            yield pp
            yield pb


class Metrics:
    """All metrics of one daemon. Create one per daemon; call the helpers from the event loop.

    >>> m = Metrics(backend="vxlan")
    >>> with m.etcd_request("put"):
    ...     pass
    >>> b"flannel_etcd_requests_total" in m.render()
    True
    """

    content_type: str = CONTENT_TYPE_LATEST

    def __init__(
        self,
        backend: str,
        *,
        version: str = __version__,
        per_peer: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.backend = backend
        self.per_peer = per_peer
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._sources: list[ForwardingSource] = []
        self._userspace_drops: dict[str, int] = defaultdict(int)
        self._source_errors = 0

        self._build = Info("flannel_build", "Build information of the running daemon.", registry=r)
        self._version = version
        self._build.info({"version": version, "backend": backend})

        self._ready = Gauge(
            "flannel_ready",
            "1 when the node is ready (lease held, backend programmed, subnet.env written).",
            registry=r,
        )
        self._lease_expiry = Gauge(
            "flannel_lease_expiry_timestamp_seconds",
            "Unix time at which the own subnet lease expires (0: no lease held).",
            registry=r,
        )
        self._lease_events = Counter(
            "flannel_lease_events",
            "Subnet lease events (acquire, renew, lose, reacquire, release) by result.",
            ["event", "result"],
            registry=r,
        )
        self._etcd_requests = Counter(
            "flannel_etcd_requests",
            "Requests to etcd by operation and result (ok, error, timeout).",
            ["op", "result"],
            registry=r,
        )
        self._etcd_duration = Histogram(
            "flannel_etcd_request_duration_seconds",
            "Latency of requests to etcd by operation.",
            ["op"],
            buckets=ETCD_BUCKETS,
            registry=r,
        )
        self._watch_resets = Counter(
            "flannel_watch_resets",
            "Restarts of the subnet watch: one per etcd outage or compaction "
            "(reason: reconnect, compaction).",
            ["reason"],
            registry=r,
        )
        self._peers = Gauge("flannel_peers", "Remote subnet leases currently programmed.", registry=r)
        self._peer_subnets = Gauge(
            "flannel_peers_by_family",
            "Peers programmed, by address family (a dual-stack peer counts in both; "
            "flannel_peers counts it once).", ["family"], registry=r)
        self._reconcile = Histogram(
            "flannel_reconcile_duration_seconds",
            "Duration of a reconcile pass of the backend, by kind (full, incremental).",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self._netlink_ops = Counter(
            "flannel_netlink_operations",
            "Netlink operations by object kind and result.",
            ["kind", "result"],
            registry=r,
        )
        self._drift = Counter(
            "flannel_drift_repairs",
            "Kernel objects found missing or changed and repaired by a periodic pass, by kind.",
            ["kind"],
            registry=r,
        )
        self._rejected = Gauge(
            "flannel_leases_rejected",
            "Keys under subnets/ not used right now, by reason (outside_network, bad_value, ...).",
            ["reason"],
            registry=r,
        )
        self._rejections = Counter(
            "flannel_lease_rejections",
            "Keys under subnets/ rejected, by reason (each rejected write counts once).",
            ["reason"],
            registry=r,
        )
        self._file_ok = Gauge(
            "flannel_file_written",
            "1 when the file (subnet_env, docker_opts, cni_conf) holds the current lease, "
            "0 while writing it fails.",
            ["file"],
            registry=r,
        )
        self._file_failures = Counter(
            "flannel_file_write_failures",
            "Failed attempts to write a state file, by file.",
            ["file"],
            registry=r,
        )
        self._etcd_reachable = Gauge(
            "flannel_etcd_reachable",
            "0 while every etcd request fails (the store is unreachable), else 1.",
            registry=r,
        )
        self._etcd_reachable.set(1)
        self._lease_info = Gauge(
            "flannel_lease_info",
            "1 for the node's own subnet lease (only the current one has a series).",
            ["subnet", "public_ip", "backend"],
            registry=r,
        )
        self._lease_labels: tuple[str, str, str] | None = None
        self._subnets_leased = Gauge(
            "flannel_subnets_leased",
            "Subnets between SubnetMin and SubnetMax held by a key under subnets/ (any node).",
            registry=r,
        )
        self._subnets_total = Gauge(
            "flannel_subnets_capacity",
            "Subnets between SubnetMin and SubnetMax (the pool leases are taken from).",
            registry=r,
        )
        # process_* (CPU, memory, fds, start time) and python_* (gc, version), collected at
        # scrape time from /proc/self and the gc module: about 0.1 ms per scrape (measured).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # Pre-create the common series so that rate() works from the first scrape and
        # dashboards show 0 instead of "no data".
        for ev in ("acquire", "renew", "lose"):
            for res in ("ok", "error"):
                self._lease_events.labels(ev, res)
        for reason in sorted(WATCH_RESET_REASONS):
            self._watch_resets.labels(reason)
        self._ready.set(0)
        self._lease_expiry.set(0)
        self._peers.set(0)
        r.register(_ForwardingCollector(self))

    # ---- lease -------------------------------------------------------------------------
    def lease_event(self, event: str, ok: bool) -> None:
        """Count a lease event: ``acquire``, ``renew``, ``lose``, ``reacquire`` or ``release``."""
        self._lease_events.labels(_bounded(event, LEASE_EVENTS), "ok" if ok else "error").inc()

    def set_lease_expiry(self, timestamp: float | None) -> None:
        """Unix time the own lease expires; ``None`` (or 0) while no lease is held."""
        self._lease_expiry.set(timestamp or 0)

    def set_lease_info(self, subnet: str, public_ip: str, backend: str) -> None:
        """``flannel_lease_info{subnet, public_ip, backend} 1`` for the lease held now; the
        series of a previous lease is removed (e.g. ``"10.244.1.0/24", "198.18.0.1", "vxlan"``)."""
        labels = (str(subnet), str(public_ip), str(backend))
        if self._lease_labels != labels:
            self._lease_info.clear()
            self._lease_info.labels(*labels).set(1)
            self._lease_labels = labels

    def clear_lease_info(self) -> None:
        """No lease held (released at shutdown, or lost and not yet re-acquired)."""
        self._lease_info.clear()
        self._lease_labels = None

    def set_subnet_pool(self, leased: int, total: int) -> None:
        """Pool usage: subnets of SubnetMin..SubnetMax leased (by any node) and in all.

        See :func:`subnet_pool_usage`.
        """
        if leased < 0 or total < 0:
            raise ValueError(f"subnet pool: leased={leased}, total={total} must be >= 0")
        self._subnets_leased.set(leased)
        self._subnets_total.set(total)

    def set_backend(self, backend: str) -> None:
        """Update build info once the backend type is known (read from the network config)."""
        self.backend = backend
        self._build.info({"version": self._version, "backend": backend})

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    # ---- etcd --------------------------------------------------------------------------
    @contextlib.contextmanager
    def etcd_request(self, op: str) -> Iterator[None]:
        """Time and count one etcd request; an exception counts as error/timeout and propagates.

        Works around ``await`` too: ``with m.etcd_request("get"): await client.get(key)``.
        """
        op = _bounded(op, ETCD_OPS)
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:  # cancellation (BaseException) is not a request outcome
            self._etcd_requests.labels(op, _classify_error(exc)).inc()
            self._etcd_duration.labels(op).observe(time.perf_counter() - start)
            raise
        self._etcd_requests.labels(op, "ok").inc()
        self._etcd_duration.labels(op).observe(time.perf_counter() - start)

    def etcd_result(self, op: str, result: str, duration: float) -> None:
        """Record an etcd request measured elsewhere (result: ok, error or timeout)."""
        op = _bounded(op, ETCD_OPS)
        self._etcd_requests.labels(op, _bounded(result, ETCD_RESULTS)).inc()
        self._etcd_duration.labels(op).observe(duration)

    def watch_reset(self, reason: str) -> None:
        """Count a watch restart: ``compaction`` or ``reconnect``."""
        self._watch_resets.labels(_bounded(reason, WATCH_RESET_REASONS)).inc()

    def set_etcd_reachable(self, reachable: bool) -> None:
        self._etcd_reachable.set(1 if reachable else 0)

    # ---- lease book --------------------------------------------------------------------
    def set_rejected(self, counts: Mapping[str, int], reasons: Iterable[str]) -> None:
        """Rejected keys right now by reason; every reason in ``reasons`` gets a series."""
        for reason in reasons:
            self._rejected.labels(reason).set(counts.get(reason, 0))

    def lease_rejected(self, reason: str) -> None:
        self._rejections.labels(reason).inc()

    # ---- files -------------------------------------------------------------------------
    def file_written(self, file: str, ok: bool) -> None:
        """State of a state file: ``ok`` False counts a failed attempt."""
        name = _bounded(file, FILES)
        self._file_ok.labels(name).set(1 if ok else 0)
        if not ok:
            self._file_failures.labels(name).inc()

    # ---- backend -----------------------------------------------------------------------
    def set_peers(self, count: int, by_family: Mapping[str, int] | None = None) -> None:
        """``by_family``: {"ipv4": n, "ipv6": m} (families of the node's networks)."""
        self._peers.set(count)
        for family, n in (by_family or {}).items():
            self._peer_subnets.labels(_bounded(family, FAMILIES)).set(n)

    @contextlib.contextmanager
    def reconcile(self, kind: str) -> Iterator[None]:
        """Time one reconcile pass: ``with m.reconcile("full"): ...`` (``full``/``incremental``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._reconcile.labels(_bounded(kind, RECONCILE_KINDS)).observe(time.perf_counter() - start)

    def netlink_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        """Count applied netlink operations by kind and result (``netlink_labels``)."""
        self.netlink_ops(netlink_labels(o.kind, o.result) for o in outcomes)

    def netlink_ops(self, outcomes: Iterable[tuple[str, str]]) -> None:
        """Count netlink operations, given as ``(kind, result)`` pairs.

        kind: route, neigh, fdb, link, address, masq_rules; result: ok, exists, missing, error.
        """
        tally: dict[tuple[str, str], int] = defaultdict(int)
        for kind, result in outcomes:
            tally[(_bounded(kind, NETLINK_KINDS), _bounded(result, NETLINK_RESULTS))] += 1
        for (kind, result), n in tally.items():
            self._netlink_ops.labels(kind, result).inc(n)

    def drift_repaired(self, count: int = 1, kind: str = "route") -> None:
        """Count kernel objects a periodic pass found missing/changed and put back."""
        if count > 0:
            self._drift.labels(_bounded(kind, DRIFT_KINDS)).inc(count)

    # ---- datapath ----------------------------------------------------------------------
    def add_forwarding_source(self, source: ForwardingSource) -> None:
        """Register a callable read at every scrape (see :class:`TrafficSample`)."""
        self._sources.append(source)

    def remove_forwarding_source(self, source: ForwardingSource) -> None:
        with contextlib.suppress(ValueError):
            self._sources.remove(source)

    def packets_dropped(self, reason: str, count: int = 1) -> None:
        """Count userspace drops cheaply (a dict increment; exported at scrape time)."""
        self._userspace_drops[_bounded(reason, DROP_REASONS)] += count

    # ---- exposition --------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry)
