"""Our flanneld in Kubernetes mode (``--kube-subnet-mgr``) end to end: three netns-lab nodes
with CNI pods, the real kube-apiserver v1.20.2 in the lab's underlay (198.18.0.254), Node
objects n1..n3 with podCIDRs 10.244.<i>.0/24 as the controller manager assigns them, each
daemon authenticated with a real bound token of the kube-flannel/flannel ServiceAccount and
authorized by deploy/base's ClusterRole only (tests/kube/kubelab.py says how they are
started).  vxlan and host-gw; in the vxlan lab n3's podCIDR is assigned only after its daemon
started, the host-gw lab's net-conf.json has a SubnetLen (26) that is not the podCIDRs' (24).  Checked in the kernel (routes, fdb) and with pings between pods; the annotations and
the NetworkUnavailable condition as Go flanneld writes them; hand-made changes to the nodes;
the apiserver restarted, a 410 after compaction, RBAC without ``nodes/status`` patch, and
``flannelctl --kube-subnet-mgr subnets`` run on a node."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubelab import (
    PREFIX,
    REPO,
    KubeLab,
    flannel_role,
    go_annotations,
    kube_lab,
    node_name,
    node_object,
    pod_cidr,
    poll,
    start_nodes,
)
from netnslab.proc import nsexec, run

pytestmark = pytest.mark.kube

NODES = (1, 2, 3)
LATE = 3  # in the vxlan lab: n3 gets its podCIDR only after its daemon started
HEALTHZ_PORT = 8471  # inside node namespaces only


def _up(kl: KubeLab, backend: str) -> None:
    late = LATE if backend == "vxlan" else None
    kl.create(*(node_object(node_name(i), None if i == late else pod_cidr(i)) for i in NODES))
    start_nodes(kl, NODES, wait=[i for i in NODES if i != late])
    if late is not None:
        since = time.time() - 1.0
        poll(lambda: f"node {node_name(late)} pod cidr not assigned" in kl.log(late), 20,
             "n3 waits for its podCIDR", detail=kl.dump)
        assert kl.alive(late), kl.log(late)
        cidr = pod_cidr(late)
        kl.kubectl("patch", "node", node_name(late), "--type", "merge", "-p",
                   json.dumps({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}))
        kl.wait_subnet_file(late, since, 30)
    for i in NODES:
        kl.add_pods(i, 1)
    converge(kl)


def converge(kl: KubeLab, nodes: tuple[int, ...] = NODES, timeout: float = 20.0) -> None:
    subnets = [pod_cidr(i) for i in nodes]
    poll(lambda: not kl.missing_routes(nodes, subnets), timeout, "routes to every node's podCIDR",
         detail=lambda: f"{kl.missing_routes(nodes, subnets)}\n{kl.dump()}")


@pytest.fixture(scope="module")
def lab3(request: pytest.FixtureRequest) -> Iterator[KubeLab]:
    backend: str = request.param
    # host-gw: a SubnetLen unlike the podCIDRs' /24, which Kubernetes mode ignores (as Go
    # does: the controller manager's --node-cidr-mask-size sizes the leases).
    extra = {} if backend == "vxlan" else {"SubnetLen": 26}
    with kube_lab("kdv" if backend == "vxlan" else "kdh", backend, **extra) as kl:
        try:
            _up(kl, backend)
        except BaseException:
            print(kl.dump())
            raise
        yield kl


both = pytest.mark.parametrize("lab3", ["vxlan", "host-gw"], indirect=True)
vxlan_only = pytest.mark.parametrize("lab3", ["vxlan"], indirect=True)


def peer_ip(kl: KubeLab, on: int, subnet: str, mac: str | None = None) -> str | None:
    """The underlay address node ``on`` sends ``subnet``'s packets to: host-gw, the route's
    gateway; vxlan, the fdb destination of the peer's VTEP MAC."""
    route = kl.route_to(on, subnet)
    if route is None:
        return None
    if kl.lab.backend == "host-gw":
        return str(route.get("gateway"))
    assert mac is not None
    return kl.fdb_macs(on).get(mac)


def vtep_mac(kl: KubeLab, name: str) -> str:
    return str(json.loads(kl.annotations(name)[f"{PREFIX}/backend-data"])["VtepMAC"])


def no_forbidden(kl: KubeLab) -> None:
    """No API call was refused: a 403 reads "403 Forbidden: ... is forbidden: ..." (a bare
    "403" may be part of a random file name in the log)."""
    for i in NODES:
        log = kl.log(i)
        assert re.search(r"\b403\b", log) is None and "forbidden" not in log.lower(), log


# -- 1. three nodes -------------------------------------------------------------------------------


