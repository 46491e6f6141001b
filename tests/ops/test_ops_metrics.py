"""Unit tests of flanneld.metrics: names, labels, helpers, and promtool's opinion of the output."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flanneld.metrics import DropSample, Metrics, TrafficSample, subnet_pool_usage
from flanneld.netconfig import parse_network_config

pytestmark = pytest.mark.unit


def families(m: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    for lbl, v in families(m).get(name, []):
        if lbl == labels:
            return v
    raise KeyError(f"{name}{labels} not exported")


def exercised() -> Metrics:
    m = Metrics(backend="vxlan", version="9.9.9", per_peer=True)
    with m.etcd_request("put"):
        pass
    with pytest.raises(TimeoutError), m.etcd_request("get"):
        raise TimeoutError
    m.lease_event("acquire", ok=True)
    m.lease_event("renew", ok=False)
    m.set_lease_expiry(1_700_000_000.5)
    m.set_peers(3)
    m.set_ready(True)
    m.watch_reset("compaction")
    with m.reconcile("full"):
        pass
    with m.reconcile("incremental"):
        pass
    m.netlink_ops([("route", "ok"), ("route", "ok"), ("fdb", "error")])
    m.drift_repaired(2, kind="route")
    m.add_forwarding_source(
        lambda: [
            TrafficSample("tx", 10, 1000),
            TrafficSample("rx", 7, 700),
            TrafficSample("tx", 4, 400, peer="10.244.1.0/24"),
            DropSample("no_route", 2),
        ]
    )
    m.packets_dropped("ttl_exceeded", 3)
    m.set_lease_info("10.244.7.0/24", "198.18.0.7", "vxlan")
    m.set_subnet_pool(leased=12, total=255)
    return m


def test_names_follow_conventions() -> None:
    text = exercised().render().decode()
    names = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert names, text
    for name, kind in names:
        if name.startswith(("process_", "python_")):  # prometheus_client's standard collectors
            continue
        assert name.startswith("flannel_") and not name.startswith("flannel_flannel"), name
        assert "_created" not in name, name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    required = {
        "flannel_build_info",
        "flannel_lease_expiry_timestamp_seconds",
        "flannel_lease_events_total",
        "flannel_etcd_requests_total",
        "flannel_etcd_request_duration_seconds",
        "flannel_watch_resets_total",
        "flannel_peers",
        "flannel_reconcile_duration_seconds",
        "flannel_netlink_operations_total",
        "flannel_drift_repairs_total",
        "flannel_forwarded_packets_total",
        "flannel_forwarded_bytes_total",
        "flannel_dropped_packets_total",
        "flannel_peer_forwarded_bytes_total",
        "flannel_ready",
        "flannel_lease_info",
        "flannel_subnets_leased",
        "flannel_subnets_capacity",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
    }
    assert required <= {n for n, _ in names}, required - {n for n, _ in names}


def test_helper_values() -> None:
    m = exercised()
    assert value(m, "flannel_build_info", version="9.9.9", backend="vxlan") == 1
    assert value(m, "flannel_etcd_requests_total", op="put", result="ok") == 1
    assert value(m, "flannel_etcd_requests_total", op="get", result="timeout") == 1
    assert value(m, "flannel_etcd_request_duration_seconds_count", op="get") == 1
    assert value(m, "flannel_lease_events_total", event="acquire", result="ok") == 1
    assert value(m, "flannel_lease_events_total", event="renew", result="error") == 1
    assert value(m, "flannel_lease_events_total", event="lose", result="ok") == 0
    assert value(m, "flannel_lease_expiry_timestamp_seconds") == 1_700_000_000.5
    assert value(m, "flannel_peers") == 3
    assert value(m, "flannel_ready") == 1
    assert value(m, "flannel_watch_resets_total", reason="compaction") == 1
    assert value(m, "flannel_watch_resets_total", reason="reconnect") == 0
    assert value(m, "flannel_reconcile_duration_seconds_count", kind="incremental") == 1
    assert value(m, "flannel_netlink_operations_total", kind="route", result="ok") == 2
    assert value(m, "flannel_netlink_operations_total", kind="fdb", result="error") == 1
    assert value(m, "flannel_drift_repairs_total", kind="route") == 2
    assert value(m, "flannel_forwarded_bytes_total", direction="tx") == 1000
    assert value(m, "flannel_forwarded_packets_total", direction="rx") == 7
    assert value(m, "flannel_dropped_packets_total", reason="no_route") == 2
    assert value(m, "flannel_dropped_packets_total", reason="ttl_exceeded") == 3
    assert value(m, "flannel_peer_forwarded_bytes_total", peer="10.244.1.0/24", direction="tx") == 400


def test_labels_stay_bounded() -> None:
    m = Metrics(backend="udp")
    for i in range(50):
        with m.etcd_request(f"weird-op-{i}"):
            pass
        m.netlink_ops([(f"kind{i}", f"res{i}")])
        m.packets_dropped(f"reason{i}")
    fams = families(m)
    assert {lbl["op"] for lbl, _ in fams["flannel_etcd_requests_total"]} == {"other"}
    assert value(m, "flannel_etcd_requests_total", op="other", result="ok") == 50
    assert value(m, "flannel_netlink_operations_total", kind="other", result="other") == 50
    assert value(m, "flannel_dropped_packets_total", reason="other") == 50


def test_per_peer_series_only_when_enabled() -> None:
    m = Metrics(backend="udp", per_peer=False)
    m.add_forwarding_source(lambda: [TrafficSample("tx", 1, 84, peer="10.244.9.0/24")])
    text = m.render().decode()
    assert "peer=" not in text
    assert "flannel_peer_" not in text


def test_etcd_request_inside_coroutine_and_cancellation() -> None:
    m = Metrics(backend="vxlan")

    async def call() -> None:
        with m.etcd_request("create"):
            await asyncio.sleep(0)

    async def cancelled() -> None:
        with m.etcd_request("watch"):
            await asyncio.Event().wait()

    async def main() -> None:
        await call()
        t = asyncio.ensure_future(cancelled())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert value(m, "flannel_etcd_requests_total", op="create", result="ok") == 1
    # A cancelled request (shutdown) is not an etcd error.
    assert 'op="watch"' not in m.render().decode()


def test_broken_source_does_not_break_scrape() -> None:
    m = Metrics(backend="vxlan")

    def broken() -> list[TrafficSample]:
        raise OSError("device gone")

    m.add_forwarding_source(broken)
    m.add_forwarding_source(lambda: [TrafficSample("rx", 2, 200)])
    assert value(m, "flannel_forwarded_bytes_total", direction="rx") == 200  # scrape 1
    assert value(m, "flannel_metrics_source_errors_total") == 2  # scrape 2, counted per scrape
    m.remove_forwarding_source(broken)
    m.render()
    assert value(m, "flannel_metrics_source_errors_total") == 2


def test_set_backend_updates_build_info() -> None:
    m = Metrics(backend="unknown", version="1.2.3")
    m.set_backend("host-gw")
    fams = families(m)
    assert fams["flannel_build_info"] == [({"version": "1.2.3", "backend": "host-gw"}, 1.0)]


def test_registries_are_independent() -> None:
    a, b = Metrics(backend="vxlan"), Metrics(backend="udp")
    a.set_peers(5)
    assert value(b, "flannel_peers") == 0


def test_forwarding_sources_feed_the_counters() -> None:
    m = Metrics(backend="vxlan")
    m.add_forwarding_source(lambda: [
        TrafficSample("tx", 3, 300), TrafficSample("rx", 4, 400),
        DropSample("kernel_tx", 1), DropSample("kernel_rx", 0),
    ])
    m.add_forwarding_source(lambda: [])  # a device that is missing right now
    assert value(m, "flannel_forwarded_bytes_total", direction="tx") == 300
    assert value(m, "flannel_forwarded_packets_total", direction="rx") == 4
    assert value(m, "flannel_dropped_packets_total", reason="kernel_tx") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_exposition(tmp_path: Path) -> None:
    for m in (exercised(), Metrics(backend="host-gw")):
        out = subprocess.run(
            ["promtool", "check", "metrics"],
            input=m.render(),
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        # promtool prints lint problems (e.g. counters without _total) and still exits 0 for some.
        assert out.stdout.strip() == b"" and out.stderr.strip() == b"", out


def test_every_op_a_store_reports_has_its_own_label() -> None:
    """The op names come from one place (store.STORE_OPS); each name the stores pass to their
    observer / request log is declared, so none is exported as "other"."""
    from flanneld.metrics import ETCD_OPS
    from flanneld.store import STORE_OPS

    src = Path(__file__).resolve().parents[2] / "flanneld"
    used: set[str] = set()
    for name in ("etcd_store.py", "memory_store.py"):
        text = (src / name).read_text()
        used |= set(re.findall(r'_(?:call|txn|observe|check)\(\s*"([a-z_]+)"', text))
    assert len(used) >= 9, used
    assert used <= set(STORE_OPS), used - set(STORE_OPS)
    assert set(STORE_OPS) == ETCD_OPS
    m = Metrics(backend="vxlan")
    for op in STORE_OPS:
        m.etcd_result(op, "ok", 0.001)
    text = m.render().decode()
    for op in STORE_OPS:
        assert f'flannel_etcd_requests_total{{op="{op}",result="ok"}} 1.0' in text, op
    assert 'op="other"' not in text


def test_every_netlink_op_and_result_has_its_own_label() -> None:
    """Each op kind the applier can report (every object kind replaced or deleted, each link
    op) and each outcome result maps to a declared label: none is exported as "other"."""
    from ipaddress import IPv4Address, IPv4Network

    from flanneld.metrics import NETLINK_KINDS, NETLINK_RESULTS, netlink_labels
    from flanneld.netops import (
        Address,
        CreateVxlan,
        Delete,
        DeleteLink,
        FdbEntry,
        Neighbour,
        OpResult,
        Outcome,
        Replace,
        Route,
        SetLink,
        UnreachableRoute,
        VxlanLink,
    )

    ip = IPv4Address("10.244.1.0")
    objects = [Address(1, ip), Route(IPv4Network("10.244.1.0/24"), 1), Neighbour(1, ip, "0a:00:00:00:00:01"),
               FdbEntry(1, "0a:00:00:00:00:01", ip), UnreachableRoute(IPv4Network("10.244.0.0/16"), 4096)]
    ops = [*(Replace(o) for o in objects), *(Delete(o) for o in objects),
           CreateVxlan(VxlanLink("flannel.1", 1, ip, 2, 8472, "0a:00:00:00:00:01", 1450)),
           DeleteLink("flannel.1"), SetLink("flannel.1")]
    kinds = {netlink_labels(op.kind, "ok")[0] for op in ops}
    assert kinds == {"address", "route", "neigh", "fdb", "link"} and kinds <= NETLINK_KINDS
    assert {netlink_labels("route_replace", r.value)[1] for r in OpResult} == NETLINK_RESULTS
    m = Metrics(backend="vxlan")
    m.netlink_outcomes([Outcome(op, r) for op in ops for r in OpResult])
    text = m.render().decode()
    assert 'flannel_netlink_operations_total{kind="link",result="exists"} 3.0' in text
    assert 'kind="other"' not in text and 'result="other"' not in text


def test_peers_are_counted_once_and_subnets_per_family() -> None:
    m = Metrics(backend="vxlan")
    m.set_peers(3, {"ipv4": 3, "ipv6": 2, "ipv5": 9})
    text = m.render().decode()
    assert "flannel_peers 3.0" in text
    assert 'flannel_peers_by_family{family="ipv4"} 3.0' in text
    assert 'flannel_peers_by_family{family="ipv6"} 2.0' in text
    assert 'flannel_peers_by_family{family="other"} 9.0' in text  # bounded label values


def test_lease_info_has_only_the_current_lease() -> None:
    m = Metrics(backend="vxlan")
    assert "flannel_lease_info{" not in m.render().decode()  # no lease yet: no series
    m.set_lease_info("10.244.1.0/24", "198.18.0.1", "vxlan")
    assert families(m)["flannel_lease_info"] == [
        ({"subnet": "10.244.1.0/24", "public_ip": "198.18.0.1", "backend": "vxlan"}, 1.0)
    ]
    m.set_lease_info("10.244.1.0/24", "198.18.0.1", "vxlan")  # unchanged: still one series
    m.set_lease_info("10.244.9.0/24", "198.18.0.1", "vxlan")  # re-acquired elsewhere
    assert families(m)["flannel_lease_info"] == [
        ({"subnet": "10.244.9.0/24", "public_ip": "198.18.0.1", "backend": "vxlan"}, 1.0)
    ]
    m.set_lease_info("10.244.9.0/24", "198.18.0.2", "host-gw")
    assert len(families(m)["flannel_lease_info"]) == 1
    m.clear_lease_info()
    assert "flannel_lease_info{" not in m.render().decode()
    assert "# TYPE flannel_lease_info gauge" in m.render().decode()


def test_subnet_pool_gauges() -> None:
    m = Metrics(backend="vxlan")
    assert value(m, "flannel_subnets_leased") == 0
    assert value(m, "flannel_subnets_capacity") == 0
    m.set_subnet_pool(leased=230, total=255)
    assert value(m, "flannel_subnets_leased") == 230
    assert value(m, "flannel_subnets_capacity") == 255
    with pytest.raises(ValueError):
        m.set_subnet_pool(leased=-1, total=255)
    with pytest.raises(ValueError):
        m.set_subnet_pool(leased=3, total=-1)


def test_subnet_pool_usage_counts_the_range() -> None:
    from ipaddress import IPv4Network as N

    conf = parse_network_config(
        '{"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.19.0"}'
    )
    subnets = [
        N("10.244.10.0/24"), N("10.244.19.0/24"), N("10.244.12.0/24"),
        N("10.244.12.0/24"),  # the same subnet twice (a lease and a key of a dual-stack half)
        N("10.244.9.0/24"), N("10.244.20.0/24"),  # outside SubnetMin..SubnetMax
        N("10.244.11.0/25"),  # another prefix length
        N("10.245.10.0/24"),  # outside Network
    ]  # fmt: skip
    assert subnet_pool_usage(conf, subnets) == (3, 10)
    assert subnet_pool_usage(conf, []) == (0, 10)
    default = parse_network_config('{"Network": "10.5.0.0/16"}')
    assert subnet_pool_usage(default, [N("10.5.1.0/24")]) == (1, 255)


def test_process_metrics_on_the_daemon_registry() -> None:
    a, b = Metrics(backend="vxlan"), Metrics(backend="udp")  # one collector per registry
    fams = families(a)
    assert value(a, "process_resident_memory_bytes") > 0
    assert value(a, "process_open_fds") > 0
    assert value(b, "process_start_time_seconds") > 1_600_000_000
    assert "process_cpu_seconds_total" in fams
    assert any(n.startswith("python_gc_") for n in fams)
    assert "python_info" in fams


def test_watch_resets_help_says_one_per_outage() -> None:
    text = Metrics(backend="vxlan").render().decode()
    assert (
        "# HELP flannel_watch_resets_total Restarts of the subnet watch: one per etcd outage"
        " or compaction (reason: reconnect, compaction).\n"
    ) in text
