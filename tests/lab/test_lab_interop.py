"""Interop: a node programmed by hand exactly as Go flannel's vxlan backend would program it.

Node n9 runs no daemon of ours: iproute2 builds flannel.1 (VNI 1, port 8472, learning off,
a MAC we pick), its address, and per-peer neigh/fdb/route for our nodes; its lease goes into
etcd in Go flannel's exact JSON with a 24 h etcd lease.  Our nodes must program routes to it
from that lease alone; pods on both sides must reach each other both ways, and the underlay
must carry standard VXLAN (tshark decodes VNI 1 on UDP 8472).

The dual-stack half (lab ``flabti6``, ``dual_stack=True``) does the same for a dual-stack vxlan
node: n9 gets ``flannel.1`` and ``flannel-v6.1`` exactly as Go flannel's RegisterNetwork /
newVXLANDevice / Configure(IPv6) create them, its lease goes in under Go's dual key
``10.244.200.0-24&fd10:244:0:c8::-64`` (Grant 24 h + Txn "key absent" -> Put, as Go's
createSubnet), and its per-peer entries for both families are written as handleSubnetEvents
writes them.  Our nodes must program its IPv6 half (BackendV6Data.VtepMAC, dst PublicIPv6), pods
must reach each other both ways over both families, the underlay must carry VXLAN over IPv6,
and the lease's removal must clear both families on our nodes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import pytest
from labkit import LabHandle, figure, lab_running, poll, require_flanneld
from netnslab import etcd as etcdmod
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


# ================================================================ dual stack (IPv4 + IPv6)
#
# Followed from Go flannel (flannel-io/flannel, pkg/backend/vxlan and pkg/subnet):
#   vxlan.go RegisterNetwork: cfg.MTU defaults to the external interface's MTU; with
#     EnableIPv4 newVXLANDevice("flannel.<VNI>", local IfaceAddr), with EnableIPv6
#     newVXLANDevice("flannel-v6.<VNI>", local IfaceV6Addr), both vtepIndex = the uplink,
#     Port 0 (kernel default 8472), Learning false; then AcquireLease with newSubnetAttrs
#     (PublicIP + BackendData, PublicIPv6 + BackendV6Data, each {VNI, VtepMAC}); then
#     Configure(lease.Subnet.IP/32) and ConfigureIPv6(lease.IPv6Subnet.IP/128): address, up.
#   device.go newVXLANDevice: one LinkAdd with the MAC and MTU = cfg.MTU - 50, then
#     net/ipv6/conf/<dev>/accept_ra = 0.  AddARP/AddV6ARP: NeighSet NUD_PERMANENT (neigh
#     replace); AddFDB/AddV6FDB: NeighSet AF_BRIDGE NTF_SELF NUD_PERMANENT (fdb replace ...
#     self permanent).
#   vxlan_network.go handleSubnetEvents, EventAdded per family: ARP (subnet IP -> VtepMAC),
#     FDB (VtepMAC -> PublicIP / PublicIPv6), then RouteReplace(subnet via subnet IP, onlink)
#     last.
#   subnet.MakeSubnetKey: "a.b.c.d-len&<ipv6>-len"; etcd registry createSubnet: Grant(24 h),
#     Txn(If Version(key) == 0, Then Put(key, json.Marshal(LeaseAttrs), WithLease)).
#   subnet.WriteSubnetFile: FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_NETWORK,
#     FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ.

DUAL_LAB = "flabti6"
VXLAN4, VXLAN6 = "flannel.1", "flannel-v6.1"
GO_MAC6 = "0e:f1:a9:00:06:09"
GO_PUBLIC_IP, GO_PUBLIC_IP6 = f"198.18.0.{GO_NODE}", f"2001:db8:18::{GO_NODE}"
NETWORK6 = IPv6Network("fd10:244::/56")
# 0xc8 = the 200th /64: our nodes pick among the first 100 free ones from IPv6SubnetMin up.
GO_SUBNET6 = IPv6Network("fd10:244:0:c8::/64")
GO_VXLAN_MTU = 1500 - 50  # uplink MTU - 50, both devices (and FLANNEL_MTU)
GO_SUBNET_TTL = 24 * 3600  # pkg/subnet: subnetTTL
PROGRAM_DEADLINE = 10.0


def go_dual_lease_json(public_ip: str, public_ip6: str, mac: str, mac6: str) -> str:
    """json.Marshal(lease.LeaseAttrs) of a dual-stack vxlan node, Go's field order."""
    return (
        f'{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ip6}","BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},'
        f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}'
    )


