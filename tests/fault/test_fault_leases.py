"""Lease faults in a 3-node lab with a real etcd: the clock, a deleted own lease, a rewritten peer.

One lab per backend serves the module (flabf3 vxlan, flabf4 host-gw).  flanneld runs with a
10 s lease TTL (so renewals are frequent) and /readyz on 127.0.0.1:8471 in each node namespace.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from labkit import (
    FLANNELD_TEST_ARGS,
    HEALTHZ_PORT,
    FaultLab,
    ReadyzPoller,
    fault_lab,
    figure,
    poll,
    require_flanneld,
)
from netnslab.proc import nsexec

pytestmark = pytest.mark.fault

TTL = 10
NAMES = {"vxlan": "flabf3", "host-gw": "flabf4"}
FOLLOW_DEADLINE = 1.0  # every node follows a rewritten peer lease within this
SUBNETS = "/coreos.com/network/subnets/"


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def lab(request: pytest.FixtureRequest) -> Iterator[FaultLab]:
    require_flanneld()
    backend = str(request.param)
    args = (*FLANNELD_TEST_ARGS, f"--subnet-lease-ttl={TTL}", f"--healthz-port={HEALTHZ_PORT}")
    with fault_lab(NAMES[backend], nodes=3, backend=backend, pods_per_node=1, flanneld_args=args) as h:
        yield h


def _etcd_watch(lab: FaultLab, key: str) -> subprocess.Popen[str]:
    """``etcdctl watch KEY -w json`` from the underlay: one JSON object per event batch."""
    cmd = ["etcdctl", "--endpoints", lab.names.etcd_endpoint, "watch", key, "-w", "json"]
    return subprocess.Popen(
        nsexec(lab.names.underlay_ns, cmd), stdout=subprocess.PIPE, text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_lease_renewed_before_expiry(lab: FaultLab) -> None:
    """Short TTL: the key's etcd lease is replaced ~3 times, always before it runs out, the key
    never disappears, and superseded etcd leases are revoked (Go leaks one per renewal)."""
    key, _ = lab.lease_of(1)
    leases_before = lab.etcd_lease_count()
    first = lab.etcd_lease_id(key)
    watch = _etcd_watch(lab, key)
    seen: list[tuple[float, str, int]] = []  # (time, PUT|DELETE, lease id)
    t0 = time.time()
    try:
        assert watch.stdout is not None
        while len([e for e in seen if e[1] == "PUT"]) < 3 and time.time() - t0 < 4 * TTL:
            line = watch.stdout.readline()
            if not line:
                break
            for event in json.loads(line).get("Events") or []:
                kind = "DELETE" if event.get("type") == 1 else "PUT"
                seen.append((time.time(), kind, int(event["kv"].get("lease", 0))))
    finally:
        watch.kill()
        watch.wait()
    puts = [e for e in seen if e[1] == "PUT"]
    assert not [e for e in seen if e[1] == "DELETE"], f"key {key} disappeared: {seen}"
    assert len(puts) >= 3, f"only {len(puts)} renewals in {time.time() - t0:.0f}s: {seen}"
    ids = [first, *(lease for _, _, lease in puts)]
    assert len(set(ids)) == len(ids), f"a renewal reused an etcd lease: {ids}"
    intervals = [b - a for a, b in itertools.pairwise(t for t, _, _ in puts)]
    # Each new lease must be in place before the previous one (TTL s) runs out.
    assert all(i < TTL - 1 for i in intervals), f"renewal intervals {intervals} (TTL {TTL}s)"
    assert lab.etcd_lease_id(key) == ids[-1] and lab.etcd_lease_id(key) != 0
    # A renewal grants the new etcd lease, swaps the key onto it, then revokes the old one: the
    # count is one higher for a moment after a PUT (this node's, or another node's renewal).
    deadline = time.monotonic() + 5
    while (count := lab.etcd_lease_count()) != leases_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count == leases_before, "superseded etcd leases were not revoked"
    figure(
        f"lease-clock[{lab.state.backend}]",
        ttl_s=TTL, renewals=len(puts), interval_max_s=max(intervals), interval_min_s=min(intervals),
        key_deleted=0, etcd_leases=lab.etcd_lease_count(),
    )


def _delete_own_lease(lab: FaultLab, node: int, key: str) -> tuple[float, list[tuple[float, int]], int]:
    """Delete ``key`` with a back-to-back /readyz poller running on ``node``; returns the
    re-acquire time, the /readyz transitions after the delete and the number of 503 answers."""
    poller = ReadyzPoller(lab.node_ns(node))
    try:
        deleted_at = time.time()
        lab.etcdctl("del", key)
        took = poll(lambda: lab.etcd_lease_id(key) != 0, 10.0, 0.01, f"{key} re-created")
        poll(lambda: lab.readyz(node) == 200, 5.0, 0.02, f"n{node} ready again")
    finally:
        transitions, counts = poller.stop()
    return took, [(t, c) for t, c in transitions if t >= deleted_at], counts.get("503", 0)


def test_own_lease_deleted_is_reacquired(lab: FaultLab) -> None:
    node = 2
    key, value = lab.lease_of(node)
    subnet = lab.subnet(node)
    others = [n for n in lab.state.nodes if n != node]
    assert lab.readyz(node) == 200
    # The daemon is not ready for only ~20 ms (one etcd list + grant + create); a poller on a
    # busy machine can miss so short a window, so the delete is repeated (up to 3 times)
    # until the poller has seen the 503.  A daemon that never says 503 fails all three.
    trials: list[tuple[float, list[tuple[float, int]], int]] = []
    while len(trials) < 3 and not any(n503 for _, _, n503 in trials):
        trials.append(_delete_own_lease(lab, node, key))
        new_key, new_value = lab.lease_of(node)
        assert new_key == key, f"re-acquired {new_key}, not the free {key}"
        assert new_value == value
        assert lab.subnet(node) == subnet
    took, transitions, n503 = trials[-1]
    assert n503, f"/readyz never said 503 in {len(trials)} deletes: {[t[1] for t in trials]}"
    codes = [code for _, code in transitions]
    assert codes[-1] == 200, transitions
    first_503 = next(t for t, code in transitions if code == 503)
    back = next(t for t, code in transitions if code == 200 and t > first_503)
    log = "\n".join(lab.log_tail(node).splitlines()[-20:])
    assert "LEASE LOST" in log and "lease re-acquired" in log and f"subnet={subnet}" in log, log
    # Peers still route to it (the subnet never changed), and traffic flows both ways.
    for n in others:
        assert lab.has_route(n, subnet)
        assert lab.ping(lab.pod(n).name, lab.pod_ip(node))
        assert lab.ping(lab.pod(node).name, lab.pod_ip(n))
    figure(
        f"own-lease-deleted[{lab.state.backend}]",
        reacquired_s=took, readyz_503_s=back - first_503, readyz_polls_503=n503,
        deletes=len(trials), same_subnet=1,
    )


def _fake_lease(backend: str, public_ip: str, mac: str) -> str:
    if backend == "vxlan":
        data = f'{{"VNI":1,"VtepMAC":"{mac}"}}'
        return (f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan",'
                f'"BackendData":{data}}}')
    return f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"host-gw"}}'


def _programmed(lab: FaultLab, node: int, subnet: IPv4Network, public_ip: str, mac: str) -> bool:
    ns = lab.node_ns(node)
    routes = [r for r in lab.ipj(ns, "-4", "route") if r.get("dst") == str(subnet)]
    if len(routes) != 1:
        return False
    if lab.state.backend == "host-gw":
        return routes[0].get("gateway") == public_ip
    gw = str(subnet.network_address)
    neigh = [n for n in lab.ipj(ns, "neigh", "show", "dev", "flannel.1") if n.get("dst") == gw]
    fdb = [f for f in lab.fdb(node) if f.get("mac") == mac]
    return (
        routes[0].get("gateway") == gw
        and len(neigh) == 1 and neigh[0].get("lladdr") == mac
        and any(f.get("dst") == public_ip for f in fdb)
    )  # fmt: skip


def test_peer_lease_rewritten_is_followed_within_a_second(lab: FaultLab) -> None:
    """A (fake) peer's lease moves to a new PublicIP and VtepMAC: every node follows."""
    backend = lab.state.backend
    subnet = IPv4Network("10.244.250.0/24")
    key = SUBNETS + "10.244.250.0-24"
    nodes = sorted(lab.state.nodes)
    old = ("198.18.0.77", "02:42:c6:12:00:4d")
    new = ("198.18.0.78", "02:42:c6:12:00:4e")
    lab.etcdctl("put", key, _fake_lease(backend, *old))
    poll(lambda: all(_programmed(lab, n, subnet, *old) for n in nodes), 5.0, 0.01, "fake peer programmed")
    lab.etcdctl("put", key, _fake_lease(backend, *new))
    written = time.time()
    pending = set(nodes)
    took: dict[int, float] = {}
    while pending and time.time() - written < 5.0:
        for n in sorted(pending):
            if _programmed(lab, n, subnet, *new):
                took[n] = time.time() - written
                pending.discard(n)
        time.sleep(0.005)
    assert not pending, f"nodes {sorted(pending)} did not follow the rewritten lease within 5s"
    if backend == "vxlan":  # the old MAC's fdb entry is gone everywhere
        for n in nodes:
            fdb = lab.fdb(n)
            assert not [f for f in fdb if f.get("mac") == old[1]], f"n{n} kept {old[1]}"
    lab.etcdctl("del", key)
    poll(lambda: not any(lab.has_route(n, subnet) for n in nodes), 5.0, 0.01, "fake peer removed")
    worst = max(took.values())
    figure(f"peer-rewritten[{backend}]", nodes=len(nodes), follow_max_s=worst,
           follow_median_s=sorted(took.values())[len(took) // 2])
    assert worst < FOLLOW_DEADLINE, f"slowest node followed after {worst:.3f}s: {took}"


def test_real_node_moved_to_new_vtep_mac(lab: FaultLab) -> None:
    """n3's flannel.1 gets a new MAC while its daemon is down and its lease is rewritten with
    it (what a node rebuilt by hand does): n1 and n2 follow and pods reach n3 again."""
    if lab.state.backend != "vxlan":
        pytest.skip("VtepMAC is vxlan only")
    node, others = 3, (1, 2)
    key, value = lab.lease_of(node)
    old_mac = lab.vtep_mac(node)
    new_mac = "02:42:c6:12:03:03" if old_mac != "02:42:c6:12:03:03" else "02:42:c6:12:03:04"
    lab.kill_flanneld(node)
    try:
        lab.ip(lab.node_ns(node), "link", "set", "flannel.1", "address", new_mac)
        lease = json.loads(json.dumps(value))
        lease["BackendData"]["VtepMAC"] = new_mac
        # A fresh 60 s etcd lease: the key must outlive the dead daemon's 10 s one.
        grant = lab.etcdctl("lease", "grant", "60").split()[1]
        lab.etcdctl("put", key, json.dumps(lease, separators=(",", ":")), f"--lease={grant}")
        sub = lab.subnet(node)
        took = poll(
            lambda: all(_programmed(lab, n, sub, lab.public_ip(node), new_mac) for n in others),
            5.0, 0.005, f"n1, n2 follow n{node}'s new VtepMAC",
        )  # fmt: skip
    finally:
        # A MAC change flushes the device's neighbours (permanent ones too): n3's own entries
        # for its peers come back when its daemon starts again.
        lab.start_flanneld(node)
    assert lab.vtep_mac(node) == new_mac, "restarted flanneld did not adopt the device's MAC"
    assert lab.lease_of(node)[1]["BackendData"]["VtepMAC"] == new_mac
    for n in others:
        poll(lambda n=n: lab.ping(lab.pod(n).name, lab.pod_ip(node), 0.5), 5.0, 0.05,  # type: ignore[misc]
             f"n{n}p1 -> n{node}p1")  # fmt: skip
        poll(lambda n=n: lab.ping(lab.pod(node).name, lab.pod_ip(n), 0.5), 5.0, 0.05,  # type: ignore[misc]
             f"n{node}p1 -> n{n}p1")  # fmt: skip
    figure("vtep-mac-moved[vxlan]", follow_max_s=took)
    assert took < FOLLOW_DEADLINE, f"took {took:.3f}s"
