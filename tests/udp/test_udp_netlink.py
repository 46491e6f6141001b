"""Root tests of the udp datapath in two netns nodes: forwarding, lease checks, MTU, wire interop.

Each test builds the `fudp-*` namespaces (udp_topology) and deletes them afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import udp_topology as topo

from flanneld.backends.udp.datapath import control

pytestmark = [
    pytest.mark.netlink,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN)"),
]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Path]:
    topo.setup(pod_mtu=1500)
    try:
        yield tmp_path
    finally:
        topo.teardown()


@pytest.fixture(params=[False, True], ids=["plain", "offload"])
def ours_both(request: pytest.FixtureRequest, nodes: Path) -> Iterator[list[topo.Proc]]:
    procs: list[topo.Proc] = []
    try:
        procs.append(topo.start_ours(0, nodes, offload=request.param))
        procs.append(topo.start_ours(1, nodes, offload=request.param))
        yield procs
    finally:
        for p in procs:
            p.stop()


def stats(p: topo.Proc) -> dict[str, Any]:
    reply = control(p.extra["control"], op="stats")
    assert reply["ok"], reply
    s: dict[str, Any] = reply["stats"]
    return s


def test_ping_both_ways_and_counters(ours_both: list[topo.Proc]) -> None:
    for src, dst in ((0, 1), (1, 0)):
        r = topo.ping(src, topo.POD_IPS[dst])
        assert r.returncode == 0, r.stdout + r.stderr
    peer = stats(ours_both[0])["peers"][topo.UNDERLAY[1]]
    assert peer["tx_packets"] >= 6 and peer["rx_packets"] >= 6
    assert peer["tx_bytes"] >= 6 * 84


def test_tcp_bulk_transfer(ours_both: list[topo.Proc], tmp_path: Path) -> None:
    """8 MB of TCP (super-packets in offload mode) complete; a checksum or segmentation bug
    would stall the transfer (the receiver drops bad segments) and fail iperf3."""
    srv = topo.node_exec(topo.PODS[1], ["iperf3", "-s", "-1"], tmp_path / "srv.log")
    try:
        topo.wait_for(lambda: ":5201" in topo.sh("ss", "-ltn", ns=topo.PODS[1]).stdout,
                      10, "iperf3 server")
        r = topo.sh("iperf3", "-c", topo.POD_IPS[1], "-n", "8M", "-J", ns=topo.PODS[0],
                    check=False)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    finally:
        srv.stop()
    import json

    end = json.loads(r.stdout)["end"]
    assert end["sum_sent"]["bytes"] >= 8 * 1024 * 1024
    assert end["sum_received"]["bytes"] > 0
    s = stats(ours_both[0])
    assert s["drops"]["bad_offload"] == 0
    assert s["peers"][topo.UNDERLAY[1]]["tx_bytes"] >= end["sum_received"]["bytes"]


def test_deleted_lease_gets_net_unreachable(ours_both: list[topo.Proc]) -> None:
    assert control(ours_both[0].extra["control"], op="del_route",
                   subnet=topo.SUBNETS[1])["found"]
    r = topo.ping(0, topo.POD_IPS[1], count=1)
    assert r.returncode != 0
    assert "Destination Net Unreachable" in r.stdout, r.stdout
    s = stats(ours_both[0])
    assert s["drops"]["no_route"] >= 1 and s["icmp_sent"] >= 1
    control(ours_both[0].extra["control"], op="set_route", subnet=topo.SUBNETS[1],
            underlay=topo.UNDERLAY[1])
    assert topo.ping(0, topo.POD_IPS[1], count=1).returncode == 0


def test_mtu_1472_passes_larger_with_df_gets_frag_needed(ours_both: list[topo.Proc]) -> None:
    ok = topo.ping(0, topo.POD_IPS[1], count=2, size=1472 - 28, df=True)
    assert ok.returncode == 0, ok.stdout
    big = topo.ping(0, topo.POD_IPS[1], count=2, size=1472 - 28 + 1, df=True)
    assert big.returncode != 0
    assert "mtu = 1472" in big.stdout or "mtu=1472" in big.stdout + big.stderr, big.stdout


_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 8285))
"""
_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("listening", flush=True)
s.settimeout(float(sys.argv[1]))
try:
    data, addr = s.recvfrom(2048)
    print(addr[0], data.decode(), flush=True)
