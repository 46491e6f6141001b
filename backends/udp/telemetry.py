"""The udp datapath's counters as the daemon's metrics samples (`flanneld.metrics`).

Why: the hot loop only bumps plain list counters (per underlay peer host and per drop reason);
turning them into `TrafficSample`/`DropSample` values happens here, at scrape time. Peers are
labelled with the remote subnet they hold (the lease), as the per-peer series of the other
backends are; a host whose lease is gone still counts in the fabric totals (``peer=None``),
which stay monotonic. Drop reasons fold into the daemon's closed label set `DROP_LABELS`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

from flanneld.backends.udp import core
from flanneld.backends.udp.core import DropReason
from flanneld.metrics import DropSample, TrafficSample

# DropReason -> label of flannel_dropped_packets_total{reason}. Every label must be in
# flanneld.metrics.DROP_REASONS (the exporter folds an unknown one into "other"; a unit test
# checks each DropReason); dashboards and alerts select on these names.
DROP_LABELS: dict[DropReason, str] = {
    DropReason.TRUNCATED: "malformed",
    DropReason.NOT_IPV4: "malformed",
    DropReason.BAD_HEADER_LENGTH: "malformed",
    DropReason.BAD_TOTAL_LENGTH: "malformed",
    DropReason.BAD_HEADER_CHECKSUM: "malformed",
    DropReason.BAD_OFFLOAD: "malformed",
    DropReason.SOURCE_NO_LEASE: "unknown_peer",
    DropReason.SOURCE_NOT_PEER_SUBNET: "inner_source_not_peer",
    DropReason.DESTINATION_NOT_LOCAL: "not_local",
    DropReason.NO_ROUTE: "no_route",
    DropReason.TTL_EXPIRED: "ttl_exceeded",
    DropReason.TOO_BIG: "too_big",
    DropReason.SEND_FAILED: "send_error",
    DropReason.TUN_WRITE_FAILED: "tun_write_error",
}


class Counters(Protocol):
    """What is read of `datapath.Datapath`."""

    peers: dict[str, list[Any]]  # [tx_packets, tx_bytes, rx_packets, rx_bytes, (host, port)]
    drops: list[int]
    routes: core.RouteTable


def samples(dp: Counters) -> list[TrafficSample | DropSample]:
    """Fabric totals and per-peer traffic by direction (tx: to peers), drops by label."""
    subnet_of: dict[str, str] = {}
    for net, (host, _port) in sorted(dp.routes.items(), key=lambda r: r[0]):
        subnet_of.setdefault(host, str(net))
    out: list[TrafficSample | DropSample] = []
    total = [0, 0, 0, 0]
    for host, c in list(dp.peers.items()):  # list(): one C call, safe beside the datapath thread
        tx_p, tx_b, rx_p, rx_b = c[:4]
        total[0] += tx_p
        total[1] += tx_b
        total[2] += rx_p
        total[3] += rx_b
        subnet = subnet_of.get(host)
        if subnet is not None:
            out.append(TrafficSample("tx", tx_p, tx_b, peer=subnet))
            out.append(TrafficSample("rx", rx_p, rx_b, peer=subnet))
    out.append(TrafficSample("tx", total[0], total[1]))
    out.append(TrafficSample("rx", total[2], total[3]))
    drops: dict[str, int] = defaultdict(int)
    for reason, label in DROP_LABELS.items():
        drops[label] += dp.drops[reason]
    out.extend(DropSample(label, n) for label, n in sorted(drops.items()))
    return out