def go_subnet_key(sn: IPv4Network, sn6: IPv6Network) -> str:
    """subnet.MakeSubnetKey(sn, sn6) under the etcd prefix (IPv6 as Go's net.IP.String)."""
    return (f"/coreos.com/network/subnets/{sn.network_address}-{sn.prefixlen}"
            f"&{sn6.network_address}-{sn6.prefixlen}")  # fmt: skip


def _same_ip(a: object, b: str) -> bool:
    try:
        return isinstance(a, str) and ip_address(a) == ip_address(b)
    except ValueError:
        return False


@dataclass(frozen=True)
class Peer:
    """One of our nodes, as a Go node reads it from its lease (key + JSON)."""

    node: int
    subnet: IPv4Network
    subnet6: IPv6Network
    public_ip: str
    public_ip6: str
    mac: str
    mac6: str


def peer_of(key: str, value: str) -> Peer:
    v4, _, v6 = key.rsplit("/", 1)[-1].partition("&")
    addr6, _, plen6 = v6.rpartition("-")
    lease = json.loads(value)
    return Peer(
        node=int(lease["PublicIP"].rsplit(".", 1)[-1]),
        subnet=IPv4Network(v4.replace("-", "/")),
        subnet6=IPv6Network(f"{addr6}/{plen6}"),
        public_ip=lease["PublicIP"],
        public_ip6=lease["PublicIPv6"],
        mac=lease["BackendData"]["VtepMAC"],
        mac6=lease["BackendV6Data"]["VtepMAC"],
    )


@dataclass
class GoDualNode:
    """What the hand-made node is: its key, value, etcd lease, peers, and what was run."""

    key: str = ""
    value: str = ""
    lease_id: str = ""
    peers: dict[int, Peer] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    hand_seconds: float = 0.0  # the whole hand-programming sequence
    programmed_after: float | None = None  # lease committed -> both our nodes have both halves
    entries_seen: dict[int, dict[str, Any]] = field(default_factory=dict)


class DualLab(LabHandle):
    def pod_ip6(self, node: int, index: int = 1) -> str:
        return self.pod(node, index).address6.split("/")[0]

    def ping6(self, src_ns: str, dst: str, timeout: float = 1.0) -> bool:
        return self.ping_run(src_ns, dst, "-6", "-q", timeout=timeout).returncode == 0

    def vxlan_info(self, node: int, dev: str) -> dict[str, Any]:
        links = self.ipj(self.node_ns(node), "-d", "link", "show", dev)
        if not links:
            return {}
        info: dict[str, Any] = dict(links[0]["linkinfo"]["info_data"])
        info["mtu"], info["address"] = links[0]["mtu"], links[0]["address"]
        return info

    def go_entries(self, node: int) -> dict[str, dict[str, Any] | None]:
        """Node ``node``'s kernel entries for the Go node, found by what identifies them (route
        dst, neighbour address, fdb MAC), whatever their content."""
        ns = self.node_ns(node)
        vtep4, vtep6 = str(GO_SUBNET.network_address), str(GO_SUBNET6.network_address)

        def first(
            items: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]
        ) -> dict[str, Any] | None:
            return next((i for i in items if pred(i)), None)

        return {
            "route4": first(self.ipj(ns, "-4", "route"), lambda r: r.get("dst") == str(GO_SUBNET)),
            "neigh4": first(self.ipj(ns, "-4", "neigh", "show", "dev", VXLAN4), lambda n: n.get("dst") == vtep4),
            "fdb4": first(self.fdb(node, VXLAN4), lambda e: str(e.get("mac", "")).lower() == GO_MAC),
            "route6": first(self.ipj(ns, "-6", "route"), lambda r: r.get("dst") == str(GO_SUBNET6)),
            "neigh6": first(self.ipj(ns, "-6", "neigh", "show", "dev", VXLAN6), lambda n: _same_ip(n.get("dst"), vtep6)),
            "fdb6": first(self.fdb(node, VXLAN6), lambda e: str(e.get("mac", "")).lower() == GO_MAC6),
        }  # fmt: skip