except TimeoutError:
    print("timeout", flush=True)
"""


def crafted(payload: bytes) -> str:
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    return bytes(IP(src=topo.POD_IPS[1], dst=topo.POD_IPS[0], ttl=9) / UDP(sport=5555, dport=9999)
                 / Raw(payload)).hex()


def pod_listener(tmp_path: Path, name: str, timeout: float) -> topo.Proc:
    p = topo.node_exec(topo.PODS[0], [topo.PYTHON, "-c", _RECV, str(timeout)], tmp_path / name)
    topo.wait_for(lambda: "listening" in p.output(), 10, "pod listener")
    return p


def test_crafted_datagram_lease_check(nodes: Path) -> None:
    dp = topo.start_ours(0, nodes)  # node 1 only; node 2's address holds a lease
    try:
        # from the leased underlay address: reaches the pod
        rx = pod_listener(nodes, "rx1.log", 10)
        topo.sh(topo.PYTHON, "-c", _SEND, topo.UNDERLAY[1], topo.UNDERLAY[0], crafted(b"leased"),
                ns=topo.NODES[1])
        rx.popen.wait(15)
        assert f"{topo.POD_IPS[1]} leased" in rx.output()
        assert stats(dp)["peers"][topo.UNDERLAY[1]]["rx_packets"] == 1
        # from an address on the same wire that holds no lease: dropped and counted
        topo.sh("ip", "addr", "add", "198.18.0.77/24", "dev", "fudp-u2", ns=topo.NODES[1])
        rx = pod_listener(nodes, "rx2.log", 1.0)
        before = stats(dp)["drops"]["source_no_lease"]
        topo.sh(topo.PYTHON, "-c", _SEND, "198.18.0.77", topo.UNDERLAY[0], crafted(b"rogue"),
                ns=topo.NODES[1])
        topo.wait_for(lambda: stats(dp)["drops"]["source_no_lease"] == before + 1, 10,
                      "drop counted")
        rx.popen.wait(15)
        assert "timeout" in rx.output() and "rogue" not in rx.output()
        assert "198.18.0.77" not in stats(dp)["peers"]
        # garbage from the leased address: counted, the loop survives
        topo.sh(topo.PYTHON, "-c", _SEND, topo.UNDERLAY[1], topo.UNDERLAY[0], "45" + "00" * 30,
                ns=topo.NODES[1])
        topo.wait_for(lambda: sum(stats(dp)["drops"].values()) >= before + 2, 10, "garbage drop")
        assert dp.popen.poll() is None
    finally:
        dp.stop()


_SEND_ALL = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for h in sys.argv[3:]:
    s.sendto(bytes.fromhex(h), (sys.argv[2], 8285))
"""
_RECV_ALL = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("listening", flush=True)
s.settimeout(float(sys.argv[1]))
try:
    while True:
        data, addr = s.recvfrom(2048)
        print(addr[0], data.decode(), flush=True)
except TimeoutError:
    print("idle", flush=True)
