"""Interop: a node programmed by hand exactly as Go flannel's vxlan backend would program it.

Node n9 runs no daemon of ours: iproute2 builds flannel.1 (VNI 1, port 8472, learning off,
a MAC we pick), its address, and per-peer neigh/fdb/route for our nodes; its lease goes into
etcd in Go flannel's exact JSON with a 24 h etcd lease.  Our nodes must program routes to it
from that lease alone; pods on both sides must reach each other both ways, and the underlay
must carry standard VXLAN (tshark decodes VNI 1 on UDP 8472).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from labkit import LabHandle, lab_running, poll, require_flanneld
from netnslab import lab as labmod
from netnslab.proc import ip_batch, nsexec, run

pytestmark = pytest.mark.lab

GO_NODE = 9
GO_MAC = "0e:f1:a9:00:00:09"
NETWORK = IPv4Network("10.244.0.0/16")
GO_SUBNET = IPv4Network("10.244.200.0/24")  # outside the 100 subnets our nodes pick from


def go_lease_json(public_ip: str, mac: str) -> str:
    """Byte-for-byte what Go flannel's vxlan backend writes for a node."""
    return (
        f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
    )


def build_go_node(h: LabHandle) -> None:
    labmod.add_bare_node(h.name, GO_NODE)
    ns, gw = h.node_ns(GO_NODE), GO_SUBNET.network_address
    ip_batch(
        [
            f"-n {ns} link add flannel.1 type vxlan id 1 local 198.18.0.{GO_NODE} "
            f"dev {h.names.uplink} dstport 8472 nolearning",
            f"-n {ns} link set flannel.1 address {GO_MAC} mtu 1450",
            f"-n {ns} addr add {gw}/32 dev flannel.1",
            f"-n {ns} link set flannel.1 up",
        ]
    )
    h.state.subnet_file(GO_NODE).write_text(
        f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gw + 1}/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    labmod.add_pods(h.name, GO_NODE, 1, attach="bridge")
    grant = h.etcdctl("lease", "grant", "86400")  # "lease 694d... granted with TTL(86400s)"
    lease_id = grant.split()[1]
    key = f"/coreos.com/network/subnets/{GO_SUBNET.network_address}-{GO_SUBNET.prefixlen}"
    h.etcdctl("put", f"--lease={lease_id}", key, go_lease_json(f"198.18.0.{GO_NODE}", GO_MAC))
    # Program our nodes on the Go node, as Go flannel does on a lease-added event.
    lines = []
    for key, value in h.leases().items():
        lease = json.loads(value)
        if lease["PublicIP"] == f"198.18.0.{GO_NODE}":
            continue
        part = key.rsplit("/", 1)[-1]
        sub = IPv4Network(part.replace("-", "/"))
        mac = lease["BackendData"]["VtepMAC"]
        vtep = sub.network_address
        lines += [
            f"-n {ns} neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent",
            f"-n {ns} route replace {sub} via {vtep} dev flannel.1 onlink",
        ]
        run(["bridge", "-n", ns, "fdb", "append", mac, "dev", "flannel.1",
             "dst", lease["PublicIP"], "self", "permanent"])  # fmt: skip
    ip_batch(lines)


@pytest.fixture(scope="module")
def mixed() -> Iterator[LabHandle]:
    require_flanneld()
    with lab_running("flabtio", nodes=2, backend="vxlan", pods_per_node=1) as h:
        build_go_node(h)
        yield h


def test_our_nodes_program_the_go_node(mixed: LabHandle) -> None:
    vtep = str(GO_SUBNET.network_address)
    for node in (1, 2):
        poll(lambda n=node: mixed.has_route(n, GO_SUBNET), 5.0, 0.02, f"n{node} route to Go node")  # type: ignore[misc]
        (route,) = [r for r in mixed.ipj(mixed.node_ns(node), "-4", "route") if r["dst"] == str(GO_SUBNET)]
        assert route["gateway"] == vtep and route["dev"] == "flannel.1"
        assert mixed.has_fdb(node, GO_MAC) and mixed.has_neigh(node, vtep)
        fdb = run(["bridge", "-n", mixed.node_ns(node), "fdb", "show", "dev", "flannel.1"]).stdout
        assert any(GO_MAC in line and "dst 198.18.0.9" in line for line in fdb.splitlines()), fdb


def test_pods_reach_each_other_both_ways(mixed: LabHandle) -> None:
    go_pod, go_ip = mixed.pod(GO_NODE, 1), mixed.pod_ip(GO_NODE, 1)
    for node in (1, 2):
        poll(lambda n=node: mixed.ping(mixed.pod(n, 1).name, go_ip), 5.0, 0.05, f"n{node}p1 -> Go pod")  # type: ignore[misc]
        assert mixed.ping(go_pod.name, mixed.pod_ip(node, 1)), f"Go pod -> n{node}p1"


def _start_capture(h: LabHandle, count: int) -> subprocess.Popen[str]:
    cmd = nsexec(h.names.underlay_ns, [
        "tshark", "-i", h.names.bridge, "-f", "udp port 8472", "-c", str(count), "-a", "duration:30",
        "-d", "udp.port==8472,vxlan", "-T", "fields", "-E", "separator=|",
        "-e", "udp.dstport", "-e", "vxlan.vni", "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type",
    ])  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_underlay_carries_vxlan_vni1_port_8472(mixed: LabHandle) -> None:
    go_pod, go_ip = mixed.pod(GO_NODE, 1), mixed.pod_ip(GO_NODE, 1)
    our_pod, our_ip = mixed.pod(1, 1), mixed.pod_ip(1, 1)
    cap = _start_capture(mixed, 8)
    # tshark's start-up time is unknown: ping both ways until it has its 8 packets.
    poll(lambda: cap.poll() is not None or not (
        mixed.ping(go_pod.name, our_ip, 0.5) and mixed.ping(our_pod.name, go_ip, 0.5)
    ), 30.0, 0.05, "tshark capture complete")  # fmt: skip
    out, err = cap.communicate(timeout=30)
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    assert len(rows) == 8, out + err
    directions = set()
    for dport, vni, src, dst, _icmp in rows:
        assert dport == "8472" and vni == "1", (dport, vni)
        outer_src, inner_src = src.split(",")
        outer_dst, inner_dst = dst.split(",")
        directions.add((outer_src, outer_dst))
        # Our pod's requests may leave masqueraded to n1's flannel.1 address (the bridge
        # delegate masquerades when FLANNEL_IPMASQ=false), so only the network is fixed.
        inner = {inner_src, inner_dst}
        assert go_ip in inner and all(IPv4Address(a) in NETWORK for a in inner), inner
    assert directions == {("198.18.0.9", "198.18.0.1"), ("198.18.0.1", "198.18.0.9")}