def entries_problems(e: dict[str, dict[str, Any] | None]) -> list[str]:
    """What is not as Go flannel itself would program the Go node's lease ([] = all exact)."""
    want: dict[str, Callable[[dict[str, Any]], bool]] = {
        "route4": lambda r: r.get("dev") == VXLAN4 and r.get("gateway") == str(GO_SUBNET.network_address)
        and "onlink" in r.get("flags", []),
        "neigh4": lambda n: str(n.get("lladdr", "")).lower() == GO_MAC and "PERMANENT" in n.get("state", []),
        "fdb4": lambda f: f.get("dst") == GO_PUBLIC_IP and f.get("state") == "permanent",
        "route6": lambda r: r.get("dev") == VXLAN6 and _same_ip(r.get("gateway"), str(GO_SUBNET6.network_address))
        and "onlink" in r.get("flags", []),
        "neigh6": lambda n: str(n.get("lladdr", "")).lower() == GO_MAC6 and "PERMANENT" in n.get("state", []),
        "fdb6": lambda f: _same_ip(f.get("dst"), GO_PUBLIC_IP6) and f.get("state") == "permanent",
    }  # fmt: skip
    out = []
    for name, ok in want.items():
        got = e.get(name)
        if got is None or not ok(got):
            out.append(f"{name}: {got}")
    return out


def _go_run(go: GoDualNode, argv: list[str], input_text: str | None = None) -> str:
    """Run one command of the hand-made node (recorded for the report)."""
    go.commands.append(shlex.join(argv) + (f" <<< {input_text.strip()!r}" if input_text else ""))
    return run(argv, input_text=input_text).stdout


def _etcdctl_argv(h: LabHandle, *args: str) -> list[str]:
    # From the Go node's namespace: flanneld talks to etcd over the underlay.
    return nsexec(h.node_ns(GO_NODE), ["env", "ETCDCTL_API=3", etcdmod.ETCDCTL_BIN, "--endpoints",
                                       h.names.etcd_endpoint, "--command-timeout=3s", *args])  # fmt: skip