"""


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_forged_inner_sources_are_dropped(nodes: Path, offload: bool) -> None:
    """Datagrams from node 2's leased underlay address whose inner source is not in node 2's
    subnet never reach the pod and are counted; valid inner sources still do."""
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    dp = topo.start_ours(0, nodes, offload=offload)  # node 1 only; 198.18.0.2 leases 10.244.2.0/24
    try:
        assert control(dp.extra["control"], op="set_route", subnet="10.244.5.0/24",
                       underlay="198.18.0.3")["ok"]  # another leased peer
        forged = {"8.8.8.8": "outside", "10.244.5.5": "other-peer", "10.244.1.9": "receiver",
                  "10.244.3.0": "neighbour", "10.245.2.7": "other-16"}
        valid = {"10.244.2.7": "pod", "10.244.2.0": "flannel0", "10.244.2.255": "last"}
        rx = topo.node_exec(topo.PODS[0], [topo.PYTHON, "-c", _RECV_ALL, "1.5"],
                            nodes / "rx-all.log")
        topo.wait_for(lambda: "listening" in rx.output(), 10, "pod listener")
        pkts = [bytes(IP(src=src, dst=topo.POD_IPS[0], ttl=9) / UDP(sport=5555, dport=9999)
                      / Raw(tag.encode())).hex() for src, tag in (*forged.items(), *valid.items())]
        topo.sh(topo.PYTHON, "-c", _SEND_ALL, topo.UNDERLAY[1], topo.UNDERLAY[0], *pkts,
                ns=topo.NODES[1])
        rx.popen.wait(20)
        got = {ln.split()[1] for ln in rx.output().splitlines() if len(ln.split()) == 2}
        assert got == set(valid.values()), rx.output()
        s = stats(dp)
        assert s["drops"]["source_not_peer_subnet"] == len(forged), s["drops"]
        assert s["peers"][topo.UNDERLAY[1]]["rx_packets"] == len(valid)
    finally:
        dp.stop()


@pytest.fixture(scope="module")
def cfwd_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    return topo.build_cfwd(tmp_path_factory.mktemp("cfwd") / "cfwd")


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_wire_interop_with_c_forwarder(nodes: Path, cfwd_binary: Path, offload: bool) -> None:
    """Ours on node 1, the flannel-style C forwarder on node 2; tshark reads the underlay."""
    ours = topo.start_ours(0, nodes, offload=offload)
    cf = topo.start_cfwd(1, cfwd_binary, nodes)
    pcap = nodes / "underlay.pcap"
    tcpdump = ["tcpdump", "-U", "--immediate-mode", "-Z", "root", "-n", "-i", "fudp-u2", "-w",
               str(pcap), "udp port 8285"]
    cap = topo.node_exec(topo.NODES[1], tcpdump, nodes / "tcpdump.log")
    try:
        topo.wait_for(lambda: "listening" in cap.output(), 10, "tcpdump")
        for src, dst in ((0, 1), (1, 0)):
            r = topo.ping(src, topo.POD_IPS[dst])
            assert r.returncode == 0, r.stdout + r.stderr + cf.output()
        if offload:  # TCP super-packets re-segmented onto flannel's wire, both directions
            srv = topo.node_exec(topo.PODS[1], ["iperf3", "-s", "-1"], nodes / "iperf.log")
            topo.wait_for(lambda: ":5201" in topo.sh("ss", "-ltn", ns=topo.PODS[1]).stdout, 10,
                          "iperf3")
            for rev in ([], ["-R"]):
                r = topo.sh("iperf3", "-c", topo.POD_IPS[1], "-n", "2M", *rev, ns=topo.PODS[0],
                            check=False)
                assert r.returncode == 0, r.stdout[-1500:] + r.stderr
                if not rev:
                    srv.popen.wait(10)
                    srv = topo.node_exec(topo.PODS[1], ["iperf3", "-s", "-1"],
                                         nodes / "iperf2.log")
                    topo.wait_for(
                        lambda: ":5201" in topo.sh("ss", "-ltn", ns=topo.PODS[1]).stdout, 10,
                        "iperf3")
            srv.stop()
    finally:
        cap.stop()
        cf.stop()
        ours.stop()
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", "udp.port==8285,ip", "-T", "fields", "-e", "udp.port",
         "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto", "-Y", "icmp"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [ln.split("\t") for ln in out.splitlines() if ln.strip()]
    assert len(lines) >= 6, out
    for ports, srcs, dsts, protos in lines:
        assert "8285" in ports.split(",")
        # outer header then the decoded inner IPv4 header
        assert srcs.split(",")[1] in topo.POD_IPS and dsts.split(",")[1] in topo.POD_IPS
        assert protos.split(",") == ["17", "1"]