@both
def test_every_pod_reaches_every_pod_with_go_annotations_and_condition(lab3: KubeLab) -> None:
    ok, matrix = lab3.ping_all()
    assert ok, f"{matrix}\n{lab3.dump()}"
    for i in NODES:
        ann = {k: v for k, v in lab3.annotations(node_name(i)).items() if k.startswith(PREFIX)}
        if lab3.lab.backend == "vxlan":
            mac = json.loads(ann[f"{PREFIX}/backend-data"])["VtepMAC"]
            links = json.loads(run(["ip", "-n", lab3.names.node_ns(i), "-j", "link", "show",
                                    "flannel.1"]).stdout)
            assert mac == links[0]["address"]
            data = f'{{"VNI":1,"VtepMAC":"{mac}"}}'  # Go's json.Marshal, byte for byte
        else:
            data = "null"
        assert ann == {f"{PREFIX}/kube-subnet-manager": "true",
                       f"{PREFIX}/backend-type": lab3.lab.backend,
                       f"{PREFIX}/backend-data": data,
                       f"{PREFIX}/public-ip": f"198.18.0.{i}"}
        cond = lab3.condition(node_name(i))
        assert cond is not None and (cond["status"], cond["reason"]) == ("False", "FlannelIsUp")
        assert cond["message"] == "Flannel is running on this node"
    if lab3.lab.backend == "vxlan":
        assert f"node {node_name(LATE)} pod cidr not assigned" in lab3.log(LATE)
    no_forbidden(lab3)  # the ServiceAccount's ClusterRole is all the daemons needed


# -- 2. nodes changed by hand ---------------------------------------------------------------------


@both
def test_hand_made_node_changes_reach_the_kernel(lab3: KubeLab) -> None:
    kl = lab3
    vxlan = kl.lab.backend == "vxlan"
    n2 = node_name(2)
    mac2 = vtep_mac(kl, n2) if vxlan else None
    # public-ip-overwrite on a running peer: a second address on n2's uplink, announced.
    run(["ip", "-n", kl.names.node_ns(2), "addr", "add", "198.18.0.102/24", "dev", kl.names.uplink])
    kl.annotate(n2, public_ip_overwrite="198.18.0.102")
    for i in (1, 3):
        poll(lambda i=i: peer_ip(kl, i, pod_cidr(2), mac2) == "198.18.0.102", 10,
             f"n{i} sends to n2's overwrite", detail=kl.dump)
    # n2's own daemon took it as its PublicIP and published it, as Go does.
    poll(lambda: kl.annotations(n2)[f"{PREFIX}/public-ip"] == "198.18.0.102", 10, "n2 publishes it")
    ok, matrix = kl.ping_all()
    assert ok, matrix
    # Overwrite gone and public-ip set back by hand: everyone goes back to 198.18.0.2.
    kl.annotate(n2, public_ip_overwrite=None, public_ip="198.18.0.2")
    for i in (1, 3):
        poll(lambda i=i: peer_ip(kl, i, pod_cidr(2), mac2) == "198.18.0.2", 10,
             f"n{i} back to n2's address", detail=kl.dump)
    assert kl.annotations(n2)[f"{PREFIX}/public-ip"] == "198.18.0.2"
    run(["ip", "-n", kl.names.node_ns(2), "addr", "del", "198.18.0.102/24", "dev", kl.names.uplink])

    # A Go-style peer without a daemon (n9): routed; its VtepMAC (vxlan) or public IP
    # (host-gw) changed by hand: followed; deleted: its routes go.
    fake, cidr9 = "n9", pod_cidr(9)
    kl.create(node_object(fake, cidr9, go_annotations("198.18.0.9", kl.lab.backend, "aa:bb:cc:00:00:09")))
    for i in NODES:
        poll(lambda i=i: peer_ip(kl, i, cidr9, "aa:bb:cc:00:00:09") == "198.18.0.9", 10,
             f"n{i} routes n9", detail=kl.dump)
    if vxlan:
        kl.annotate(fake, backend_data='{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:19"}')
        for i in NODES:
            poll(lambda i=i: kl.fdb_macs(i).get("aa:bb:cc:00:00:19") == "198.18.0.9"
                 and "aa:bb:cc:00:00:09" not in kl.fdb_macs(i), 10, f"n{i} follows n9's VtepMAC")
    else:
        kl.annotate(fake, public_ip="198.18.0.19")
        for i in NODES:
            poll(lambda i=i: peer_ip(kl, i, cidr9) == "198.18.0.19", 10, f"n{i} follows n9's IP")
    kl.kubectl("delete", "node", fake)
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, cidr9) is None, 10, f"n9's route gone on n{i}")

    # A Node without metadata.annotations at all: no peer, nobody trips over it; annotated
    # later: a peer.
    kl.create(node_object("bare", pod_cidr(10)))
    assert "annotations" not in kl.node("bare")["metadata"]
    kl.annotate("bare", **{k.removeprefix(f"{PREFIX}/").replace("-", "_"): v
                           for k, v in go_annotations("198.18.0.10", kl.lab.backend,
                                                      "aa:bb:cc:00:00:10").items()})
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(10)) is not None, 10, f"n{i} routes 'bare'")
    kl.kubectl("delete", "node", "bare")
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(10)) is None, 10, f"'bare' gone on n{i}")
    assert all(kl.alive(i) for i in NODES), kl.dump()
    ok, matrix = kl.ping_all()
    assert ok, matrix


