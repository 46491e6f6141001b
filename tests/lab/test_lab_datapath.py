"""Multi-node behaviour of flanneld + backend, for vxlan and host-gw, in a 3-node netns lab.

One lab per backend serves the whole module; tests run in file order and the destructive ones
(a 4th node joins, a lease is removed) come last.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from labkit import DRIFT_INTERVAL, FLANNELD_TEST_ARGS, LabHandle, lab_running, poll, require_flanneld
from netnslab import lab as labmod
from netnslab import pingmatrix
from netnslab.proc import nsexec

pytestmark = pytest.mark.lab

JOIN_DEADLINE = 1.0  # a joining node is routed to by everyone within this (watch, not drift)
DRIFT_DEADLINE = 3 * DRIFT_INTERVAL + 5.0
NAMES = {"vxlan": "flabtvx", "host-gw": "flabthg"}


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LabHandle]:
    require_flanneld()
    backend = str(request.param)
    with lab_running(
        NAMES[backend], nodes=3, backend=backend, pods_per_node=2, flanneld_args=FLANNELD_TEST_ARGS
    ) as h:
        yield h


def _backend(h: LabHandle) -> str:
    return h.state.backend


def test_all_pod_pairs_reach_each_other(cluster: LabHandle) -> None:
    plist = cluster.state.pods()
    results = pingmatrix.ping_all(plist)
    assert all(r.ok for r in results), "\n" + pingmatrix.render(plist, results, cluster.name)


def test_routes_match_leases(cluster: LabHandle) -> None:
    for node in (1, 2, 3):
        for peer in (1, 2, 3):
            if peer == node:
                continue
            sub = cluster.subnet(peer)
            (route,) = [r for r in cluster.ipj(cluster.node_ns(node), "-4", "route") if r["dst"] == str(sub)]
            if _backend(cluster) == "vxlan":
                assert route["dev"] == "flannel.1" and route["gateway"] == str(sub.network_address)
                assert "onlink" in route.get("flags", [])
                assert cluster.has_fdb(node, cluster.vtep_mac(peer))
                assert cluster.has_neigh(node, str(sub.network_address))
            else:
                assert route["dev"] == cluster.names.uplink
                assert route["gateway"] == cluster.public_ip(peer)


def _ping_counts(out: str) -> tuple[int, int]:
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in {out!r}")


def test_flanneld_sigkill_restart_loses_no_ping(cluster: LabHandle) -> None:
    before = {n: (cluster.subnet(n), cluster.vtep_mac(n), cluster.lease_of(n)[0]) for n in (1, 2)}
    dst = cluster.pod_ip(2, 1)
    pinger = subprocess.Popen(
        nsexec(cluster.pod(1, 1).name, ["ping", "-n", "-q", "-i", "0.01", "-W", "1", dst]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.3)  # traffic flowing before the first kill
        for node in (2, 1):
            cluster.kill_flanneld(node)
            cluster.start_flanneld(node)  # returns once subnet.env is rewritten
            time.sleep(DRIFT_INTERVAL + 0.5)  # one full reconcile pass after the restart
    finally:
        pinger.send_signal(signal.SIGINT)
        out, err = pinger.communicate(timeout=10)
    sent, received = _ping_counts(out)
    assert sent > 200, out
    assert received == sent, f"lost {sent - received} of {sent} pings:\n{out}{err}"
    for node in (1, 2):
        subnet, mac, key = before[node]
        assert cluster.subnet(node) == subnet
        assert cluster.lease_of(node)[0] == key
        assert cluster.vtep_mac(node) == mac
        if _backend(cluster) == "vxlan":
            assert cluster.lease_of(node)[1]["BackendData"]["VtepMAC"] == mac


def test_route_deleted_by_hand_comes_back(cluster: LabHandle) -> None:
    sub = cluster.subnet(2)
    cluster.ip(cluster.node_ns(1), "route", "del", str(sub))
    assert not cluster.has_route(1, sub)
    took = poll(lambda: cluster.has_route(1, sub), DRIFT_DEADLINE, 0.05, f"route {sub} back on n1")
    print(f"{_backend(cluster)}: deleted route repaired after {took:.2f}s")
    assert cluster.ping(cluster.pod(1, 1).name, cluster.pod_ip(2, 1))


def test_vxlan_device_deleted_by_hand_comes_back(cluster: LabHandle) -> None:
    if _backend(cluster) != "vxlan":
        pytest.skip("vxlan only")
    ns = cluster.node_ns(1)
    cluster.ip(ns, "link", "del", "flannel.1")
    took = poll(lambda: bool(cluster.vtep_mac(1)), DRIFT_DEADLINE, 0.05, "flannel.1 back on n1")
    poll(
        lambda: cluster.has_route(1, cluster.subnet(2)) and cluster.has_route(1, cluster.subnet(3)),
        DRIFT_DEADLINE, 0.05, "routes back on n1",
    )  # fmt: skip
    print(f"vxlan: flannel.1 recreated after {took:.2f}s")
    for peer in (2, 3):
        poll(lambda p=peer: cluster.ping(cluster.pod(1, 1).name, cluster.pod_ip(p, 1), 0.5),  # type: ignore[misc]
             DRIFT_DEADLINE, 0.1, f"n1p1 -> n{peer}p1")  # fmt: skip
        poll(lambda p=peer: cluster.ping(cluster.pod(p, 1).name, cluster.pod_ip(1, 1), 0.5),  # type: ignore[misc]
             DRIFT_DEADLINE, 0.1, f"n{peer}p1 -> n1p1")  # fmt: skip


def test_fourth_node_joins_and_is_routed_within_a_second(
    cluster: LabHandle, record_property: Callable[[str, object], None]
) -> None:
    # The clock starts when the new lease is visible in etcd (an etcdctl watch sees the put).
    seen: list[float] = []
    watch = subprocess.Popen(
        nsexec(cluster.names.underlay_ns, ["etcdctl", "--endpoints", cluster.names.etcd_endpoint,
               "watch", "--prefix", "/coreos.com/network/subnets/"]),
        stdout=subprocess.PIPE, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip

    def first_event() -> None:
        assert watch.stdout is not None
        if watch.stdout.readline():
            seen.append(time.time())

    reader = threading.Thread(target=first_event, daemon=True)
    reader.start()
    try:
        node = labmod.add_node(cluster.name, labmod.UpOptions(pods_per_node=0), converge=False)
        sub = cluster.subnet(node)
        poll(lambda: all(cluster.has_route(n, sub) for n in (1, 2, 3)), 10.0, 0.005, f"route to n{node}")
        routed = time.time()
        reader.join(5.0)
    finally:
        watch.kill()
        watch.wait()
    joined = min([*seen, cluster.state.subnet_file(node).stat().st_mtime])
    took = routed - joined
    record_property("join_route_seconds", round(took, 3))
    ref = "etcd watch" if seen else "subnet.env mtime"
    print(f"{_backend(cluster)}: n{node} ({sub}) routed by all nodes {took:.3f}s after its lease ({ref})")
    labmod.add_pods(cluster.name, node, 1)
    poll(lambda: all(cluster.has_route(node, cluster.subnet(n)) for n in (1, 2, 3)), 5.0, 0.01,
         f"n{node} routes to the others")  # fmt: skip
    for n in (1, 2, 3):
        assert cluster.ping(cluster.pod(n, 1).name, cluster.pod_ip(node, 1))
        assert cluster.ping(cluster.pod(node, 1).name, cluster.pod_ip(n, 1))
    assert took < JOIN_DEADLINE, f"routes to the new node took {took:.3f}s"


def test_lease_removed_clears_routes_fdb_neigh_everywhere(
    cluster: LabHandle, record_property: Callable[[str, object], None]
) -> None:
    victim = 3
    sub, mac = cluster.subnet(victim), cluster.vtep_mac(victim)
    key, _ = cluster.lease_of(victim)
    cluster.kill_flanneld(victim)  # gone for good: nobody renews or re-creates the lease
    others = [n for n in sorted(cluster.state.nodes) if n != victim]
    assert all(cluster.has_route(n, sub) for n in others)
    vx = _backend(cluster) == "vxlan"

    def gone() -> bool:
        return all(
            not cluster.has_route(n, sub)
            and not (vx and cluster.has_fdb(n, mac))
            and not (vx and cluster.has_neigh(n, str(sub.network_address)))
            for n in others
        )

    cluster.etcdctl("del", key)
    took = poll(gone, 5.0, 0.01, f"routes/fdb/neigh of {sub} removed on {others}")
    record_property("lease_removed_seconds", round(took, 3))
    print(f"{_backend(cluster)}: {sub} cleared on {others} {took:.3f}s after its lease was deleted")
    assert cluster.ping(cluster.pod(1, 1).name, cluster.pod_ip(2, 1))
