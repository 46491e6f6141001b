"""The udp backend's forwarding source for /metrics, fed by real datapaths over loopback (no root)."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import loopback_pair as lp

from flanneld import metrics
from flanneld.backends.base import BackendContext, ExternalInterface
from flanneld.backends.udp import core, telemetry
from flanneld.backends.udp.backend import UDPBackend
from flanneld.backends.udp.core import DropReason
from flanneld.netconfig import network_config_from_dict

pytestmark = pytest.mark.unit

@pytest.fixture(params=[False, True], ids=["plain", "offload"])
def nodes(request: pytest.FixtureRequest) -> Iterator[tuple[lp.Node, lp.Node]]:
    a, b = lp.pair(offload=request.param)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def drain_all(a: lp.Node, b: lp.Node) -> None:
    tx, _ = a.dp.handlers()
    _, rx = b.dp.handlers()
    while tx() + rx():
        pass


def backend_for(node: lp.Node) -> UDPBackend:
    netconf = network_config_from_dict({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}})
    ext = ExternalInterface("lo", 1, IPv4Address("127.0.0.1"), IPv4Address("127.0.0.1"), 1500)
    be = UDPBackend(BackendContext(ext=ext, netconf=netconf))
    be.datapath = node.dp  # what activate() sets
    return be


def series(text: str, name: str) -> dict[str, float]:
    """{label string: value} of one metric family in a text exposition."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_every_drop_reason_has_a_label() -> None:
    assert set(telemetry.DROP_LABELS) == set(DropReason)
    for reason in DropReason:
        label = telemetry.DROP_LABELS[reason]
        # a label the exporter knows (an unknown one would be exported as "other")
        assert label in metrics.DROP_REASONS, (reason, label)
        assert label != "other", reason


def test_drop_labels_keep_their_names() -> None:
    """Dashboards and alerts select on these label values: renaming one breaks them."""
    assert {r.name.lower(): label for r, label in telemetry.DROP_LABELS.items()} == {
        "truncated": "malformed", "not_ipv4": "malformed", "bad_header_length": "malformed",
        "bad_total_length": "malformed", "bad_header_checksum": "malformed",
        "bad_offload": "malformed", "source_no_lease": "unknown_peer",
        "source_not_peer_subnet": "inner_source_not_peer",
        "destination_not_local": "not_local", "no_route": "no_route",
        "ttl_expired": "ttl_exceeded", "too_big": "too_big", "send_failed": "send_error",
        "tun_write_failed": "tun_write_error",
    }


def test_every_drop_reason_reaches_prometheus_under_its_own_label() -> None:
    """Each DropReason counted once (with a distinct count) shows up in /metrics under its
    label, summed per label, and nothing is folded into reason="other"."""

    class Counters:
        peers: dict[str, list[object]] = {}
        drops = [1 << r for r in DropReason]  # distinct bits: the sums tell who went where
        routes = core.RouteTable()

    m = metrics.Metrics(backend="udp")
    m.add_forwarding_source(lambda: telemetry.samples(Counters()))
    drops = series(m.render().decode(), "flannel_dropped_packets_total")
    want: dict[str, int] = {}
    for r, label in telemetry.DROP_LABELS.items():
        want[f'reason="{label}"'] = want.get(f'reason="{label}"', 0) + (1 << r)
    assert 'reason="other"' not in drops or drops['reason="other"'] == 0, drops
    assert {k: v for k, v in drops.items() if v} == want


def test_source_yields_per_peer_traffic_and_drops(nodes: tuple[lp.Node, lp.Node]) -> None:
    a, b = nodes
    for size in (100, 100, 100, 40, 1000):
        a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", bytes(size)))
    a.inject(lp.udp_packet("10.244.1.2", "10.244.9.9", b"x"))  # no peer holds it
    a.inject(lp.udp_packet("10.244.1.2", "10.244.2.2", b"x", ttl=1))  # would expire
    drain_all(a, b)
    assert len(b.take()) == 5
    assert len(a.take()) == 1  # the ICMP net unreachable for 10.244.9.9
    # towards b: a truncated datagram from the leased host, any datagram from a stranger
    b_addr = b.dp.sock.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x45" + bytes(9), b_addr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.sendto(lp.udp_packet("10.244.1.2", "10.244.2.2", b"x"), b_addr)
    drain_all(a, b)

    sent_bytes = sum(28 + n for n in (100, 100, 100, 40, 1000))
    a_samples = backend_for(a).forwarding_source()()
    assert metrics.TrafficSample("tx", 5, sent_bytes, peer=lp.SUBNETS[1]) in a_samples
    assert metrics.TrafficSample("tx", 5, sent_bytes) in a_samples
    assert metrics.TrafficSample("rx", 0, 0) in a_samples
    assert metrics.DropSample("no_route", 1) in a_samples
    assert metrics.DropSample("ttl_exceeded", 1) in a_samples
    assert metrics.DropSample("malformed", 0) in a_samples

    b_samples = backend_for(b).forwarding_source()()
    assert metrics.TrafficSample("rx", 5, sent_bytes, peer=lp.SUBNETS[0]) in b_samples
    assert metrics.DropSample("malformed", 1) in b_samples
    assert metrics.DropSample("unknown_peer", 1) in b_samples

    # as the daemon wires it: /metrics shows them per peer and direction, and drops by reason
    m = metrics.Metrics(backend="udp", per_peer=True)
    m.add_forwarding_source(backend_for(b).forwarding_source())
    text = m.render().decode()
    peer = series(text, "flannel_peer_forwarded_packets_total")
    assert peer[f'direction="rx",peer="{lp.SUBNETS[0]}"'] == 5
    assert series(text, "flannel_forwarded_bytes_total")['direction="rx"'] == sent_bytes
    drops = series(text, "flannel_dropped_packets_total")
    assert drops['reason="malformed"'] == 1 and drops['reason="unknown_peer"'] == 1


def test_source_without_datapath_is_empty() -> None:
    a, b = lp.pair()
    try:
        be = backend_for(a)
        be.datapath = None
        assert list(be.forwarding_source()()) == []
    finally:
        a.close()
        b.close()