def build_go_dual_node(h: DualLab) -> GoDualNode:
    go = GoDualNode()
    labmod.add_bare_node(h.name, GO_NODE)
    ns, uplink = h.node_ns(GO_NODE), h.names.uplink
    t0 = time.monotonic()
    # RegisterNetwork -> newVXLANDevice, IPv4 then IPv6.
    for dev, local, mac in ((VXLAN4, GO_PUBLIC_IP, GO_MAC), (VXLAN6, GO_PUBLIC_IP6, GO_MAC6)):
        _go_run(go, ["ip", "-n", ns, "link", "add", dev, "address", mac, "mtu", str(GO_VXLAN_MTU),
                     "type", "vxlan", "id", "1", "local", local, "dev", uplink, "dstport", "8472",
                     "nolearning"])  # fmt: skip
        _go_run(go, nsexec(ns, ["sysctl", "-qw", f"net/ipv6/conf/{dev}/accept_ra=0"]))
    # AcquireLease -> createSubnet: Grant(24 h), then Put only if the key does not exist yet.
    go.key = go_subnet_key(GO_SUBNET, GO_SUBNET6)
    go.value = go_dual_lease_json(GO_PUBLIC_IP, GO_PUBLIC_IP6, GO_MAC, GO_MAC6)
    grant = _go_run(go, _etcdctl_argv(h, "lease", "grant", str(GO_SUBNET_TTL)))
    go.lease_id = grant.split()[1]  # "lease 694d... granted with TTL(86400s)"
    # etcdctl txn: compares, blank line, success ops, blank line, failure ops (none); the value
    # as a Go-quoted string (etcdctl unquotes it with %q).
    txn = f'version("{go.key}") = "0"\n\nput --lease={go.lease_id} {go.key} {json.dumps(go.value)}\n\n\n'
    out = _go_run(go, _etcdctl_argv(h, "txn"), input_text=txn)
    committed = time.monotonic()
    assert out.split()[:1] == ["SUCCESS"], out
    watcher = _ProgrammedWatcher(h, committed)
    # Configure / ConfigureIPv6: the subnets' network addresses as /32 and /128, then up.
    for dev, addr in (
        (VXLAN4, f"{GO_SUBNET.network_address}/32"),
        (VXLAN6, f"{GO_SUBNET6.network_address}/128"),
    ):
        _go_run(go, ["ip", "-n", ns, "addr", "add", addr, "dev", dev])
        _go_run(go, ["ip", "-n", ns, "link", "set", dev, "up"])
    h.state.subnet_file(GO_NODE).write_text(
        f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GO_SUBNET.network_address + 1}/{GO_SUBNET.prefixlen}\n"
        f"FLANNEL_IPV6_NETWORK={NETWORK6}\n"
        f"FLANNEL_IPV6_SUBNET={GO_SUBNET6.network_address + 1}/{GO_SUBNET6.prefixlen}\n"
        f"FLANNEL_MTU={GO_VXLAN_MTU}\nFLANNEL_IPMASQ=false\n"
    )
    # Run -> WatchLeases snapshot -> handleSubnetEvents(EventAdded) for every other lease.
    for key, value in h.leases().items():
        if key == go.key:
            continue  # its own lease (LeaseWatcher skips the same subnets)
        peer = peer_of(key, value)
        go.peers[peer.node] = peer
        for fam, dev, sub, mac, dst in (("-4", VXLAN4, peer.subnet, peer.mac, peer.public_ip),
                                        ("-6", VXLAN6, peer.subnet6, peer.mac6, peer.public_ip6)):  # fmt: skip
            vtep = str(sub.network_address)
            # AddARP / AddV6ARP, AddFDB / AddV6FDB, then the route (last, as Go does).
            _go_run(go, ["ip", "-n", ns, fam, "neigh", "replace", vtep, "lladdr", mac, "dev", dev,
                         "nud", "permanent"])  # fmt: skip
            _go_run(go, ["bridge", "-n", ns, "fdb", "replace", mac, "dev", dev, "dst", dst, "self",
                         "permanent"])  # fmt: skip
            _go_run(go, ["ip", "-n", ns, fam, "route", "replace", str(sub), "via", vtep, "dev", dev,
                         "onlink"])  # fmt: skip
    go.hand_seconds = time.monotonic() - t0
    # A pod on it: veth + cni0 by hand (the lab's bridge attach), both families, FLANNEL_MTU.
    labmod.add_pods(h.name, GO_NODE, 1, attach="bridge")
    go.programmed_after, go.entries_seen = watcher.join()
    return go


class _ProgrammedWatcher:
    """Polls our nodes from the moment the lease is committed until both have the Go node's
    entries of both families exactly as Go programs them (runs while n9 is programmed)."""

    def __init__(self, h: DualLab, since: float) -> None:
        self.h, self.since = h, since
        self.took: float | None = None
        self.last: dict[int, dict[str, Any]] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while time.monotonic() - self.since < PROGRAM_DEADLINE:
            self.last = {n: self.h.go_entries(n) for n in (1, 2)}
            if not any(entries_problems(e) for e in self.last.values()):
                self.took = time.monotonic() - self.since
                return
            time.sleep(0.01)

    def join(self) -> tuple[float | None, dict[int, dict[str, Any]]]:
        self.thread.join(PROGRAM_DEADLINE + 5)
        return self.took, self.last


@pytest.fixture(scope="class")
def dual() -> Iterator[tuple[DualLab, GoDualNode]]:
    require_flanneld()
    with lab_running(DUAL_LAB, nodes=2, backend="vxlan", pods_per_node=1, dual_stack=True) as h:
        lab = DualLab(h.name)
        go = build_go_dual_node(lab)
        print("hand-made Go node n9, in order:\n  " + "\n  ".join(go.commands))
        yield lab, go