# -- 3. the apiserver restarted -------------------------------------------------------------------


@contextlib.contextmanager
def nodes_cut_off(kl: KubeLab) -> Iterator[None]:
    """The nodes cannot reach the apiserver (TCP resets on the underlay bridge, in the
    underlay namespace); kubectl, run in that namespace, still can."""
    rule = ["INPUT", "-i", kl.names.bridge, "-p", "tcp", "--dport", str(kl.server.port),
            "-j", "REJECT", "--reject-with", "tcp-reset"]
    run(nsexec(kl.names.underlay_ns, ["iptables", "-w", "-I", *rule]))
    try:
        yield
    finally:
        run(nsexec(kl.names.underlay_ns, ["iptables", "-w", "-D", *rule]))


@both
def test_apiserver_restart_loses_no_event(lab3: KubeLab) -> None:
    kl = lab3
    mac = "aa:bb:cc:00:00:12"
    kl.create(node_object("n12", pod_cidr(12), go_annotations("198.18.0.12", kl.lab.backend, mac)))
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(12)) is not None, 10, f"n{i} routes n12")
    marks = {i: len(kl.log(i)) for i in NODES}
    with nodes_cut_off(kl):
        kl.crash_apiserver()
        try:
            for i in NODES:
                poll(lambda i=i: "lease watch lost" in kl.log(i)[marks[i]:], 15,
                     f"n{i} notices the apiserver is gone", detail=kl.dump)
            ok, matrix = kl.ping_all()  # the datapath stays while the API is away
            assert ok, matrix
        finally:
            kl.start_apiserver()
        # Back, but the daemons' watches are still disconnected: a new peer, a changed one.
        changed = datetime.now(UTC)
        kl.create(node_object("n11", pod_cidr(11), go_annotations("198.18.0.11", kl.lab.backend,
                                                                  "aa:bb:cc:00:00:11")))
        kl.annotate("n12", public_ip="198.18.0.112")
        assert all(kl.route_to(i, pod_cidr(11)) is None for i in NODES)
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(11)) is not None, 40, f"n{i} routes n11",
             detail=kl.dump)
        poll(lambda i=i: peer_ip(kl, i, pod_cidr(12), mac) == "198.18.0.112", 10,
             f"n{i} follows n12")
        resumed = [log_time(line) for line in kl.log(i)[marks[i]:].splitlines()
                   if "lease watch resumed" in line]
        assert resumed and min(resumed) > changed, (resumed, changed)
    kl.kubectl("delete", "node", "n11", "n12")
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(11)) is None and kl.route_to(i, pod_cidr(12)) is None,
             10, f"n11, n12 gone on n{i}")
    assert all(kl.alive(i) for i in NODES), kl.dump()
    ok, matrix = kl.ping_all()
    assert ok, matrix


# -- 4. 410 Gone ----------------------------------------------------------------------------------


def log_time(line: str) -> datetime:
    """The ``time=`` of a daemon's logfmt line."""
    stamp = line.split("time=", 1)[1].split(" ", 1)[0]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def etcd_revision(kl: KubeLab) -> int:
    return int(json.loads(kl.server.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["header"]["revision"])


@vxlan_only
def test_watch_410_relists_and_diffs(lab3: KubeLab) -> None:
    kl = lab3
    marks = {i: len(kl.log(i)) for i in NODES}
    # Other objects move etcd's revision past what the node watches last saw; compacted at
    # its head and the apiserver restarted (its watch cache starts there), the daemons'
    # resume versions are gone: 410.  A node added meanwhile comes from the re-list.
    for k in range(3):
        kl.kubectl("create", "configmap", f"bump-{k}", "-n", "default")
    kl.crash_apiserver()
    try:
        kl.server.etcdctl("compact", str(etcd_revision(kl)))
    finally:
        kl.start_apiserver()
    kl.create(node_object("n13", pod_cidr(13), go_annotations("198.18.0.13", "vxlan", "aa:bb:cc:00:00:13")))
    for i in NODES:
        poll(lambda i=i: "re-listing and diffing" in kl.log(i)[marks[i]:], 40,
             f"n{i} re-lists after 410", detail=kl.dump)
        poll(lambda i=i: kl.route_to(i, pod_cidr(13)) is not None, 10, f"n{i} routes n13")
    kl.kubectl("delete", "node", "n13")
    kl.kubectl("delete", "configmap", "-n", "default", "bump-0", "bump-1", "bump-2")
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(13)) is None, 10, f"n13 gone on n{i}")
    ok, matrix = kl.ping_all()
    assert ok, matrix


