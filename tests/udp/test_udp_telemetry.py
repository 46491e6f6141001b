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
from flanneld.backends.udp import telemetry
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
    labels = set(telemetry.DROP_LABELS.values())
    # every label is one the exporter knows (an unknown one would be exported as "other")
    assert labels <= metrics.DROP_REASONS, labels - metrics.DROP_REASONS
    assert "other" not in labels


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
