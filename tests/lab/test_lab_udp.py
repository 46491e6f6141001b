"""The udp backend in the lab: the userspace datapath carries every pod pair, a joining node
too; the flannel0 MTU holds (1472 passes, more with DF gets "frag needed" from the node); a
peer whose lease is gone is answered with ICMP net unreachable by our datapath."""

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


def _ping(lab: LabHandle, ns: str, dst: str, *args: str) -> str:
    r = lab.ping_run(ns, dst, *args)
    return r.stdout + r.stderr


def test_mtu_1472_passes_and_more_with_df_gets_frag_needed(udp_cluster: LabHandle) -> None:
    """Pods get the flannel MTU (1472) from subnet.env; a pod with a bigger MTU is told by its
    node, when the packet meets flannel0, to use 1472 ("frag needed")."""
    pod, dst = udp_cluster.pod(1, 1).name, udp_cluster.pod_ip(2, 1)
    eth0 = udp_cluster.ipj(pod, "link", "show", "eth0")[0]
    assert eth0["mtu"] == 1472
    assert " 0% packet loss" in _ping(udp_cluster, pod, dst, "-M", "do", "-s", str(1472 - 28))
    udp_cluster.ip(pod, "link", "set", "eth0", "mtu", "1500")
    try:
        out = _ping(udp_cluster, pod, dst, "-M", "do", "-s", str(1473 - 28))
        assert "Frag needed" in out and "mtu = 1472" in out, out
    finally:
        udp_cluster.ip(pod, "link", "set", "eth0", "mtu", "1472")
    assert " 0% packet loss" in _ping(udp_cluster, pod, dst, "-M", "do", "-s", str(1472 - 28))


def test_peer_without_lease_is_net_unreachable(udp_cluster: LabHandle) -> None:
    """Node 3's flanneld stops for good and its lease is deleted: node 1's datapath drops the
    route and answers traffic for that subnet with ICMP net unreachable (type 3 code 0)."""
    victim = 3
    key, _ = udp_cluster.lease_of(victim)
    src, dst = udp_cluster.pod(1, 1).name, udp_cluster.pod_ip(victim, 1)
    assert udp_cluster.ping(src, dst)
    udp_cluster.kill_flanneld(victim)
    udp_cluster.etcdctl("del", key)
    poll(lambda: "Destination Net Unreachable" in _ping(udp_cluster, src, dst), 5.0, 0.05,
         f"net unreachable for {dst}")
    # from our datapath, which sources it from the unreachable address, not from the node's
    # kernel (that would answer from the pod gateway, 10.244.x.1)
    assert f"From {dst} " in _ping(udp_cluster, src, dst)
    assert udp_cluster.ping(src, udp_cluster.pod_ip(2, 1))  # the others still carried
