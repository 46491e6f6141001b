"""The udp backend in the lab: the userspace datapath carries every pod pair, a joining node too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labkit import FLANNELD_TEST_ARGS, LabHandle, lab_running, poll, require_flanneld
from netnslab import lab as labmod
from netnslab import pingmatrix

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def udp_cluster() -> Iterator[LabHandle]:
    require_flanneld()
    with lab_running(
        "flabtud", nodes=3, backend="udp", pods_per_node=2, flanneld_args=FLANNELD_TEST_ARGS
    ) as h:
        yield h


def test_all_pod_pairs_reach_each_other(udp_cluster: LabHandle) -> None:
    plist = udp_cluster.state.pods()
    results = pingmatrix.ping_all(plist)
    assert all(r.ok for r in results), "\n" + pingmatrix.render(plist, results, udp_cluster.name)
    for node in (1, 2, 3):
        routes = udp_cluster.ipj(udp_cluster.node_ns(node), "-4", "route")
        assert any(r["dst"] == "10.244.0.0/16" and r["dev"] == "flannel0" for r in routes)


def test_joining_node_reachable(udp_cluster: LabHandle) -> None:
    node = labmod.add_node(udp_cluster.name, labmod.UpOptions(pods_per_node=1))
    new_ip = udp_cluster.pod_ip(node, 1)
    for n in (1, 2, 3):
        src = udp_cluster.pod(n, 1).name
        poll(lambda s=src: udp_cluster.ping(s, new_ip, 0.5), 5.0, 0.05, f"n{n}p1 -> n{node}p1")  # type: ignore[misc]
        assert udp_cluster.ping(udp_cluster.pod(node, 1).name, udp_cluster.pod_ip(n, 1))