class TestDualStack:
    """A hand-made Go dual-stack vxlan node (n9) next to two of ours, in lab ``flabti6``.  A class
    (class-scoped lab) so that ``-k TestDualStack`` / ``-k dual`` selects exactly these."""

    def test_dual_our_nodes_program_the_go_nodes_both_halves(self, dual: tuple[DualLab, GoDualNode]) -> None:
        h, go = dual
        assert go.programmed_after is not None, (
            f"not programmed as Go would within {PROGRAM_DEADLINE}s of the lease: "
            + "; ".join(f"n{n}: {entries_problems(e)}" for n, e in go.entries_seen.items())
        )
        figure("interop_dual_program", hand_seconds=go.hand_seconds, programmed_seconds=go.programmed_after)
        for node in (1, 2):
            e = h.go_entries(node)
            assert not entries_problems(e), (node, entries_problems(e))
            # Each family's MAC on its own device only: BackendV6Data's on flannel-v6.1.
            assert not any(str(f.get("mac", "")).lower() == GO_MAC6 for f in h.fdb(node, VXLAN4))
            assert not any(str(f.get("mac", "")).lower() == GO_MAC for f in h.fdb(node, VXLAN6))
        # Our daemons leave the Go node's lease as it wrote it: same bytes, same 24 h etcd lease.
        assert h.leases()[go.key] == go.value
        ttl = h.etcdctl("lease", "timetolive", go.lease_id)
        assert f"granted with TTL({GO_SUBNET_TTL}s)" in ttl, ttl
        assert json.loads(h.etcdctl("get", go.key, "-w", "json"))["kvs"][0]["lease"] == int(go.lease_id, 16)
        # The devices: ours carry what Go's carry (VNI, port, learning off, MTU, each family's
        # local address).
        for dev, ours_local, go_local in (
            (VXLAN4, "198.18.0.1", GO_PUBLIC_IP),
            (VXLAN6, "2001:db8:18::1", GO_PUBLIC_IP6),
        ):
            ours, gos = h.vxlan_info(1, dev), h.vxlan_info(GO_NODE, dev)
            # MTU: Go asks for uplink MTU - 50 on both devices; for flannel-v6.1 the kernel
            # clamps that to uplink MTU - 70 (VXLAN over IPv6), so both sides end up equal.
            for k in ("id", "port", "learning", "mtu"):
                assert ours.get(k) == gos.get(k), (dev, k, ours, gos)
            assert _same_ip(ours.get("local") or ours.get("local6"), ours_local), ours
            assert _same_ip(gos.get("local") or gos.get("local6"), go_local), gos
            print(f"{dev}: ours mtu {ours['mtu']} mac {ours['address']}; "
                  f"Go-made mtu {gos['mtu']} mac {gos['address']}")  # fmt: skip

    def test_dual_pods_reach_each_other_both_ways_over_both_families(
        self, dual: tuple[DualLab, GoDualNode]
    ) -> None:
        h, go = dual
        go_pod = h.pod(GO_NODE, 1).name
        go4, go6 = h.pod_ip(GO_NODE, 1), h.pod_ip6(GO_NODE, 1)
        assert IPv6Address(go6) in GO_SUBNET6, go6

        def both_ways(node: int, fam: int) -> tuple[bool, bool]:
            ours = h.pod(node, 1).name
            if fam == 4:
                return h.ping(ours, go4), h.ping(go_pod, h.pod_ip(node, 1))
            return h.ping6(ours, go6), h.ping6(go_pod, h.pod_ip6(node, 1))

        for node in (1, 2):
            for fam in (4, 6):
                poll(lambda n=node, f=fam: all(both_ways(n, f)), 5.0, 0.05, f"n{node}p1 <-> Go pod, IPv{fam}")  # type: ignore[misc]
        # Each family stands on its own hand-made entries: break one fdb entry of n9 towards
        # n1 and that family fails both ways (the other one keeps working); put it back.
        ns, p = h.node_ns(GO_NODE), go.peers[1]
        for fam, dev, mac, dst in ((6, VXLAN6, p.mac6, p.public_ip6), (4, VXLAN4, p.mac, p.public_ip)):
            run(["bridge", "-n", ns, "fdb", "del", mac, "dev", dev, "dst", dst, "self"])
            try:
                assert both_ways(1, fam) == (False, False), f"IPv{fam} still flows without n9's fdb entry"
                assert all(both_ways(1, 10 - fam)), f"IPv{10 - fam} broke with IPv{fam}'s fdb entry"
            finally:
                run(["bridge", "-n", ns, "fdb", "replace", mac, "dev", dev, "dst", dst, "self", "permanent"])
            poll(lambda f=fam: all(both_ways(1, f)), 5.0, 0.05, f"IPv{fam} back after the fdb entry")  # type: ignore[misc]

    def test_dual_underlay_carries_vxlan_over_ipv6(self, dual: tuple[DualLab, GoDualNode]) -> None:
        h, _ = dual
        go_pod, go6, ours6 = h.pod(GO_NODE, 1).name, h.pod_ip6(GO_NODE, 1), h.pod_ip6(1, 1)
        count = 8
        cap = subprocess.Popen(nsexec(h.names.underlay_ns, [
            "tshark", "-i", h.names.bridge, "-f", "ip6 and udp port 8472", "-c", str(count),
            "-a", "duration:30", "-d", "udp.port==8472,vxlan", "-T", "fields", "-E", "separator=|",
            "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "udp.dstport", "-e", "vxlan.vni",
            "-e", "icmpv6.type", "-e", "ip.src",
        ]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        # The Go pod pings ours: requests and replies both carry the pods' own addresses
        # (our pod's own connections would leave masqueraded by its bridge delegate).
        try:
            poll(lambda: cap.poll() is not None or not h.ping6(go_pod, ours6, 0.5), 30.0, 0.05,
                 "tshark capture complete")  # fmt: skip
        finally:
            try:  # a failed ping leaves tshark to its own 30 s limit; what it saw is kept
                out, err = cap.communicate(timeout=35)
            except subprocess.TimeoutExpired:
                cap.kill()
                out, err = cap.communicate()
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        assert len(rows) == count, out + err
        seen = set()
        for src, dst, dport, vni, icmp6, ip4 in rows:
            (outer_src, inner_src), (outer_dst, inner_dst) = src.split(","), dst.split(",")
            assert dport == "8472" and vni == "1" and ip4 == "", (dport, vni, ip4)
            seen.add((str(ip_address(outer_src)), str(ip_address(outer_dst)),
                      str(ip_address(inner_src)), str(ip_address(inner_dst)), icmp6))  # fmt: skip
        assert seen == {
            (GO_PUBLIC_IP6, "2001:db8:18::1", go6, ours6, "128"),  # echo request, n9 -> n1
            ("2001:db8:18::1", GO_PUBLIC_IP6, ours6, go6, "129"),  # echo reply, n1 -> n9
        }, seen

    def test_dual_lease_removal_clears_both_families(self, dual: tuple[DualLab, GoDualNode]) -> None:
        """Revoking the Go node's etcd lease (what its 24 h TTL running out does) deletes its key:
        our nodes drop its route/neigh/fdb of both families and still route to each other."""
        h, go = dual
        for node in (1, 2):
            assert not entries_problems(h.go_entries(node)), node
        t0 = time.monotonic()
        h.etcdctl("lease", "revoke", go.lease_id)
        assert go.key not in h.leases()

        def gone(node: int) -> bool:
            return all(v is None for v in h.go_entries(node).values())

        took = poll(lambda: gone(1) and gone(2), 5.0, 0.01, "Go node's entries cleared on n1, n2")
        figure("interop_dual_removed", cleared_seconds=took, total_seconds=time.monotonic() - t0)
        for fam_ping, addr in ((h.ping, h.pod_ip(2, 1)), (h.ping6, h.pod_ip6(2, 1))):
            assert fam_ping(h.pod(1, 1).name, addr), f"n1p1 -> n2p1 {addr}"
        assert not h.ping6(h.pod(GO_NODE, 1).name, h.pod_ip6(1, 1))  # n1 answers no more
