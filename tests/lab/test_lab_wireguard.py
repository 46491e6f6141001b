"""The wireguard backend across netns labs: datapath, encryption on the wire, churn, crashes,
health, dual stack, and interop with a node configured by hand as Go flannel configures it.

Every wireguard lab node's flanneld (and the wireguard-go it starts, in a session of its own)
runs in a private mount namespace where the node's ``wireguard/`` directory is
/var/run/wireguard, with its own key file (``netns-lab/netnslab/daemon.py``); ``wg`` looks at a
node the same way (``LabHandle.wg_run`` / ``wg_dump``, ``lab wg n1 -- show``).  The kernel here
has no WireGuard module, so the daemon's ``auto`` driver is userspace: wireguard-go.

Three labs, one at a time (class-scoped fixtures, each torn down before the next class):

- ``TestWireguardLab`` (``flabtwg``, 3 nodes x 2 pods, ``--healthz-port``): every pod pair; each
  device against the leases (key, port, peers, endpoint, allowed IPs, MTU 1420, address, route);
  the underlay carries nothing but WireGuard between the nodes (tcpdump on the bridge, decoded by
  tshark; a handshake forced within the capture; no pod address, no clear ICMP, no clear
  payload); per-peer metrics and /readyz; flanneld SIGKILLed and restarted under a 50 ms ping
  (same key, subnet and wireguard-go: re-attached); wireguard-go SIGKILLed (restarted by the
  daemon's supervisor, the device set up again, traffic back); a 4th node joins and leaves.
- ``TestDualStack`` (``flabtw6``): ``separate`` mode, flannel-wg + flannel-wg-v6 on 51821.
- ``TestGoInterop`` (``flabtwi``): node n9 runs no daemon of ours: ``wireguard-go flannel-wg``,
  ``wg genkey``, ``wg set``, iproute2 and a Go-format lease with a 24 h etcd lease, with and
  without ``Port`` in BackendData; pods reach each other both ways.

Outage figures are printed as ``FIGURE`` lines (``-s`` / ``-rA`` show them).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest
from labkit import (
    DRIFT_INTERVAL,
    FLANNELD_TEST_ARGS,
    HEALTHZ_PORT,
    REPO,
    FaultLab,
    Pinger,
    fault_lab,
    figure,
    poll,
    require_flanneld,
)
from netnslab import daemon, pingmatrix
from netnslab import etcd as etcdmod
from netnslab import lab as labmod
from netnslab.proc import nsexec, run
from netnslab.state import read_subnet_env
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.lab

LAB, LAB6, LAB_GO = "flabtwg", "flabtw6", "flabtwi"
DEV, DEV6 = "flannel-wg", "flannel-wg-v6"
PORT, PORT6 = 51820, 51821
MTU = 1420  # the uplink's 1500 - 80, as Go flannel
NETWORK = IPv4Network("10.244.0.0/16")
NETWORK6 = IPv6Network("fd10:244::/56")
ARGS = (*FLANNELD_TEST_ARGS, f"--healthz-port={HEALTHZ_PORT}")
PING_INTERVAL = 0.05
LABCMD = REPO / "netns-lab" / "lab"
# 16 bytes that pods put in every ping and every TCP segment of the capture test: they must
# never show on the underlay (the payload is encrypted).
MARKER = b"flannel-wg-clear"


def go_lease_json(public_ip: str, key: str, port: int | None) -> str:
    """Byte for byte what Go flannel's wireguard backend writes (``port`` None: a Go node from
    before ``Port`` was published)."""
    data = f'{{"PublicKey":"{key}","Port":{port}}}' if port is not None else f'{{"PublicKey":"{key}"}}'
    return (f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"wireguard",'
            f'"BackendData":{data}}}')  # fmt: skip


def _subnet_of_key(key: str) -> IPv4Network:
    return IPv4Network(key.rsplit("/", 1)[-1].split("&")[0].replace("-", "/"))


def _subnet6_of_key(key: str) -> IPv6Network | None:
    _, amp, part = key.rsplit("/", 1)[-1].partition("&")
    if not amp:
        return None
    addr, _, plen = part.rpartition("-")
    return IPv6Network(f"{addr}/{plen}")


class WgLab(FaultLab):
    """FaultLab plus the WireGuard view of a node: its device against the leases."""

    def lease_key_of(self, node: int) -> str:
        """The WireGuard public key ``node`` publishes in its lease."""
        return str(self.lease_of(node)[1]["BackendData"]["PublicKey"])

    def peer_keys(self, node: int, dev: str = DEV) -> set[str]:
        dump = self.wg_dump(node, dev)
        return set(dump.peers) if dump else set()

    def expected_peers(self, node: int, six: bool = False) -> dict[str, tuple[str, tuple[str, ...]]]:
        """public key -> (endpoint, allowed IPs) that the other leases make on ``node``'s
        device (``six``: the IPv6 device of separate mode); a lease without ``Port`` means our
        own listen port."""
        own = f"2001:db8:18::{node}" if six else self.public_ip(node)
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        for key, value in self.leases().items():
            obj = json.loads(value)
            ip = obj.get("PublicIPv6") if six else obj.get("PublicIP")
            if not ip or ip_address(ip) == ip_address(own):
                continue
            data = obj["BackendV6Data" if six else "BackendData"]
            port = data.get("Port") or (PORT6 if six else PORT)
            sub = _subnet6_of_key(key) if six else _subnet_of_key(key)
            endpoint = f"[{ip_address(ip)}]:{port}" if six else f"{ip}:{port}"
            out[str(data["PublicKey"])] = (endpoint, (str(sub),))
        return out

    def peer_problems(self, node: int, dev: str = DEV, six: bool = False) -> list[str]:
        """What ``node``'s device lacks against the leases ([] = exactly the leases' peers)."""
        dump = self.wg_dump(node, dev)
        if dump is None:
            return [f"n{node}: no device {dev}"]
        problems = []
        own = self.lease_key_of(node)
        port = PORT6 if six else PORT
        if dump.public_key != own or dump.listen_port != port:
            problems.append(f"n{node} {dev}: key {dump.public_key} port {dump.listen_port}, lease key "
                            f"{own} port {port}")  # fmt: skip
        got = {k: (p.endpoint, p.allowed_ips) for k, p in dump.peers.items()}
        want = self.expected_peers(node, six)
        if got != want:
            problems.append(f"n{node} {dev}: peers {got}, leases say {want}")
        return problems

    def wait_peers(self, nodes: list[int], what: str, timeout: float = 15.0, six: bool = False) -> float:
        dev = DEV6 if six else DEV
        return poll(lambda: not any(self.peer_problems(n, dev, six) for n in nodes), timeout, 0.1,
                    f"{what}: " + "; ".join(p for n in nodes for p in self.peer_problems(n, dev, six)))  # fmt: skip

    def device_problems(self, node: int) -> list[str]:
        """flannel-wg as Go flannel makes it: up, MTU 1420, the subnet's .0/32, one route for
        the whole Network, scope link."""
        ns, sub = self.node_ns(node), self.subnet(node)
        out = []
        links = self.ipj(ns, "link", "show", DEV)
        if not links or links[0].get("mtu") != MTU or "UP" not in links[0].get("flags", []):
            out.append(f"n{node} link: {links}")
        addrs = [(a["local"], a["prefixlen"]) for link in self.ipj(ns, "-4", "addr", "show", "dev", DEV)
                 for a in link.get("addr_info", [])]  # fmt: skip
        if addrs != [(str(sub.network_address), 32)]:
            out.append(f"n{node} addresses {addrs}, want {sub.network_address}/32")
        routes = [(r.get("dst"), r.get("scope")) for r in self.ipj(ns, "-4", "route", "show", "dev", DEV)]
        if routes != [(str(NETWORK), "link")]:
            out.append(f"n{node} routes on {DEV}: {routes}, want {NETWORK} scope link")
        return out

    def metrics(self, node: int) -> dict[str, list[tuple[dict[str, str], float]]]:
        """/metrics of ``node`` (inside its namespace): sample name -> [(labels, value)]."""
        url = f"http://127.0.0.1:{HEALTHZ_PORT}/metrics"
        text = run(nsexec(self.node_ns(node), ["curl", "-sf", "-m", "2", url])).stdout
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
        return out

    def readyz_body(self, node: int) -> tuple[int, str]:
        url = f"http://127.0.0.1:{HEALTHZ_PORT}/readyz"
        res = run(nsexec(self.node_ns(node), ["curl", "-s", "-m", "2", "-w", "\n%{http_code}", url]),
                  check=False)  # fmt: skip
        body, _, code = res.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def pinger_every(self, src: tuple[int, int], dst: tuple[int, int], interval: float) -> Pinger:
        src_pod = self.pod(*src)
        out = self.state.dir / f"ping-{src_pod.name}-n{dst[0]}p{dst[1]}.log"
        return Pinger(src_pod.name, self.pod_ip(*dst), out, interval=interval)


def _drift_total(m: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(v for _, v in m.get("flannel_drift_repairs_total", []))


@pytest.fixture(scope="class")
def wgl() -> Iterator[WgLab]:
    require_flanneld()
    with fault_lab(LAB, nodes=3, backend="wireguard", pods_per_node=2, flanneld_args=ARGS) as h:
        lab = WgLab(h.name)
        took = lab.wait_peers([1, 2, 3], "every device holds the other leases' peers")
        print(f"wireguard lab up: peers converged {took:.2f}s after `lab up` returned")
        yield lab


class TestWireguardLab:
    """3 nodes of ours, wireguard-go devices (lab ``flabtwg``); destructive tests last."""

    def test_pods_reach_each_other_and_devices_follow_the_leases(self, wgl: WgLab) -> None:
        plist = wgl.state.pods()
        results = pingmatrix.ping_all(plist)
        assert len(results) == 30
        assert all(r.ok for r in results), "\n" + pingmatrix.render(plist, results, wgl.name)
        for node in (1, 2, 3):
            key, _ = wgl.lease_of(node)
            pub = wgl.lease_key_of(node)
            assert wgl.leases()[key] == go_lease_json(wgl.public_ip(node), pub, PORT)
            dump = wgl.wg_dump(node)
            assert dump is not None and dump.public_key == pub and dump.listen_port == PORT
            others = {wgl.lease_key_of(p): p for p in (1, 2, 3) if p != node}
            assert set(dump.peers) == set(others), (node, dump.peers)
            for peer_key, peer in others.items():
                got = dump.peers[peer_key]
                assert got.endpoint == f"198.18.0.{peer}:{PORT}", got
                assert got.allowed_ips == (str(wgl.subnet(peer)),), got
            assert not wgl.peer_problems(node)
            assert not wgl.device_problems(node)
            assert read_subnet_env(wgl.state.subnet_file(node))["FLANNEL_MTU"] == str(MTU)
            pod_link = wgl.ipj(wgl.pod(node, 1).name, "link", "show", "eth0")
            assert pod_link[0]["mtu"] == MTU, pod_link
        # The lab's `wg` command looks at a node the same way.
        res = run([str(LABCMD), "--name", wgl.name, "wg", "n2", "--", "show", DEV, "public-key"])
        assert res.stdout.strip() == wgl.lease_key_of(2)
        assert f"interface: {DEV}" in run([str(LABCMD), "--name", wgl.name, "wg", "n1"]).stdout

    def test_underlay_carries_only_wireguard_between_nodes(self, wgl: WgLab, tmp_path: Path) -> None:
        names = wgl.names
        pcap, errf = tmp_path / "underlay.pcap", tmp_path / "tcpdump.err"
        with errf.open("w") as err:
            cap = subprocess.Popen(nsexec(names.underlay_ns, [
                "tcpdump", "-n", "-i", names.bridge, "-s", "256", "-B", "16384", "--immediate-mode", "-U",
                "-w", str(pcap)]),
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            poll(lambda: "listening on" in errf.read_text(), 10.0, 0.02, "tcpdump listening")
            # A fresh handshake inside the capture: n1 forgets its session with n2 (the peer
            # removed and put back as it was); n1's next packet to n2 must start one.
            n2 = wgl.wg_dump(1)
            assert n2 is not None
            peer = n2.peers[wgl.lease_key_of(2)]
            wgl.wg_run(1, "set", DEV, "peer", peer.public_key, "remove")
            wgl.wg_run(1, "set", DEV, "peer", peer.public_key, "endpoint", peer.endpoint,
                       "allowed-ips", ",".join(peer.allowed_ips))  # fmt: skip
            pattern = MARKER.hex()
            pings = [((1, 1), (2, 1)), ((2, 1), (1, 1)), ((3, 2), (1, 2)), ((2, 2), (3, 1))]
            for src, dst in pings:
                res = run(nsexec(wgl.pod(*src).name, ["ping", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1",
                                                      "-p", pattern, wgl.pod_ip(*dst)]), check=False)  # fmt: skip
                assert res.returncode == 0, (src, dst, res.stdout)
            sent = _tcp_transfer(wgl, (1, 1), (2, 1), 2 << 20)
            print(f"TCP n1p1 -> n2p1: {sent} bytes of {MARKER!r} repeated")
            _wait_quiet(pcap)  # tcpdump has written what it was handed
        finally:
            cap.send_signal(signal.SIGINT)
            cap.wait(10)
        print("tcpdump: " + " / ".join(line for line in errf.read_text().splitlines() if "packets" in line))
        raw = pcap.read_bytes()
        assert MARKER not in raw, "pod payload in clear on the underlay"
        fields = ["ip.src", "ip.dst", "ip.proto", "udp.srcport", "udp.dstport", "wg.type", "icmp.type"]
        out = run(["tshark", "-r", str(pcap), "-d", f"udp.port=={PORT},wg", "-T", "fields",
                   "-E", "separator=|", *[a for f in fields for a in ("-e", f)]]).stdout  # fmt: skip
        nodes = {f"198.18.0.{i}" for i in (1, 2, 3)}
        types: dict[tuple[str, str, str], int] = {}
        bad, between = [], 0
        for line in out.splitlines():
            src, dst, proto, sport, dport, wgtype, icmp = line.split("|")
            if not src:
                continue  # not IPv4 (ARP)
            outer = (src.split(",")[0], dst.split(",")[0])
            addrs = [ip_address(a) for a in (*src.split(","), *dst.split(","))]
            if any(a.version == 4 and a in NETWORK for a in addrs):
                bad.append(f"pod address on the underlay: {line}")
            if icmp and any(a.version == 4 and a in NETWORK for a in addrs):
                bad.append(f"ICMP with pod addresses in clear: {line}")
            if outer[0] in nodes and outer[1] in nodes:
                between += 1
                if (proto, sport, dport) != ("17", str(PORT), str(PORT)) or wgtype not in ("1", "2", "3", "4"):
                    bad.append(f"not WireGuard between nodes: {line}")
                    continue
                types[(*outer, wgtype)] = types.get((*outer, wgtype), 0) + 1
        assert not bad, "\n".join(bad[:20])
        print(f"captured {len(out.splitlines())} packets, {between} between nodes: "
              + ", ".join(f"{s}->{d} type {t}: {n}" for (s, d, t), n in sorted(types.items())))  # fmt: skip
        seen = {t for _, _, t in types}
        assert {"1", "2", "4"} <= seen, types
        assert types.get(("198.18.0.1", "198.18.0.2", "1")), "n1 did not start the handshake"
        assert types.get(("198.18.0.2", "198.18.0.1", "2")), "n2 did not answer it"
        # The capture saw the 2 MiB go through as transport data (segments of at most 1420 bytes).
        assert types.get(("198.18.0.1", "198.18.0.2", "4"), 0) >= (2 << 20) // MTU, types

    def test_metrics_per_peer_and_readyz(self, wgl: WgLab) -> None:
        for src, dst in (((1, 1), (2, 1)), ((1, 1), (3, 1)), ((2, 1), (3, 1))):
            assert wgl.ping(wgl.pod(*src).name, wgl.pod_ip(*dst))

        def problems(node: int) -> list[str]:
            m = wgl.metrics(node)
            ages = {lab["peer"]: v for lab, v in m.get("flannel_wireguard_peer_handshake_age_seconds", [])
                    if lab.get("device") == DEV}  # fmt: skip
            rx = {lab["peer"]: v for lab, v in m.get("flannel_wireguard_peer_received_bytes_total", [])}
            tx = {lab["peer"]: v for lab, v in m.get("flannel_wireguard_peer_transmitted_bytes_total", [])}
            want = {str(wgl.subnet(p)) for p in (1, 2, 3) if p != node}
            out = []
            if set(ages) != want or set(rx) != want or set(tx) != want:
                out.append(f"n{node}: series for {sorted(ages)} / {sorted(rx)} / {sorted(tx)}, want {sorted(want)}")
            # Every peer has handshaked (the pings): a finite, recent age, bytes both ways.
            out += [f"n{node} {p}: age {ages.get(p)} rx {rx.get(p)} tx {tx.get(p)}" for p in want
                    if not (0 <= ages.get(p, -1) < 180 and rx.get(p, 0) > 0 and tx.get(p, 0) > 0)]  # fmt: skip
            if m.get("flannel_wireguard_peers_stalled") != [({}, 0.0)]:
                out.append(f"n{node}: stalled {m.get('flannel_wireguard_peers_stalled')}")
            return out

        # The backend reads the devices every 10 s: wait for a read after the pings.
        took = poll(lambda: not any(problems(n) for n in (1, 2, 3)), 25.0, 0.5,
                    "per-peer metrics: " + "; ".join(p for n in (1, 2, 3) for p in problems(n)))  # fmt: skip
        print(f"per-peer handshake metrics complete after {took:.1f}s")
        for node in (1, 2, 3):
            assert wgl.readyz_body(node) == (200, "ready\n")
            print(f"n{node}: " + ", ".join(
                f"{lab['peer']} handshake {v:.0f}s ago"
                for lab, v in wgl.metrics(node)["flannel_wireguard_peer_handshake_age_seconds"]))

    def test_flanneld_sigkill_restart_reattaches_and_keeps_the_tunnel(self, wgl: WgLab) -> None:
        node = 2
        before_pids = wgl.wireguard_go_pids(node)
        assert len(before_pids) == 1, before_pids
        key, sub, lease_key = wgl.lease_key_of(node), wgl.subnet(node), wgl.lease_of(node)[0]
        key_file = (wgl.state.node_dir(node) / "wgkey").read_text()
        pingers = [wgl.pinger_every((1, 1), (2, 1), PING_INTERVAL), wgl.pinger_every((2, 2), (3, 1), PING_INTERVAL)]
        try:
            for p in pingers:
                p.wait_flowing()
            offset = wgl.log_size(node)
            t_kill = time.time()
            wgl.kill_flanneld(node)
            wgl.start_flanneld(node)  # returns once subnet.env is rewritten
            t_started = time.time()
            poll(lambda: any("flanneld running" in line for line in wgl.log_since(node, offset)), 15.0, 0.05,
                 "restarted flanneld running")  # fmt: skip
            # Traffic keeps flowing through two full repair passes of the new daemon.
            until = t_started + 2 * DRIFT_INTERVAL + 0.5
            poll(lambda: all(p.last_reply() > until for p in pingers), 2 * DRIFT_INTERVAL + 10, 0.05,
                 "pings answered after the restart")  # fmt: skip
        finally:
            results = [p.stop() for p in pingers]
        end = time.time()
        for p, r in zip(pingers, results, strict=True):
            figure("wg_flanneld_restart", path=f"{p.src}->{p.dst}", sent=r.sent, lost=r.lost,
                   lost_pct=100.0 * r.lost / max(r.sent, 1), max_gap_s=r.max_gap(t_kill, end),
                   daemon_down_s=t_started - t_kill)  # fmt: skip
            assert r.sent > 50, r.text[-300:]
            assert r.lost < 0.2 * r.sent, f"lost {r.lost} of {r.sent}"
        lines = wgl.log_since(node, offset)
        log = "\n".join(lines)
        assert wgl.wireguard_go_pids(node) == before_pids, "wireguard-go was replaced"
        assert any("attached to it" in line and f"pid {before_pids[0]}" in line for line in lines), log
        assert "started wireguard-go" not in log and "drift repaired" not in log, log
        assert "wireguard key loaded" in log, log
        assert (wgl.state.node_dir(node) / "wgkey").read_text() == key_file
        assert wgl.lease_key_of(node) == key and wgl.lease_of(node)[0] == lease_key
        assert wgl.subnet(node) == sub
        dump = wgl.wg_dump(node)
        assert dump is not None and dump.public_key == key
        assert not wgl.peer_problems(node) and not wgl.device_problems(node)

    def test_wireguard_go_sigkilled_is_restarted_and_repaired(self, wgl: WgLab, tmp_path: Path) -> None:
        """The new wireguard-go has a new, empty device: the daemon sets it up again at once
        and starts a handshake with every peer (a datagram to each peer's device address), so
        a peer that only sends to n2 (n3p1 -> n2p1) is back as soon as one that n2 sends to
        (without it, it waited ~15 s for WireGuard's own retry).  While the device is gone,
        the Network's unreachable fallback route refuses pod traffic: nothing with a pod
        address crosses the underlay in clear (it did before the fallback: ~20-36 packets)."""
        node = 2
        (old,) = wgl.wireguard_go_pids(node)
        # Our child (the daemon started it: its exit wakes the supervisor) or one the daemon
        # attached to after a restart of its own (noticed when its socket stops accepting).
        child = _ppid(old) == wgl.flanneld_pid(node)
        key = wgl.lease_key_of(node)
        drift_before = _drift_total(wgl.metrics(node))
        # What would leave n2 in clear while its device is gone (its Network route goes with
        # it; the unreachable fallback route must catch that traffic).
        leak_file = tmp_path / "leak.txt"
        with leak_file.open("w") as fh:
            leak = subprocess.Popen(nsexec(wgl.names.underlay_ns, [
                "tcpdump", "-n", "-l", "-i", wgl.names.bridge, f"net {NETWORK}"]),
                stdout=fh, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
        active = [wgl.pinger_every((1, 1), (2, 1), PING_INTERVAL), wgl.pinger_every((2, 1), (1, 1), PING_INTERVAL)]
        passive = wgl.pinger_every((3, 1), (2, 1), PING_INTERVAL)
        pingers = [*active, passive]
        try:
            for p in pingers:
                p.wait_flowing()
            offset = wgl.log_size(node)
            t_kill = time.time()
            os.kill(old, signal.SIGKILL)
            poll(lambda: wgl.wireguard_go_pids(node) not in ([], [old]), 15.0, 0.02, "a new wireguard-go")
            (new,) = wgl.wireguard_go_pids(node)
            t_new = time.time()
            poll(lambda: not wgl.peer_problems(node) and not wgl.device_problems(node), 10.0, 0.02,
                 "device set up again: " + "; ".join(wgl.peer_problems(node) + wgl.device_problems(node)))  # fmt: skip
            t_repaired = time.time()
            poll(lambda: all(p.last_reply() > t_repaired for p in active), 10.0, 0.02,
                 "n1p1 <-> n2p1 answered again")  # fmt: skip
            t_back = max(p.last_reply() for p in active)
            poll(lambda: passive.last_reply() > t_repaired, 30.0, 0.05, "n3p1 -> n2p1 answered again")
            t_back_passive = passive.last_reply()
            for peer in (1, 3):
                assert wgl.ping(wgl.pod(node, 2).name, wgl.pod_ip(peer, 2)), f"n{node}p2 -> n{peer}p2"
                assert wgl.ping(wgl.pod(peer, 2).name, wgl.pod_ip(node, 2)), f"n{peer}p2 -> n{node}p2"
        finally:
            results = [p.stop() for p in pingers]
            leak.terminate()
            leak.wait(5)
        end = time.time()
        leaked = [line for line in leak_file.read_text().splitlines() if line.strip()]
        figure("wg_wireguard_go_killed", new_pid_s=t_new - t_kill, repaired_s=t_repaired - t_kill,
               traffic_back_s=t_back - t_kill, passive_back_s=t_back_passive - t_kill,
               clear_packets=len(leaked))  # fmt: skip
        gaps = []
        for p, r in zip(pingers, results, strict=True):
            gaps.append(r.max_gap(t_kill, end))
            figure("wg_wireguard_go_killed_ping", path=f"{p.src}->{p.dst}", sent=r.sent, lost=r.lost,
                   max_gap_s=gaps[-1])  # fmt: skip
        assert not leaked, (f"while n{node}'s device was gone, {len(leaked)} packets with pod "
                            "addresses crossed the underlay in clear:\n  " + "\n  ".join(leaked[:5]))
        assert max(gaps) < 5.0, gaps  # the passive path too: the daemon started the handshake
        lines = wgl.log_since(node, offset)
        log = "\n".join(lines)
        gone = "killed by SIGKILL" if child else "stopped accepting on /var/run/wireguard/flannel-wg.sock"
        print(f"wireguard-go was the daemon's {'child' if child else 'attached process'}: "
              f"the log says {gone!r}")  # fmt: skip
        assert any(f"wireguard-go for flannel-wg {gone}" in line for line in lines), log
        assert any(f"started wireguard-go for flannel-wg (pid {new}," in line for line in lines), log
        assert any("wireguard-go for flannel-wg is back" in line for line in lines), log
        assert any("drift repaired" in line for line in lines), log
        dump = wgl.wg_dump(node)
        assert dump is not None and dump.public_key == key and wgl.lease_key_of(node) == key
        drift_after = _drift_total(wgl.metrics(node))
        print(f"flannel_drift_repairs_total on n{node}: {drift_before:g} -> {drift_after:g}")
        assert drift_after - drift_before >= 2  # both peers were put back

    def test_node_joins_and_leaves(self, wgl: WgLab) -> None:
        t0 = time.monotonic()
        node = labmod.add_node(wgl.name, labmod.UpOptions(pods_per_node=1))
        key, sub = wgl.lease_key_of(node), wgl.subnet(node)
        others = [1, 2, 3]

        def has_new_peer(n: int) -> bool:
            dump = wgl.wg_dump(n)
            peer = dump.peers.get(key) if dump else None
            return peer is not None and peer.endpoint == f"198.18.0.{node}:{PORT}" \
                and peer.allowed_ips == (str(sub),)

        poll(lambda: all(has_new_peer(n) for n in others), 10.0, 0.02, f"n{node}'s peer on n1-n3")
        joined = time.monotonic() - t0
        wgl.wait_peers([*others, node], "every device after the join")
        for n in others:
            poll(lambda q=n: wgl.ping(wgl.pod(q, 1).name, wgl.pod_ip(node, 1), 0.5), 5.0, 0.05,  # type: ignore[misc]
                 f"n{n}p1 -> n{node}p1")  # fmt: skip
            assert wgl.ping(wgl.pod(node, 1).name, wgl.pod_ip(n, 2)), f"n{node}p1 -> n{n}p2"
        # It leaves: its daemon gone for good and its lease deleted.
        lease_key = wgl.lease_of(node)[0]
        wgl.kill_flanneld(node)
        t1 = time.monotonic()
        wgl.etcdctl("del", lease_key)
        poll(lambda: not any(key in wgl.peer_keys(n) for n in others), 5.0, 0.02,
             f"n{node}'s peer removed from n1-n3")
        left = time.monotonic() - t1
        figure("wg_join_leave", peer_added_s=joined, peer_removed_s=left)
        for n in others:
            assert not wgl.peer_problems(n), wgl.peer_problems(n)
        assert wgl.ping(wgl.pod(1, 1).name, wgl.pod_ip(3, 1))


def _wait_quiet(path: Path, quiet: float = 0.5) -> None:
    """Until ``path`` has not grown for ``quiet`` seconds (a capture that caught up)."""
    last = [-1, time.monotonic()]

    def settled() -> bool:
        size = path.stat().st_size
        if size != last[0]:
            last[:] = [size, time.monotonic()]
        return time.monotonic() - last[1] >= quiet

    poll(settled, 15.0, 0.05, f"{path.name} complete")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _tcp_transfer(h: FaultLab, src: tuple[int, int], dst: tuple[int, int], size: int) -> int:
    """``size`` bytes of MARKER repeated from pod ``src`` to pod ``dst`` over TCP; what the
    receiver got."""
    server = (
        "import socket,sys\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 5201)); s.listen(1); s.settimeout(20)\n"
        "c,_=s.accept(); n=0\n"
        "while (d := c.recv(1 << 16)): n += len(d)\n"
        "print(n, flush=True)\n"
    )
    srv = subprocess.Popen(nsexec(h.pod(*dst).name, [sys.executable, "-c", server]),
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        poll(lambda: ":5201 " in run(nsexec(h.pod(*dst).name, ["ss", "-Hltn"])).stdout, 10.0, 0.02,
             "TCP receiver listening")  # fmt: skip
        client = (f"import socket\nc = socket.create_connection(({h.pod_ip(*dst)!r}, 5201), timeout=20)\n"
                  f"c.sendall({MARKER!r} * {size // len(MARKER)})\nc.close()\n")  # fmt: skip
        run(nsexec(h.pod(*src).name, [sys.executable, "-c", client]), timeout=30)
        out, _ = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    got = int(out.strip() or 0)
    assert got == size // len(MARKER) * len(MARKER), f"received {got} of {size} bytes"
    return got


# ---------------------------------------------------------------- dual stack


@pytest.fixture(scope="class")
def wg6() -> Iterator[WgLab]:
    require_flanneld()
    with fault_lab(LAB6, nodes=2, backend="wireguard", pods_per_node=1, dual_stack=True,
                   flanneld_args=FLANNELD_TEST_ARGS) as h:  # fmt: skip
        lab = WgLab(h.name)
        lab.wait_peers([1, 2], "IPv4 device peers")
        lab.wait_peers([1, 2], "IPv6 device peers", six=True)
        yield lab


class TestDualStack:
    """``separate`` mode (the default): flannel-wg for IPv4 on 51820, flannel-wg-v6 for IPv6 on
    51821 with the same key; lab ``flabtw6``."""

    def test_dual_stack_two_devices_and_both_families_reach(self, wg6: WgLab) -> None:
        plist = wg6.state.pods()
        for family in (4, 6):
            results = pingmatrix.ping_all(plist, family=family)
            assert all(r.ok for r in results), "\n" + pingmatrix.render(plist, results, wg6.name, family)
        for node in (1, 2):
            key, lease = wg6.lease_of(node)
            pub = lease["BackendData"]["PublicKey"]
            assert lease["BackendData"] == {"PublicKey": pub, "Port": PORT}
            assert lease["BackendV6Data"] == {"PublicKey": pub, "Port": PORT6}
            assert lease["PublicIPv6"] == f"2001:db8:18::{node}"
            sub6 = _subnet6_of_key(key)
            assert sub6 is not None and sub6.subnet_of(NETWORK6)
            assert not wg6.peer_problems(node, DEV6, six=True)
            assert not wg6.peer_problems(node)
            ns = wg6.node_ns(node)
            (link,) = wg6.ipj(ns, "link", "show", DEV6)
            assert link["mtu"] == MTU and "UP" in link["flags"], link
            addrs = [(a["local"], a["prefixlen"]) for x in wg6.ipj(ns, "-6", "addr", "show", "dev", DEV6)
                     for a in x.get("addr_info", []) if a.get("scope") == "global"]  # fmt: skip
            assert [(ip_address(a), p) for a, p in addrs] == [(sub6.network_address, 128)], addrs
            # Ours only (the kernel adds its own for the address's /128 and for fe80::/64).
            routes6 = [ip_network(r["dst"]) for r in wg6.ipj(ns, "-6", "route", "show", "dev", DEV6)
                       if r.get("protocol") != "kernel"]  # fmt: skip
            assert routes6 == [NETWORK6], routes6
            assert not wg6.device_problems(node)


# ---------------------------------------------------------------- interop with Go flannel

GO_NODE = 9
GO_IP = "198.18.0.9"
GO_SUBNET = IPv4Network("10.244.200.0/24")  # outside the 100 subnets our nodes pick from
GO_KEY_TTL = 86400
GO_OTHER_PORT = 51830


class GoWgNode:
    """n9 as Go flannel's wireguard backend sets up its device, every command recorded."""

    def __init__(self, h: WgLab) -> None:
        self.h = h
        self.ns = h.node_ns(GO_NODE)
        self.commands: list[str] = []
        self.key = ""
        self.lease_key = f"/coreos.com/network/subnets/{GO_SUBNET.network_address}-{GO_SUBNET.prefixlen}"
        self.lease_id = ""
        self.value = ""

    def do(self, argv: list[str], input_text: str | None = None) -> str:
        self.commands.append(shlex.join(argv) + (f" <<< {input_text.strip()!r}" if input_text else ""))
        return run(argv, input_text=input_text).stdout

    def wg(self, *args: str, input_text: str | None = None) -> str:
        st = self.h.state
        return self.do(daemon.wg_command(st, GO_NODE, args), input_text=input_text)

    def etcdctl(self, *args: str, input_text: str | None = None) -> str:
        return self.do(nsexec(self.ns, ["env", "ETCDCTL_API=3", etcdmod.ETCDCTL_BIN, "--endpoints",
                                        self.h.names.etcd_endpoint, "--command-timeout=3s", *args]),
                       input_text=input_text)  # fmt: skip

    def build(self) -> None:
        h, ns = self.h, self.ns
        labmod.add_bare_node(h.name, GO_NODE)
        st = h.state
        # wireguard-go as a daemon (it forks into the background), in n9's own mount namespace
        # where n9's wireguard/ directory is /var/run/wireguard (the lab's recipe).
        self.do(nsexec(ns, daemon.private_wireguard(daemon.wireguard_dir(st, GO_NODE),
                                                    ["wireguard-go", DEV])))  # fmt: skip
        poll(lambda: (daemon.wireguard_dir(st, GO_NODE) / f"{DEV}.sock").exists(), 10.0, 0.02,
             "the Go node's wireguard-go socket")  # fmt: skip
        key_file = st.node_dir(GO_NODE) / "go-wgkey"
        private = self.do(["wg", "genkey"]).strip()
        key_file.write_text(private)
        key_file.chmod(0o400)
        self.key = self.do(["wg", "pubkey"], input_text=private).strip()
        self.wg("set", DEV, "private-key", str(key_file), "listen-port", str(PORT))
        for argv in (["addr", "add", f"{GO_SUBNET.network_address}/32", "dev", DEV],
                     ["link", "set", DEV, "up", "mtu", str(MTU)],
                     ["route", "add", str(NETWORK), "dev", DEV, "scope", "link"]):  # fmt: skip
            self.do(["ip", "-n", ns, *argv])
        st.subnet_file(GO_NODE).write_text(
            f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GO_SUBNET.network_address + 1}/24\n"
            f"FLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=false\n")  # fmt: skip
        labmod.add_pods(h.name, GO_NODE, 1, attach="bridge")
        # createSubnet: Grant(24 h), then Put only if the key does not exist yet.
        self.lease_id = self.etcdctl("lease", "grant", str(GO_KEY_TTL)).split()[1]
        self.value = go_lease_json(GO_IP, self.key, PORT)
        txn = f'version("{self.lease_key}") = "0"\n\nput --lease={self.lease_id} {self.lease_key} {json.dumps(self.value)}\n\n\n'
        out = self.etcdctl("txn", input_text=txn)
        assert out.split()[:1] == ["SUCCESS"], out
        self.program_peers()

    def program_peers(self) -> None:
        """handleSubnetEvents for every other lease: one peer each, its Port (or ours)."""
        for key, value in self.h.leases().items():
            if key == self.lease_key:
                continue
            obj = json.loads(value)
            port = obj["BackendData"].get("Port") or PORT
            self.wg("set", DEV, "peer", obj["BackendData"]["PublicKey"], "endpoint",
                    f"{obj['PublicIP']}:{port}", "allowed-ips", str(_subnet_of_key(key)))  # fmt: skip

    def republish(self, port: int | None) -> None:
        """The Go node's lease rewritten (same etcd lease): with ``Port`` or without."""
        self.value = go_lease_json(GO_IP, self.key, port)
        self.etcdctl("put", f"--lease={self.lease_id}", self.lease_key, self.value)


@pytest.fixture(scope="class")
def go_mixed() -> Iterator[tuple[WgLab, GoWgNode]]:
    require_flanneld()
    with fault_lab(LAB_GO, nodes=2, backend="wireguard", pods_per_node=1, flanneld_args=FLANNELD_TEST_ARGS) as h:
        lab = WgLab(h.name)
        go = GoWgNode(lab)
        go.build()
        print("hand-made Go node n9, in order:\n  " + "\n  ".join(go.commands))
        yield lab, go


def _go_endpoint_on_ours(h: WgLab, go: GoWgNode) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for node in (1, 2):
        dump = h.wg_dump(node)
        peer = dump.peers.get(go.key) if dump else None
        out[node] = peer.endpoint if peer and peer.allowed_ips == (str(GO_SUBNET),) else None
    return out


def _both_ways(h: WgLab) -> None:
    go_pod, go_ip = h.pod(GO_NODE, 1).name, h.pod_ip(GO_NODE, 1)
    for node in (1, 2):
        poll(lambda n=node: h.ping(go_pod, h.pod_ip(n, 1), 0.5), 10.0, 0.05, f"Go pod -> n{node}p1")  # type: ignore[misc]
        poll(lambda n=node: h.ping(h.pod(n, 1).name, go_ip, 0.5), 10.0, 0.05, f"n{node}p1 -> Go pod")  # type: ignore[misc]


class TestGoInterop:
    """n9 configured by hand as Go flannel configures its wireguard device (lab ``flabtwi``)."""

    def test_go_node_with_port_in_its_lease(self, go_mixed: tuple[WgLab, GoWgNode]) -> None:
        h, go = go_mixed
        want = {1: f"{GO_IP}:{PORT}", 2: f"{GO_IP}:{PORT}"}
        took = poll(lambda: _go_endpoint_on_ours(h, go) == want, 10.0, 0.02,
                    f"the Go node's peer on ours: {_go_endpoint_on_ours(h, go)}")  # fmt: skip
        figure("wg_interop_programmed", seconds=took)
        for node in (1, 2):
            assert not h.peer_problems(node)
        _both_ways(h)
        go_dump = h.wg_dump(GO_NODE)
        assert go_dump is not None and go_dump.public_key == go.key
        assert {k for k, p in go_dump.peers.items() if p.latest_handshake} == {h.lease_key_of(n) for n in (1, 2)}
        # Our daemons leave the Go lease as it wrote it: same bytes, same 24 h etcd lease.
        assert h.leases()[go.lease_key] == go.value
        assert f"granted with TTL({GO_KEY_TTL}s)" in h.etcdctl("lease", "timetolive", go.lease_id)

    def test_go_node_on_another_port(self, go_mixed: tuple[WgLab, GoWgNode]) -> None:
        """``Port`` is read, not assumed: n9 moves to 51830 and says so in its lease; ours must
        send there before n9 sends anything (WireGuard's roaming would otherwise learn it)."""
        h, go = go_mixed
        go.wg("set", DEV, "listen-port", str(GO_OTHER_PORT))
        go.republish(GO_OTHER_PORT)
        want = {1: f"{GO_IP}:{GO_OTHER_PORT}", 2: f"{GO_IP}:{GO_OTHER_PORT}"}
        poll(lambda: _go_endpoint_on_ours(h, go) == want, 10.0, 0.02,
             f"our endpoint of the Go node: {_go_endpoint_on_ours(h, go)}")  # fmt: skip
        for node in (1, 2):  # ours first: n9 has sent nothing from its new port yet
            poll(lambda n=node: h.ping(h.pod(n, 1).name, h.pod_ip(GO_NODE, 1), 0.5), 10.0, 0.05,  # type: ignore[misc]
                 f"n{node}p1 -> Go pod on port {GO_OTHER_PORT}")  # fmt: skip
        _both_ways(h)

    def test_go_node_without_port_in_its_lease(self, go_mixed: tuple[WgLab, GoWgNode]) -> None:
        """An older Go node publishes ``{"PublicKey":...}`` only: ours use their own listen
        port (51820) for it."""
        h, go = go_mixed
        go.wg("set", DEV, "listen-port", str(PORT))
        go.republish(None)
        assert json.loads(h.leases()[go.lease_key])["BackendData"] == {"PublicKey": go.key}
        want = {1: f"{GO_IP}:{PORT}", 2: f"{GO_IP}:{PORT}"}
        poll(lambda: _go_endpoint_on_ours(h, go) == want, 10.0, 0.02,
             f"our endpoint of the Go node: {_go_endpoint_on_ours(h, go)}")  # fmt: skip
        for node in (1, 2):
            poll(lambda n=node: h.ping(h.pod(n, 1).name, h.pod_ip(GO_NODE, 1), 0.5), 10.0, 0.05,  # type: ignore[misc]
                 f"n{node}p1 -> Go pod (no Port in its lease)")  # fmt: skip
        _both_ways(h)
        # The lease's removal (its 24 h TTL running out) removes the peer from ours.
        h.etcdctl("lease", "revoke", go.lease_id)
        took = poll(lambda: set(_go_endpoint_on_ours(h, go).values()) == {None}, 5.0, 0.02,
                    "the Go node's peer removed")  # fmt: skip
        figure("wg_interop_removed", seconds=took)
        assert h.ping(h.pod(1, 1).name, h.pod_ip(2, 1))