# -- 5. RBAC --------------------------------------------------------------------------------------


def readyz(kl: KubeLab, i: int) -> tuple[int, str]:
    out = run(nsexec(kl.names.node_ns(i), ["curl", "-s", "-m", "2", "-w", "\n%{http_code}",
                                           f"http://127.0.0.1:{HEALTHZ_PORT}/readyz"]), check=False).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def role_without_status_patch(role: dict[str, Any]) -> dict[str, Any]:
    edited = json.loads(json.dumps(role))
    edited["rules"] = [r for r in edited["rules"] if "nodes/status" not in r["resources"]]
    return edited


@vxlan_only
def test_rbac_without_nodes_status_patch_names_it_and_is_not_ready(lab3: KubeLab) -> None:
    kl = lab3
    role = flannel_role(kl.server)
    n4 = node_name(4)
    kl.create(node_object(n4, pod_cidr(4)))
    kl.server.apply(role_without_status_patch(role))
    try:
        # RBAC changes reach the authorizer within a moment: wait until the role bites.
        def denied() -> bool:
            res = kl.server.kubectl("auth", "can-i", "patch", "nodes/status", kubeconfig=kl.kubeconfig,
                                    check=False)
            return res.stdout.strip() == "no"

        poll(denied, 10, "the role change is in force")
        since = time.time() - 1.0
        kl.start(4, ["--healthz-port", str(HEALTHZ_PORT)])
        quote = (f'nodes "{n4}" is forbidden: User "system:serviceaccount:kube-flannel:flannel" cannot '
                 'patch resource "nodes/status" in API group "" at the cluster scope')
        logged = quote.replace('"', '\\"')  # inside the logfmt msg="..."
        poll(lambda: logged in kl.log(4), 20, "the 403 is logged", detail=lambda: kl.log(4))
        line = next(ln for ln in kl.log(4).splitlines() if logged in ln)
        assert "acquiring a subnet lease" in line and "retrying" in line, line
        code, body = readyz(kl, 4)
        assert code == 503 and "waiting for: lease" in body and quote in body, (code, body)
        assert kl.alive(4)
        assert not kl.lab.subnet_file(4).exists()
    finally:
        kl.server.apply(role)
    # The right role back: the daemon goes on by itself.
    try:
        kl.wait_subnet_file(4, since, 40)
        poll(lambda: readyz(kl, 4)[0] == 200, 20, "n4 ready", detail=lambda: kl.log(4))
        cond = kl.condition(n4)
        assert cond is not None and cond["reason"] == "FlannelIsUp"
        converge(kl, (*NODES, 4))
    finally:
        kl.kill(4)
        kl.kubectl("delete", "node", n4)
    for i in NODES:
        poll(lambda i=i: kl.route_to(i, pod_cidr(4)) is None, 10, f"n4 gone on n{i}")


# -- flannelctl in Kubernetes mode ----------------------------------------------------------------


@vxlan_only
def test_flannelctl_lists_the_nodes_leases(lab3: KubeLab) -> None:
    kl = lab3
    base = ["--kube-subnet-mgr", "--kubeconfig-file", str(kl.kubeconfig), "--net-config-path", str(kl.netconf)]
    exe = str(REPO / ".venv" / "bin" / "flannelctl")
    out = run(nsexec(kl.names.node_ns(1), [exe, *base, "subnets", "-o", "json"])).stdout
    rows = {r["node"]: r for r in json.loads(out)}
    assert set(rows) >= {node_name(i) for i in NODES}
    for i in NODES:
        row = rows[node_name(i)]
        assert (row["subnet"], row["public_ip"], row["backend_type"]) == (pod_cidr(i), f"198.18.0.{i}", "vxlan")
        assert row["vtep_mac"] == vtep_mac(kl, node_name(i)) and row["rejected"] is None
        assert row["ttl_seconds"] is None
    table = run(nsexec(kl.names.node_ns(1), [exe, *base, "subnets"])).stdout.splitlines()
    assert table[0].split()[:2] == ["SUBNET", "NODE"]
    assert table[1].split()[:3] == [pod_cidr(1), "n1", "198.18.0.1"]
    res = run(nsexec(kl.names.node_ns(1), [exe, *base, "subnets", "release", pod_cidr(1)]), check=False)
    assert res.returncode == 2 and "Kubernetes mode" in res.stderr
    conf = run(nsexec(kl.names.node_ns(1), [exe, *base, "config", "get"])).stdout
    assert json.loads(conf) == json.loads(kl.netconf.read_text())

